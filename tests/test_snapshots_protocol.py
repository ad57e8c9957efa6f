"""Snapshots, compaction, snapshot transfer and standing, message by message.

The pure replica is driven by hand (`harness.Net`, whose snapshot store obeys
every op at once). Each test states one rule of `pnyx.protocol.multipaxos.log`
(taking and compacting), `transfer` (fetching from a peer), `acceptor` (what a
compacted acceptor promises and accepts), `election` (a candidate behind a
compacted floor) or `standing` (who may vote after an empty start).
"""

from __future__ import annotations

import itertools

import msgspec
import pytest

from harness import Net, batch, of_type
from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos.effects import KeepSnapshots, SendChunk, TakeSnapshot
from pnyx.protocol.multipaxos.messages import (
    Accept,
    Accepted,
    CatchUp,
    Heartbeat,
    HeartbeatAck,
    Prepare,
    PreVote,
    PreVoteReply,
    Probe,
    ProbeReply,
    Promise,
    SnapshotChunk,
    SnapshotOffer,
    SnapshotRequest,
)
from pnyx.protocol.multipaxos.records import CompactRecord, ReplicaDurable, Standing

SNAP = dict(snapshot_every=4, snapshot_tail=2, snapshot_chunk=8)


def write(net: Net, leader: int, n: int, first_id: int = 1) -> None:
    """`n` commands through `leader`, each chosen and applied everywhere."""
    for k in range(first_id, first_id + n):
        net.submit(leader, k, b"k%d=%d" % (k % 3, k))
        net.deliver()
    net.settle(2)


def takes(net: Net, i: int) -> list[TakeSnapshot]:
    return [op for op in net.snapshot_ops[i] if isinstance(op, TakeSnapshot)]


# ------------------------------------------------------------ taking, compacting


def test_a_snapshot_is_taken_every_snapshot_every_commands_and_the_log_below_it_compacted_but_for_the_tail() -> None:  # noqa: E501
    net = Net(**SNAP)
    net.elect(1)
    write(net, 1, 9)
    for i in (1, 2, 3):
        node = net.nodes[i]
        assert [t.slot for t in takes(net, i)] == [4, 8], i
        assert node.log.snapshot_slot == 8
        # Compacted up to the snapshot less the tail: 8 - 2.
        assert node.log.floor == 6 and node.acceptor.compacted == 6
        assert min(node.log.chosen) == 7 and min(node.acceptor.accepted) == 7
        assert net.disks[i].compacted == 6 and min(net.disks[i].accepted) == 7
        assert net.machines[i].data == net.machines[1].data  # type: ignore[attr-defined]


def test_compaction_follows_the_durable_snapshot_never_the_one_being_taken() -> None:
    net = Net(**SNAP)
    net.elect(1)
    write(net, 1, 3)
    node = net.nodes[1]
    # Take the snapshot but do not report it written: nothing may be forgotten.
    node.log.since_commands = 10
    ready = node.tick(net.now)  # no event applies a slot: take one by hand
    node.log.maybe_snapshot()
    ready = node._flush()
    [op] = [o for o in ready.snapshots if isinstance(o, TakeSnapshot)]
    assert node.log.taking == op.slot and node.log.floor == 0
    assert not any(isinstance(r, CompactRecord) for r in ready.persist)
    net.obey(1, node.snapshotted(op.slot, op.index, 0, net.now))  # the write failed
    assert node.log.floor == 0 and node.log.taking == 0 and node.log.snapshot_slot == 0


def test_a_restart_loads_the_newest_snapshot_and_replays_only_the_tail() -> None:
    net = Net(**SNAP)
    net.elect(1)
    write(net, 1, 10)
    node = net.restart(2)
    # The machine came from the snapshot of slot 8 (8 commands); only the durable
    # tail above it was applied again (a chosen record not yet durable is learned again).
    assert node.log.floor == 8 and node.log.applied >= 8
    replayed = net.machines[2].log  # type: ignore[attr-defined]
    assert [index for index, _ in replayed] == list(range(9, node.log.applied_index + 1))
    net.settle(2)
    assert node.log.applied == net.nodes[1].log.applied
    assert net.machines[2].data == net.machines[1].data  # type: ignore[attr-defined]


# --------------------------------------------------------------- the acceptor


def test_a_promise_reports_the_compacted_floor_and_omits_what_was_forgotten() -> None:
    net = Net(**SNAP)
    net.elect(1)
    write(net, 1, 9)
    net.drop()
    net.step(3, Prepare(2, Ballot(50, 2), 1))  # the promise leaves once durable
    [(_, promise)] = net.sent_by(Promise, src=3)[-1:]
    assert promise.compacted == 6
    assert all(e.slot > 6 for e in promise.entries)


def test_a_candidate_whose_phase_1_starts_below_a_compacted_floor_catches_up_instead_of_leading() -> None:  # noqa: E501
    """Node 3 misses everything; the others compact. When 3 stands for election, the
    promises say slots it would recover are forgotten: it must not fill them with
    no-ops; it gives up the election and fetches the snapshot."""
    net = Net(**SNAP, prevote=False)
    net.elect(1)
    for k in range(1, 10):
        net.submit(1, k, b"k=%d" % k)
        net.deliver(lambda d, m: 3 not in (d, m.src))
    net.drop(lambda d, m: 3 in (d, m.src))
    assert net.nodes[3].log.commit == 0 and net.nodes[1].log.floor > 0
    net.now += 10
    net.tick([3])
    net.deliver(of_type(Prepare))
    net.deliver(of_type(Promise))
    assert not net.nodes[3].is_leader
    assert net.pending(of_type(CatchUp, src=3))
    net.deliver()
    net.settle(3)
    assert net.nodes[3].log.applied == net.nodes[1].log.applied
    assert net.machines[3].data == net.machines[1].data  # type: ignore[attr-defined]
    assert not any(value == batch() for value in net.values[3].values())


def test_an_accept_for_a_compacted_slot_is_acknowledged_without_recording_an_entry() -> None:
    net = Net(**SNAP)
    net.elect(1)
    write(net, 1, 9)
    net.drop()
    before = dict(net.disks[2].accepted)
    value = net.values[1][7]
    net.step(2, Accept(1, Ballot(60, 1), 3, value, 0))  # it leaves once durable
    assert net.sent_by(Accepted, src=2)[-1] == (1, Accepted(2, Ballot(60, 1), 3))
    assert 3 not in net.nodes[2].acceptor.accepted and net.disks[2].accepted == before
    assert net.disks[2].promised == Ballot(60, 1)  # the promise it raised was recorded


# ------------------------------------------------------------------- transfer


def lagging(net: Net, behind: int = 3, n: int = 13) -> None:
    """Everything is chosen without `behind`, and the others compact past it."""
    net.elect(1)
    for k in range(1, n + 1):
        net.submit(1, k, b"k%d=%d" % (k % 4, k))
        net.deliver(lambda d, m: behind not in (d, m.src))
    net.drop(lambda d, m: behind in (d, m.src))
    assert net.nodes[1].log.floor > 0 and net.nodes[behind].log.commit == 0


def test_a_laggard_behind_the_compacted_floor_installs_a_snapshot_in_chunks_then_catches_up() -> None:  # noqa: E501
    net = Net(**SNAP)
    lagging(net)
    net.settle(4)
    node, leader = net.nodes[3], net.nodes[1]
    assert net.sent_by(SnapshotOffer, src=1)
    chunks = net.sent_by(SnapshotChunk)
    assert len(chunks) > 2 and all(len(m.data) <= 8 for _, m in chunks)
    assert node.transfer.installs == 1 and node.log.floor >= leader.log.snapshot_slot - 4
    assert node.log.applied == leader.log.applied
    assert net.machines[3].data == net.machines[1].data  # type: ignore[attr-defined]
    assert net.disks[3].compacted == node.log.floor  # what it installed is not kept twice


def until(net: Net, done: object, only: object = None, rounds: int = 40) -> None:
    """Deliver (what `only` picks) and tick until `done()` holds."""
    for _ in range(rounds):
        if done():  # type: ignore[operator]
            return
        net.deliver(only or (lambda d, m: True))  # type: ignore[arg-type]
        net.tick(dt=0.02)
    raise AssertionError("never happened")


def not_chunks(d: int, m: object) -> bool:
    return not isinstance(m, SnapshotChunk)


def test_a_damaged_chunk_is_asked_for_again_and_never_staged() -> None:
    net = Net(**SNAP)
    lagging(net)
    until(net, lambda: net.pending(of_type(SnapshotChunk)), not_chunks)
    [(dst, chunk)] = net.pending(of_type(SnapshotChunk))[:1]
    net.drop(of_type(SnapshotChunk))
    asked = len(net.sent_by(SnapshotRequest, src=3))
    bad = msgspec.structs.replace(chunk, data=b"X" * len(chunk.data))
    net.step(dst, bad)
    assert net.staged[3] is not None and len(net.staged[3][1]) == chunk.offset
    assert len(net.sent_by(SnapshotRequest, src=3)) == asked + 1  # asked again at once
    net.settle(4)
    assert net.machines[3].data == net.machines[1].data  # type: ignore[attr-defined]


def test_a_transfer_cut_short_resumes_from_what_is_staged_after_the_receiver_restarts() -> None:
    net = Net(**SNAP)
    lagging(net)
    for _ in range(3):  # a few chunks in, then the receiver crashes
        net.deliver(lambda d, m: not isinstance(m, SnapshotChunk))
        net.deliver(of_type(SnapshotChunk))
        net.tick(dt=0.01)
    staged = net.staged[3]
    assert staged is not None and len(staged[1]) > 0
    kept = bytes(staged[1])
    net.restart(3)
    net.staged[3] = (staged[0], bytearray(kept))  # the staged file is on its disk
    net.settle(6)
    first = [m.offset for _, m in net.sent_by(SnapshotRequest, src=3)]
    assert len(kept) in first  # it asked from where it was, not from 0 again
    assert net.machines[3].data == net.machines[1].data  # type: ignore[attr-defined]


def test_a_snapshot_being_fetched_holds_compaction_above_it_and_its_file() -> None:
    net = Net(**SNAP)
    lagging(net)
    until(net, lambda: net.pending(of_type(SnapshotChunk)), not_chunks)
    net.drop(of_type(SnapshotChunk))  # the laggard is slow: its transfer is in flight
    held = net.nodes[1].transfer.holds
    assert list(held) == [net.nodes[1].log.snapshot_slot]
    slot = next(iter(held))
    for k in range(100, 112):  # more snapshots meanwhile; the laggard hears nothing
        net.submit(1, k, b"k=%d" % k)
        net.deliver(lambda d, m: 3 not in (d, m.src))
    net.drop(lambda d, m: 3 in (d, m.src))
    leader = net.nodes[1]
    assert leader.log.snapshot_slot > slot
    assert leader.log.floor <= slot  # the log the laggard continues from is still here
    assert slot in net.files[1]
    keeps = [op for op in net.snapshot_ops[1] if isinstance(op, KeepSnapshots)]
    assert slot in keeps[-1].slots
    net.now += 60  # long after its last request, the hold lapses
    for k in range(200, 208):
        net.submit(1, k, b"k=%d" % k)
        net.deliver(lambda d, m: 3 not in (d, m.src))
    assert not leader.transfer.holds and leader.log.floor > slot


def test_a_request_for_a_snapshot_no_longer_kept_is_answered_with_the_newest() -> None:
    net = Net(**SNAP)
    net.elect(1)
    write(net, 1, 9)
    net.drop()
    ready = net.step(1, SnapshotRequest(3, 4, 0))  # slot 4's file was pruned
    assert not any(isinstance(op, SendChunk) for op in ready.snapshots)
    assert [m for _, m in ready.send] == [SnapshotOffer(1, 8, 8, 8 + len(net.files[1][8][1]))]


# ------------------------------------------------------------------- standing


def fresh(members: tuple[int, ...] = (1, 2, 3), **durable: ReplicaDurable) -> Net:
    disks = {i: ReplicaDurable(standing=Standing.NEW) for i in members}
    disks.update({int(k[1:]): v for k, v in durable.items()})
    return Net(members, durable=disks, **SNAP)


def test_a_new_cluster_votes_once_every_member_answered_it_is_empty_and_ready() -> None:
    net = fresh()
    net.tick()
    assert {d for d, m in net.pending(of_type(Probe))} == {1, 2, 3}
    net.deliver(of_type(Probe, ProbeReply))
    assert {n.standing for n in net.nodes.values()} == {Standing.READY}
    net.tick(dt=0.05)
    net.deliver(of_type(Probe, ProbeReply))
    assert {n.standing for n in net.nodes.values()} == {Standing.VOTER}
    assert {net.disks[i].standing for i in (1, 2, 3)} == {Standing.VOTER}
    net.elect(2)
    write(net, 2, 2)
    assert net.values[1] == net.values[3]


def test_a_member_that_is_ready_does_not_vote_until_every_other_is_ready() -> None:
    net = fresh()
    net.tick()
    net.deliver(of_type(Probe, ProbeReply))
    net.drop(lambda d, m: 3 in (d, m.src))
    net.tick(dt=0.05)
    net.deliver(lambda d, m: 3 not in (d, m.src))  # 3 never answers "ready"
    assert net.nodes[1].standing is Standing.READY
    ready = net.step(1, Prepare(2, Ballot(1, 2), 1))
    assert not ready.send and net.nodes[1].acceptor.promised == Ballot(0, 0)


def test_an_empty_member_of_a_cluster_with_history_becomes_a_learner_that_never_votes() -> None:
    net = fresh()
    net.tick()
    net.deliver(of_type(Probe, ProbeReply))
    net.tick(dt=0.05)
    net.deliver(of_type(Probe, ProbeReply))
    net.elect(1)
    write(net, 1, 9)
    # Node 3 loses its disk: it comes back empty and asks.
    net.disks[3] = ReplicaDurable(standing=Standing.NEW)
    net.files[3] = {}
    node = net.restart(3)
    net.tick([3], dt=0.05)
    net.deliver(of_type(Probe, ProbeReply))
    assert node.standing is Standing.LEARNER and net.disks[3].standing is Standing.LEARNER
    # It catches up through a snapshot, but never votes: no promise, no acceptance,
    # no heartbeat ack, no pre-vote granted.
    net.settle(5)
    assert node.log.applied == net.nodes[1].log.applied
    assert net.machines[3].data == net.machines[1].data  # type: ignore[attr-defined]
    leading = net.nodes[1].ballot
    for message in (Prepare(2, Ballot(9, 2), 1), Accept(1, leading, 99, batch(b"x=1"), 0),
                    Heartbeat(1, leading, 0, 7), PreVote(2, Ballot(9, 2))):
        ready = net.step(3, message)
        assert not any(isinstance(m, Promise | Accepted | HeartbeatAck) for _, m in ready.send)
        assert not any(isinstance(m, PreVoteReply) and m.granted for _, m in ready.send)
    assert net.nodes[3].acceptor.promised == Ballot(0, 0)
    net.now += 10
    net.tick([3])
    assert not net.pending(of_type(PreVote, Prepare, src=3))  # it never stands


def test_a_long_compaction_is_taken_in_steps_of_at_most_compact_step_slots(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting many slots is one transaction of a group commit: a follower commits on
    its event loop, so a compaction forgets at most COMPACT_STEP slots at a time and
    takes the next step at the next tick."""
    from pnyx.protocol.multipaxos import log as log_module
    monkeypatch.setattr(log_module, "COMPACT_STEP", 3)
    steps: list[int] = []
    compact = ReplicaDurable.compact

    def recording(self: ReplicaDurable, upto: int) -> None:
        if self is net.disks[2]:
            steps.append(upto)
        compact(self, upto)

    monkeypatch.setattr(ReplicaDurable, "compact", recording)
    net = Net(**{**SNAP, "snapshot_every": 12})
    net.elect(1)
    write(net, 1, 13)
    for _ in range(4):
        net.tick(dt=0.02)
        net.deliver()
    assert net.nodes[2].log.snapshot_slot == 12
    # 12 less the tail of 2, three slots at a time.
    assert steps == [3, 6, 9, 10] and net.nodes[2].log.floor == 10


def test_a_members_first_snapshot_comes_its_phase_of_a_threshold_late() -> None:
    """Members apply the same commands: with a phase each, their snapshots (and the
    compactions after them) fall at different slots, once late and then a threshold
    apart."""
    net = Net(**{**SNAP, "snapshot_every": 12, "snapshot_phase": 0.5})
    net.elect(1)
    write(net, 1, 17)
    assert takes(net, 2) == []  # 12 x 1.5 = 18 commands for the first
    write(net, 1, 1, first_id=18)
    assert [op.index for op in takes(net, 2)] == [18]
    write(net, 1, 12, first_id=19)
    assert [op.index for op in takes(net, 2)] == [18, 30]


def test_a_compaction_step_stops_past_compact_step_bytes_and_the_next_is_taken_a_pause_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Full slots make a few thousand slots many megabytes, whose rows take a follower's
    event loop tens of milliseconds to delete: a step also stops at the first slot that
    takes it past COMPACT_STEP_BYTES of values. The replica asks to be woken for the next
    step COMPACT_PAUSE later, whatever else it waits for (a follower's next wake-up is
    otherwise its election timeout)."""
    from pnyx.protocol.multipaxos import log as log_module
    monkeypatch.setattr(log_module, "COMPACT_STEP_BYTES", 100)  # two of these slots
    steps: list[tuple[int, float]] = []
    compact = ReplicaDurable.compact

    def recording(self: ReplicaDurable, upto: int) -> None:
        if self is net.disks[2]:
            steps.append((upto, net.now))
        compact(self, upto)

    monkeypatch.setattr(ReplicaDurable, "compact", recording)
    net = Net(**{**SNAP, "snapshot_every": 12})
    net.elect(1)
    for k in range(1, 14):  # one command a slot: 54 bytes by `size_of`
        net.submit(1, k, b"k%d=%d" % (k % 3, k))
        net.deliver()
    follower = net.nodes[2]
    started = net.now
    assert steps == [(2, started)] and follower.log.compact_target == 10
    pause = log_module.COMPACT_PAUSE
    assert follower.tick(net.now).wake_at == pytest.approx(started + pause)
    net.tick([2], dt=pause / 2)
    assert len(steps) == 1  # not before the pause
    for _ in range(4):
        net.tick([2], dt=pause)
        net.deliver()
    # 12 less the tail of 2, two slots at a time, one pause apart.
    assert [upto for upto, _ in steps] == [2, 4, 6, 8, 10] and follower.log.floor == 10
    assert follower.log.compact_at is None  # done: no more wake-ups for it
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(steps)]
    assert all(gap >= pause for gap in gaps), gaps


def test_a_ready_member_votes_on_one_voters_answer_though_another_member_is_dead() -> None:
    """A member that answers VOTER saw every member READY or VOTER before it began to
    vote, so its answer alone lets a READY member vote: the death of a member right
    after the cluster formed must not keep the rest from electing a leader."""
    net = fresh(n1=ReplicaDurable(standing=Standing.VOTER),
                n2=ReplicaDurable(standing=Standing.VOTER),
                n3=ReplicaDurable(standing=Standing.READY))
    alive = lambda d, m: 1 not in (d, m.src)  # noqa: E731 - node 1 died, never answers
    net.tick([3])
    net.drop(lambda d, m: not alive(d, m))
    net.deliver(alive)
    assert net.nodes[3].standing is Standing.VOTER
    assert net.disks[3].standing is Standing.VOTER
    net.now += 10
    net.tick([2])
    net.deliver(alive)
    assert net.leaders() == [2]  # 2 and 3 form a quorum without node 1
