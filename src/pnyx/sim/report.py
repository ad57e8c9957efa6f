"""Readable summaries of simulated runs and of seed sweeps."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pnyx.sim.cluster import CLUSTER_RULES, ClusterResult
from pnyx.sim.cluster_config import ClusterConfig
from pnyx.sim.configs import MEMBERSHIP_RULES
from pnyx.sim.faults import Fault
from pnyx.sim.invariants import RULES, Violation, show
from pnyx.sim.simulation import SimConfig, SimResult


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def describe_config(c: SimConfig) -> str:
    net = c.network
    parts = [
        f"{c.nodes} nodes",
        f"{c.proposers} proposer{'s' if c.proposers != 1 else ''}",
        f"drop {net.drop:.0%}",
        f"duplicate {net.duplicate:.0%}",
        f"delay {net.min_delay * 1000:g}-{net.max_delay * 1000:g} ms"
        f" + jitter {net.jitter * 1000:g} ms",
    ]
    if net.late:
        parts.append(f"late {net.late:.0%} by {net.late_min * 1000:g}-{net.late_max * 1000:g} ms")
    if c.faults.partitions:
        parts.append("partitions")
    if c.faults.crashes:
        parts.append("crashes")
    if c.faults.reboots:
        when = " on its next send" if c.reboot_on_send else ""
        parts.append(f"leader reboots{when}")
    if c.linger:
        parts.append(f"linger {c.linger * 1000:g} ms")
    q = c.quorums()
    parts.append(f"quorums {q.phase1}/{q.phase2}")
    if c.distinguished is not None:
        parts.append(f"distinguished proposer {c.distinguished}")
    if not c.retry.randomized:
        parts.append("no random backoff")
    if c.mutant:
        parts.append(f"MUTANT {c.mutant}")
    return ", ".join(parts)


def _faults_seen(faults: Sequence[Fault], end: float) -> list[str]:
    lines = []
    for f in faults:
        if f.time > end:
            break
        if f.kind == "partition":
            lines.append(f"{ms(f.time):>10}  partition: {{{', '.join(map(str, f.nodes))}}} cut off")
        elif f.kind == "heal":
            lines.append(f"{ms(f.time):>10}  partition healed")
        elif f.kind == "reboot":
            lines.append(f"{ms(f.time):>10}  reboot of the leader (else node {f.nodes[0]})")
        else:
            lines.append(f"{ms(f.time):>10}  node {f.nodes[0]} {f.kind}")
    return lines


def summary(r: SimResult) -> str:
    c = r.config
    out = [f"pnyx sim: seed {c.seed}: {describe_config(c)}", ""]
    out.append("  proposed  " + ", ".join(
        f"{show(v)} (node {i})" for i, v in sorted(r.proposals.items())
    ))
    if r.chosen is not None:
        out.append(f"  chosen    {show(r.chosen)} at {ms(r.chosen_at)}")
    else:
        out.append(f"  chosen    nothing within {ms(c.max_time)}")
    knew = ", ".join(f"{i}:{show(v)}" for i, v in sorted(r.learned.items()))
    when = f" (all by {ms(r.all_learned_at)})" if r.all_learned_at is not None else ""
    out.append(f"  learned   {len(r.learned)}/{c.nodes} nodes{when}  [{knew}]")
    out.append(
        f"  messages  {r.sent} sent, {r.delivered} delivered, {r.lost} lost, "
        f"{r.duplicated} duplicated, {r.held_back} held back "
        f"({r.events} events, ended at {ms(r.end_time)})"
    )
    seen = _faults_seen(r.faults, r.end_time)
    rebooted = f" ({r.reboots} reboots done)" if r.reboots else ""
    out.append(f"  faults    {len(seen) or 'none'}{rebooted}")
    out.extend("  " + line for line in seen)
    out.append("")
    out.extend(_checks(RULES, r.violations))
    return "\n".join(out)


def _checks(rules: Sequence[str], violations: Sequence[Violation]) -> list[str]:
    """One line per rule, ok or FAIL, then the violations themselves."""
    broken = {v.rule for v in violations}
    lines = [f"  {'FAIL' if rule in broken else 'ok  '}  {rule}" for rule in rules]
    lines.extend(f"        {v}" for v in violations)
    return lines


def _seeds(results: Sequence[SimResult] | Sequence[ClusterResult]) -> str:
    """The first seeds of a list of runs, to replay them."""
    if not results:
        return ""
    return f"  seeds: {', '.join(str(r.config.seed) for r in results[:20])}"


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def sweep_summary(results: Sequence[SimResult], wall: float) -> str:
    unsafe = [r for r in results if not r.safe]
    undecided = [r for r in results if r.safe and r.chosen is None]
    decisions = [r.chosen_at for r in results if r.chosen_at is not None]
    delivered = sum(r.delivered for r in results)
    out = [
        f"pnyx sim: {len(results)} seeds "
        f"({results[0].config.seed}..{results[-1].config.seed}) in {wall:.1f} s, "
        f"{delivered / wall if wall else 0:,.0f} deliveries/s",
        f"  violations  {len(unsafe)}"
        + _seeds(unsafe),
        f"  undecided   {len(undecided)}"
        + _seeds(undecided),
    ]
    if decisions:
        out.append(
            f"  decision    median {ms(statistics.median(decisions))}, "
            f"p99 {ms(percentile(decisions, 99))}, max {ms(max(decisions))}"
        )
    for r in unsafe[:5]:
        out.append(f"  seed {r.config.seed}: {str(r.violations[0]).splitlines()[0]}")
    return "\n".join(out)


def describe_cluster(c: ClusterConfig) -> str:
    net = c.network
    parts = [
        f"{c.nodes} replicas",
        f"{c.clients} clients",
        f"{c.ops} ops on {c.keys} keys",
        f"drop {net.drop:.0%}",
        f"duplicate {net.duplicate:.0%}",
    ]
    if c.faults.partitions:
        parts.append("partitions")
    if c.faults.crashes:
        parts.append("crashes")
    if c.changes:
        parts.append(f"{c.changes} membership changes")
    parts.append(f"window {c.window}, batch <= {c.max_batch}")
    if not c.prevote:
        parts.append("no pre-vote")
    if c.mutant:
        parts.append(f"MUTANT {c.mutant}")
    return ", ".join(parts)


def cluster_summary(r: ClusterResult) -> str:
    c = r.config
    out = [f"pnyx sim-kv: seed {c.seed}: {describe_cluster(c)}", ""]
    out.append(
        f"  clients   {r.completed} ops completed, {r.unknown} writes with unknown outcome, "
        f"{r.failed_reads} reads failed, {r.retries} retries"
    )
    per_slot = r.commands / r.slots if r.slots else 0.0
    out.append(f"  log       {r.slots} slots chosen holding {r.commands} commands "
               f"({per_slot:.1f} per slot)")
    failovers = ", ".join(ms(f) for f in r.failovers) or "none"
    out.append(f"  leaders   {r.leader_changes} leadership changes; leader-crash failovers: "
               f"{failovers}")
    out.append(f"  messages  {r.sent} sent, {r.delivered} delivered, {r.lost} lost")
    out.append(f"  snapshots {r.snapshots} taken, {r.installs} installed from a peer; "
               f"learners (lost their disk): {', '.join(map(str, r.learners)) or 'none'}")
    out.append(f"  time      workload done at {ms(r.workload_end)}, run ended at "
               f"{ms(r.end_time)}")
    seen = _faults_seen(r.faults, r.end_time)
    out.append(f"  faults    {len(seen) or 'none'}")
    if c.changes:
        heard = ", ".join(f"{k} {v}" for k, v in r.changes.items())
        out.append(f"  members   voters at the end {', '.join(map(str, r.voters))}; removed "
                   f"(still running) {', '.join(map(str, r.removed)) or 'none'}")
        out.append(f"  changes   {heard}")
    out.append(f"  checker   linearizability: {r.verdict}")
    out.append("")
    # The membership rules are checked in runs with changes only.
    rules = CLUSTER_RULES if c.changes else tuple(
        rule for rule in CLUSTER_RULES if rule not in MEMBERSHIP_RULES)
    out.extend(_checks(rules, r.violations))
    return "\n".join(out)


def cluster_sweep_summary(results: Sequence[ClusterResult], wall: float) -> str:
    unsafe = [r for r in results if not r.safe]
    stuck = [r for r in results if r.safe and r.workload_end is None]
    failovers = [f for r in results for f in r.failovers]
    out = [
        f"pnyx sim-kv: {len(results)} seeds "
        f"({results[0].config.seed}..{results[-1].config.seed}) in {wall:.1f} s, "
        f"{sum(r.completed for r in results):,} client ops completed",
        f"  violations  {len(unsafe)}"
        + _seeds(unsafe),
        f"  unfinished  {len(stuck)}"
        + _seeds(stuck),
        f"  unknown     {sum(r.unknown for r in results)} writes never acknowledged",
    ]
    if failovers:
        out.append(
            f"  failover    {len(failovers)} leader crashes: median "
            f"{ms(statistics.median(failovers))}, p99 {ms(percentile(failovers, 99))}"
        )
    for r in unsafe[:5]:
        out.append(f"  seed {r.config.seed}: {str(r.violations[0]).splitlines()[0]}")
    return "\n".join(out)
