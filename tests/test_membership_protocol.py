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
from pnyx.protocol.multipaxos.membership import ALPHA
from pnyx.protocol.multipaxos.messages import Accept, Member, PreVote, Promise
from pnyx.protocol.multipaxos.outcome import Code
from pnyx.protocol.multipaxos.records import ReplicaDurable, Standing


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
