"""The replicated key-value store in the simulator: safe and live under every fault.

Clients run put/get/cas/delete through random replicas while messages are
lost, duplicated and reordered, partitions cut the leader off, and leaders
crash. Every run is checked for log agreement, in-order application, no lost
acknowledged write and linearizability, the wire rules, persist-before-send
on the simulated disk and every unit's invariants after each event; every
broken variant must be caught within a bounded number of seeds of the default
sweep (`pnyx.sim.cluster.sweep`: 3 and 5 nodes, half of it with late messages
and reboots aimed at the leader), which the correct protocol passes.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pnyx.protocol.ballot import ZERO
from pnyx.protocol.multipaxos import ReplicaConfig
from pnyx.protocol.multipaxos.acceptor import Acceptor
from pnyx.protocol.multipaxos.election import Election
from pnyx.protocol.multipaxos.messages import Accept, Prepare, Promise
from pnyx.sim.cluster import D1, I1, L1, L3, L4, S1, S2, ClusterSim, simulate_cluster
from pnyx.sim.cluster_config import DRIVER_MUTANTS, ClusterConfig, sweep
from pnyx.sim.faults import FaultConfig
from pnyx.sim.invariants import A3, A4, B1, H1, R1
from pnyx.sim.mutants import CLUSTER_MUTANTS
from pnyx.sim.network import NetworkConfig

FAULTS = FaultConfig(partitions=True, crashes=True, until=3.0, partition_rate=2.0,
                     crash_rate=3.0, max_outage=0.3)


def config(seed: int, nodes: int = 3, mutant: str | None = None, drop: float = 0.1,
           **kwargs: object) -> ClusterConfig:
    return ClusterConfig(
        seed=seed, nodes=nodes, network=NetworkConfig(drop=drop, duplicate=0.05),
        faults=FAULTS, mutant=mutant, **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(("nodes", "seeds", "drop"), [(3, 60, 0.1), (5, 30, 0.2)])
def test_store_stays_linearizable_and_loses_nothing_under_all_faults(
    nodes: int, seeds: int, drop: float
) -> None:
    for seed in range(seeds):
        result = simulate_cluster(config(seed, nodes, drop=drop))
        assert result.safe, (seed, [str(v) for v in result.violations])
        assert result.verdict == "ok", (seed, result.verdict)
        assert result.workload_end is not None, f"seed {seed}: the workload never finished"
        assert result.completed + result.unknown + result.failed_reads == 200
        assert result.slots > 0 and result.commands > 0


def test_promises_in_many_parts_keep_the_store_linearizable_under_all_faults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for one entry per Promise message, an election with a backlog gathers
    its promises from many parts, some lost or duplicated by the network."""
    parts_seen = []
    on_promise = Election.on_promise

    def counting(self: Election, m: Promise, now: float) -> bool:
        parts_seen.append(m.parts)
        return on_promise(self, m, now)

    monkeypatch.setattr(Election, "on_promise", counting)
    for seed in range(25):
        result = simulate_cluster(config(seed, 5, drop=0.2, promise_bytes=1))
        assert result.safe, (seed, [str(v) for v in result.violations])
        assert result.verdict == "ok", (seed, result.verdict)
        assert result.workload_end is not None, f"seed {seed}: the workload never finished"
    assert sum(1 for n in parts_seen if n > 1) > 100, parts_seen[:50]


def test_faults_really_happen_during_the_workload() -> None:
    changes = failovers = 0
    for seed in range(20):
        result = simulate_cluster(config(seed))
        changes += result.leader_changes
        failovers += len(result.failovers)
        assert result.retries > 0 or result.lost > 0
    assert changes > 20 and failovers > 5


def test_same_seed_replays_the_same_run() -> None:
    a = simulate_cluster(config(7), trace=True)
    b = simulate_cluster(config(7), trace=True)
    assert a.history is not None and b.history is not None
    assert a.history.to_json() == b.history.to_json()
    assert (a.end_time, a.sent, a.slots) == (b.end_time, b.sent, b.slots)


# The rules through which each mutant may be caught (the first violation of a run).
EXPECTED = {
    "leader-skips-gap-phase1": {L1, L3, L4},
    # A slot applied before it is chosen breaks the log's stated invariant at once.
    "applies-before-chosen": {I1, L1, L3, L4},
    # A machine with no de-duplication table: its snapshots lack one too (S1).
    "no-dedup": {L4, S1},
    "linearizable-read-from-local-state": {L4},
    "quorum-read-takes-freshest": {L4},
    # The rule-level breakages the unit tests caught and the simulator once missed.
    "acceptor-compares-rounds": {A3},
    # The leader keeps leading (R1); its role and ballot disagree (I1).
    "leader-ignores-higher-ballot": {R1, I1},
    "follower-acks-deposed-leader": {H1},
    # The disk's replay holds an older acceptance than the one reported (D1), or a
    # restart reports it (A4).
    "first-accept-wins-on-replay": {D1, A4},
    # D1: a Prepare leaves before its round is durable; B1: the ballot is used again.
    "round-not-saved-before-use": {D1, B1},
    # The log's floor passes its newest durable snapshot (I1); a crash in between finds
    # slots in neither (S2, see the test without invariants below).
    "compacts-before-snapshot-durable": {I1, S2},
    # The log claims to hold slots below the snapshot it skipped (I1).
    "install-keeps-log": {I1},
    # A restored replica lacks the table (S1), or applies a retry twice (L3, L4).
    "snapshot-without-dedup": {S1, L3, L4},
    # A candidate takes "compacted" for "accepted nothing" and fills a chosen slot with
    # a no-op (L1), or the slot's command is lost (L3, L4).
    "promise-hides-compaction": {L1, L3, L4, S1},
    # A deposed leader answers reads on a lease that outlived its ackers' guard.
    "lease-outlives-guard": {L4},
}
BOUND = 100  # seeds of the default sweep within which each mutant must be caught
# A read answered from local state shows only at a deposed leader that still believes
# it leads while a newer one has a write acknowledged: partitions make one, crashes and
# the aimed reboots depose it outright. The default sweep shows one in about 3 seeds of
# 200, so the first such seed moves with any change to the message pattern (from 12 to
# 137 when the commit announcement stopped asking for acks); partitions alone, twice
# as often, show one in about 1 seed of 9. The scenario test in test_replica_reads
# catches it every time.
SWEEP_FOR = {
    "linearizable-read-from-local-state": dict(
        faults=FaultConfig(partitions=True, until=3.0, partition_rate=4.0, max_outage=0.3),
        network=NetworkConfig(drop=0.1, duplicate=0.05)),
    # The same, with leases (80 ms of a 100 ms election timeout).
    "lease-outlives-guard": dict(
        faults=FaultConfig(partitions=True, until=3.0, partition_rate=4.0, max_outage=0.3),
        network=NetworkConfig(drop=0.1, duplicate=0.05), read_lease=0.08),
}


def test_every_cluster_mutant_has_an_expectation() -> None:
    assert set(EXPECTED) == set(CLUSTER_MUTANTS)


@pytest.mark.parametrize("mutant", sorted(CLUSTER_MUTANTS))
def test_cluster_mutant_is_caught_within_bound(mutant: str) -> None:
    for seed in range(BOUND):
        result = simulate_cluster(sweep(seed, mutant, **SWEEP_FOR.get(mutant, {})))
        if not result.safe:
            rule = result.violations[0].rule
            assert rule in EXPECTED[mutant], (mutant, seed, str(result.violations[0]))
            return
    pytest.fail(f"{mutant} survived {BOUND} seeds: the checks are too weak")


def test_compaction_before_the_snapshot_is_durable_is_caught_by_a_restart_alone() -> None:
    """Not only the replica's own invariants see it: with them off, a crash between
    taking the snapshot and its write finds the log compacted past every snapshot."""
    for seed in range(BOUND):
        result = simulate_cluster(sweep(seed, "compacts-before-snapshot-durable",
                                        check_invariants=False))
        if not result.safe:
            assert result.violations[0].rule == S2, str(result.violations[0])
            return
    pytest.fail("compaction before a durable snapshot survived without invariants")


def test_with_snapshot_phases_the_members_snapshot_at_different_slots() -> None:
    """As `pnyx serve` runs them: members apply the same commands, so without phases
    their newest snapshots are of one slot; with them, each is of its own."""
    newest = {}
    for phases in (False, True):
        sim = ClusterSim(ClusterConfig(seed=1, ops=200, snapshot_every=8,
                                       snapshot_phases=phases))
        sim.run()
        assert sim.finish().safe
        newest[phases] = {max(sim.snapshot_files[i]) for i in (1, 2, 3)}
    assert len(newest[False]) == 1
    assert len(newest[True]) == 3


PHASED = 40  # seeds of the default sweep run with snapshot phases and small steps


def test_phased_snapshots_and_compactions_in_small_steps_keep_every_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each member in its own snapshot phase, and compactions in steps of at most 100
    bytes of values (`COMPACT_STEP_BYTES`; nearly every one then takes several steps,
    each woken `COMPACT_PAUSE` after the last), under the sweep's faults: every rule
    holds, and the store stays linearizable."""
    from pnyx.protocol.multipaxos import log as log_module
    monkeypatch.setattr(log_module, "COMPACT_STEP_BYTES", 100)
    for seed in range(PHASED):
        result = simulate_cluster(sweep(seed, snapshot_phases=True))
        assert result.safe, (seed, [str(v) for v in result.violations])
        assert result.verdict == "ok", (seed, result.verdict)


def test_phased_snapshots_and_small_steps_still_catch_compaction_before_a_durable_snapshot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard for the test above: the same runs catch a compaction that does not wait
    for its snapshot to be durable."""
    from pnyx.protocol.multipaxos import log as log_module
    monkeypatch.setattr(log_module, "COMPACT_STEP_BYTES", 100)
    for seed in range(PHASED):
        result = simulate_cluster(sweep(seed, "compacts-before-snapshot-durable",
                                        snapshot_phases=True))
        if not result.safe:
            assert result.violations[0].rule in {I1, S2}, str(result.violations[0])
            return
    pytest.fail("compaction before a durable snapshot survived phased snapshots")


def test_a_wiped_replica_rejoins_as_a_learner_through_a_snapshot() -> None:
    """A replica that loses its disk mid-run comes back empty, finds the others have
    history, never votes again (its promises are gone) and catches up by installing a
    snapshot fetched from a peer; every check holds."""
    from pnyx.protocol.multipaxos.records import Standing
    from pnyx.sim.faults import Fault
    config = sweep(0, faults=FaultConfig(until=1.0, script=(
        Fault(0.5, "wipe", (2,)), Fault(0.6, "restart", (2,)))), snapshot_failures=0.0)
    sim = ClusterSim(config)
    sim.run()
    result = sim.finish()
    assert result.safe, [str(v) for v in result.violations]
    node = sim.nodes[2]
    assert node is not None and node.replica is not None
    assert node.replica.standing is Standing.LEARNER
    assert sim.installs >= 1
    others = [sim.nodes[i].replica for i in (1, 3)]  # type: ignore[union-attr]
    assert node.replica.applied == max(r.applied for r in others)  # type: ignore[union-attr]


def test_the_correct_store_passes_every_seed_of_the_sweep_that_catches_the_mutants() -> None:
    """The guard means something only if the unbroken store survives the same runs."""
    adversarial = 0
    for seed in range(BOUND):
        config = sweep(seed)
        result = simulate_cluster(config)
        assert result.safe, (seed, [str(v) for v in result.violations])
        assert result.verdict == "ok", (seed, result.verdict)
        assert result.workload_end is not None, f"seed {seed}: the workload never finished"
        adversarial += config.faults.reboots and config.network.late > 0
    assert adversarial == BOUND // 2


def test_the_sweep_runs_five_nodes_late_messages_and_aimed_reboots() -> None:
    configs = [sweep(seed) for seed in range(8)]
    assert {c.nodes for c in configs} == {3, 5}
    assert {(c.nodes, c.faults.reboots, c.network.late > 0) for c in configs} == {
        (3, False, False), (5, False, False), (3, True, True), (5, True, True)}
    assert all(c.reboot_on_send and c.check_invariants for c in configs)
    assert [c.seed for c in configs if not c.prevote] == [6, 7]


def test_batching_puts_many_commands_in_a_slot_under_load() -> None:
    """Commands that queue while the window is full share the next slot."""
    busy = dict(seed=1, clients=32, ops=400, think=0.0, window=1)
    batched = simulate_cluster(ClusterConfig(**busy))  # type: ignore[arg-type]
    single = simulate_cluster(ClusterConfig(max_batch=1, **busy))  # type: ignore[arg-type]
    assert batched.safe and single.safe
    assert batched.commands / batched.slots > 3
    assert single.commands == single.slots
    assert batched.workload_end is not None and single.workload_end is not None
    assert batched.workload_end < single.workload_end / 2


# ---------------------------------------------------------------- the driver


@pytest.mark.parametrize("mutant", sorted(DRIVER_MUTANTS))
def test_a_driver_that_sends_before_the_disk_holds_the_record_is_caught_by_d1(
    mutant: str,
) -> None:
    """D1 is checked against the simulated disk, not the replica's own gate: a driver
    that tells the replica "durable" early is caught although the replica is sound."""
    for seed in range(20):
        result = simulate_cluster(config(seed, mutant=mutant))
        if not result.safe:
            assert D1 in {v.rule for v in result.violations}, result.violations
            return
    pytest.fail(f"{mutant} survived 20 seeds: D1 is too weak")


def test_the_real_driver_sends_every_promise_and_acceptance_after_its_record_is_durable(
) -> None:
    for seed in range(20):
        result = simulate_cluster(config(seed, fsync=0.005))  # a slow disk: wide windows
        assert D1 not in {v.rule for v in result.violations}, (seed, result.violations)
        assert result.safe, (seed, [str(v) for v in result.violations])


def test_simulated_clients_are_served_by_the_nodes_request_machinery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulator runs the code that serves real clients: every operation enters
    through the driver's submit_nowait or read_nowait and its deadline buckets."""
    from pnyx.node.driver import Driver

    calls = {"submit": 0, "read": 0, "expire": 0}
    submit, read, expire = Driver.submit_nowait, Driver.read_nowait, Driver._expire

    def counting(name: str, fn: object) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return fn(*args, **kwargs)  # type: ignore[operator]
        return wrapper

    monkeypatch.setattr(Driver, "submit_nowait", counting("submit", submit))
    monkeypatch.setattr(Driver, "read_nowait", counting("read", read))
    monkeypatch.setattr(Driver, "_expire", counting("expire", expire))
    result = simulate_cluster(config(2))
    assert result.safe and result.completed > 0
    assert calls["submit"] > 0 and calls["read"] > 0
    assert calls["submit"] + calls["read"] >= result.completed
    assert calls["expire"] > 0  # some request outlived its node's answer: a deadline fired


def test_the_simulated_cluster_loads_no_event_loop_and_no_wall_clock() -> None:
    """Determinism by construction: the driver the simulator runs needs no asyncio."""
    code = ("import sys, time\n"
            "from pnyx.sim.cluster import ClusterConfig, ClusterSim\n"
            "sim = ClusterSim(ClusterConfig(seed=1, ops=50))\n"
            "saved = time.time, time.monotonic, time.perf_counter\n"
            "time.time = time.monotonic = time.perf_counter = None  # the run reads none\n"
            "sim.run()\n"
            "time.time, time.monotonic, time.perf_counter = saved  # the checker's budget\n"
            "assert sim.finish().safe and sim.completed == 50\n"
            "assert 'asyncio' not in sys.modules, 'asyncio loaded'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------- adversarial schedules


def _events(config: ClusterConfig, tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / f"{config.seed}.jsonl"
    with path.open("wb") as sink:
        simulate_cluster(config, trace_sink=sink)
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_a_reboot_strikes_the_leader_right_after_it_sends_a_prepare_or_an_accept(
    tmp_path: Path,
) -> None:
    rebooted = 0
    for seed in (2, 3, 6, 7):  # the sweep's adversarial seeds
        events = _events(sweep(seed), tmp_path)
        for k, e in enumerate(events):
            if e["ev"] != "rebooted":
                continue
            rebooted += 1
            # The send that armed it is among the sends of the same instant before it.
            sends = [x for x in events[:k] if x["ev"] == "send" and x["t"] == e["t"]]
            kinds = {(x["msg"]["src"], x["msg"]["type"])  # type: ignore[index]
                     for x in sends}
            assert kinds & {(e["node"], "prepare"), (e["node"], "accept")}, (seed, e, kinds)
    assert rebooted >= 10


def test_only_a_reboot_that_waits_for_the_prepare_shows_a_round_used_again_on_the_wire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With D1's check of the round set aside, B1 still catches a replica that does not
    save its round before use: a reboot that strikes right after a candidate's Prepare
    makes it prepare the same ballot again. Rebooting at a random moment does not."""
    check_durable = ClusterSim._check_durable

    def rounds_unchecked(self: ClusterSim, src: int, message: object) -> None:
        if not isinstance(message, Prepare):
            check_durable(self, src, message)

    monkeypatch.setattr(ClusterSim, "_check_durable", rounds_unchecked)
    seeds = [seed for seed in range(16) if sweep(seed).faults.reboots]
    mutant = "round-not-saved-before-use"
    armed = [simulate_cluster(sweep(seed, mutant)) for seed in seeds]
    assert any(B1 in {v.rule for v in r.violations} for r in armed)
    assert all(D1 not in {v.rule for v in r.violations} for r in armed)
    at_once = [simulate_cluster(sweep(seed, mutant, reboot_on_send=False)) for seed in seeds]
    assert all(r.safe for r in at_once), [r.violations for r in at_once]


def test_a_run_without_aimed_reboots_replays_the_same_whether_or_not_reboots_wait() -> None:
    """Arming a reboot changes nothing in a run that has none."""
    a = simulate_cluster(sweep(5), trace=True)
    b = simulate_cluster(sweep(5, reboot_on_send=False), trace=True)
    assert a.history is not None and b.history is not None
    assert a.history.to_json() == b.history.to_json()
    assert (a.end_time, a.sent, a.slots) == (b.end_time, b.sent, b.slots)


def test_the_cluster_takes_the_replicas_defaults_for_timing_and_batching() -> None:
    rc = ClusterConfig().replica_config()
    defaults = ReplicaConfig.majority(rc.members)
    for name in ("heartbeat_interval", "election_timeout", "prevote", "window", "max_batch",
                 "promise_bytes"):
        assert getattr(rc, name) == getattr(defaults, name), name


# -------------------------------------------------------- unit invariants


def test_a_corrupted_unit_state_is_caught_by_the_simulated_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the 200th Accept, an acceptor that promised a ballot forgets the highest
    ballot it saw, breaking the invariant its field states (highest_seen >= promised):
    I1 says so at once. (Not one that lost its disk: having promised nothing, it keeps
    the invariant.)"""
    on_accept = Acceptor.on_accept
    calls = [0]

    def corrupting(self: Acceptor, m: Accept) -> bool:
        accepted = on_accept(self, m)
        calls[0] += 1
        if calls[0] >= 200 and self.promised > ZERO and calls[0] < 10**9:
            self.highest_seen = ZERO
            calls[0] = 10**9
        return accepted

    monkeypatch.setattr(Acceptor, "on_accept", corrupting)
    caught = simulate_cluster(sweep(0))
    assert [v.rule for v in caught.violations] == [I1], caught.violations
    assert "highest_seen >= self.promised" in caught.violations[0].detail
    calls[0] = 0
    unchecked = simulate_cluster(dataclasses.replace(sweep(0), check_invariants=False))
    assert I1 not in {v.rule for v in unchecked.violations}


# ---------------------------------------------------------- a growing cluster


def test_processes_added_mid_run_get_a_disk_links_and_snapshot_files_by_id() -> None:
    """Membership changes add processes with new ids: the engine's per-process state,
    the network's links and the snapshot store grow to hold them, and what they make
    durable is theirs (`pnyx.sim.changes`)."""
    from pnyx.sim.cluster_config import change_sweep

    sim = ClusterSim(change_sweep(1))
    sim.run()
    result = sim.finish()
    assert result.safe, [str(v) for v in result.violations]
    added = [i for i in sim.ids if i > sim.config.nodes]
    assert added and sim.ids == sorted(sim.ids)
    for i in added:
        assert set(sim.nodes) >= {i} and i in sim.disks and i in sim.snapshot_files
        assert all((i, j) in sim.network._base and (j, i) in sim.network._base
                   for j in sim.ids if j != i)
        assert sim.disks[i].promised.round > 0 or sim.disks[i].chosen or sim.disks[i].compacted


LEASED = 40  # seeds of the default sweep run with leader leases for reads


def test_with_leader_leases_the_default_sweep_keeps_every_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Leases of 80 ms (of a 100 ms election timeout) under the sweep's partitions,
    crashes, aimed reboots and late messages: the store stays linearizable, and the
    leases were used (most linearizable reads at a leader are answered on one)."""
    from pnyx.protocol.multipaxos import election

    answered = {True: 0, False: 0}
    has_lease = election.Election.has_lease

    def counted(self: election.Election, now: float) -> bool:
        leased = has_lease(self, now)
        if self.role is election.Role.LEADER:
            answered[leased] += 1
        return leased

    monkeypatch.setattr(election.Election, "has_lease", counted)
    for seed in range(LEASED):
        result = simulate_cluster(sweep(seed, read_lease=0.08))
        assert result.safe, (seed, [str(v) for v in result.violations])
        assert result.verdict == "ok", (seed, result.verdict)
        assert result.workload_end is not None, f"seed {seed}: the workload never finished"
    assert answered[True] > 10 * answered[False], answered
