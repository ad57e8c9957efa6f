"""Adversarial schedules, and checkers that share no code with what they check.

Messages held back far beyond any jitter (stale Prepares and Accepts landing
after newer ballots), the most active proposer rebooted from its disk right
after it sends, 5-node runs beside 3-node ones; an observer that counts
quorums itself. Each rule-level breakage of Basic Paxos must be caught
within a few seeds of these schedules, and the correct protocol must pass
the very same seeds.
"""

from __future__ import annotations

import ast
import inspect
import json
import random
from pathlib import Path

import pytest

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos import messages as mp
from pnyx.protocol.multipaxos.messages import NOOP
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.synod.messages import Accept, Accepted, Prepare, Promise
from pnyx.protocol.synod.node import DurableState
from pnyx.sim import SimConfig, invariants, simulate
from pnyx.sim.faults import FaultConfig, schedule
from pnyx.sim.invariants import A1, A2, A3, A4, B1, H1, R1, S1, S3, LogObserver, Observer
from pnyx.sim.network import Network, NetworkConfig

LATE = NetworkConfig(drop=0.2, duplicate=0.05, late=0.05, late_min=0.1, late_max=0.5)
# Rebooted proposers retry after 50 ms: held-back messages land 2 to 10 retries late.
ADVERSARIAL = FaultConfig(partitions=True, crashes=True, reboots=True)
SEEDS = 12  # each breakage must be caught within this many seeds


def adversarial(seed: int, mutant: str | None = None, nodes: int | None = None) -> SimConfig:
    """Odd seeds run 5 nodes, even seeds 3; the run lingers while late messages land."""
    return SimConfig(
        seed=seed,
        nodes=nodes if nodes is not None else (5 if seed % 2 else 3),
        proposers=3,
        network=LATE,
        faults=ADVERSARIAL,
        linger=LATE.late_max,
        mutant=mutant,
    )


# ------------------------------------------------------------------ schedules


def test_held_back_messages_arrive_many_timeouts_late() -> None:
    config = NetworkConfig(late=0.5, late_min=0.2, late_max=0.4)
    network = Network([1, 2], config, random.Random(1))
    delays = [network.delays(1, 2)[0] for _ in range(400)]
    normal_worst = config.max_delay + config.jitter
    late = [d for d in delays if d > normal_worst]
    assert 100 < len(late) < 300 and network.held_back == len(late)
    assert all(0.2 <= d <= 0.4 + normal_worst for d in late)


def test_a_message_to_oneself_is_never_held_back() -> None:
    network = Network([1, 2], NetworkConfig(late=0.99), random.Random(1))
    assert all(network.delays(1, 1)[0] < 0.001 for _ in range(50))


def test_reboots_leave_a_seed_s_other_faults_as_they_were() -> None:
    ids = [1, 2, 3, 4, 5]
    plain = schedule(ids, FaultConfig(partitions=True, crashes=True), random.Random(7))
    with_reboots = schedule(ids, ADVERSARIAL, random.Random(7))
    assert [f for f in with_reboots if f.kind != "reboot"] == plain
    assert any(f.kind == "reboot" for f in with_reboots)


def test_the_same_seed_replays_byte_for_byte(tmp_path: Path) -> None:
    traces = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        with path.open("wb") as sink:
            simulate(adversarial(5), trace_sink=sink)
        traces.append(path.read_bytes())
    assert traces[0] == traces[1] and b'"ev":"rebooted"' in traces[0]
    digests = {simulate(adversarial(seed), trace=True).trace_digest for seed in range(6)}
    assert len(digests) == 6


def _events(config: SimConfig, tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / f"{config.seed}.jsonl"
    with path.open("wb") as sink:
        simulate(config, trace_sink=sink)
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_a_reboot_hits_the_proposer_in_the_highest_ballot_right_after_it_sends(
    tmp_path: Path,
) -> None:
    rebooted = 0
    for seed in range(6):
        events = _events(adversarial(seed), tmp_path)
        for k, e in enumerate(events):
            if e["ev"] != "rebooted":
                continue
            rebooted += 1
            # The send that armed it is the last send before, at the same instant.
            send = next(x for x in reversed(events[:k]) if x["ev"] == "send")
            msg = send["msg"]
            assert isinstance(msg, dict)
            assert send["t"] == e["t"] and msg["src"] == e["node"]
            assert msg["type"] in ("prepare", "accept")
    assert rebooted >= 6


def test_reboots_aim_at_the_distinguished_proposer(tmp_path: Path) -> None:
    nodes = set()
    for seed in range(6):
        config = SimConfig(seed=seed, nodes=5, proposers=3, distinguished=2, network=LATE,
                           faults=ADVERSARIAL, linger=0.5)
        nodes |= {e["node"] for e in _events(config, tmp_path) if e["ev"] == "rebooted"}
    assert nodes == {2}


def test_stale_prepares_and_accepts_land_after_newer_ballots(tmp_path: Path) -> None:
    """What late delivery is for: a process hears a ballot long after a newer one."""
    stale = 0
    for seed in range(6):
        newest: dict[object, tuple[int, int]] = {}
        for e in _events(adversarial(seed), tmp_path):
            msg = e.get("msg")
            if e["ev"] != "deliver" or not isinstance(msg, dict):
                continue
            if msg["type"] not in ("prepare", "accept"):
                continue
            r, n = (int(x) for x in str(msg["ballot"]).split("."))
            if (r, n) < newest.get(e["dst"], (0, 0)):
                stale += 1
            newest[e["dst"]] = max(newest.get(e["dst"], (0, 0)), (r, n))
    assert stale >= 5


# ------------------------------------------------------------------ the sweep


@pytest.mark.parametrize("nodes", [3, 5, 7])
def test_the_correct_protocol_is_safe_and_live_under_adversarial_schedules(nodes: int) -> None:
    for seed in range(150):
        result = simulate(adversarial(seed, nodes=nodes))
        assert result.safe, (seed, result.violations)
        assert result.all_learned_at is not None, f"seed {seed}: not every node learned"


# Each rule-level breakage, and the rules through which it may be caught.
BREAKAGES = {
    "acceptor-compares-rounds": {A3, A1, A2, S1},
    "round-not-saved-before-use": {B1},
}


@pytest.mark.parametrize("mutant", sorted(BREAKAGES))
def test_a_rule_level_breakage_is_caught_within_a_few_seeds(mutant: str) -> None:
    caught = None
    for seed in range(SEEDS):
        result = simulate(adversarial(seed, mutant))
        if not result.safe:
            caught = {v.rule for v in result.violations}
            break
    assert caught is not None, f"{mutant} survived {SEEDS} adversarial seeds"
    assert caught & BREAKAGES[mutant], caught


def test_the_correct_protocol_passes_the_seeds_that_catch_the_breakages() -> None:
    for seed in range(SEEDS):
        result = simulate(adversarial(seed))
        assert result.safe, (seed, result.violations)


# ------------------------------------------------------------------ the checker


def b(round_: int, node: int) -> Ballot:
    return Ballot(round_, node)


def test_the_observer_counts_a_quorum_itself() -> None:
    o = Observer([1, 2, 3, 4, 5], phase2=3)
    for src in (1, 2, 9):  # 9 is no acceptor: its vote does not count
        o.on_send(src, Accepted(src, b(1, 1), b"x"), 0.0)
    assert o.chosen == {}
    o.on_send(2, Accepted(2, b(1, 1), b"x"), 0.0)  # the same acceptor twice counts once
    assert o.chosen == {}
    o.on_send(3, Accepted(3, b(1, 1), b"x"), 1.0)
    assert o.chosen == {b"x": 1.0}


def test_the_observer_counts_votes_per_ballot_not_across_ballots() -> None:
    o = Observer([1, 2, 3], phase2=2)
    o.on_send(1, Accepted(1, b(1, 1), b"x"), 0.0)
    o.on_send(2, Accepted(2, b(2, 2), b"x"), 0.0)
    assert o.chosen == {}


def test_two_values_chosen_break_s1() -> None:
    o = Observer([1, 2, 3], phase2=2)
    o.proposed |= {b"x", b"y"}
    for src in (1, 2):
        o.on_send(src, Accepted(src, b(1, 1), b"x"), 0.0)
    for src in (2, 3):
        o.on_send(src, Accepted(src, b(2, 3), b"y"), 0.0)
    assert [v.rule for v in o.violations] == [S1]


def test_a_lower_promise_breaks_a3_and_a_lower_acceptance_a1() -> None:
    o = Observer([1, 2, 3], phase2=2)
    o.on_send(1, Promise(1, b(4, 3), None), 0.0)
    o.on_send(1, Promise(1, b(4, 3), None), 0.0)  # the same promise again is fine
    assert o.violations == []
    o.on_send(1, Promise(1, b(4, 2), None), 0.0)
    o.on_send(1, Accepted(1, b(4, 2), b"x"), 0.0)
    assert [v.rule for v in o.violations] == [A3, A1]


def test_a_ballot_used_again_after_a_restart_breaks_b1() -> None:
    o = Observer([1, 2, 3], phase2=2)
    for _ in range(3):  # one Prepare per acceptor: the same ballot, one use
        o.on_send(1, Prepare(1, b(3, 1)), 0.0)
    o.on_restart(1, DurableState(promised=b(3, 1), last_round=3), 0.0)
    o.on_send(1, Prepare(1, b(4, 1)), 0.0)  # a higher ballot after the restart is fine
    assert o.violations == []
    o.on_restart(1, DurableState(promised=b(4, 1), last_round=3), 0.0)
    o.on_send(1, Prepare(1, b(4, 1)), 0.0)
    assert [v.rule for v in o.violations] == [B1]


def test_a_ballot_with_two_values_or_not_its_owner_s_breaks_b1() -> None:
    o = Observer([1, 2, 3], phase2=2)
    o.on_send(1, Accept(1, b(2, 1), b"x"), 0.0)
    o.on_send(1, Accept(1, b(2, 1), b"x"), 0.0)
    assert o.violations == []
    o.on_send(1, Accept(1, b(2, 1), b"y"), 0.0)
    o.on_send(2, Prepare(2, b(5, 1)), 0.0)
    assert [v.rule for v in o.violations] == [B1, B1]


def test_a_restart_that_forgets_a_promise_breaks_a2() -> None:
    o = Observer([1, 2, 3], phase2=2)
    o.on_send(2, Promise(2, b(3, 1), None), 0.0)
    o.on_restart(2, DurableState(promised=b(2, 1)), 0.0)
    assert [v.rule for v in o.violations] == [A2]


def test_the_checker_imports_no_quorum_or_learner_code() -> None:
    tree = ast.parse(inspect.getsource(invariants))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
         for alias in node.names}
    assert not imported & {"pnyx.protocol.quorum", "pnyx.protocol.synod.learner"}


def test_a_broken_quorum_object_cannot_vouch_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The protocol's quorum object says one vote is a quorum; the observer does not agree."""
    monkeypatch.setattr(QuorumSystem, "is_phase2_quorum", lambda self, voters: bool(voters))
    result = simulate(adversarial(1, nodes=5))
    assert S3 in {v.rule for v in result.violations}


# ------------------------------------------------- the Multi-Paxos wire rules


def test_the_log_observer_flags_a_lower_promise_and_a_lower_acceptance() -> None:
    o = LogObserver()
    o.on_send(1, mp.Promise(1, b(4, 3), ()), 0.0)
    o.on_send(1, mp.Promise(1, b(4, 3), (), 1, 2), 0.0)  # another part of one promise
    assert o.violations == []
    o.on_send(1, mp.Promise(1, b(4, 2), ()), 0.0)
    o.on_send(1, mp.Accepted(1, b(4, 2), 7), 0.0)
    assert [v.rule for v in o.violations] == [A3, A1]


def test_the_log_observer_flags_a_promise_reporting_an_older_acceptance() -> None:
    o = LogObserver()
    o.on_send(2, mp.Accepted(2, b(3, 1), 5), 0.0)
    o.on_send(2, mp.Promise(2, b(5, 3), (mp.Entry(5, b(3, 1), NOOP),)), 0.0)
    assert o.violations == []
    o.on_send(2, mp.Promise(2, b(6, 3), (mp.Entry(5, b(2, 1), NOOP),)), 0.0)
    assert [v.rule for v in o.violations] == [A4]


def test_the_log_observer_flags_a_stale_heartbeat_acked_and_a_deposed_leader() -> None:
    o = LogObserver()
    o.on_send(2, mp.HeartbeatAck(2, b(1, 1), 3), 0.0)
    o.on_send(2, mp.Promise(2, b(2, 3), ()), 0.0)
    o.on_send(2, mp.HeartbeatAck(2, b(2, 3), 1), 0.0)
    assert o.violations == []
    o.on_send(2, mp.HeartbeatAck(2, b(1, 1), 4), 0.0)
    o.on_send(2, mp.Heartbeat(2, b(1, 2), 0, 9), 0.0)
    o.on_send(2, mp.Accept(2, b(1, 2), 3, NOOP, 0), 0.0)
    assert [v.rule for v in o.violations] == [H1, R1, R1]


def test_the_log_observer_flags_a_ballot_used_again_or_for_two_values() -> None:
    o = LogObserver()
    o.on_send(1, mp.Prepare(1, b(2, 1), 1), 0.0)
    o.on_send(1, mp.Accept(1, b(2, 1), 1, NOOP, 0), 0.0)
    o.on_send(1, mp.Accept(1, b(2, 1), 1, NOOP, 0), 0.0)  # a retransmission
    assert o.violations == []
    o.on_restart(1, 0.0)
    o.on_send(1, mp.Prepare(1, b(2, 1), 1), 0.0)
    other = mp.Batch((mp.Command(1, 1, b"put"),))
    o.on_send(1, mp.Accept(1, b(2, 1), 1, other, 0), 0.0)
    assert [v.rule for v in o.violations] == [B1, B1]
