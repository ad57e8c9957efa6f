"""Membership change in the simulator: configuration changes under every fault.

`ClusterConfig.changes` makes an operator add, remove and replace nodes (and make two
changes at once) through the node's own request path while the clients write and the
default sweep's faults strike, crashing the leader or partitioning old from new
members mid-change (`pnyx.sim.changes`). Every run is checked for the usual rules and
the membership rules M1-M5 (`pnyx.sim.configs`), which derive the configuration of
every slot from the agreed log alone. Each membership mutant must be caught within
`BOUND` seeds of `change_sweep`, which the correct replica passes; the long sweep
(2,000 seeds) is `bench/sweep_changes.py`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from pnyx.protocol.multipaxos.membership import ALPHA
from pnyx.sim import configs
from pnyx.sim.cluster import CLUSTER_RULES, L1, L3, L4, ClusterSim, simulate_cluster
from pnyx.sim.cluster_config import ClusterConfig, change_sweep, sweep
from pnyx.sim.configs import M1, M2, M3, M4, M5, MEMBERSHIP_RULES
from pnyx.sim.mutants import MEMBERSHIP_MUTANTS
from pnyx.sim.shrink import failed_rule, load_run, save_run, shrink

BOUND = 20  # seeds of change_sweep within which each membership mutant must be caught
CORRECT = 30  # seeds of change_sweep the correct replica passes in the default suite

# The rules through which each mutant may be caught (the first violation of a run).
EXPECTED = {
    # The replicas' configurations start at i + 1, not the log's i + ALPHA (M5); the
    # slots between are counted in the new one (M2), or a second value wins (M1, L1).
    "config-immediate": {M5, M2, M1, L1},
    # A learner with the whole log still to fetch becomes a voter (M3).
    "promote-before-caught-up": {M3},
    # A slot the new configuration governs is chosen by the old one's quorum (M2), or
    # two values win (M1, L1, L3, L4).
    "old-config-quorums": {M2, M1, L1, L3, L4},
}


def test_the_simulators_rule_is_the_protocols() -> None:
    assert configs.ALPHA == ALPHA


def test_every_membership_rule_is_a_cluster_rule_and_every_mutant_has_an_expectation() -> None:
    assert set(MEMBERSHIP_RULES) <= set(CLUSTER_RULES)
    assert set(EXPECTED) == set(MEMBERSHIP_MUTANTS)


@pytest.mark.parametrize("mutant", sorted(MEMBERSHIP_MUTANTS))
def test_membership_mutant_is_caught_within_bound(mutant: str) -> None:
    for seed in range(BOUND):
        result = simulate_cluster(change_sweep(seed, mutant))
        if not result.safe:
            rule = result.violations[0].rule
            assert rule in EXPECTED[mutant], (mutant, seed, str(result.violations[0]))
            return
    pytest.fail(f"{mutant} survived {BOUND} seeds: the checks are too weak")


def test_the_correct_replica_passes_the_seeds_that_catch_the_mutants_and_changes_really_happen(
) -> None:
    seen: Counter[str] = Counter()
    for seed in range(CORRECT):
        config = change_sweep(seed)
        result = simulate_cluster(config)
        assert result.safe, (seed, [str(v) for v in result.violations])
        assert result.verdict == "ok", (seed, result.verdict)
        assert result.workload_end is not None, f"seed {seed}: the workload never finished"
        seen.update(result.changes)
        seen["removed"] += len(result.removed)
        seen["grew"] += len(result.voters) > config.nodes
    # Nodes were added, promoted once caught up, removed and replaced; two changes made
    # against one version met (one CONFLICT); changes were refused by the leader
    # (learner not caught up) and aborted (the leader crashed mid-change).
    for what in ("done add", "done remove", "done replace", "promotions", "heard conflict",
                 "heard refused", "heard aborted", "removed", "grew"):
        assert seen[what] >= 3, (what, seen)


def test_with_leader_leases_membership_changes_keep_every_rule() -> None:
    """Leases (80 ms of a 100 ms election timeout) while members are added, promoted,
    removed and replaced under the sweep's faults: a lease counts guarding acks with
    the quorums of every governing configuration, the store stays linearizable, and
    every workload finishes (seed 4 stalled when the guard refused the leader's own
    Prepare to a new configuration's voters). 60 seeds by hand; 20 here."""
    for seed in range(20):
        result = simulate_cluster(change_sweep(seed, read_lease=0.08))
        assert result.safe, (seed, [str(v) for v in result.violations])
        assert result.verdict == "ok", (seed, result.verdict)
        assert result.workload_end is not None, f"seed {seed}: the workload never finished"


def test_a_removed_replica_keeps_running_and_sending_yet_learns_it_was_removed() -> None:
    for seed in range(CORRECT):
        sim = ClusterSim(change_sweep(seed))
        sim.run()
        result = sim.finish()
        removed = [i for i in result.removed if sim.nodes[i] is not None]
        if not removed:
            continue
        assert result.safe, [str(v) for v in result.violations]
        for i in removed:
            node = sim.nodes[i]
            assert node is not None and node.removed and node.replica is not None
            assert node.replica.removed
        return
    pytest.fail("no run removed a node")


def test_a_run_with_changes_replays_exactly() -> None:
    a = simulate_cluster(change_sweep(5), trace=True)
    b = simulate_cluster(change_sweep(5), trace=True)
    assert a.history is not None and b.history is not None
    assert a.history.to_json() == b.history.to_json()
    assert (a.end_time, a.sent, a.slots, a.changes) == (b.end_time, b.sent, b.slots, b.changes)
    assert a.changes["nodes"] > a.config.nodes


def test_a_run_without_changes_is_the_run_it_was_before_changes_existed() -> None:
    """No draw of the operator's, no membership check: the seeds that pin the other
    mutants stay where they were."""
    plain = simulate_cluster(sweep(7), trace=True)
    assert plain.changes == {} and plain.config.changes == 0
    assert plain.removed == () and plain.voters == (1, 2, 3, 4, 5)
    assert not {v.rule for v in plain.violations} & set(MEMBERSHIP_RULES)


def test_a_failing_run_with_changes_shrinks_and_replays(tmp_path: object) -> None:
    mutant = "promote-before-caught-up"
    seed = next(s for s in range(BOUND) if not simulate_cluster(change_sweep(s, mutant)).safe)
    config = change_sweep(seed, mutant)
    shrunk = shrink(config, max_runs=40, max_seconds=30.0)
    assert shrunk is not None and shrunk.rule == M3
    assert shrunk.config.changes >= 1
    path = f"{tmp_path}/run.json"
    save_run(path, shrunk.config, shrunk.rule, str(shrunk.violation))
    again = load_run(path)
    assert isinstance(again, ClusterConfig) and again == shrunk.config
    assert failed_rule(simulate_cluster(again)) == M3


def test_a_removed_replica_that_never_hears_of_it_is_caught_by_m4(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the replica's news that it was removed lost on the way to its driver, M4
    says so at the end of the run."""
    from pnyx.node.driver import Driver

    handle = Driver._handle

    def deaf(self: Driver, ready: object) -> None:
        ready.removed = False  # type: ignore[attr-defined]
        handle(self, ready)  # type: ignore[arg-type]

    monkeypatch.setattr(Driver, "_handle", deaf)
    for seed in range(CORRECT):
        result = simulate_cluster(dataclasses.replace(change_sweep(seed), max_time=15.0))
        if result.removed:
            assert M4 in {v.rule for v in result.violations}, result.violations
            return
    pytest.fail("no run removed a node")


def test_a_change_in_force_at_once_is_caught_by_the_quorum_rules_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not only M5 (the replicas' configurations against the log's) sees it: with M5 off,
    a slot chosen by the new configuration's quorum before the rule lets it govern is
    caught by M2 (or a second value by M1, L1)."""
    monkeypatch.setattr(configs.Configurations, "agrees", lambda *args: None)
    for seed in range(BOUND):
        result = simulate_cluster(change_sweep(seed, "config-immediate"))
        if not result.safe:
            assert result.violations[0].rule in {M2, M1, L1}, str(result.violations[0])
            return
    pytest.fail("config-immediate survived without M5")
