"""Membership change, message by message: the pure `Replica` driven by hand.

Each test states one rule of `pnyx.protocol.multipaxos.membership` (a change chosen
in slot i governs from i + ALPHA), `pipeline` (the leader's refusals, the promotion
of a learner once caught up, filling slots so a change takes effect) or `election`
(every quorum counted in every configuration governing the next slots), with the
tiny network of `harness.Net`, grown by a replica with a new id (`join`).
"""

from __future__ import annotations

import random

from harness import Memo, Net, of_type, touching
from pnyx.protocol.multipaxos import Replica
from pnyx.protocol.multipaxos.effects import InstallSnapshot, SnapshotOp, TakeSnapshot
from pnyx.protocol.multipaxos.membership import ALPHA
from pnyx.protocol.multipaxos.messages import (
    Accept,
    ChangeMembers,
    ChangeRefused,
    Heartbeat,
    Member,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Removed,
)
from pnyx.protocol.multipaxos.outcome import Code
from pnyx.protocol.multipaxos.records import ReplicaDurable, Standing


class MNet(Net):
    """`Net` whose snapshots carry the membership (the node's store keeps it in the
    file; here beside it, by slot, and an installed snapshot takes it from there)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.membership_at: dict[int, bytes] = {}
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _snapshot(self, i: int, op: SnapshotOp) -> None:
        if isinstance(op, TakeSnapshot):
            self.membership_at.setdefault(op.slot, op.membership)
        if isinstance(op, InstallSnapshot):
            staged = self.staged[i]
            assert staged is not None and staged[0] == op.slot
            self.staged[i] = None
            index, body = int.from_bytes(staged[1][:8], "big"), bytes(staged[1][8:])
            self.files[i][op.slot] = (index, body)
            self.machines[i].restore(body)  # type: ignore[attr-defined]
            self.obey(i, self.nodes[i].installed(op.slot, index, len(body) + 8, self.now,
                                                 self.membership_at[op.slot]))
            return
        super()._snapshot(i, op)


def join(net: Net, i: int) -> Replica:
    """Start replica `i`, not a member of the first configuration, on an empty disk
    whose standing is VOTER (a new id never voted)."""
    net.disks[i] = ReplicaDurable(standing=Standing.VOTER)
    net.machines[i] = Memo()
    for table in (net.outcomes, net.snapshot_ops):
        table[i] = {} if table is net.outcomes else []  # type: ignore[assignment]
    net.applied[i], net.values[i], net.unsynced[i] = [], {}, []
    net.files[i], net.staged[i] = {}, None
    node = net.nodes[i] = Replica(i, net.cfg, random.Random(f"join/{i}"), net.machines[i],  # type: ignore[arg-type]
                                  net.disks[i].copy(), now=net.now)
    return node


def change(net: Net, at: int, request_id: int, **what: object) -> None:
    node = net.nodes[at]
    net.obey(at, node.change_members(request_id, node.membership.latest.version,
                                     now=net.now, **what))  # type: ignore[arg-type]


def learner(i: int, promote: bool = False) -> Member:
    return Member(i, peer=f"h{i}:1", voter=False, promote=promote, incarnation=1)


def voters(node: Replica, slot: int) -> set[int]:
    return {m.id for m in node.membership.at(slot).members if m.voter}


# ------------------------------------------------------- elections across configurations


def test_a_voter_of_the_next_configuration_only_grants_pre_votes_so_a_replaced_leader_is_replaced() -> None:  # noqa: E501
    """{1,2,3} -> {1,2,4}: 4 is added as a learner, then one change promotes it and
    removes 3. The leader 1 dies before the slots up to the new configuration's start
    are chosen, so the survivors' next slots are governed by both configurations: a
    candidate needs a quorum of each, and only 4 can complete {1,2,4}'s. 4 votes in
    the next slots, so it must grant its pre-vote (and promise) though it is not a
    voter of the very next slot."""
    net = Net(window=4)
    net.elect(1)
    join(net, 4)
    change(net, 1, 1, add=(learner(4),))
    net.settle(3)
    assert net.outcomes[1][1].ok
    change(net, 1, 2, promote=(4,), remove=(3,))
    net.deliver(lambda d, m: not (isinstance(m, Accept) and m.value.change is None))
    # The change is chosen; the leader's no-ops (filling up to its start) are not.
    assert net.outcomes[1][2].ok, net.outcomes[1][2]
    slot = max(s for s, v in net.values[1].items() if v.change is not None)
    net.deliver(lambda d, m: isinstance(m, Accept) and d != 1)  # commit reaches the followers
    net.drop(touching(1))
    del net.nodes[1]  # 1 dies
    for i in (2, 4):
        assert net.nodes[i].commit >= slot
        first = net.nodes[i].commit + 1
        assert first < slot + ALPHA
        assert voters(net.nodes[i], first) == {1, 2, 3}
        assert voters(net.nodes[i], slot + ALPHA) == {1, 2, 4}
    for _ in range(30):
        net.tick(dt=net.cfg.election_timeout / 2)
        net.deliver(lambda d, m: d != 1)
        net.drop(touching(1))
        if net.leaders():
            break
    assert net.leaders(), "no leader: the voter of the next configuration would not vote"
    leader = net.nodes[net.leaders()[0]]
    assert leader.node_id in (2, 4)
    assert any(isinstance(m, PreVote) for _, m in net.sent)
    net.settle(5, cut=touching(1))
    assert leader.commit >= slot + ALPHA - 1  # the new configuration governs next


def test_a_leader_gets_the_promise_of_a_voter_of_the_new_configuration_that_accepted_its_ballot_as_a_learner() -> None:  # noqa: E501
    """Leader 1 was elected by {1, 2} (3's promise was lost). {1,2,3} -> {1,3,4}: to
    propose in the new configuration's slots it needs promises from a quorum of
    {1,3,4}, so it asks 3 and 4, which have accepted its Accepts in its very ballot
    (4 as a learner): the acceptor promises a ballot equal to its promise again, with
    what it accepted, or the leader could never propose there."""
    net = Net(window=4)
    net.now += 2 * net.cfg.election_timeout + 0.01
    net.tick([1])
    net.deliver(lambda d, m: not isinstance(m, Promise) or m.src != 3)
    net.drop(of_type(Promise, src=3))
    leader = net.nodes[1]
    assert leader.is_leader and leader.election.promised_by == {1, 2}
    join(net, 4)
    change(net, 1, 1, add=(learner(4),))
    net.settle(3)
    change(net, 1, 2, promote=(4,), remove=(2,))
    net.settle(8)
    assert net.outcomes[1][2].ok, net.outcomes[1][2]
    slot = max(s for s, v in net.values[1].items() if v.change is not None)
    assert voters(leader, slot + ALPHA) == {1, 3, 4}
    net.submit(1, 3, b"k=after")
    net.settle(5)
    assert net.outcomes[1].get(3) is not None and net.outcomes[1][3].ok, (
        "the leader never proposed in the new configuration's slots")
    assert leader.commit >= slot + ALPHA
    assert net.nodes[4].machine.data[b"k"] == b"after"  # type: ignore[attr-defined]


def test_a_change_the_leader_refused_leaves_no_trace_in_the_quorums_it_counts() -> None:
    """The leader weighs a change against the configuration it would make (version
    latest + 1) before proposing it. Refused (3 and 5 silent: no live quorum after
    it), that hypothetical configuration must not become the quorums the leader counts
    for the real version latest + 1 (a different change): {1,2,3,4} needs 3 of its
    voters, and learner 5's acceptance completes none."""
    net = Net(window=4)
    net.elect(1)
    for i in (4, 5):
        join(net, i)
    change(net, 1, 1, add=(learner(4), learner(5)))
    net.settle(3)
    assert net.outcomes[1][1].ok
    silent = lambda d, m: m.src in (3, 5) or d in (3, 5)  # noqa: E731
    net.settle(8, cut=silent)
    change(net, 1, 2, promote=(5,))
    assert net.outcomes[1][2].code is Code.REFUSED, net.outcomes[1][2]
    net.settle(3)
    change(net, 1, 3, promote=(4,))
    net.settle(8)
    assert net.outcomes[1][3].ok, net.outcomes[1][3]
    leader = net.nodes[1]
    slot = max(s for s, v in net.values[1].items() if v.change is not None)
    assert voters(leader, slot + ALPHA) == {1, 2, 3, 4}
    assert leader.commit >= slot + ALPHA - 1
    # Only 1, 2 (voters) and 5 (a learner) hear the leader from now on.
    cut = lambda d, m: m.src in (3, 4) or d in (3, 4)  # noqa: E731
    net.submit(1, 4, b"k=two-voters-and-a-learner")
    net.settle(5, cut=cut)
    assert 4 not in net.outcomes[1], "chosen by 2 of {1,2,3,4}'s voters and a learner"
    net.settle(5)
    assert net.outcomes[1][4].ok


def test_a_member_that_was_away_while_every_member_it_knew_was_replaced_catches_up() -> None:
    """3 is cut off from the start while {1,2,3} becomes {3,4,5} (4 and 5 added and
    promoted, then 1 and 2 removed; they stop). 3 knows only the first configuration,
    so it knows none of the replicas still running: it must still hear the new
    leader's heartbeat and the log it fetches from it, learn the configurations from
    that log, and catch up — it is a voter of the configuration in force."""
    net = Net(window=8)
    away = lambda d, m: 3 in (d, m.src)  # noqa: E731
    net.now += 2 * net.cfg.election_timeout + 0.01
    net.tick([1])
    net.deliver(lambda d, m: not away(d, m))
    net.drop(away)
    assert net.nodes[1].is_leader
    for i in (4, 5):
        join(net, i)
    change(net, 1, 1, add=(learner(4, promote=True), learner(5, promote=True)))
    net.settle(12, cut=away)
    leader = net.nodes[1]
    assert voters(leader, leader.commit + ALPHA) == {1, 2, 3, 4, 5}, leader.configs
    change(net, 1, 2, remove=(1, 2))
    net.settle(12, cut=away)
    assert net.outcomes[1][2].ok, net.outcomes[1][2]
    gone = lambda d, m: bool({1, 2} & {d, m.src})  # noqa: E731
    net.drop(gone)
    for i in (1, 2):
        del net.nodes[i]
    for _ in range(40):  # 4 or 5 takes over; 3 is still away
        net.tick(dt=net.cfg.election_timeout / 2)
        net.deliver(lambda d, m: not (away(d, m) or gone(d, m)))
        net.drop(lambda d, m: away(d, m) or gone(d, m))
        if net.leaders():
            break
    assert net.leaders() and net.leaders()[0] in (4, 5)
    new = net.nodes[net.leaders()[0]]
    net.submit(new.node_id, 9, b"k=after")
    net.settle(5, cut=lambda d, m: away(d, m) or gone(d, m))
    assert net.outcomes[new.node_id][9].ok
    assert net.nodes[3].commit == 0
    net.settle(10, cut=gone)  # 3 is back
    assert net.nodes[3].commit == new.commit
    assert net.nodes[3].machine.data[b"k"] == b"after"  # type: ignore[attr-defined]


# ------------------------------------------------------------ learners, promotion


def test_a_learner_catches_up_by_snapshot_and_is_promoted_by_the_leader_only_once_caught_up() -> None:  # noqa: E501
    net = MNet(window=8, snapshot_every=4, snapshot_tail=2, snapshot_chunk=64)
    leader = net.elect(1)
    for k in range(1, 21):
        net.submit(1, k, b"k%d=%d" % (k % 5, k))
        net.deliver()
    join(net, 4)
    cut = touching(4)
    change(net, 1, 100, add=(learner(4, promote=True),))
    net.settle(10, cut=cut)  # 4 hears nothing: the leader fills past ALPHA meanwhile
    assert net.outcomes[1][100].ok
    assert leader.commit >= ALPHA + 20
    assert leader.membership.latest.version == 1  # added; no promotion proposed
    assert 4 not in voters(leader, leader.commit + ALPHA)
    net.settle(12)  # 4 fetches a snapshot, then the log after it; then it is promoted
    node = net.nodes[4]
    assert any(isinstance(op, InstallSnapshot) for op in net.snapshot_ops[4])
    assert node.log.floor > 0 and node.machine.data == net.machines[1].data  # type: ignore[attr-defined]
    promoted = [s for s, v in net.values[1].items()
                if v.change is not None and v.change.promote == (4,)]
    assert len(promoted) == 1, promoted
    p = promoted[0]
    assert net.values[1][p].change.origin == 1  # type: ignore[union-attr]  # the leader's own
    assert leader.membership.latest.version == 2
    assert voters(leader, p + ALPHA) == {1, 2, 3, 4} and leader.membership.latest.start == p + ALPHA
    # Promoted within ALPHA of the commit it was proposed at: 4 had applied by then.
    assert leader.progress[4] >= p - 2 * ALPHA


def test_a_change_chosen_in_slot_i_governs_exactly_from_slot_i_plus_alpha() -> None:
    """{1,2,3} -> {1,2} (3 removed) chosen in slot i: with 2 cut off, 1 and 3 still
    choose every slot up to i + ALPHA - 1, and no slot from i + ALPHA on."""
    net = Net(window=8)
    leader = net.elect(1)
    change(net, 1, 1, remove=(3,))
    net.deliver(lambda d, m: not isinstance(m, Accept) or m.value.change is not None)
    assert net.outcomes[1][1].ok
    i = next(s for s, v in net.values[1].items() if v.change is not None)
    cut = touching(2)
    net.settle(4, cut=cut)
    assert leader.is_leader
    net.submit(1, 2, b"k=v")
    net.settle(2, cut=cut)
    assert leader.commit == i + ALPHA - 1, (leader.commit, i)
    assert 2 not in net.outcomes[1]
    net.settle(3)
    assert net.outcomes[1][2].ok and net.outcomes[1][2].index == 1
    assert max(s for s, v in net.values[1].items() if v.commands) == i + ALPHA


# ------------------------------------------------------- a leader dies mid-change


def test_a_change_accepted_by_a_quorum_when_its_leader_dies_is_completed_by_the_next() -> None:
    net = Net(window=8)
    net.elect(1)
    join(net, 4)
    change(net, 1, 1, add=(learner(4),))
    net.deliver(lambda d, m: isinstance(m, Accept) and d == 2)  # 1 and 2 accepted it
    net.drop(touching(1))
    del net.nodes[1]
    for _ in range(30):
        net.tick(dt=net.cfg.election_timeout / 2)
        net.deliver(lambda d, m: d != 1)
        net.drop(touching(1))
    assert net.leaders() and net.leaders()[0] in (2, 3)
    net.settle(5, cut=touching(1))
    for i in (2, 3, 4):
        node = net.nodes[i]
        assert node.membership.latest.version == 1, i
        assert [s for s, v in net.values[i].items() if v.change is not None] == [
            s for s, v in net.values[2].items() if v.change is not None], i
    assert {m.id for m in net.nodes[3].membership.latest.members} == {1, 2, 3, 4}


def test_a_change_only_its_dead_leader_accepted_is_abandoned_for_a_no_op_everywhere() -> None:
    net = Net(window=8)
    net.elect(1)
    join(net, 4)
    net.obey(2, net.nodes[2].change_members(7, 0, add=(learner(4),), now=net.now))
    net.deliver(lambda d, m: d == 1 and m.src == 2)  # forwarded to the leader
    net.deliver(lambda d, m: d == 1)  # the leader accepts its own proposal
    net.drop(touching(1))
    del net.nodes[1]
    for _ in range(30):
        net.tick(dt=net.cfg.election_timeout / 2)
        net.deliver(lambda d, m: d != 1)
        net.drop(touching(1))
    assert net.leaders()
    net.submit(net.leaders()[0], 8, b"k=v")
    net.settle(5, cut=touching(1))
    for i in (2, 3):
        assert net.nodes[i].membership.latest.version == 0, i
        assert not any(v.change for v in net.values[i].values()), i
    outcome = net.outcomes[2][7]
    assert not outcome.ok and outcome.unknown  # its client may ask again


# ------------------------------------------------------------ refusals, conflicts


def test_two_changes_made_against_one_version_one_applies_the_other_is_a_conflict() -> None:
    net = Net(window=8)
    net.elect(1)
    for i in (4, 5):
        join(net, i)
    net.obey(2, net.nodes[2].change_members(1, 0, add=(learner(4),), now=net.now))
    net.obey(1, net.nodes[1].change_members(2, 0, add=(learner(5),), now=net.now))
    net.settle(5)
    a, b = net.outcomes[2][1], net.outcomes[1][2]
    assert sorted([a.ok, b.ok]) == [False, True], (a, b)
    lost = a if not a.ok else b
    assert lost.code is Code.CONFLICT and "version 1" in lost.error
    assert all(net.nodes[i].membership.latest.version == 1 for i in (1, 2, 3))


def test_removing_every_voter_is_refused_and_so_is_a_change_leaving_no_live_quorum() -> None:
    net = Net(window=8)
    leader = net.elect(1)
    change(net, 1, 1, remove=(1, 2, 3))
    net.settle(3)
    assert net.outcomes[1][1].code is Code.BAD_REQUEST
    assert "no voter" in net.outcomes[1][1].error
    cut = touching(3)
    net.settle(12, cut=cut)  # 3 is down long enough not to count as live
    change(net, 1, 2, remove=(2,))
    assert net.outcomes[1][2].code is Code.REFUSED, net.outcomes[1][2]
    assert "no live quorum" in net.outcomes[1][2].error
    assert leader.membership.latest.version == 0


# ------------------------------------------------------------------ the removed


def test_a_removed_replica_is_told_so_reports_removed_and_disrupts_nothing() -> None:
    """3 is cut off while it is removed; it comes back believing it votes, asks for
    pre-votes, and is answered `Removed`: it reports `removed`, and the leader keeps
    its ballot."""
    net = Net(window=8)
    leader = net.elect(1)
    ballot = leader.ballot
    cut = touching(3)
    change(net, 1, 1, remove=(3,))
    net.settle(8, cut=cut)
    assert net.outcomes[1][1].ok and leader.commit >= ALPHA
    assert 3 not in leader.out.members
    node = net.nodes[3]
    assert not node.removed
    for _ in range(20):
        net.tick(dt=net.cfg.election_timeout / 2)
        net.deliver()
    assert any(isinstance(m, Removed) and d == 3 for d, m in net.sent)
    assert node.removed and node.tick(net.now).removed
    assert leader.is_leader and leader.ballot == ballot
    assert net.nodes[2].leader == 1


def test_a_leader_behind_the_configuration_a_change_was_made_against_refuses_it() -> None:
    """A change made against version 2 (read at 2) reaches a new leader that has not yet
    applied version 2 (3, recovering the slot that made it). Proposed unchecked, it
    would find version 2 in force when applied and take: a learner that never caught up
    would be promoted. The leader refuses it (REFUSED: ask again) until it is there."""
    net = Net(window=8)
    net.elect(1)
    for i in (4, 5):
        join(net, i)
    out = lambda d, m: bool({4, 5} & {d, m.src})  # noqa: E731  learners that hear nothing
    change(net, 1, 1, add=(learner(5),))
    net.settle(6, cut=out)
    assert net.nodes[1].commit >= ALPHA  # the leader filled up to the change's start
    change(net, 1, 2, add=(learner(4),))
    net.drop(out)
    net.deliver(lambda d, m: isinstance(m, Accept) and d in (2, 3))  # both accept it
    net.deliver(lambda d, m: d == 1 and m.src in (1, 2))  # chosen: 1 and 2
    net.drop(lambda d, m: d == 3 or out(d, m))
    net.deliver(lambda d, m: d == 2)  # 2 learns it is chosen; 3 does not
    assert net.nodes[2].membership.latest.version == 2
    assert net.nodes[3].membership.latest.version == 1
    net.drop(touching(1))
    del net.nodes[1]
    net.now += 2 * net.cfg.election_timeout + 0.01
    net.tick([3])
    for _ in range(10):
        net.deliver(lambda d, m: d in (2, 3) and isinstance(m, (PreVote, PreVoteReply,
                                                                Prepare, Promise)))
        if net.nodes[3].is_leader:
            break
        net.tick([2, 3], dt=net.cfg.heartbeat_interval)
    leader = net.nodes[3]
    assert leader.is_leader and leader.membership.latest.version == 1
    net.drop(lambda d, m: isinstance(m, Accept))  # its recovery is not accepted yet
    net.deliver(lambda d, m: isinstance(m, Heartbeat) and d == 2)  # 2 follows 3
    assert net.nodes[2].leader == 3
    net.obey(2, net.nodes[2].change_members(3, 2, promote=(4,), now=net.now))
    net.deliver(lambda d, m: isinstance(m, ChangeMembers | ChangeRefused))
    refused = net.outcomes[2].get(3)
    assert refused is not None and refused.code is Code.REFUSED, refused
    net.settle(6, cut=lambda d, m: d == 1 or out(d, m))
    assert leader.membership.latest.version == 2
    assert 4 not in voters(leader, leader.commit + ALPHA)


def test_a_promoted_voter_that_missed_its_promotion_catches_up_from_a_candidate_and_votes() -> None:
    """4 is promoted ({1,2,3} -> {1,2,3,4}) while cut off, so it still believes it is a
    learner; then leader 1 dies. The next slots need 3 of {1,2,3,4}: 2, 3 and 4. 4
    refuses a pre-vote it believes it has no say in, but asks the candidate for the log
    it lacks, learns it is a voter, and the next election succeeds."""
    net = Net(window=8)
    net.elect(1)
    join(net, 4)
    change(net, 1, 1, add=(learner(4),))
    net.settle(6)
    assert net.nodes[4].commit == net.nodes[1].commit
    cut = touching(4)
    change(net, 1, 2, promote=(4,))
    net.settle(6, cut=cut)
    assert net.outcomes[1][2].ok, net.outcomes[1][2]
    assert 4 in voters(net.nodes[2], net.nodes[2].commit + ALPHA)
    assert 4 not in voters(net.nodes[4], net.nodes[4].commit + 1)
    net.drop(touching(1))
    del net.nodes[1]
    for _ in range(60):
        net.tick(dt=net.cfg.election_timeout / 2)
        net.deliver(lambda d, m: d != 1)
        net.drop(touching(1))
        if net.leaders():
            break
    assert net.leaders(), "no leader: 4 never learned it votes"
    assert 4 in voters(net.nodes[4], net.nodes[4].commit + ALPHA)


def test_a_learner_cut_off_before_its_removal_asks_a_member_and_is_told_it_was_removed() -> None:
    """3 lost its disk: a learner for good, it never stands for election, so it sends
    nothing of its own accord. Cut off before it heard of its removal, it comes back to
    silence (the leader no longer sends to it). Hearing no leader for an election
    timeout, it asks a member for the log, and is answered `Removed` (M4)."""
    net = Net(window=8)
    leader = net.elect(1)
    net.submit(1, 1, b"k=1")
    net.settle(3)
    net.disks[3] = ReplicaDurable(standing=Standing.LEARNER)
    net.files[3] = {}
    node = net.restart(3)
    net.settle(4)
    assert node.standing is Standing.LEARNER and node.commit == leader.commit
    cut = touching(3)
    change(net, 1, 2, remove=(3,))
    net.settle(8, cut=cut)
    assert net.outcomes[1][2].ok and leader.commit >= ALPHA
    assert 3 not in leader.out.members and not node.removed
    for _ in range(20):
        net.tick(dt=net.cfg.election_timeout / 2)
        net.deliver()
    assert node.removed, "it would wait for a leader forever"
    assert any(isinstance(m, Removed) and d == 3 for d, m in net.sent)
    assert 3 not in leader.out.members and leader.is_leader
