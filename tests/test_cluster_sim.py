"""The replicated key-value store in the simulator: safe and live under every fault.

Clients run put/get/cas/delete through random replicas while messages are
lost, duplicated and reordered, partitions cut the leader off, and leaders
crash. Every run is checked for log agreement, in-order application, no lost
acknowledged write and linearizability; every broken variant must be caught.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from pnyx.protocol.multipaxos.election import Election
from pnyx.protocol.multipaxos.messages import Promise
from pnyx.sim.cluster import D1, DRIVER_MUTANTS, L1, L3, L4, ClusterConfig, simulate_cluster
from pnyx.sim.faults import FaultConfig
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


EXPECTED = {
    "leader-skips-gap-phase1": {L1, L3, L4},
    "applies-before-chosen": {L1, L3, L4},
    "no-dedup": {L4},
    "linearizable-read-from-local-state": {L4},
    "quorum-read-takes-freshest": {L4},
}
BOUND = 100


def test_every_cluster_mutant_has_an_expectation() -> None:
    assert set(EXPECTED) == set(CLUSTER_MUTANTS)


@pytest.mark.parametrize("mutant", sorted(CLUSTER_MUTANTS))
def test_cluster_mutant_is_caught_within_bound(mutant: str) -> None:
    for seed in range(BOUND):
        result = simulate_cluster(config(seed, mutant=mutant))
        if not result.safe:
            rules = {v.rule for v in result.violations}
            assert rules & EXPECTED[mutant], (mutant, rules)
            return
    pytest.fail(f"{mutant} survived {BOUND} seeds: the checks are too weak")


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
