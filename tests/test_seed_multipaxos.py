"""The seed's "Multi-Paxos" section as scenario tests of the pure `Replica`.

Every test's name states a behaviour and its docstring names, in our own
words, the seed rule it proves and the section it comes from. The tests drive
`Replica` objects by hand through `Net`, a tiny network in `harness.py`: it
delivers the messages of each `LogReady.send` in the order a test chooses,
makes records durable (at once, or when the test says) before calling
`persisted(persist_seq)`, and moves the clock for `tick`. Behaviour beyond the
seed is in `test_replica.py` (fail-fast, batching, persistence, bounded state,
bad input) and `test_replica_reads.py` (the read modes), over the same harness.
"""

from __future__ import annotations

from harness import (
    MEMBERS,
    Memo,
    Net,
    accept_for,
    accepted_for,
    batch,
    but_not,
    chosen_prefix,
    cmd,
    either,
    everything,
    of_type,
    touching,
)
from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos import (
    LogReady,
    Outcome,
    Role,
)
from pnyx.protocol.multipaxos.election import Stage
from pnyx.protocol.multipaxos.messages import (
    NOOP,
    Accept,
    Accepted,
    CatchUp,
    Chosen,
    Decided,
    Entry,
    Forward,
    Heartbeat,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Rejected,
)
from pnyx.protocol.multipaxos.records import LogRecord, ReplicaDurable, RoundRecord
from pnyx.sim.cluster import ClusterConfig, ClusterSim, simulate_cluster
from pnyx.sim.faults import Fault, FaultConfig

FIVE = (1, 2, 3, 4, 5)


# ------- item 1: a distinguished proposer (election, pre-vote, step-down, forwarding)


def test_election_timeouts_are_randomized_and_the_first_to_expire_becomes_the_leader() -> None:
    """Seed, 'Liveness' and Multi-Paxos item 1: one server is elected to act as the
    distinguished proposer, using randomness and timeouts (FLP). Each replica waits a
    random time in [timeout, 2 x timeout); the first whose wait runs out becomes the
    only leader and the others follow it. Different random draws elect different
    replicas, so no replica is favoured."""
    winners = set()
    for seed in range(8):
        net = Net(rng_seed=seed)
        t = net.cfg.election_timeout
        wakes = {i: n.tick(0.0).wake_at for i, n in net.nodes.items()}
        assert all(w is not None and t <= w < 2 * t for w in wakes.values())
        assert len(set(wakes.values())) == 3
        first = min(wakes, key=lambda i: wakes[i] or 0.0)
        net.now = wakes[first] or 0.0
        net.tick()  # everyone is ticked; only `first` has timed out
        net.deliver()
        assert net.leaders() == [first]
        assert all(n.leader == first for n in net.nodes.values())
        winners.add(first)
    assert len(winners) > 1


def test_a_replica_is_a_pre_candidate_until_a_quorum_grants_its_prevote() -> None:
    """Seed, 'Liveness' (a distinguished proposer): a replica whose election timer runs
    out first becomes a pre-candidate: it asks for pre-votes, still a follower to the
    outside, and burns no ballot round; only a quorum of grants makes it a candidate
    that sends Prepare, and a quorum of promises the leader."""
    net = Net()
    net.now = 2 * net.cfg.election_timeout + 0.01
    net.tick([1])
    node = net.nodes[1]
    assert node.election.stage is Stage.PRE_CANDIDATE and node.role is Role.FOLLOWER
    assert node.last_round == 0 and net.sent_by(Prepare) == []
    net.deliver(of_type(PreVote, dst=2))
    net.deliver(of_type(PreVoteReply, src=2))
    assert node.election.stage is Stage.CANDIDATE and node.role is Role.CANDIDATE
    assert node.last_round == 1 and len(net.sent_by(Prepare)) == 3
    net.deliver(but_not(of_type(PreVote, PreVoteReply)))
    assert node.election.stage is Stage.LEADER and node.is_leader


def test_with_prevote_a_replica_that_hears_a_healthy_leader_refuses_a_prevote() -> None:
    """Seed, 'Liveness': only the distinguished proposer should issue proposals, or
    proposers duel. A replica cut off from the leader asks first (PreVote) whether
    others miss the leader too; replicas that hear the leader say no, so it never runs
    phase 1, burns no ballot round, and the leader keeps its ballot."""
    net = Net()
    leader = net.elect(1)
    ballot = leader.ballot
    for _ in range(15):  # 0.3 s of heartbeats that never reach node 3
        net.tick([1, 2], dt=net.cfg.heartbeat_interval)
        net.drop(touching(3))
        net.deliver()
    net.tick([3])
    prevotes = net.pending(of_type(PreVote, src=3))
    assert sorted(d for d, _ in prevotes) == [1, 2]
    net.deliver(of_type(PreVote, src=3))
    replies = net.pending(of_type(PreVoteReply, dst=3))
    assert len(replies) == 2
    assert not any(isinstance(m, PreVoteReply) and m.granted for _, m in replies)
    net.deliver()
    assert net.sent_by(Prepare, src=3) == []
    assert net.nodes[3].last_round == 0
    assert not any(isinstance(r, RoundRecord) for _, rs in net.unsynced[3] for r in rs)
    assert net.disks[3].last_round == 0
    assert net.leaders() == [1] and leader.ballot == ballot
    net.settle()
    assert net.nodes[3].leader == 1


def test_without_prevote_a_cut_off_replica_deposes_the_healthy_leader_when_it_returns() -> None:
    """Seed, 'Liveness' (the duel that pre-vote prevents): with `prevote=False` the cut
    off replica runs phase 1 on its own with higher and higher ballots, and once the
    network heals its higher ballot makes the healthy leader step down."""
    net = Net(prevote=False)
    leader = net.elect(1)
    for _ in range(15):
        net.tick(dt=net.cfg.heartbeat_interval)
        net.drop(touching(3))
        net.deliver()
    assert net.sent_by(Prepare, src=3), "node 3 ran phase 1 on its own"
    assert leader.is_leader and net.nodes[3].last_round > leader.ballot.round
    net.tick([3], dt=0.3)  # the network is whole again
    net.deliver()
    assert not leader.is_leader
    assert net.leaders() == [3]


def test_a_leader_that_sees_a_higher_ballot_in_a_prepare_steps_down() -> None:
    """Seed, 'Algorithm' step 1 (promise never to accept less than n) with Multi-Paxos
    item 1: a leader that receives a Prepare with a higher ballot promises it and stops
    being the distinguished proposer."""
    net = Net()
    leader = net.elect(1)
    higher = leader.ballot.successor(2)
    net.step(1, Prepare(2, higher, first=1))
    assert leader.role is Role.FOLLOWER
    assert leader.promised == higher
    assert net.pending(of_type(Promise, src=1, dst=2))


def test_a_leader_that_is_rejected_for_a_higher_ballot_steps_down() -> None:
    """Seed, 'Algorithm' step 3: an acceptor refuses an Accept whose ballot is lower
    than one it promised; the leader that hears of the higher ballot (Rejected) steps
    down instead of proposing with a ballot that cannot win."""
    net = Net()
    leader = net.elect(1)
    higher = leader.ballot.successor(3)
    net.step(2, Prepare(3, higher, first=1))
    net.drop(of_type(Promise))
    net.submit(1, 1, b"k=v")
    net.deliver(accept_for(1, dst=2))
    assert net.pending(of_type(Rejected, dst=1))
    net.deliver(of_type(Rejected, dst=1))
    assert leader.role is Role.FOLLOWER
    assert net.outcomes[1][1].unknown


def test_a_leader_that_hears_a_heartbeat_of_a_higher_ballot_follows_it() -> None:
    """Seed, Multi-Paxos item 1: there is one distinguished proposer; a leader that
    learns of a leader with a higher ballot becomes its follower."""
    net = Net()
    leader = net.elect(1)
    higher = leader.ballot.successor(2)
    net.step(1, Heartbeat(2, higher, 0, 1))
    assert leader.role is Role.FOLLOWER
    assert leader.leader == 2


def test_a_follower_forwards_a_command_to_the_leader_and_answers_once_it_applies_it() -> None:
    """Seed, 'Write (as a proposer)': clients may send writes to any member. A
    follower hands the command to the distinguished proposer (Forward); the client's
    outcome comes from the follower once the follower itself has applied the slot."""
    net = Net()
    net.elect(1)
    net.submit(2, 7, b"k=v")
    forwards = net.pending(of_type(Forward, src=2))
    assert [(d, m.commands) for d, m in forwards] == [(1, (cmd(2, 7, b"k=v"),))]
    assert net.sent_by(Accept, src=2) == []
    net.deliver(but_not(of_type(Heartbeat)))
    assert 1 in net.nodes[1].chosen  # chosen at the leader ...
    assert net.applied[2] == [] and 7 not in net.outcomes[2]  # ... not yet applied at 2
    net.tick([1], dt=net.cfg.heartbeat_interval)
    net.deliver()
    assert net.applied[2] == [1]
    assert net.outcomes[2][7] == Outcome(True, b"applied k=v", 1)
    assert 7 not in net.outcomes[1]


def test_commands_forwarded_together_go_in_messages_of_at_most_a_slots_bytes() -> None:
    """Many commands reaching a follower at once are forwarded in several messages, each
    within `max_batch_bytes` (so each fits in a transport frame), and all are applied."""
    net = Net(max_batch_bytes=100)
    net.elect(1)
    payloads = [b"k%d=" % n + b"v" * 56 for n in range(5)]  # 60 bytes each
    net.obey(2, net.nodes[2].submit_many(list(enumerate(payloads, 10)), net.now))
    forwards = [m for _, m in net.pending(of_type(Forward, src=2))]
    assert len(forwards) == 5  # no two fit in 100 bytes
    assert [c.payload for m in forwards for c in m.commands] == payloads
    net.settle()
    assert sorted(net.outcomes[2]) == list(range(10, 15))
    assert all(o.ok for o in net.outcomes[2].values())


def test_with_no_leader_known_a_follower_given_a_command_starts_the_election_itself() -> None:
    """Seed, 'Write (as a proposer)': the member the client contacted sends the
    prepare itself. With no leader known, a replica given a command does not wait for
    its election timeout: it starts (pre-vote, then phase 1) at once, becomes leader
    and gets the command chosen."""
    net = Net()
    ready = net.submit(2, 1, b"k=v")
    assert net.now == 0.0
    assert {d for d, m in ready.send if isinstance(m, PreVote)} == {1, 3}
    net.deliver()
    assert net.leaders() == [2]
    assert net.outcomes[2][1] == Outcome(True, b"applied k=v", 1)


# ---------------------------------------------------------- pre-vote in the simulator


def _flapping(node: int, cycles: int, start: float = 0.3, cut: float = 0.3,
              whole: float = 0.2) -> tuple[tuple[Fault, ...], float]:
    faults: list[Fault] = []
    t = start
    for _ in range(cycles):
        faults += [Fault(t, "partition", (node,)), Fault(t + cut, "heal", ())]
        t += cut + whole
    return tuple(faults), t


def test_prevote_keeps_a_flapping_replica_from_deposing_the_leader_in_the_simulator() -> None:
    """Seed, 'Liveness' (a distinguished proposer, no duelling): a follower that is cut
    off and let back in six times must not cause elections. With pre-vote the first
    leader stays for the whole run; without it the returning replica deposes the leader
    again and again. Fixed seeds; the follower chosen is not the first leader (found by
    the same seed with no fault: elections settle before the first cut)."""
    for seed in (0, 2):
        calm = ClusterSim(ClusterConfig(seed=seed, ops=10, clients=2,
                                        faults=FaultConfig(until=0.0)))
        calm.run()
        assert calm._leader is not None
        follower = 3 if calm._leader[0] != 3 else 2
        script, until = _flapping(follower, cycles=6)
        runs = {}
        for prevote in (True, False):
            config = ClusterConfig(seed=seed, ops=60, clients=2, prevote=prevote,
                                   leader_partitions=0.0,  # cut off node 3, as scripted
                                   faults=FaultConfig(until=until, script=script))
            result = simulate_cluster(config)
            assert result.safe, [str(v) for v in result.violations]
            assert result.workload_end is not None
            runs[prevote] = result.leader_changes
        assert runs[True] == 1, f"seed {seed}: pre-vote let the flapping replica in"
        assert runs[False] >= 6, f"seed {seed}: {runs}"


# --------------------------------------------------------- phase 1 once for all slots


def test_after_the_election_further_slots_need_only_accepts() -> None:
    """Seed, Multi-Paxos item 2 (and the DESIGN note "phase 1 once for all slots"):
    the new leader's phase 1 covers every slot from its first unknown one on, so each
    later slot takes phase 2 only: no Prepare or Promise after the election."""
    net = Net()
    leader = net.elect(1)
    prepares, promises = len(net.sent_by(Prepare)), len(net.sent_by(Promise))
    assert prepares == 3
    for k in range(1, 11):
        net.submit(1 + k % 3, k, b"k%d=%d" % (k, k))
        net.settle(rounds=1)
    assert (len(net.sent_by(Prepare)), len(net.sent_by(Promise))) == (prepares, promises)
    accepts = [m for _, m in net.sent_by(Accept)]
    assert {m.ballot for m in accepts} == {leader.ballot}
    assert {m.slot for m in accepts} == set(range(1, 11))
    assert all(net.applied[i] == list(range(1, 11)) for i in MEMBERS)


# --------------------------------------------- phase 1 with more than a message holds


def _big_backlog_net() -> Net:
    """Replica 2 accepted slots 1..12 (a 400-byte value each) in ballot 1.3; promises may
    carry 1,000 bytes of values per message, so its promise to a new leader takes parts."""
    old = Ballot(1, 3)
    backlog = {s: Entry(s, old, batch(b"k%d=" % s + b"v" * 400)) for s in range(1, 13)}
    return Net(durable={1: ReplicaDurable(promised=old),
                        2: ReplicaDurable(promised=old, accepted=backlog)},
               promise_bytes=1000)


def test_an_acceptor_with_more_accepted_than_one_message_holds_promises_in_parts() -> None:
    """Phase 1b must report every entry accepted in the prepared range; when they do
    not fit in one message (a transport frame is bounded), the promise comes in parts,
    and the new leader re-proposes the values from all of them."""
    net = _big_backlog_net()
    net.now = 1.0
    net.tick([1])
    net.deliver(of_type(PreVote, PreVoteReply))
    net.drop(touching(3))
    net.deliver(but_not(touching(3)))
    parts = [m for _, m in net.sent_by(Promise, src=2)]
    assert len(parts) > 1 and {m.parts for m in parts} == {len(parts)}
    assert sorted(e.slot for m in parts for e in m.entries) == list(range(1, 13))
    assert net.nodes[1].is_leader
    net.settle(cut=touching(3))
    for s in range(1, 13):
        assert net.values[1][s] == batch(b"k%d=" % s + b"v" * 400), s


def test_a_promise_missing_a_part_does_not_count() -> None:
    """A candidate that lost one part of a promise does not know every entry that
    acceptor accepted, so it must not count that acceptor towards its quorum."""
    net = _big_backlog_net()
    net.now = 1.0
    net.tick([1])
    net.deliver(of_type(PreVote, PreVoteReply))
    net.drop(touching(3))
    net.deliver(of_type(Prepare))
    net.drop(touching(3))
    lost = next(e for e in net.pending(of_type(Promise, src=2)) if e[1].part == 1)
    net.in_flight.remove(lost)
    net.deliver(but_not(touching(3)))
    assert not net.nodes[1].is_leader
    assert not net.outcomes[1]


# ----------------------------------------------------------- item 2: filling the gaps


def test_new_leader_prepares_135_to_137_and_above_139_at_once_then_fills_every_gap() -> None:
    """Seed, Multi-Paxos item 2: a new leader that knows slots 1-134, 138 and 139
    chosen runs phase 1 for 135-137 and for every slot above 139, in ONE Prepare
    (first=135, known=(138, 139)). The promises report what acceptors accepted in
    that range and nothing for 138/139; a slot someone accepted is re-proposed with
    the value of the highest-numbered proposal reported for it (the Basic Paxos value
    rule, per slot); a slot nobody accepted gets a no-op. Then the log has no holes:
    every replica applies slots 1..141, in order."""
    old, older = Ballot(2, 2), Ballot(1, 3)
    v138, v139 = batch(b"x=138"), batch(b"x=139")
    a_old, a_new = batch(b"a=old"), batch(b"a=new")
    c_val, e_val, f_val = batch(b"c=1"), batch(b"e=1"), batch(b"f=1")
    leader_disk = ReplicaDurable(promised=old, chosen={**chosen_prefix(134), 138: v138,
                                                       139: v139})
    disk2 = ReplicaDurable(promised=old, accepted={
        135: Entry(135, older, a_old), 137: Entry(137, older, c_val),
        138: Entry(138, older, v138), 140: Entry(140, older, e_val)})
    disk3 = ReplicaDurable(promised=old, accepted={
        135: Entry(135, old, a_new), 139: Entry(139, old, v139), 141: Entry(141, old, f_val)})
    net = Net(durable={1: leader_disk, 2: disk2, 3: disk3})
    assert net.nodes[1].commit == 134

    net.now = 1.0
    net.tick([1])
    net.deliver(of_type(PreVote, PreVoteReply))
    prepares = net.sent_by(Prepare)
    assert sorted(d for d, _ in prepares) == [1, 2, 3], "one Prepare per member, no more"
    ballot = Ballot(3, 1)
    assert {m for _, m in prepares} == {Prepare(1, ballot, first=135, known=(138, 139))}

    net.deliver(of_type(Prepare, dst=2))
    net.deliver(of_type(Prepare, dst=3))
    promises = {m.src: m for _, m in net.pending(of_type(Promise))}
    assert [e.slot for e in promises[2].entries] == [135, 137, 140]  # not 138
    assert [e.slot for e in promises[3].entries] == [135, 141]  # not 139

    net.deliver(of_type(Promise, src=2))
    net.deliver(of_type(Promise, src=3))
    assert net.nodes[1].is_leader
    proposed = {m.slot: m.value for _, m in net.pending(of_type(Accept, dst=2))}
    assert proposed == {135: a_new, 136: NOOP, 137: c_val, 140: e_val, 141: f_val}
    assert all(m.ballot == ballot for _, m in net.pending(of_type(Accept)))

    net.settle()
    for i in MEMBERS:
        assert net.applied[i] == list(range(1, 142)), f"node {i} has holes or disorder"
        assert net.values[i][136] == NOOP
        assert (net.values[i][135], net.values[i][138], net.values[i][139]) == (
            a_new, v138, v139)
        memo = net.machines[i]
        assert isinstance(memo, Memo)
        assert [p for _, p in memo.log][-7:] == [  # 136 is a no-op: nothing applied
            b"s134=134", b"a=new", b"c=1", b"x=138", b"x=139", b"e=1", b"f=1"]
        assert [ix for ix, _ in memo.log] == list(range(1, len(memo.log) + 1))


def test_slot_accepted_only_in_a_lower_ballot_by_the_leader_itself_loses_to_a_higher_one(
) -> None:
    """Seed, 'Algorithm' phase 1 applied per slot (Multi-Paxos item 2): when the
    promise quorum includes the new leader itself, its own accepted entry is just one
    report; the value re-proposed is the one from the highest ballot reported."""
    low, high = Ballot(1, 2), Ballot(2, 3)
    disk1 = ReplicaDurable(promised=high, accepted={1: Entry(1, low, batch(b"k=low"))})
    disk2 = ReplicaDurable(promised=high, accepted={1: Entry(1, high, batch(b"k=high"))})
    net = Net(durable={1: disk1, 2: disk2})
    net.now = 1.0
    net.tick([1])
    net.deliver(of_type(PreVote, PreVoteReply))
    net.drop(of_type(Prepare, dst=3))
    net.deliver()
    assert net.nodes[1].is_leader
    net.settle()
    assert net.values[1][1] == batch(b"k=high")
    assert net.values[2][1] == batch(b"k=high")


# ----------------------------------------------------------------- item 3: pipelining


def _leader_at_141(window: int) -> Net:
    net = Net(durable={i: ReplicaDurable(chosen=chosen_prefix(140)) for i in MEMBERS},
              window=window)
    net.elect(1)
    assert net.nodes[1].next_slot == 141
    return net


def test_leader_proposes_142_before_it_learns_141_is_chosen() -> None:
    """Seed, Multi-Paxos item 3: the leader may propose command 142 before it learns
    that its command 141 was chosen. With a window of slots in flight, the Accept
    for 142 leaves while nothing has come back for 141."""
    net = _leader_at_141(window=32)
    net.submit(1, 1, b"k=141")
    net.submit(1, 2, b"k=142")
    leader = net.nodes[1]
    assert leader.commit == 140 and 141 not in leader.chosen
    slots = [m.slot for _, m in net.pending(of_type(Accept, dst=2))]
    assert slots == [141, 142]
    net.settle()
    assert net.applied[2][-2:] == [141, 142]
    assert net.outcomes[1][2].ok and net.outcomes[1][2].index == 142


def test_with_window_1_the_leader_waits_for_141_before_proposing_142() -> None:
    """Seed, Multi-Paxos item 3, the other way round: the window bounds the
    pipelining, and with `window=1` the Accept for 142 waits until 141 is chosen."""
    net = _leader_at_141(window=1)
    net.submit(1, 1, b"k=141")
    net.submit(1, 2, b"k=142")
    assert [m.slot for _, m in net.pending(of_type(Accept, dst=2))] == [141]
    net.deliver(accept_for(141))
    assert net.pending(accept_for(142)) == []
    net.deliver(accepted_for(141, src=1))
    assert net.pending(accept_for(142)) == [], "one vote is not a quorum"
    net.deliver(accepted_for(141, src=2))
    assert 141 in net.nodes[1].chosen
    accepts = net.pending(accept_for(142))
    assert accepts and all(isinstance(m, Accept) and m.commit == 141 for _, m in accepts)


# ---------------------------------------- learning: the commit point, order, catch-up


def test_followers_learn_the_commit_point_from_the_next_accept() -> None:
    """Seed, Multi-Paxos item 1: the leader is the learner and tells the others. A
    follower does not know slot 1 is chosen from its own Accepted; it learns it from
    the `commit` on the leader's next Accept, and applies it then."""
    net = Net(window=1)
    net.elect(1)
    net.submit(1, 1, b"a=1")
    net.submit(1, 2, b"b=2")  # waits for the window
    net.deliver(either(accept_for(1), of_type(Accepted)))
    assert net.nodes[1].commit == 1 and net.applied[1] == [1]
    assert net.applied[2] == [] and net.applied[3] == []
    nxt = net.pending(accept_for(2, dst=2))
    assert [m.commit for _, m in nxt if isinstance(m, Accept)] == [1]
    net.deliver(accept_for(2, dst=2))
    assert net.applied[2] == [1]
    assert net.applied[3] == []


def test_followers_learn_the_commit_point_from_a_heartbeat() -> None:
    """Seed, Multi-Paxos item 1 (the leader as learner, informing the others): with no
    further command to carry it, a Heartbeat carries the commit point."""
    net = Net()
    net.elect(1)
    net.submit(1, 1, b"a=1")
    net.deliver(either(of_type(Accept), of_type(Accepted)))
    assert net.nodes[1].commit == 1
    assert net.applied[3] == []
    net.tick([1], dt=net.cfg.heartbeat_interval)
    hbs = net.pending(of_type(Heartbeat, dst=3))
    assert hbs and all(isinstance(m, Heartbeat) and m.commit == 1 for _, m in hbs)
    net.deliver(of_type(Heartbeat, dst=3))
    assert net.applied[3] == [1]


def test_slots_are_applied_strictly_in_order_and_once_however_messages_arrive() -> None:
    """Seed, Multi-Paxos opening: every server executes the same sequence of commands,
    the i-th chosen value being the i-th command. Slots chosen out of order wait for
    the ones before them; reordered and duplicated messages apply nothing twice."""
    net = Net()
    net.elect(1)
    for k in (1, 2, 3):
        net.submit(1, k, b"k=%d" % k)
    for slot in (3, 2):  # the later slots are chosen first at the leader
        net.deliver(accept_for(slot, dst=2))
        net.deliver(accept_for(slot, dst=1))
        net.deliver(either(accepted_for(slot, src=1), accepted_for(slot, src=2)))
    leader = net.nodes[1]
    assert {2, 3} <= set(leader.chosen) and leader.commit == 0
    assert net.applied[1] == [], "slot 2 and 3 must wait for slot 1"
    net.duplicate(everything)
    net.deliver()
    assert net.applied[1] == [1, 2, 3]
    for _ in range(2):
        net.tick([1], dt=net.cfg.heartbeat_interval)
        net.duplicate(everything)
        net.deliver()
    for i in MEMBERS:
        assert net.applied[i] == [1, 2, 3]
        memo = net.machines[i]
        assert isinstance(memo, Memo)
        assert memo.log == [(1, b"k=1"), (2, b"k=2"), (3, b"k=3")]


def test_a_follower_never_takes_its_own_value_from_an_older_ballot_as_chosen() -> None:
    """Seed, 'Safety Requirements' 3 (a process never learns a value was chosen unless
    it was): told that slot 1 is chosen, a follower that accepted something in slot 1
    under an older ballot cannot know it is the chosen value. It fetches the chosen
    value instead of applying its own."""
    old = Ballot(1, 2)
    durable = {1: ReplicaDurable(promised=old), 2: ReplicaDurable(promised=old),
               3: ReplicaDurable(promised=old,
                                 accepted={1: Entry(1, old, batch(b"x=stale"))})}
    net = Net(durable=durable)
    net.now = 1.0
    net.tick([1])
    net.deliver(of_type(PreVote, PreVoteReply))
    net.drop(of_type(Prepare, dst=3))
    net.deliver()
    assert net.nodes[1].is_leader
    net.submit(1, 1, b"x=new")
    net.deliver(but_not(of_type(Accept, dst=3)))
    net.drop(of_type(Accept, dst=3))
    net.settle()
    # Slot 1 holds whatever the leader chose there (the new command, or a no-op that
    # closes node 3's orphaned slot); never node 3's stale value.
    assert net.values[3] == net.values[1]
    assert cmd(1, 1, b"x=new") in [c for v in net.values[3].values() for c in v.commands]
    memo = net.machines[3]
    assert isinstance(memo, Memo) and [p for _, p in memo.log] == [b"x=new"]


def test_a_follower_never_learns_from_commit_a_value_that_was_not_chosen() -> None:
    """Five replicas. Node 1 is elected while it still has a catch-up pending
    (`_catchup_at` survives the election, so as leader it keeps sending CatchUp to
    random peers every heartbeat). It proposes slot 2 = x=w (a client's write at
    node 2); only nodes 1 and 2 accept it: not chosen. A partition {1,2} | {3,4,5}
    elects node 4, which chooses slot 2 = x=v. Before node 1 notices it is deposed
    (it steps down only after 2 x election_timeout), one of its CatchUp requests
    reaches the majority side: the `Chosen` reply teaches node 1 that slot 2 is
    chosen (as x=v), so its next Heartbeat would carry commit=2 in its old ballot, and
    node 2, which accepted (2, that ballot, x=w), would take that entry as the chosen
    value: it would apply x=w in slot 2 and tell its client the write succeeded, while
    every other replica applies x=v there. A leader learns slots only through its own
    phase 2, never from catch-up, so node 2 applies x=v or nothing in slot 2."""
    net = Net(FIVE)
    hb = net.cfg.heartbeat_interval
    catching_up = of_type(CatchUp, Chosen)

    # Node 3 leads; slot 1 is chosen without node 1, whose catch-up request is lost.
    net.elect(3)
    net.submit(3, 1, b"x=0")
    net.drop(of_type(Accept, dst=1))
    net.deliver(but_not(catching_up))
    net.drop(catching_up)
    assert net.nodes[1].commit == 0 and net.nodes[1].log.catchup_at is not None

    # Node 3 is cut off; node 1 is elected by 1, 2, 4, 5 (and recovers slot 1).
    net.now += 2 * net.cfg.election_timeout + 0.01
    net.tick([1])
    cut3 = touching(3)
    net.drop(cut3)
    net.deliver(but_not(either(cut3, catching_up)))
    net.drop(either(cut3, catching_up))
    assert 1 in net.leaders() and net.nodes[1].commit == 1
    old_ballot = net.nodes[1].ballot

    # A client at node 2 writes x=w: slot 2, accepted by nodes 1 and 2 only (not chosen).
    across = lambda d, m: (d in (1, 2)) != (m.src in (1, 2))  # noqa: E731
    net.submit(2, 7, b"x=w")
    net.deliver(of_type(Forward))
    net.drop(across)
    net.deliver(of_type(Accept))
    net.deliver(of_type(Accepted))
    net.drop(across)
    assert net.nodes[2].accepted[2].ballot == old_ballot
    assert 2 not in net.nodes[1].chosen

    # The partition {1,2} | {3,4,5}: node 4 is elected there and chooses x=v in slot 2.
    net.now = max(net.nodes[4].election.election_at, net.now + net.cfg.election_timeout)
    assert net.now - net.nodes[1].election.quorum_seen_at < 2 * net.cfg.election_timeout
    majority = lambda d, m: d in (3, 4, 5) and m.src in (3, 4, 5)  # noqa: E731
    net.tick([3, 4, 5])
    net.drop(but_not(majority))
    net.deliver(majority)
    assert 4 in net.leaders()
    net.submit(4, 1, b"x=v")
    net.deliver(majority)
    net.drop(but_not(majority))
    assert all(net.values[i][2].commands[0].payload == b"x=v" for i in (3, 4, 5))

    # Node 1, still leader in its own eyes, gets one catch-up answer across the cut.
    for _ in range(10):
        net.tick([1], dt=0.005)
        net.deliver(catching_up)
        net.drop(lambda d, m: d not in (1, 2))
        if net.nodes[1].commit >= 2:
            break
    # The fix: a leader learns slots only through its own phase 2, never from catch-up.
    assert net.nodes[1].is_leader and net.nodes[1].commit == 1
    net.tick([1], dt=hb)
    net.deliver(lambda d, m: d in (1, 2) and m.src in (1, 2))

    # Log agreement: node 2 must not hold anything but x=v in slot 2 ...
    assert net.values[2].get(2, net.values[4][2]) == net.values[4][2], (
        f"slot 2: node 2 applied {net.values[2].get(2)}, node 4 applied {net.values[4][2]}")
    # ... and the client at node 2 must not be told that x=w took effect.
    outcome = net.outcomes[2].get(7)
    assert outcome is None or not outcome.ok, outcome


def test_a_follower_that_missed_the_accepts_catches_up_in_chunks() -> None:
    """Seed, Multi-Paxos item 1 (learning chosen values) and 'Learning a chosen
    value': a replica that missed the Accepts cannot learn the values from the commit
    point alone; it asks for them (CatchUp) and gets them (Chosen), chunk by chunk,
    and applies them in order."""
    net = Net(catchup_chunk=2)
    net.elect(1)
    for k in range(1, 6):
        net.submit(1, k, b"k=%d" % k)
        net.deliver(but_not(touching(3)))
        net.drop(touching(3))
    assert net.applied[3] == []
    net.tick([1], dt=net.cfg.heartbeat_interval)
    net.deliver()
    firsts = [m.first for _, m in net.sent_by(CatchUp, src=3)]
    assert firsts == [1, 3, 5]
    chunks = [[d.slot for d in m.entries] for _, m in net.sent_by(Chosen)]
    assert chunks == [[1, 2], [3, 4], [5]]
    assert net.applied[3] == [1, 2, 3, 4, 5]
    assert net.values[3] == net.values[1]


def test_a_catch_up_never_overwrites_a_slot_already_known_chosen() -> None:
    """Seed, safety requirement 1 (only one value can be chosen) and 'Learning a chosen
    value': a slot's chosen value never changes. A `Chosen` message naming another
    value for a slot this replica already knows chosen (here slot 3, known but not yet
    applied, beyond the gap at 2) changes nothing: the known value is kept, recorded
    and applied; only the missing slot 2 is learned from it."""
    a, b, c, forged = batch(b"s=a"), batch(b"s=b"), batch(b"s=c"), batch(b"s=forged")
    net = Net(durable={3: ReplicaDurable(chosen={1: a, 3: c})})
    node = net.nodes[3]
    assert (node.commit, node.applied) == (1, 1)
    net.step(3, Chosen(1, (Decided(1, forged), Decided(2, b), Decided(3, forged)), 3))
    assert node.chosen[1] is a and node.chosen[3] is c
    assert node.durable().chosen == {1: a, 2: b, 3: c}
    assert net.values[3] == {1: a, 2: b, 3: c}
    memo = net.machines[3]
    assert isinstance(memo, Memo) and memo.data[b"s"] == b"c"


def test_a_leader_reelected_with_a_higher_ballot_ignores_accepted_of_its_older_ballot(
) -> None:
    """Seed, 'Learning a chosen value' (chosen = accepted by a majority in ONE
    proposal) and safety requirement 3 (never learn a value chosen unless it is): a
    leader that lost its ballot and won the next one re-proposes its unchosen slot in
    the new ballot; an `Accepted` of its older ballot arriving late must not count
    towards the new ballot's quorum. With 5 members, two acceptances in the new ballot
    and one in the old are three votes, but not a quorum of one ballot."""
    members = (1, 2, 3, 4, 5)
    net = Net(members)
    leader = net.elect(1)
    old = leader.ballot
    net.submit(1, 1, b"x=1")
    slot = leader.next_slot - 1
    net.deliver(accept_for(slot, dst=2))  # node 2 accepts in the old ballot ...
    late = net.pending(accepted_for(slot, src=2))
    assert [m.ballot for _, m in late] == [old]
    net.in_flight = []  # ... and its Accepted is held back, with everything else
    # Cut off from a quorum for two election timeouts, the leader steps down, then runs
    # (and wins) the next election itself.
    net.now += 2 * net.cfg.election_timeout + 0.01
    net.tick([1])
    assert not leader.is_leader
    net.in_flight = []
    net.now += 2 * net.cfg.election_timeout + 0.01
    net.tick([1])
    net.deliver(of_type(PreVote, PreVoteReply, Prepare, Promise))
    assert leader.is_leader and leader.ballot > old
    new = leader.ballot
    net.drop(but_not(accept_for(slot)))
    net.deliver(either(accept_for(slot, dst=1), accept_for(slot, dst=3), accepted_for(slot)))
    assert slot not in leader.chosen  # two votes in the new ballot: not yet
    net.step(1, late[0][1])  # the late Accepted of the old ballot
    assert slot not in leader.chosen, "votes of two ballots were added up"
    assert leader.commit == slot - 1
    net.deliver(either(accept_for(slot, dst=4), accepted_for(slot)))
    assert slot in leader.chosen and leader.ballot == new  # a quorum in one ballot


# ----------------------------------------------------- the chosen record, stored once


def test_a_chosen_record_says_when_its_value_is_the_replicas_own_accepted_one() -> None:
    """A store may keep a chosen slot's value once, as a reference to the accepted entry
    (`ChosenRecord.accepted`); the replica claims so only when that entry, recorded
    before, holds the very value chosen. A replica that learns a slot it never
    accepted (here by catch-up) records the value itself."""
    from pnyx.protocol.multipaxos.records import ChosenRecord

    recorded: dict[int, list[LogRecord]] = {i: [] for i in MEMBERS}

    class RecordingNet(Net):
        def obey(self, i: int, ready: LogReady) -> LogReady:
            recorded[i] += ready.persist
            return super().obey(i, ready)

    net = RecordingNet()
    net.elect(1)
    for n in range(1, 4):
        net.submit(1, n, b"k%d=1" % n)
        net.deliver(but_not(touching(3)))  # replica 3 hears none of it
    net.drop(touching(3))
    net.settle()  # now 3 is back, and catches up
    for n in range(4, 6):
        net.submit(1, n, b"k%d=1" % n)
        net.settle()

    def chosen(i: int) -> dict[int, ChosenRecord]:
        return {r.slot: r for r in recorded[i] if isinstance(r, ChosenRecord)}

    for i in (1, 2):
        assert chosen(i), f"replica {i} recorded nothing chosen"
        assert all(r.accepted for r in chosen(i).values()), i
    caught_up = chosen(3)
    later = {s for s, r in caught_up.items() if r.accepted}
    earlier = {s for s, r in caught_up.items() if not r.accepted}
    assert earlier and later, caught_up  # learned by catch-up / accepted itself
    assert max(earlier) < min(later)
    for i in MEMBERS:
        for slot, r in chosen(i).items():
            entry = net.disks[i].accepted.get(slot)
            if r.accepted:
                assert entry is not None and entry.value == r.value, (i, slot)
