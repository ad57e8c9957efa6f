"""The Multi-Paxos `Replica` beyond the seed: fail-fast, batching, persist-before-send
and restart, bounded state and message sizes, bad input, a state machine that raises,
and the units' invariants. (Reads are in `test_replica_reads.py`.)

Driven by hand through `Net` from `harness.py`; each docstring names the rule and,
where there is one, the seed section it rests on.
"""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from harness import (
    MEMBERS,
    Memo,
    Net,
    batch,
    but_not,
    cmd,
    of_type,
    touching,
)
from pnyx.node.transport import DEFAULT_MAX_FRAME
from pnyx.protocol.ballot import MAX_ROUND, Ballot
from pnyx.protocol.multipaxos import LogReady, Outcome, Replica, ReplicaConfig, Role
from pnyx.protocol.multipaxos.messages import (
    NOOP,
    Aborted,
    Accept,
    Accepted,
    Batch,
    CatchUp,
    Chosen,
    Command,
    Decided,
    Entry,
    Forward,
    Heartbeat,
    Prepare,
    Promise,
    Rejected,
    encode,
)
from pnyx.protocol.multipaxos.records import (
    AcceptRecord,
    PromiseRecord,
    ReplicaDurable,
    RoundRecord,
)
from pnyx.statemachine.base import SafeApply
from pnyx.statemachine.kv import KVMachine, Ok, Put, Request, decode_result, encode_query
from pnyx.statemachine.kv import encode_request as kv_request
from pnyx.storage import SqliteLogStore

# ------------------------------------------------------------- fail fast


def test_a_deposed_leader_fails_its_inflight_and_queued_commands_fast_everywhere() -> None:
    """Fail fast (beyond the seed; DESIGN "fail fast"): a leader that sees a higher
    ballot may never get its proposals chosen as it made them. At once, each of its
    in-flight and queued commands is reported `unknown` (it may still be chosen, by
    the next leader's gap filling): locally to its own clients, and with `Aborted` to
    the member a forwarded command came from."""
    net = Net(window=1)
    leader = net.elect(1)
    net.submit(1, 1, b"a=1")  # in flight in slot 1
    net.submit(1, 2, b"b=2")  # queued: the window is full
    net.submit(1, 3, b"c=3")
    net.submit(2, 7, b"d=4")
    net.deliver(of_type(Forward))  # queued at the leader too
    assert net.outcomes[1] == {} and net.outcomes[2] == {}

    ready = net.step(1, Prepare(3, leader.ballot.successor(3), first=1))
    assert not leader.is_leader
    assert {rid for rid, _ in ready.outcomes} == {1, 2, 3}
    for rid in (1, 2, 3):
        outcome = net.outcomes[1][rid]
        assert (outcome.ok, outcome.unknown) == (False, True), outcome
    aborted = [(d, m) for d, m in ready.send if isinstance(m, Aborted)]
    assert aborted == [(2, Aborted(1, (7,)))]
    net.deliver(of_type(Aborted))
    assert (net.outcomes[2][7].ok, net.outcomes[2][7].unknown) == (False, True)


def test_a_follower_whose_leader_changes_fails_its_forwarded_commands_fast() -> None:
    """Fail fast at the follower (beyond the seed): when a new leader is being elected
    (a Prepare of a higher ballot arrives), what the follower forwarded to the old one
    is reported `unknown` at once instead of waiting for the client's timeout."""
    net = Net()
    leader = net.elect(1)
    net.submit(2, 7, b"d=4")
    net.drop(of_type(Forward))  # lost on the way
    net.step(2, Prepare(3, leader.ballot.successor(3), first=1))
    assert (net.outcomes[2][7].ok, net.outcomes[2][7].unknown) == (False, True)


def test_only_the_leader_a_command_was_forwarded_to_can_abort_it() -> None:
    """`Aborted` from a member that is not the leader a command was forwarded to, or
    naming a request that was never forwarded (still waiting for a leader), changes
    nothing; from that leader it fails the command fast, as unknown."""
    net = Net()
    net.elect(1)
    net.submit(2, 7, b"d=4")
    net.drop(of_type(Forward))
    net.step(2, Aborted(3, (7,)))  # not the leader it went to
    assert 7 not in net.outcomes[2]
    net.step(2, Aborted(1, (7,)))
    assert (net.outcomes[2][7].ok, net.outcomes[2][7].unknown) == (False, True)
    lonely = Net()
    lonely.submit(2, 9, b"e=5")  # no leader known: not forwarded, waiting for one
    lonely.step(2, Aborted(1, (9,)))
    assert 9 not in lonely.outcomes[2]


def test_a_leader_proposes_no_forwarded_command_that_names_another_origin() -> None:
    """A member forwards only its own clients' commands. A command in member 2's
    Forward that names member 3 as its origin would, once applied at 3, answer 3's
    client request of that id with another command's result: the leader drops it and
    proposes the rest."""
    net = Net()
    net.elect(1)
    ready = net.step(1, Forward(2, (cmd(3, 7, b"x=forged"), cmd(2, 8, b"y=2"))))
    proposed = [c for _, m in ready.send if isinstance(m, Accept) for c in m.value.commands]
    assert proposed and {c.origin for c in proposed} == {2}
    assert all(c.payload != b"x=forged" for c in proposed)


# -------------------------------------------------------------- batching


def test_commands_that_queue_while_the_window_is_full_share_one_slot() -> None:
    """Batching (beyond the seed; the seed's "i-th command" becomes the i-th batch):
    with the window full, commands queue at the leader, and the next free slot takes
    them all, in arrival order, as one value. Each client still gets its own result."""
    net = Net(window=1)
    net.elect(1)
    net.submit(1, 1, b"a=1")
    for rid, payload in ((2, b"b=2"), (3, b"c=3"), (4, b"d=4")):
        net.submit(1, rid, payload)
    net.submit(3, 9, b"e=5")
    net.deliver(of_type(Forward))
    net.settle()
    assert net.applied[1] == [1, 2]
    assert net.values[1][2] == Batch((cmd(1, 2, b"b=2"), cmd(1, 3, b"c=3"), cmd(1, 4, b"d=4"),
                                      cmd(3, 9, b"e=5")))
    assert [net.outcomes[1][r].index for r in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert net.outcomes[3][9] == Outcome(True, b"applied e=5", 5)


def test_max_batch_1_gives_one_command_per_slot() -> None:
    """Batching off (`max_batch=1`): the same queued commands take a slot each."""
    net = Net(window=1, max_batch=1)
    net.elect(1)
    for rid in range(1, 5):
        net.submit(1, rid, b"k=%d" % rid)
    net.settle()
    assert net.applied[1] == [1, 2, 3, 4]
    assert all(len(net.values[1][s].commands) == 1 for s in (1, 2, 3, 4))


def test_a_batch_stops_at_max_batch_bytes() -> None:
    """Batching bounded by size: a batch never grows past `max_batch_bytes`."""
    net = Net(window=1, max_batch_bytes=10)
    net.elect(1)
    net.submit(1, 1, b"first")
    for rid in (2, 3, 4):
        net.submit(1, rid, b"k=%d" % rid + b"....")  # 7 bytes each
    net.settle()
    assert [len(net.values[1][s].commands) for s in net.applied[1]] == [1, 1, 1, 1]


# ------------------------------------------------- persist before send, and restart


def test_promise_leaves_only_after_the_promise_is_durable() -> None:
    """Persist before send (DESIGN; seed 'Algorithm' step 1: a promise must survive a
    crash): the Promise is held until `persisted(seq)` covers the PromiseRecord."""
    net = Net()
    net.slow_disks = {2}
    ballot = Ballot(1, 1)
    ready = net.step(2, Prepare(1, ballot, first=1))
    assert ready.persist == [PromiseRecord(ballot)]
    assert not any(isinstance(m, Promise) for _, m in ready.send)
    net.sync(2)
    assert net.pending(of_type(Promise, src=2)) == [(1, Promise(2, ballot, ()))]


def test_accepted_leaves_only_after_the_accepted_entry_is_durable() -> None:
    """Persist before send (seed 'Algorithm' step 3): an Accepted reports an accepted
    proposal, so it waits for its AcceptRecord, and a `persisted` for an earlier
    record does not release it."""
    net = Net()
    net.slow_disks = {2}
    node = net.nodes[2]
    ballot = Ballot(1, 1)
    first = net.step(2, Prepare(1, ballot, first=1))
    second = net.step(2, Accept(1, ballot, 1, batch(b"k=v"), 0))
    assert second.persist == [AcceptRecord(Entry(1, ballot, batch(b"k=v")))]
    assert second.persist_seq > first.persist_seq
    assert not any(isinstance(m, Accepted) for _, m in second.send)
    early = node.persisted(first.persist_seq)
    assert [type(m) for _, m in early.send] == [Promise]
    late = node.persisted(second.persist_seq)
    assert [m for _, m in late.send] == [Accepted(2, ballot, 1)]


def test_a_candidate_sends_its_prepare_only_after_its_ballot_round_is_durable() -> None:
    """Persist before send for the proposer: the ballot round a candidate uses is
    recorded (RoundRecord) before its Prepare leaves, so that no restart can reuse it."""
    net = Net(prevote=False)
    net.slow_disks = {1}
    net.now = 1.0
    net.tick([1])
    (pending,) = net.unsynced[1]
    assert pending[1] == [RoundRecord(1)]
    assert net.pending(of_type(Prepare)) == []
    net.sync(1)
    assert sorted(d for d, _ in net.pending(of_type(Prepare))) == [1, 2, 3]


def test_a_restarted_replica_keeps_its_promise_and_accepted_entries() -> None:
    """Crash recovery (seed 'Safety Requirements' depend on it): a replica rebuilt from
    its durable records (`ReplicaDurable.apply`) refuses ballots below its promise and
    reports the same accepted entries; what was not durable at the crash is gone, and
    neither was any message that reported it ever sent."""
    net = Net()
    b1, b2 = Ballot(1, 1), Ballot(2, 3)
    net.step(2, Prepare(1, b1, first=1))
    net.step(2, Accept(1, b1, 1, batch(b"k=1"), 0))
    net.step(2, Accept(1, b1, 2, batch(b"k=2"), 0))
    net.slow_disks = {2}
    net.step(2, Prepare(3, b2, first=1))  # promised, but the record is not yet durable
    assert net.pending(of_type(Promise, dst=3)) == []
    net.drop()

    node = net.restart(2)
    assert node.promised == b1
    assert node.accepted == {1: Entry(1, b1, batch(b"k=1")), 2: Entry(2, b1, batch(b"k=2"))}
    ready = net.step(2, Prepare(1, Ballot(1, 0), first=1))  # below the promise
    assert [m for _, m in ready.send] == [Rejected(2, Ballot(1, 0), b1)]
    net.slow_disks = set()
    net.step(2, Prepare(3, b2, first=2))
    (promise,) = [m for _, m in net.pending(of_type(Promise, dst=3))]
    assert isinstance(promise, Promise)
    assert promise.entries == (Entry(2, b1, batch(b"k=2")),)


def test_a_restarted_replica_never_reuses_a_ballot_round_nobody_else_saw() -> None:
    """Ballots are unique (seed 'Write (as a proposer)': the sequence number tells
    proposals apart): a replica that used round r, even if its Prepare reached nobody,
    uses a higher round after a restart."""
    net = Net(prevote=False)
    net.now = 1.0
    net.tick([1])
    (first,) = {m.ballot for _, m in net.pending(of_type(Prepare))}
    net.drop()
    net.restart(1)
    net.now += 1.0
    net.tick([1])
    (second,) = {m.ballot for _, m in net.pending(of_type(Prepare))}
    assert second.round > first.round


def test_a_caught_up_chosen_value_still_loads_after_a_late_accept_of_an_older_ballot(
        tmp_path: Path) -> None:
    """A legal history in a cluster of five, seen by replica 2:

    - ballot 1.1: leader 1 proposes v in slot 1; only 1 and 2 accept it.
    - ballot 2.3: leader 3 (phase 1 with 3, 4, 5: nothing accepted) proposes a no-op in
      slot 1; only 3 accepts it, its Accept to 2 is delayed.
    - ballot 3.4: leader 4 (phase 1 with 1, 4, 5: 1 reports v) proposes v; 1, 4 and 5
      accept it: v is chosen. Replica 2 catches up from 4 and learns v chosen. In a
      driver that hands messages over as objects (the simulator, the hand-driven tests)
      that v is the very object replica 2 accepted in ballot 1.1.
    - the delayed Accept of ballot 2.3 reaches replica 2, which has promised nothing
      higher than 1.1, so it accepts it: its accepted entry for slot 1 is now the no-op.

    Slot 1's chosen value is v, in memory and after a restart. (A chosen row kept as a
    reference to the accepted row loaded the no-op: a different value than was chosen.)
    """
    config = ReplicaConfig.majority((1, 2, 3, 4, 5))
    store = SqliteLogStore.open(tmp_path / "log.db", node_id=2, cluster_id="c")
    replica = Replica(2, config, random.Random(0), KVMachine())

    def obey(ready: LogReady) -> None:
        store.append(ready.persist)
        replica.persisted(ready.persist_seq)

    v = Batch((Command(1, 1, kv_request(Request("c", 1, Put("k", b"v")))),))
    obey(replica.step(Accept(1, Ballot(1, 1), 1, v, 0), 1.0))
    obey(replica.step(Chosen(4, (Decided(1, v),), 1), 1.1))
    obey(replica.step(Accept(3, Ballot(2, 3), 1, NOOP, 0), 1.2))
    assert replica.accepted[1].value == NOOP  # legal: 2 never promised 3.4
    assert replica.chosen[1] == v
    store.close()
    with SqliteLogStore.open(tmp_path / "log.db", node_id=2, cluster_id="c") as reopened:
        assert reopened.load().chosen[1] == v


# ------------------------------------------------- bounded state and message sizes


def test_a_single_member_leader_does_not_accumulate_heartbeat_rounds() -> None:
    """A leader keeps the acks of the last heartbeat rounds only, even when it is its
    own quorum and every round is acked at once."""
    net = Net((1,))
    net.elect(1)
    for _ in range(1000):  # 20 s of heartbeats
        net.tick([1], dt=net.cfg.heartbeat_interval)
        net.deliver()
    assert net.nodes[1].is_leader
    assert len(net.nodes[1].election.acks) <= 2, f"{len(net.nodes[1].election.acks)} rounds kept"


def test_cancelled_commands_do_not_pile_up_on_a_replica_without_a_leader() -> None:
    net = Net()
    net.elect(1)
    net.settle(rounds=2)
    cut = touching(3)
    net.now += 2 * net.cfg.election_timeout + 0.01
    net.tick([3])  # node 3 loses its leader; it cannot elect anyone alone
    net.drop(cut)
    assert net.nodes[3].leader is None
    for rid in range(1, 2001):  # clients time out and retry, again and again
        net.submit(3, rid, b"k=" + b"v" * 1000)
        net.nodes[3].cancel(rid)
        net.drop(cut)
    pending = len(net.nodes[3].pipeline.unrouted)
    assert pending == 0, f"{pending} abandoned commands still queued on node 3"


def test_a_catch_up_reply_fits_in_one_transport_frame() -> None:
    big = b"v" * ((1 << 20) - 64)  # one command just under max_command
    chosen = {s: Batch((Command(9, s, big),)) for s in range(1, 65)}
    cfg = ReplicaConfig.majority((1, 2, 3))
    source = Replica(1, cfg, random.Random(0), Memo(),  # type: ignore[arg-type]
                     ReplicaDurable(chosen=chosen))
    ready = source.step(CatchUp(2, 1), 0.0)
    replies = [m for _, m in ready.send if isinstance(m, Chosen)]
    assert replies
    sizes = [len(encode(m)) for m in replies]
    assert max(sizes) <= DEFAULT_MAX_FRAME, f"{max(sizes)} bytes > {DEFAULT_MAX_FRAME}"


# ------------------------------------------------------------ bad input


def test_a_command_larger_than_max_command_is_refused_and_never_reaches_the_log() -> None:
    """Bad input: a command over `max_command` bytes gets a clear error outcome that
    is not `unknown` (it will never take effect), at the leader or a follower, and
    nothing is proposed or forwarded."""
    net = Net(max_command=16)
    net.elect(1)
    big = b"k=" + b"x" * 15
    for node in (1, 2):
        before = len(net.sent)
        ready = net.submit(node, 1, big)
        ((rid, outcome),) = ready.outcomes
        assert rid == 1 and not outcome.ok and not outcome.unknown
        assert "too large" in outcome.error and "17" in outcome.error
        assert net.sent[before:] == []
    net.submit(2, 2, b"k=small")
    net.settle()
    assert net.applied[1] == [1]
    assert all(c.payload != big for v in net.values[1].values() for c in v.commands)


def _snapshot(node: Replica) -> tuple[object, ...]:
    return (node.role, node.leader, node.promised, node.commit, node.applied,
            node.next_slot, node.durable())


GARBAGE = [
    b"",
    b"\x00",
    b"\xff" * 8,
    b"not msgpack at all",
    msgspec.msgpack.encode({"t": "prepare", "src": 2}),
    msgspec.msgpack.encode(["prepare", 2, [MAX_ROUND + 1, 2], 1, []]),
    msgspec.msgpack.encode(["accept", 2, [1, 2], 0, [[]], 0]),
    msgspec.msgpack.encode(["heartbeat", -1, [1, 2], 0, 0]),
    msgspec.msgpack.encode(["nonsense", 2]),
    encode(Heartbeat(2, Ballot(1, 2), 0, 0))[:-1],
]


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_bytes_are_counted_and_change_nothing(data: bytes) -> None:
    """Bad input: bytes that are not a well-formed message are dropped and counted
    (`dropped`); the replica's state and effects are untouched."""
    net = Net()
    net.elect(1)
    for node in net.nodes.values():
        before = _snapshot(node)
        dropped = node.dropped
        ready = node.receive(data, net.now)
        assert node.dropped == dropped + 1
        assert (ready.send, ready.persist, ready.outcomes, ready.applied) == ([], [], [], [])
        assert _snapshot(node) == before


def test_a_message_from_a_non_member_is_dropped() -> None:
    """Bad input: only members take part. A Prepare from id 9, however high its
    ballot, is dropped whether it comes decoded or as bytes: no promise, no reply."""
    net = Net()
    net.elect(1)
    prepare = Prepare(9, Ballot(MAX_ROUND, 9), first=1)
    for node in net.nodes.values():
        before = _snapshot(node)
        for ready in (node.step(prepare, net.now), node.receive(encode(prepare), net.now)):
            assert (ready.send, ready.persist) == ([], [])
        assert node.dropped == 2
        assert _snapshot(node) == before


# ------------------------------------------------- a state machine whose apply raises


class Fragile:
    """A machine whose `apply` raises on `boom`."""

    def __init__(self) -> None:
        self.memo = Memo()

    def apply(self, command: bytes, index: int) -> bytes:
        if command == b"boom":
            raise ValueError(f"cannot apply {command!r} at {index}")
        return self.memo.apply(command, index)

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass


class Results:
    """Records what each `apply` returned (around `SafeApply`, which has no `query`)."""

    def __init__(self) -> None:
        self.fragile = Fragile()
        self.safe = SafeApply(self.fragile)
        self.results: list[tuple[int, bytes]] = []

    def apply(self, command: bytes, index: int) -> bytes:
        result = self.safe.apply(command, index)
        self.results.append((index, result))
        return result

    def query(self, query: bytes) -> bytes:
        return self.fragile.memo.query(query)


def test_a_command_that_makes_apply_raise_gives_the_same_error_everywhere_and_life_goes_on(
) -> None:
    """Bad input that only the state machine can judge: the log is agreed on before
    anyone looks inside a command, so a command whose `apply` raises is still chosen.
    Wrapped in `SafeApply`, every replica records the same error result for it and
    goes on to apply the next command normally."""
    machines = {i: Results() for i in MEMBERS}
    net = Net(machines=dict(machines))
    net.elect(1)
    net.submit(2, 1, b"boom")
    net.settle()
    net.submit(3, 2, b"k=after")
    net.settle()
    expected = [(1, b"error: ValueError: cannot apply b'boom' at 1"), (2, b"applied k=after")]
    assert [m.results for m in machines.values()] == [expected] * 3
    assert net.outcomes[2][1] == Outcome(True, expected[0][1], 1)
    assert net.outcomes[3][2] == Outcome(True, b"applied k=after", 2)
    assert all(m.fragile.memo.data == {b"k": b"after"} for m in machines.values())


def test_a_replica_running_a_safeapply_wrapped_machine_can_serve_reads() -> None:
    """`SafeApply` is how a faulty machine is kept from stopping a replica, but the
    replica also calls `machine.query` for reads outside the log; the wrapper must pass
    it through, or the wrapped replica crashes on the first read."""
    net = Net(machines={i: SafeApply(KVMachine()) for i in MEMBERS})
    net.elect(1)
    net.submit(1, 1, kv_request(Request("c", 1, Put("k", b"v"))))
    net.settle()
    ready = net.read(1, 2, encode_query("k"), "stale")
    ((_, outcome),) = ready.outcomes
    result = decode_result(outcome.result)
    assert isinstance(result, Ok) and result.value == b"v"


# ------------------------------------------------------------ invariants


class CheckedNet(Net):
    """`Net` that asserts every replica's invariants after each of its events."""

    def obey(self, i: int, ready: LogReady) -> LogReady:
        ready = super().obey(i, ready)
        self.nodes[i].check_invariants()
        return ready


def test_every_units_invariants_hold_after_each_event_through_elections_writes_and_reads(
) -> None:
    """The invariants the units state on their fields (commit <= max chosen, applied <=
    commit, slots in flight in the current ballot, promised >= every accepted ballot,
    reads only queued at a leader, ...) hold after every event of a run with an
    election, pipelined writes at the leader and a follower, reads of every mode, a
    slow disk, a leader change and a catch-up."""
    net = CheckedNet()
    net.elect(1)
    for k in range(1, 8):
        net.submit(1 + k % 3, k, b"x=%d" % k)
    net.read(2, 50, b"x", "linearizable")
    net.read(3, 51, b"x", "quorum")
    net.slow_disks.add(2)
    net.settle()
    net.sync(2)
    net.slow_disks.clear()
    net.settle()
    assert net.outcomes[2][50].ok and net.outcomes[3][51].ok
    cut = touching(1)
    net.now += 2 * net.cfg.election_timeout + 0.01
    net.tick([2])
    net.settle(cut=cut)
    assert net.nodes[2].is_leader
    net.submit(2, 60, b"y=1")
    net.settle(cut=cut)
    net.settle()
    assert net.values[1] == net.values[2] == net.values[3]
    for node in net.nodes.values():
        node.check_invariants()


@pytest.mark.parametrize("corrupt", [
    "commit beyond chosen", "applied beyond commit", "promised below accepted",
    "slot in flight of another ballot", "role disagrees with stage", "read queued at follower",
])
def test_check_invariants_fires_on_a_corrupted_state(corrupt: str) -> None:
    net = Net()
    leader = net.elect(1)
    net.submit(1, 1, b"x=1")
    net.deliver(but_not(of_type(Accepted)))  # slot 1 accepted everywhere, still in flight
    follower = net.nodes[2]
    for node in net.nodes.values():
        node.check_invariants()
    if corrupt == "commit beyond chosen":
        follower.log.commit = follower.log.max_chosen + 1
    elif corrupt == "applied beyond commit":
        follower.log.applied = follower.log.commit + 1
    elif corrupt == "promised below accepted":
        follower.acceptor.promised = Ballot(0, 0)
        follower.acceptor.highest_seen = Ballot(0, 0)
    elif corrupt == "slot in flight of another ballot":
        next(iter(leader.pipeline.inflight.values())).ballot = Ballot(0, 1)
        follower = leader
    elif corrupt == "role disagrees with stage":
        follower.election.role = Role.LEADER
    else:
        follower.reads.unsent.append((2, 9))
    with pytest.raises(AssertionError):
        follower.check_invariants()
