"""Shrinking a failing simulated run to a smaller run that fails the same rule.

This module owns `shrink` (greedy delta debugging over a `ClusterConfig`, the
replicated store's run, or a `SimConfig`, single-decree Paxos), `RunSize` (what
"smaller" is measured in), and the replayable run file (`save_run`,
`load_run`): JSON holding every field of the configuration, so
`pnyx sim-kv --replay FILE` (`pnyx sim --replay FILE`) and a test run exactly
that configuration again. A single-decree run's "clients" and "operations"
are its proposers and their proposals.

A run is determined by its configuration. Its random faults are drawn from
the seed before it starts (`faults.schedule`), so the first step writes them
out as an explicit script (`FaultConfig.script`, every random kind off): the
same schedule, in the same order, hence the same run. Each step after that
is one full run, kept only if it still fails the rule the original failed
first: drop faults (halves, then smaller pieces down to single faults; a
crash goes with its restart, a partition with its heal), 3 nodes instead of
5, fewer clients, operations, keys and membership changes (at least one: the
operator's own crashes and partitions come with its changes, from its own RNG),
a clean network, and a shorter run.
Passes repeat until none removes anything, or the budget of runs or seconds
is spent. The cluster still aims some crashes and partitions at the leader
from its own seeded RNG, so removing one fault can move the others; a
candidate that no longer fails is simply not kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from pnyx.protocol.synod.proposer import RetryPolicy
from pnyx.sim.cluster import ClusterResult, ClusterSim
from pnyx.sim.cluster_config import ClusterConfig
from pnyx.sim.faults import Fault, FaultConfig
from pnyx.sim.invariants import Violation
from pnyx.sim.network import NetworkConfig
from pnyx.sim.simulation import SimConfig, SimResult, simulate

AnyConfig = ClusterConfig | SimConfig
AnyResult = ClusterResult | SimResult

FORMATS = {ClusterConfig: "pnyx sim-kv run", SimConfig: "pnyx sim run"}
VERSION = 1

# Passes over every kind of reduction; one change can enable another, but each round
# costs a full fault pass.
MAX_ROUNDS = 3

Unit = tuple[tuple[int, Fault], ...]  # faults that go together, with their order in the run


@dataclass(frozen=True, slots=True)
class RunSize:
    """How big a run is: the events the engine processed, the faults of its schedule
    (a crash and its restart count two), the operations it was asked for and those its
    clients invoked before it ended."""

    events: int
    faults: int
    ops: int
    invoked: int
    nodes: int
    clients: int

    def __str__(self) -> str:
        return (f"{self.events} events, {self.faults} faults, {self.ops} operations "
                f"({self.invoked} invoked), {self.nodes} nodes, {self.clients} clients")


@dataclass(slots=True)
class Shrunk:
    original: AnyConfig
    config: AnyConfig  # the smallest failing run found
    rule: str  # the rule both fail
    violation: Violation  # the shrunk run's first violation, of `rule`
    before: RunSize
    after: RunSize
    runs: int  # simulations the shrink ran, the original's included
    seconds: float
    scripted: bool  # the faults were turned into a script (and could be removed)
    exhausted: bool  # the budget ran out before the passes settled


def run(config: AnyConfig) -> tuple[AnyResult, int]:
    """One run, as `simulate_cluster` (`simulate`) does it, and the events it took."""
    if isinstance(config, SimConfig):
        result = simulate(config)
        return result, result.events
    sim = ClusterSim(config)
    sim.run()
    return sim.finish(), sim.events


def size_of(config: AnyConfig, result: AnyResult, events: int) -> RunSize:
    if isinstance(config, SimConfig):
        assert isinstance(result, SimResult)
        return RunSize(events=events, faults=len(result.faults), ops=config.proposers,
                       invoked=len(result.proposals), nodes=config.nodes,
                       clients=config.proposers)
    assert isinstance(result, ClusterResult)
    return RunSize(events=events, faults=len(result.faults), ops=config.ops,
                   invoked=len(result.history) if result.history is not None else 0,
                   nodes=config.nodes, clients=config.clients)


def _invoked(result: AnyResult) -> int:
    if isinstance(result, SimResult):
        return len(result.proposals)
    return len(result.history) if result.history is not None else 0


def failed_rule(result: AnyResult) -> str | None:
    """The rule a run failed first (the run stops at its first violation)."""
    return result.violations[0].rule if result.violations else None


def scripted(config: AnyConfig, faults: list[Fault] | tuple[Fault, ...]) -> AnyConfig:
    """`config` with exactly `faults`, and no random ones drawn."""
    return replace(config, faults=replace(
        config.faults, partitions=False, crashes=False, reboots=False, wipes=0,
        script=tuple(faults)))


class _Budget(Exception):
    pass


class _Shrinker:
    def __init__(self, rule: str, max_runs: int, deadline: float,
                 progress: Callable[[str], None] | None) -> None:
        self.rule = rule
        self.max_runs = max_runs
        self.deadline = deadline
        self.runs = 0
        self.progress = progress
        self.best: tuple[AnyConfig, AnyResult, int] | None = None

    def fails(self, config: AnyConfig) -> bool:
        """Run `config`; keep it as the best so far if it fails the same rule and is
        no larger (events, faults) than the best so far."""
        if self.runs >= self.max_runs or time.monotonic() >= self.deadline:
            raise _Budget
        self.runs += 1
        try:
            result, events = run(config)
        except ValueError:
            return False  # not a valid run (a quorum larger than the nodes left)
        # The same check fails first: a run that breaks something else first has
        # wandered off to another bug.
        if failed_rule(result) != self.rule:
            return False
        # Fewer operations can make a run fail later, after more events: not smaller.
        if self.best is not None and (events > self.best[2]
                                      or len(result.faults) > len(self.best[1].faults)):
            return False
        self.best = (config, result, events)
        return True


def _units(faults: list[Fault]) -> list[Unit]:
    """The faults in removable pieces: a partition with the heal after it, a crash or
    wipe with the next restart of its node; a reboot, or anything unpaired, alone."""
    units: list[Unit] = []
    taken: set[int] = set()
    for i, fault in enumerate(faults):
        if i in taken:
            continue
        taken.add(i)
        closer: int | None = None
        for j in range(i + 1, len(faults)):
            other = faults[j]
            if j in taken:
                continue
            if (fault.kind == "partition" and other.kind == "heal") or (
                    fault.kind in ("crash", "wipe") and other.kind == "restart"
                    and other.nodes == fault.nodes):
                closer = j
                break
        if closer is None:
            units.append(((i, fault),))
        else:
            taken.add(closer)
            units.append(((i, fault), (closer, faults[closer])))
    return units


def _flatten(units: list[Unit]) -> list[Fault]:
    return [f for _, f in sorted((p for unit in units for p in unit), key=lambda p: p[0])]


def _ddmin(units: list[Unit], fails: Callable[[list[Unit]], bool]) -> list[Unit]:
    """Remove pieces of `units` while the run still fails: halves first, then
    quarters, down to one unit at a time (the complement step of delta debugging)."""
    parts = 2
    while units:
        chunk = -(-len(units) // parts)
        for start in range(0, len(units), chunk):
            candidate = units[:start] + units[start + chunk:]
            if fails(candidate):
                units = candidate
                parts = max(parts - 1, 2)
                break
        else:
            if chunk == 1:
                break
            parts = min(parts * 2, len(units))
    return units


def _smaller(value: int, floor: int) -> list[int]:
    """Candidates below `value`, smallest first: floor, doublings of it, and three
    quarters of `value` (single steps down cost a run each and gain little)."""
    out: set[int] = set()
    v = floor
    while v < value:
        out.add(v)
        v = max(v * 2, v + 1)
    if floor <= value * 3 // 4 < value:
        out.add(value * 3 // 4)
    return sorted(out)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # Hundreds of runs would each log their simulated full-disk snapshot failures.
    logger = logging.getLogger("pnyx.node")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def shrink(config: AnyConfig, max_runs: int = 400, max_seconds: float = 60.0,
           progress: Callable[[str], None] | None = None) -> Shrunk | None:
    """The smallest run found that fails the rule `config`'s run fails first, within
    `max_runs` simulations and `max_seconds`; None if `config`'s run fails nothing."""
    started = time.monotonic()
    with _quiet():
        result, events = run(config)
        rule = failed_rule(result)
        if rule is None:
            return None
        s = _Shrinker(rule, max_runs, started + max_seconds, progress)
        s.runs = 1
        s.best = (config, result, events)
        before = size_of(config, result, events)
        exhausted = False
        script_ok = False
        try:
            script_ok = s.fails(scripted(config, result.faults))
            if not script_ok:
                s.best = (config, result, events)
            _passes(s, script_ok)
        except _Budget:
            exhausted = True
    assert s.best is not None
    best, best_result, best_events = s.best
    violation = best_result.violations[0]
    return Shrunk(original=config, config=best, rule=rule, violation=violation,
                  before=before, after=size_of(best, best_result, best_events),
                  runs=s.runs, seconds=time.monotonic() - started, scripted=script_ok,
                  exhausted=exhausted)


def _passes(s: _Shrinker, script_ok: bool) -> None:
    def current() -> AnyConfig:
        assert s.best is not None
        return s.best[0]

    def first_violation_time() -> float:
        assert s.best is not None
        return s.best[1].violations[0].time

    def say(what: str) -> None:
        if s.progress is not None:
            s.progress(f"{what} ({s.runs} runs)")

    changed = True
    rounds = 0
    while changed and rounds < MAX_ROUNDS:
        changed = False
        rounds += 1
        if script_ok:
            faults = list(current().faults.script)
            units = _units(faults)
            # The run stops at its violation: faults wholly after it never struck.
            t = first_violation_time()
            early = [u for u in units if any(f.time <= t for _, f in u)]
            if len(early) < len(units) and s.fails(scripted(current(), _flatten(early))):
                changed = True
                units = early
            kept = _ddmin(units, lambda us: s.fails(scripted(current(), _flatten(us))))
            if len(kept) < len(units):
                changed = True
                say(f"faults: {len(faults)} -> {len(_flatten(kept))}")
        cfg = current()
        if cfg.nodes > 3:
            script = cfg.faults.script
            if script_ok:
                script = tuple(f for f in script if all(n <= 3 for n in f.nodes)
                               and not (f.kind == "partition" and len(f.nodes) >= 3))
            faults = replace(cfg.faults, script=script)
            try:
                fewer = replace(cfg, nodes=3, faults=faults)
            except ValueError:
                fewer = None  # more proposers, or a distinguished one, than 3 nodes hold
            if fewer is not None and s.fails(fewer):
                changed = True
                say("nodes: 3")
        counts = ((("proposers", 1),) if isinstance(current(), SimConfig)
                  else (("clients", 1), ("ops", 0), ("keys", 1), ("changes", 1)))
        for name, floor in counts:
            value = getattr(current(), name)
            candidates = _smaller(value, floor)
            if name == "ops":
                # Operations the clients never reached before the violation change
                # nothing but how the rest are shared among the clients.
                assert s.best is not None
                invoked = _invoked(s.best[1])
                clients = getattr(current(), "clients", 1)
                candidates = sorted({*candidates, *(n for n in (invoked, invoked + clients)
                                                    if floor <= n < value)})
            for smaller in candidates:
                if s.fails(replace(current(), **{name: smaller})):
                    changed = True
                    say(f"{name}: {value} -> {smaller}")
                    break
        net = current().network
        if net.drop or net.duplicate or net.late:
            clean = replace(net, drop=0.0, duplicate=0.0, late=0.0)
            if s.fails(replace(current(), network=clean)):
                changed = True
            else:
                for name in ("drop", "duplicate", "late"):
                    net = current().network
                    if getattr(net, name) and s.fails(
                            replace(current(), network=replace(net, **{name: 0.0}))):
                        changed = True
        changed |= _shorter(s, current(), first_violation_time())


def _shorter(s: _Shrinker, cfg: AnyConfig, t: float) -> bool:
    """Stop the run at its violation (a rule checked at the end needs the end: then the
    candidate is not kept), and let faults end no later than the last one scripted."""
    changed = False
    # A millisecond of slack: what happens in the same instant as the violation stays.
    end = round(t + 0.001, 6)
    if end < cfg.max_time and s.fails(replace(cfg, max_time=end)):
        changed = True
        assert s.best is not None
        cfg = s.best[0]
    script = cfg.faults.script
    last = max((f.time for f in script), default=0.0)
    if not (cfg.faults.partitions or cfg.faults.crashes or cfg.faults.reboots
            or cfg.faults.wipes):
        until = round(last + 0.001, 6) if script else 0.0
        if until < cfg.faults.until and s.fails(
                replace(cfg, faults=replace(cfg.faults, until=until))):
            changed = True
    return changed


# ------------------------------------------------------------ the run file


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def run_to_json(config: AnyConfig, rule: str | None = None,
                violation: str | None = None) -> dict[str, Any]:
    return {"format": FORMATS[type(config)], "version": VERSION, "rule": rule,
            "violation": violation, "config": _plain(asdict(config))}


def save_run(path: str | Path, config: AnyConfig, rule: str | None = None,
             violation: str | None = None) -> None:
    """Write `config` as a replayable run file (with the rule it fails, for readers)."""
    Path(path).write_text(json.dumps(run_to_json(config, rule, violation), indent=1) + "\n")


def _build(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    return dict(data)


def config_from_json(doc: dict[str, Any]) -> AnyConfig:
    kind = next((cls for cls, name in FORMATS.items() if doc.get("format") == name), None)
    if kind is None or doc.get("version") != VERSION:
        raise ValueError(f"not a run file of version {VERSION} "
                         f"({' or '.join(FORMATS.values())})")
    data = _build(kind, doc["config"])
    net = _build(NetworkConfig, data.pop("network"))
    faults = _build(FaultConfig, data.pop("faults"))
    faults["script"] = tuple(Fault(float(f["time"]), str(f["kind"]),
                                   tuple(int(n) for n in f["nodes"]))
                             for f in faults.get("script", ()))
    if "reads" in data:
        data["reads"] = tuple(data["reads"])
    if "retry" in data:
        data["retry"] = RetryPolicy(**_build(RetryPolicy, data["retry"]))
    return kind(network=NetworkConfig(**net), faults=FaultConfig(**faults), **data)


def load_run(path: str | Path) -> AnyConfig:
    """The configuration a run file holds: `simulate_cluster` of it (`simulate`, for a
    single-decree run) replays the run."""
    return config_from_json(json.loads(Path(path).read_text()))


def load_rule(path: str | Path) -> str | None:
    """The rule the saved run failed when it was saved."""
    rule = json.loads(Path(path).read_text()).get("rule")
    return str(rule) if rule is not None else None


def report(shrunk: Shrunk) -> str:
    cfg = shrunk.config
    script = "\n".join(f"    t={f.time * 1000:9.3f}ms  {f.kind:<9} {list(f.nodes)}"
                       for f in cfg.faults.script)
    net = cfg.network
    lines = [
        f"shrunk in {shrunk.seconds:.2f} s, {shrunk.runs} runs"
        + (" (budget spent: smaller may exist)" if shrunk.exhausted else ""),
        f"  fails     {shrunk.rule}",
        f"  before    {shrunk.before}",
        f"  after     {shrunk.after}",
        f"  violation {shrunk.violation}",
        f"  run       seed {cfg.seed}, {cfg.nodes} nodes, " + (
            f"{cfg.proposers} proposers" if isinstance(cfg, SimConfig)
            else f"{cfg.clients} clients, {cfg.ops} ops, {cfg.keys} keys"
            + (f", {cfg.changes} membership changes" if cfg.changes else ""))
        + f", mutant {cfg.mutant}, max_time {cfg.max_time:g} s, "
        f"faults until {cfg.faults.until:g} s",
        f"  network   drop {net.drop:g}, dup {net.duplicate:g}, late {net.late:g}",
    ]
    if not shrunk.scripted:
        lines.append("  faults    drawn from the seed (the scripted schedule did not fail "
                     "the same way, so they were kept)")
    elif cfg.faults.script:
        lines.append("  faults    (scripted)\n" + script)
    else:
        lines.append("  faults    none")
    return "\n".join(lines)
