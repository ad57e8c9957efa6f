"""The Multi-Paxos `Replica`'s reads: stale (local state at once), linearizable (a read
index confirmed by a heartbeat round a quorum acks, asked of the leader by a follower)
and quorum reads (Paxos Quorum Reads: a quorum that has applied the highest accepted
slot answers alike), and what every mode shares.

Driven by hand through `Net` from `harness.py`; each docstring names the rule and,
where there is one, the seed section it rests on (reading as a learner).
"""

from __future__ import annotations

import random

from harness import (
    MEMBERS,
    Filter,
    Net,
    accept_for,
    batch,
    but_not,
    either,
    of_type,
    touching,
)
from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos import Code, Outcome, ReadMode, Replica, ReplicaConfig
from pnyx.protocol.multipaxos.messages import (
    NOOP,
    Accept,
    Accepted,
    Chosen,
    Decided,
    Entry,
    Heartbeat,
    HeartbeatAck,
    QuorumRead,
    QuorumReadReply,
    ReadIndex,
    ReadIndexReply,
)
from pnyx.protocol.multipaxos.records import ReplicaDurable
from pnyx.statemachine.kv import KVMachine, Ok, Put, Request, decode_result, encode_query
from pnyx.statemachine.kv import encode_request as kv_request


def _store_with_x(*, x: bytes = b"1", members: tuple[int, ...] = MEMBERS) -> Net:
    net = Net(members)
    net.elect(1)
    net.submit(1, 100, b"x=" + x)
    net.settle()
    assert all(net.applied[i] == [1] for i in members)
    return net


def _choose_at_leader_only(net: Net, payload: bytes, rid: int = 101) -> int:
    """Get `payload` chosen and applied at the leader (with node 2's vote); node 2 has
    not learned it is chosen and node 3 has not even accepted it."""
    net.submit(1, rid, payload)
    slot = net.nodes[1].next_slot - 1
    net.deliver(either(accept_for(slot, dst=1), accept_for(slot, dst=2), of_type(Accepted)))
    assert net.applied[1][-1] == slot and net.applied[2][-1] < slot
    return slot


# ------------------------------------------------------------- stale


def test_a_stale_read_answers_at_once_from_local_state() -> None:
    """Stale read (the seed's plain local read, no guarantee): answered in the same
    step from whatever this replica has applied, even if it lags."""
    net = _store_with_x()
    _choose_at_leader_only(net, b"x=2")
    ready = net.read(3, 1, b"x", "stale")
    assert ready.outcomes == [(1, Outcome(True, b"1", 1))]
    assert net.read(1, 1, b"x", "stale").outcomes == [(1, Outcome(True, b"2", 2))]


# ---------------------------------------------- linearizable: read index


def test_a_linearizable_read_at_the_leader_waits_for_a_heartbeat_round_a_quorum_acks() -> None:
    """Linearizable read (read-index): the leader answers only after a quorum has acked
    a heartbeat round sent after the read arrived, proving nobody has chosen anything
    under a higher ballot it does not know. Acks of an earlier round do not count."""
    net = _store_with_x()
    net.tick([1], dt=net.cfg.heartbeat_interval)
    net.deliver(of_type(Heartbeat))  # the acks of this earlier round stay in flight
    early_acks = net.pending(of_type(HeartbeatAck))
    assert len(early_acks) == 2

    ready = net.read(1, 5, b"x", "linearizable")
    assert ready.outcomes == [] and ready.wake_at == net.now  # "tick me: send a round"
    net.tick([1])
    net.deliver(lambda d, m: (d, m) in early_acks)
    assert 5 not in net.outcomes[1], "acks of an older round prove nothing about this read"
    net.deliver(of_type(Heartbeat, dst=2))
    assert 5 not in net.outcomes[1]
    net.deliver(of_type(HeartbeatAck, src=2))
    assert net.outcomes[1][5] == Outcome(True, b"1", 1)


def test_a_new_leader_answers_a_linearizable_read_only_after_it_has_recovered_the_log(
) -> None:
    """Linearizable read at a new leader: a value may be chosen that the new leader
    has only re-proposed (gap filling, seed Multi-Paxos item 2). The read waits until
    that slot is chosen and applied, so it cannot miss the chosen value."""
    old = Ballot(1, 3)
    chosen = Entry(1, old, batch(b"x=old"))
    durable = {1: ReplicaDurable(promised=old),
               2: ReplicaDurable(promised=old, accepted={1: chosen}),
               3: ReplicaDurable(promised=old, accepted={1: chosen})}
    net = Net(durable=durable)
    net.now = 1.0
    net.tick([1])
    net.deliver(but_not(of_type(Accept, Accepted)))
    assert net.nodes[1].is_leader and net.nodes[1].commit == 0
    net.read(1, 5, b"x", "linearizable")
    for _ in range(3):
        net.tick([1], dt=net.cfg.heartbeat_interval)
        net.deliver(but_not(of_type(Accept, Accepted)))
    assert 5 not in net.outcomes[1], "answered before the recovered slot was chosen"
    net.deliver()
    net.tick([1], dt=net.cfg.heartbeat_interval)
    net.deliver()
    assert net.outcomes[1][5] == Outcome(True, b"old", 1)


def test_a_new_leader_gives_a_follower_a_read_index_no_lower_than_what_phase_1_recovered(
) -> None:
    """Linearizable read at a follower of a new leader: slot 1 was chosen under the old
    leader (accepted by nodes 2 and 3) but the new leader, node 1, only re-proposed it.
    A read index below slot 1 would let follower 3, which has applied nothing, answer
    at once with the state before the chosen write: a stale read. The leader waits
    until the recovered slot is chosen and answers with an index that covers it."""
    old = Ballot(1, 3)
    chosen = Entry(1, old, batch(b"x=old"))
    durable = {1: ReplicaDurable(promised=old),
               2: ReplicaDurable(promised=old, accepted={1: chosen}),
               3: ReplicaDurable(promised=old, accepted={1: chosen})}
    net = Net(durable=durable)
    net.now = 1.0
    net.tick([1])
    net.deliver(but_not(of_type(Accept, Accepted)))  # elected, heartbeats flow, slot 1 waits
    assert net.nodes[1].is_leader and net.nodes[1].commit == 0
    assert net.nodes[3].leader == 1 and net.nodes[3].applied == 0
    net.read(3, 5, b"x", "linearizable")
    for _ in range(3):
        net.tick([1], dt=net.cfg.heartbeat_interval)
        net.deliver(but_not(of_type(Accept, Accepted)))
    assert not net.pending(of_type(ReadIndexReply)), "answered before slot 1 was chosen"
    # Slot 1 is chosen with node 2's vote; node 3 hears of it only after the reply.
    net.deliver(either(accept_for(1, dst=1), accept_for(1, dst=2), of_type(Accepted)))
    assert net.nodes[1].commit == 1
    replies = [m for _, m in net.pending(of_type(ReadIndexReply))]
    assert replies and all(m.ok and m.index >= 1 for m in replies), replies
    net.deliver(of_type(ReadIndexReply))
    assert net.nodes[3].applied == 0 and 5 not in net.outcomes[3], "a stale read"
    net.settle()
    assert net.outcomes[3][5] == Outcome(True, b"old", 1)


def test_a_deposed_leader_cut_off_from_the_quorum_never_answers_a_linearizable_read() -> None:
    """Linearizable read at a leader cut off from the others: while the majority
    elects a new leader and changes the value, the old leader cannot get its heartbeat
    round acked, so it never answers with its stale state; it steps down and fails the
    read instead."""
    net = _store_with_x()
    net.read(1, 5, b"x", "linearizable")
    cut = touching(1)
    for _ in range(5):
        net.tick([1], dt=net.cfg.heartbeat_interval)
        net.drop(cut)
    net.now += 2 * net.cfg.election_timeout
    net.tick([2])
    net.deliver(but_not(cut))
    assert net.leaders() == [1, 2]  # node 1 does not know yet
    net.submit(2, 1, b"x=2")
    net.deliver(but_not(cut))
    net.drop(cut)
    assert net.outcomes[2][1].ok
    assert 5 not in net.outcomes[1]
    for _ in range(20):
        net.tick([1], dt=net.cfg.heartbeat_interval)
        net.drop(cut)
    outcome = net.outcomes[1][5]
    assert not outcome.ok and outcome.result != b"1", outcome
    assert not net.nodes[1].is_leader


def _depose_and_write(net: Net, leader_class: type[Replica], cut: Filter, elect: int) -> None:
    """Leader 1, made to behave as `leader_class`, is cut off by `cut`; the others elect
    `elect`, which writes x=2 and acknowledges it."""
    # A mutant swaps a unit's class: behaviour only, no state of its own.
    for unit in ("acceptor", "election", "pipeline", "log", "reads"):
        getattr(net.nodes[1], unit).__class__ = getattr(leader_class, f"{unit}_class")
    net.now += 2 * net.cfg.election_timeout
    net.tick([elect])
    net.deliver(but_not(cut))
    net.drop(cut)
    net.submit(elect, 1, b"x=2")
    net.deliver(but_not(cut))
    net.drop(cut)
    assert net.outcomes[elect][1].ok  # x=2 is acknowledged before the read begins


def _read_at_a_deposed_leader_after_a_newer_write(leader_class: type[Replica]) -> Outcome:
    """Node 1 (behaving as `leader_class`) leads with x=1 and is cut off; nodes 2 and 3
    elect node 2, which writes x=2 and acknowledges it; only then does a client read x,
    linearizably, at node 1, which does not yet know it was deposed."""
    net = _store_with_x()
    cut = touching(1)
    _depose_and_write(net, leader_class, cut, elect=2)
    assert net.leaders() == [1, 2]  # node 1 does not know yet
    net.read(1, 5, b"x", "linearizable")
    for _ in range(20):
        net.tick([1], dt=net.cfg.heartbeat_interval)
        net.drop(cut)
    return net.outcomes[1][5]


def test_a_deposed_leader_never_answers_a_read_that_began_after_a_newer_write() -> None:
    """Linearizability: a read that begins after x=2 was acknowledged must not see
    x=1. The deposed leader cannot get a heartbeat round acked, so it fails the read."""
    outcome = _read_at_a_deposed_leader_after_a_newer_write(Replica)
    assert not outcome.ok and outcome.result != b"1", outcome


def test_the_newer_write_scenario_catches_a_leader_reading_its_local_state() -> None:
    """Mutation guard for the test above: a leader that answers linearizable reads from
    its own state without confirming it still leads (the simulator's mutant
    `linearizable-read-from-local-state`) answers x=1 here, after x=2 was acknowledged;
    the scenario catches it every time, where random fault sweeps catch it in a few
    seeds of a hundred."""
    from pnyx.sim.mutants import LinearizableReadFromLocalState

    outcome = _read_at_a_deposed_leader_after_a_newer_write(LinearizableReadFromLocalState)
    assert outcome.ok and outcome.result == b"1", outcome  # the stale answer


def test_the_heartbeat_announcing_a_chosen_slot_wants_no_ack_and_confirms_no_read() -> None:
    """When a slot is chosen the leader announces the commit point at once, in a
    Heartbeat of round 0: the followers learn and apply, and ack nothing. So it cannot
    confirm a read; a read waiting at the leader is answered only once a round sent at
    the leader's next tick is acked."""
    net = _store_with_x()
    net.read(1, 5, b"x", "linearizable")
    slot = _choose_at_leader_only(net, b"x=2")
    announced = net.pending(of_type(Heartbeat))
    assert sorted(d for d, _ in announced) == [2, 3]
    assert all(isinstance(m, Heartbeat) and (m.round, m.commit) == (0, slot)
               for _, m in announced)
    net.deliver(of_type(Heartbeat, dst=2))
    assert net.applied[2][-1] == slot, "the announcement tells the commit point"
    assert net.pending(of_type(HeartbeatAck)) == [], "round 0 wants no ack"
    assert 5 not in net.outcomes[1]
    net.tick([1])
    net.deliver(of_type(Heartbeat, dst=2))
    net.deliver(of_type(HeartbeatAck, src=2))
    assert net.outcomes[1][5] == Outcome(True, b"2", slot)


FIVE = (1, 2, 3, 4, 5)


def test_a_follower_linearizable_read_asks_the_leader_and_waits_until_it_has_applied() -> None:
    """Linearizable read at a follower of five: it asks the leader for a read index
    (ReadIndex); the leader confirms its leadership with a heartbeat round, acked by
    a quorum, and replies with its commit point; the follower answers only once it has
    applied that far."""
    net = _store_with_x(members=FIVE)
    leader = net.nodes[1]
    net.submit(1, 101, b"x=2")
    slot = leader.next_slot - 1
    net.deliver(either(accept_for(slot, dst=1), accept_for(slot, dst=3),
                       accept_for(slot, dst=4), of_type(Accepted)))
    net.drop(of_type(Heartbeat))  # the commit's announcement: node 2 has not applied it
    net.read(2, 5, b"x", "linearizable")
    ask = ReadIndex(2, 5, leader.ballot)
    assert net.pending(of_type(ReadIndex)) == [(1, ask)]
    net.deliver(of_type(ReadIndex))
    assert net.pending(of_type(ReadIndexReply)) == [], "2 and 1 are no quorum of five"
    net.tick([1])
    net.deliver(of_type(Heartbeat, dst=3))
    net.deliver(of_type(HeartbeatAck, src=3))
    assert net.pending(of_type(ReadIndexReply)) == [], "1 and 3 are no quorum of five"
    net.deliver(of_type(Heartbeat, dst=4))
    net.deliver(of_type(HeartbeatAck, src=4))
    replies = net.pending(of_type(ReadIndexReply))
    assert [m for _, m in replies] == [ReadIndexReply(1, 5, slot, True)]
    net.deliver(of_type(ReadIndexReply))
    assert 5 not in net.outcomes[2], "the follower has not applied the read index yet"
    net.deliver()  # the Accept it missed, the heartbeats: node 2 learns the slot
    assert net.outcomes[2][5] == Outcome(True, b"2", slot)


def test_of_three_voters_the_leader_answers_a_followers_read_index_at_once() -> None:
    """Of three voters, the asker and the leader are a quorum: the asker's promise when
    it asked (after its read arrived) and the leader's own are what acks of a heartbeat
    round sent after the read would say. So the leader replies with its commit point at
    once, with no round; the follower still waits until it has applied that far."""
    net = _store_with_x()
    slot = _choose_at_leader_only(net, b"x=2")
    net.drop(of_type(Heartbeat))
    net.read(2, 5, b"x", "linearizable")
    assert net.pending(of_type(ReadIndex)) == [(1, ReadIndex(2, 5, net.nodes[1].ballot))]
    net.deliver(of_type(ReadIndex))
    assert net.pending(of_type(Heartbeat)) == [], "no heartbeat round"
    assert [m for _, m in net.pending(of_type(ReadIndexReply))] == [
        ReadIndexReply(1, 5, slot, True)]
    net.deliver(of_type(ReadIndexReply))
    assert 5 not in net.outcomes[2], "the follower has not applied the read index yet"
    net.tick([1], dt=net.cfg.heartbeat_interval)
    net.deliver(of_type(Heartbeat, dst=2))
    assert net.outcomes[2][5] == Outcome(True, b"2", slot)


def test_a_read_index_from_an_asker_whose_promise_is_not_the_leaders_ballot_waits_for_a_round(
) -> None:
    """The asker vouches only for a promise equal to the leader's ballot: one that says
    any other (higher: it may have promised a newer leader; ZERO: it lost its disk and
    votes no more) waits for a heartbeat round a quorum acks, like any read."""
    net = _store_with_x()
    leader = net.nodes[1]
    higher = Ballot(leader.ballot.round + 1, 3)
    for rid, promised in ((5, higher), (6, Ballot(0, 0))):
        net.step(1, ReadIndex(2, rid, promised))
        assert net.pending(of_type(ReadIndexReply)) == [], promised
    net.tick([1])
    net.deliver(of_type(Heartbeat, dst=3))
    net.deliver(of_type(HeartbeatAck, src=3))
    assert sorted(m.id for _, m in net.pending(of_type(ReadIndexReply))) == [5, 6]


def _read_at_a_follower_of_a_deposed_leader(leader_class: type[Replica]) -> Outcome:
    """Five voters. Nodes 1 (the leader, behaving as `leader_class`) and 2 are cut off
    from 3, 4 and 5, which elect 3; it writes x=2 and acknowledges it. Only then does a
    client read x, linearizably, at node 2, which still follows node 1; node 1 does not
    yet know it was deposed."""
    net = _store_with_x(members=FIVE)
    cut = lambda d, m: (d in (1, 2)) != (m.src in (1, 2))  # noqa: E731  the partition
    _depose_and_write(net, leader_class, cut, elect=3)
    assert 1 in net.leaders() and net.nodes[2].leader == 1
    net.read(2, 5, b"x", "linearizable")
    for _ in range(20):
        net.deliver(but_not(cut))
        net.drop(cut)
        net.tick([1, 2], dt=net.cfg.heartbeat_interval)
    return net.outcomes[2][5]


def test_a_follower_of_a_deposed_leader_never_answers_a_read_that_began_after_a_newer_write(
) -> None:
    """Linearizability, at a follower: node 1 and its follower 2 are no quorum of five,
    so 1 cannot confirm the read index 2 asks for, and the read fails, never x=1."""
    outcome = _read_at_a_follower_of_a_deposed_leader(Replica)
    assert not outcome.ok and outcome.result != b"1", outcome


def test_the_deposed_leader_scenario_catches_a_read_index_taken_from_any_asker() -> None:
    """Mutation guard for the test above: a leader that answers every follower's
    `ReadIndex` at once, as if the asker and it were a quorum whatever the cluster's
    size (`pnyx.sim.mutants.ReadIndexFromAnyAsker`), lets node 2 answer x=1 here,
    after x=2 was acknowledged."""
    from pnyx.sim.mutants import ReadIndexFromAnyAskerReplica

    outcome = _read_at_a_follower_of_a_deposed_leader(ReadIndexFromAnyAskerReplica)
    assert outcome.ok and outcome.result == b"1", outcome  # the stale answer


def test_one_heartbeat_round_confirms_every_read_that_reached_the_leader_before_it() -> None:
    """Read index, batched at the leader: the reads that arrive before the next tick
    share one heartbeat round; its acks answer them all, and a read that arrives after
    the round went out waits for the next one (the rule: confirmed by a round sent
    after the read arrived)."""
    net = _store_with_x()
    net.read(1, 5, b"x", "linearizable")
    net.read(1, 6, b"x", "linearizable")
    net.tick([1])
    assert len(net.pending(of_type(Heartbeat))) == 2, "one round, to each follower"
    net.read(1, 7, b"x", "linearizable")
    net.deliver(of_type(Heartbeat, dst=2))
    net.deliver(of_type(HeartbeatAck, src=2))
    confirmed = Outcome(True, b"1", 1)
    assert {r: net.outcomes[1].get(r) for r in (5, 6, 7)} == {5: confirmed, 6: confirmed,
                                                              7: None}
    net.tick([1])
    net.deliver(of_type(Heartbeat, dst=2))
    net.deliver(of_type(HeartbeatAck, src=2))
    assert net.outcomes[1][7] == Outcome(True, b"1", 1)


def test_a_follower_asks_the_leader_once_for_all_the_reads_of_one_call() -> None:
    """Read index, batched at a follower: the reads handed over together
    (`read_many`, as the driver does with those of one loop iteration) are asked for
    in one `ReadIndex`, named by the newest; the one reply serves them all, once the
    follower has applied the index."""
    net = _store_with_x()
    slot = _choose_at_leader_only(net, b"x=2")
    queries: list[tuple[int, bytes, ReadMode]] = [
        (5, b"x", "linearizable"), (6, b"x", "linearizable"), (7, b"x", "linearizable")]
    net.obey(2, net.nodes[2].read_many(queries, net.now))
    assert net.pending(of_type(ReadIndex)) == [(1, ReadIndex(2, 7, net.nodes[1].ballot))]
    net.deliver(of_type(ReadIndex))
    assert [m for _, m in net.pending(of_type(ReadIndexReply))] == [
        ReadIndexReply(1, 7, slot, True)]
    net.deliver(of_type(ReadIndexReply))
    assert not net.outcomes[2], "the follower has not applied the read index yet"
    net.deliver(of_type(Heartbeat, dst=2))
    assert net.outcomes[2] == {rid: Outcome(True, b"2", slot) for rid in (5, 6, 7)}


def test_a_read_that_reaches_a_follower_after_it_asked_is_not_served_by_that_answer(
) -> None:
    """Linearizability of the batched read index: read 5 is asked for (ReadIndex 5) and
    confirmed at index 1; x=2 is then chosen and acknowledged, which node 2 has not
    applied; read 6 begins after that, so it must see x=2. The answer to ReadIndex 5
    confirms a round that may predate read 6: it serves read 5 only, and read 6 waits
    for an index of its own."""
    net = _store_with_x()
    net.read(2, 5, b"x", "linearizable")
    net.deliver(of_type(ReadIndex))
    net.tick([1])
    net.deliver(of_type(Heartbeat, dst=3))
    net.deliver(of_type(HeartbeatAck))
    assert [m for _, m in net.pending(of_type(ReadIndexReply))] == [
        ReadIndexReply(1, 5, 1, True)]  # held in flight
    net.drop(of_type(Heartbeat))
    slot = _choose_at_leader_only(net, b"x=2", rid=102)
    assert net.outcomes[1][102].ok and net.applied[2][-1] < slot
    net.read(2, 6, b"x", "linearizable")
    assert net.pending(of_type(ReadIndex)) == [(1, ReadIndex(2, 6, net.nodes[1].ballot))]
    net.deliver(of_type(ReadIndexReply))
    assert net.outcomes[2] == {5: Outcome(True, b"1", 1)}, "read 6 served a stale x"
    net.settle()
    assert net.outcomes[2][6] == Outcome(True, b"2", slot)


def test_a_refusal_fails_every_read_of_the_batch_it_answers() -> None:
    """A follower that asked a replica no longer leading hears `ok=False` once for the
    batch, and fails every read of it with NOT_LEADER (the driver tries them again)."""
    net = _store_with_x()
    queries: list[tuple[int, bytes, ReadMode]] = [
        (5, b"x", "linearizable"), (6, b"x", "linearizable")]
    net.obey(2, net.nodes[2].read_many(queries, net.now))
    net.step(2, ReadIndexReply(1, 6, 0, False))
    assert set(net.outcomes[2]) == {5, 6}
    assert all(not o.ok and o.code is Code.NOT_LEADER for o in net.outcomes[2].values())


def test_a_read_id_reused_after_its_read_expired_is_served_not_a_crash() -> None:
    """A request id may be used again once its request is over. A linearizable read that
    expired waiting to apply its read index leaves its entry in the by-index heap; a new
    read under the same id and with the same read index is served when the replica gets
    there. (The heap compared the two `_LocalRead`s and raised TypeError.)"""
    config = ReplicaConfig.majority((1, 2, 3))
    replica = Replica(2, config, random.Random(0), KVMachine())
    replica.step(Heartbeat(1, Ballot(1, 1), 0, 1), 0.0)  # node 1 leads
    query = encode_query("k")
    assert replica.read(5, query, "linearizable", 0.0).send == [(1, ReadIndex(2, 5))]
    replica.step(ReadIndexReply(1, 5, 3, True), 0.01)  # applied is 0: the read waits
    expired = replica.tick(config.read_timeout + 0.01)
    assert [rid for rid, _ in expired.outcomes] == [5]
    replica.step(Heartbeat(1, Ballot(1, 1), 0, 2), 1.0)  # still leads
    assert replica.read(5, query, "linearizable", 1.0).send == [(1, ReadIndex(2, 5))]
    replica.step(ReadIndexReply(1, 5, 3, True), 1.01)  # same id, same read index
    assert 5 in replica.reads.local
    caught_up = replica.step(Chosen(1, tuple(Decided(s, NOOP) for s in (1, 2, 3)), 3), 1.02)
    assert [(rid, outcome.ok) for rid, outcome in caught_up.outcomes] == [(5, True)]


# -------------------------------------------- quorum reads (Paxos Quorum Reads)


def test_a_quorum_read_waits_for_a_quorum_that_has_applied_the_highest_accepted_slot(
) -> None:
    """Quorum read (the seed's 'Read (as a learner)', made linearizable as in Paxos
    Quorum Reads): two replicas agreeing is not enough if a slot above what they
    applied may be chosen. The read takes the highest slot any replier has accepted
    and answers only with a result that a quorum of replicas which applied that slot
    agree on; until then it asks again."""
    net = _store_with_x()
    slot = _choose_at_leader_only(net, b"x=2")
    net.read(3, 5, b"x", "quorum")
    net.deliver(of_type(QuorumRead, dst=3))
    net.deliver(of_type(QuorumRead, dst=2))
    first = {m.src: m for _, m in net.pending(of_type(QuorumReadReply))}
    assert (first[2].result, first[3].result) == (b"1", b"1")  # a stale majority ...
    assert first[2].accepted == slot
    net.deliver(of_type(QuorumReadReply))
    assert 5 not in net.outcomes[3], "... must not answer"
    assert any(m.min_applied == slot for _, m in net.pending(of_type(QuorumRead)))

    net.deliver(of_type(QuorumRead, QuorumReadReply))  # node 1 (applied 2) answers
    assert 5 not in net.outcomes[3], "one replica that applied the slot is not a quorum"
    net.deliver()  # the commit reaches node 2, which applies and answers
    assert net.outcomes[3][5].ok and net.outcomes[3][5].result == b"2"


def test_a_replica_holds_a_quorum_read_until_it_has_applied_min_applied() -> None:
    """Quorum read, the rinse: `QuorumRead(min_applied=n)` asks a replica to answer
    once it has applied slot n. A reply before that is useless to the reader (it cannot
    count it) and costs it one of its `quorum_read_attempts`, so a replica that lags
    for a few heartbeats makes quorum reads fail ("replicas did not agree")."""
    net = Net(window=1)
    net.elect(1)
    net.submit(1, 1, b"x=1")
    net.submit(1, 2, b"x=2")
    net.deliver(either(of_type(Accept, dst=1), of_type(Accept, dst=2), of_type(Accepted)))
    assert net.nodes[1].commit == 2 and net.nodes[2].applied == 1
    net.drop()
    held = net.step(2, QuorumRead(3, 1, b"x", 2))
    assert not any(isinstance(m, QuorumReadReply) for _, m in held.send)
    ready = net.step(2, Heartbeat(1, net.nodes[1].ballot, 1, 99))  # nothing new to apply
    assert net.nodes[2].applied == 1
    early = [m for _, m in ready.send if isinstance(m, QuorumReadReply)]
    assert early == [], f"answered at applied=1 a read that asked for slot 2: {early}"


def test_a_quorum_read_completes_under_a_steady_stream_of_writes() -> None:
    """Three replicas, leader 1, `window=1` and a client queue that never runs dry:
    each time a slot is chosen the next one is proposed at once, its Accept carrying
    the commit (no Heartbeat is needed). A quorum read at node 3 first finds read
    slot 2 (accepted, not yet chosen) and rinses. From the next round on every reply
    comes from a replica that has applied slot 2, and all agree (x is never written),
    so the read answers: its read slot is fixed by the first quorum of replies, as in
    Paxos Quorum Reads. (It was re-taken as the highest `accepted` among the rinse
    replies, always one more than what they had applied, since they accept k+1 in
    the same step as they learn k; the read burned all its attempts and failed.)"""
    net = Net(window=1)
    net.elect(1)
    net.submit(1, 1, b"y=0")
    net.settle()
    net.submit(1, 2, b"y=1")  # slot 2 is proposed
    net.submit(1, 3, b"y=2")  # queued: the window is full
    net.read(3, 99, b"x", "quorum")
    rounds = []
    for k in range(4, 40):
        net.deliver(of_type(Accept))
        before = {m.src: m for _, m in net.pending(of_type(QuorumReadReply))}
        net.deliver(of_type(QuorumRead, QuorumReadReply))
        rounds.append({i: (r.applied, r.accepted, r.result) for i, r in before.items()})
        if 99 in net.outcomes[3]:
            break
        net.submit(1, k, b"y=%d" % k)  # queued
        net.deliver(of_type(Accepted))  # slot chosen; the next is proposed at once
    outcome = net.outcomes[3].get(99)
    assert outcome is not None and outcome.ok, (outcome, rounds[:4])


def test_an_orphaned_accepted_slot_does_not_block_quorum_reads_in_an_idle_cluster() -> None:
    """Leader 1 proposes slot 2 and only accepts it itself before it is cut off; node 2
    is elected by {2, 3}, whose promises report nothing in slot 2, so its next slot is
    2 again. Node 1 rejoins as a follower (its client gave up: no retry fills the
    slot). The cluster is healthy and idle. A quorum read at node 3 that hears node 1
    first takes read slot 2 (node 1's `max_accepted`), which nobody would apply until
    someone writes; the read still answers, as a linearizable read would at once.
    (Every replica held the rinse and the read timed out.)"""
    net = Net()
    net.elect(1)
    net.submit(1, 1, b"x=1")
    net.settle()
    # Leader 1 proposes slot 2; only its own acceptance happens; then it is cut off.
    net.submit(1, 2, b"x=2")
    net.deliver(of_type(Accept, dst=1))
    net.drop(touching(1))
    assert net.nodes[1].max_accepted == 2
    net.now += 2 * net.cfg.election_timeout + 0.01
    net.tick([2])
    net.deliver(but_not(touching(1)))
    net.drop(touching(1))
    assert 2 in net.leaders() and net.nodes[2].next_slot == 2
    # Node 1 comes back as a follower; the cluster is healthy and idle.
    net.settle(rounds=3)
    assert net.leaders() == [2] and all(n.applied >= 1 for n in net.nodes.values())

    net.read(3, 99, b"x", "quorum")
    net.deliver(of_type(QuorumRead, dst=3))
    net.deliver(of_type(QuorumRead, dst=1))
    net.deliver(of_type(QuorumReadReply))
    for _ in range(30):  # 0.6 s: well past read_timeout
        net.tick(dt=net.cfg.heartbeat_interval)
        net.deliver()
    outcome = net.outcomes[3].get(99)
    assert outcome is not None and outcome.ok, outcome


# -------------------------------------------------------- every read mode


def test_a_read_reports_an_index_comparable_with_the_writes_it_reflects() -> None:
    """`Outcome.index` is documented as "the log index it took effect at (or was read
    at)". A read that sees a write must not report an index below the index that write
    was acknowledged at, or a client checking read-your-writes by index is misled.
    With batching (four commands in two slots) the write is acknowledged at index 4
    and a read that sees it reports index 2."""
    net = Net(window=1)
    net.elect(1)
    for rid in range(1, 5):
        net.submit(1, rid, b"x=%d" % rid)
    net.settle()
    write = net.outcomes[1][4]
    assert write.ok and write.index == 4
    ((_, read),) = net.read(1, 9, b"x", "stale").outcomes
    assert read.result == b"4"
    assert read.index >= write.index, (read, write)


def test_reads_through_the_key_value_machine_see_the_chosen_put() -> None:
    """The three read modes with the real key-value machine: after a put is chosen and
    applied everywhere, stale, linearizable and quorum reads all see it (`query`)."""
    net = Net(machines={i: KVMachine() for i in MEMBERS})
    net.elect(1)
    net.submit(2, 1, kv_request(Request("c", 1, Put("k", b"v"))))
    net.settle()
    assert isinstance(decode_result(net.outcomes[2][1].result), Ok)
    for rid, mode in enumerate(("stale", "linearizable", "quorum"), 1):
        net.read(3, rid, encode_query("k"), mode)
        net.settle(rounds=2)
        result = decode_result(net.outcomes[3][rid].result)
        assert isinstance(result, Ok) and result.value == b"v", (mode, result)
