"""The seed text (`seed/paxos-notes.md`) as a test suite, one rule per test.

Every test's docstring names, in our own words, the rule it proves and the
seed section the rule comes from. Most tests replay messages by hand into an
`Acceptor`, `Proposer`, `Learner` or `SynodNode` and state the outcome; the
end-to-end scenarios use `Cluster`, a tiny hand-driven network that obeys the
core's `Ready` as a runtime must (make the record durable, then send).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.synod import (
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    Chosen,
    DurableState,
    Forward,
    Learned,
    Learner,
    Message,
    Phase,
    Prepare,
    Promise,
    Proposal,
    Proposer,
    Ready,
    Rejected,
    RetryPolicy,
    SynodConfig,
    SynodNode,
    choose_value,
)

MEMBERS = (1, 2, 3)
NO_BACKOFF = RetryPolicy(timeout=1.0, randomized=False)

# ----------------------------------------------------------------- helpers


def b(round_: int, node_id: int) -> Ballot:
    return Ballot(round_, node_id)


def config(members: tuple[int, ...] = MEMBERS, **kwargs: object) -> SynodConfig:
    kwargs.setdefault("retry", NO_BACKOFF)
    return SynodConfig.majority(members, **kwargs)


def make_node(
    node_id: int, cfg: SynodConfig | None = None, state: DurableState | None = None
) -> SynodNode:
    return SynodNode(node_id, cfg or config(), random.Random(node_id), state)


def obey(node: SynodNode, ready: Ready) -> list[tuple[int, Message]]:
    """Do what a runtime does with a `Ready`: send what is safe, make the record
    durable, then send what that released. Returns every message sent."""
    sent = list(ready.send)
    if ready.persist is not None:
        released = node.persisted(ready.persist_seq)
        assert released.persist is None
        sent += released.send
    return sent


def proposer(node_id: int = 1, members: tuple[int, ...] = MEMBERS) -> Proposer:
    return Proposer(node_id, QuorumSystem.majority(members), random.Random(0), NO_BACKOFF)


Filter = Callable[[int, Message], bool]


def everything(dst: int, m: Message) -> bool:
    return True


class Cluster:
    """A hand-driven network of `SynodNode`s with instant, durable disks."""

    def __init__(
        self, cfg: SynodConfig | None = None, states: dict[int, DurableState] | None = None
    ) -> None:
        self.cfg = cfg or config()
        states = states or {}
        self.nodes = {i: make_node(i, self.cfg, states.get(i)) for i in self.cfg.members}
        self.in_flight: list[tuple[int, Message]] = []
        self.sent: list[tuple[int, Message]] = []
        self.learned: dict[int, bytes] = {}
        self.proposed: set[bytes] = set()
        self.now = 0.0

    def obey(self, node_id: int, ready: Ready) -> None:
        if ready.learned is not None:
            self.learned[node_id] = ready.learned
        sent = obey(self.nodes[node_id], ready)
        self.sent += sent
        self.in_flight += sent

    def propose(self, node_id: int, value: bytes) -> None:
        self.proposed.add(value)
        self.obey(node_id, self.nodes[node_id].propose(value, self.now))

    def deliver(self, only: Filter = everything, limit: int = 10_000) -> int:
        """Deliver in-flight messages matching `only`, oldest first, until none is left.
        Messages that do not match stay in flight. Returns how many were delivered."""
        delivered = 0
        while True:
            match = next((e for e in self.in_flight if only(*e)), None)
            if match is None:
                return delivered
            self.in_flight.remove(match)
            dst, message = match
            self.obey(dst, self.nodes[dst].step(message, self.now))
            delivered += 1
            assert delivered < limit, "the scenario does not quiesce"

    def drop(self, which: Filter) -> None:
        self.in_flight = [e for e in self.in_flight if not which(*e)]

    def tick_all(self, seconds: float = 1.0) -> None:
        self.now += seconds
        for i, node in self.nodes.items():
            self.obey(i, node.tick(self.now))

    def settle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            self.deliver()
            self.tick_all()
        self.deliver()


def between(*ids: int) -> Filter:
    """Messages whose sender and receiver are both among `ids` (the rest are cut off)."""
    return lambda dst, m: dst in ids and m.src in ids


def of_type(kind: type, dst: int | None = None, src: int | None = None) -> Filter:
    return lambda d, m: (
        isinstance(m, kind) and (dst is None or d == dst) and (src is None or m.src == src)
    )


# ------------------------------------------------------------------ ballots

ballots = st.builds(Ballot, st.integers(0, 50), st.integers(0, 5))


@settings(max_examples=100, deadline=None)
@given(ballots, ballots, ballots)
def test_ballots_are_totally_ordered_round_first_then_node_id(
    x: Ballot, y: Ballot, z: Ballot
) -> None:
    """Seed, 'Write (as a proposer)': the sequence number lets processes tell newer
    proposals from older ones. Our ballot (round, node_id) is a total order: exactly one
    of <, ==, > holds, it is transitive, and it compares round first, then node_id."""
    assert [x < y, x == y, x > y].count(True) == 1
    assert (x < y) == ((x.round, x.node_id) < (y.round, y.node_id))
    if x < y and y < z:
        assert x < z
    assert x >= ZERO


@settings(max_examples=60, deadline=None)
@given(st.lists(ballots, max_size=6), st.lists(ballots, max_size=6))
def test_two_proposers_never_share_a_ballot(seen1: list[Ballot], seen2: list[Ballot]) -> None:
    """Seed, 'Choosing a value': a proposal has a unique id. Whatever ballots two
    proposers have observed, each picks a ballot carrying its own node_id that is above
    everything it observed, so their ballots never coincide."""
    p1, p2 = proposer(1), proposer(2)
    for ballot in seen1:
        p1.observe(ballot)
    for ballot in seen2:
        p2.observe(ballot)
    (m1,) = p1.propose(b"x", 0.0)
    (m2,) = p2.propose(b"y", 0.0)
    assert m1.ballot.node_id == 1 and m2.ballot.node_id == 2
    assert m1.ballot != m2.ballot
    assert all(m1.ballot > s for s in seen1)
    assert all(m2.ballot > s for s in seen2)


# --------------------------------------------------- check one: the promise


def test_acceptor_promises_ballot_higher_than_any_promised() -> None:
    """Seed, 'Write (as a proposer)', check one: a Prepare whose sequence number is the
    highest the acceptor has ever seen is promised, and the promise replaces the old one."""
    a = Acceptor(2)
    reply, changed = a.on_prepare(Prepare(1, b(1, 1)))
    assert reply == Promise(2, b(1, 1), None)
    assert changed and a.state.promised == b(1, 1)
    reply, changed = a.on_prepare(Prepare(3, b(1, 3)))
    assert reply == Promise(2, b(1, 3), None)
    assert changed and a.state.promised == b(1, 3)


def test_acceptor_refuses_prepare_at_or_below_its_promise() -> None:
    """Seed, 'Write (as a proposer)', check one: only a ballot *higher* than any seen is
    promised. A duplicate (equal) or lower Prepare is Rejected, the rejection carries the
    promised ballot so the proposer can jump past it, and the state does not change."""
    a = Acceptor(2, AcceptorState(b(5, 3)))
    for ballot in (b(5, 3), b(5, 1), b(4, 9), b(1, 1)):
        reply, changed = a.on_prepare(Prepare(1, ballot))
        assert reply == Rejected(2, ballot, b(5, 3))
        assert not changed
        assert a.state == AcceptorState(b(5, 3))


def test_fresh_acceptor_promise_reports_no_accepted_proposal() -> None:
    """Seed, 'Algorithm', phase 1: the promise carries the accepted proposal "if any";
    an acceptor that accepted nothing says so (None)."""
    reply, _ = Acceptor(1).on_prepare(Prepare(2, b(1, 2)))
    assert isinstance(reply, Promise) and reply.accepted is None


def test_promise_reports_highest_numbered_accepted_proposal() -> None:
    """Seed, 'Algorithm', phase 1, item 2: the promise returns the highest-numbered
    proposal the acceptor has accepted (not the first, not a lower one)."""
    a = Acceptor(2)
    a.on_prepare(Prepare(1, b(1, 1)))
    a.on_accept(Accept(1, b(1, 1), b"old"))
    a.on_prepare(Prepare(3, b(2, 3)))
    a.on_accept(Accept(3, b(2, 3), b"new"))
    a.on_accept(Accept(1, b(1, 1), b"stale"))  # refused: below the promise
    reply, _ = a.on_prepare(Prepare(1, b(3, 1)))
    assert reply == Promise(2, b(3, 1), Proposal(b(2, 3), b"new"))


# ----------------------------------------------------- accepting proposals


def test_acceptor_accepts_first_proposal_it_receives() -> None:
    """Seed, 'Choosing a value': an acceptor must accept the first proposal it receives,
    even one whose Prepare it never saw."""
    a = Acceptor(2)
    reply, changed = a.on_accept(Accept(1, b(1, 1), b"v"))
    assert reply == Accepted(2, b(1, 1), b"v")
    assert changed and a.state.accepted == Proposal(b(1, 1), b"v")


def test_acceptor_accepts_at_its_promised_ballot() -> None:
    """Seed, 'Algorithm', step 3: accept unless a Prepare with a *greater* number was
    answered. An Accept at exactly the promised ballot is accepted."""
    a = Acceptor(2)
    a.on_prepare(Prepare(1, b(4, 1)))
    reply, changed = a.on_accept(Accept(1, b(4, 1), b"v"))
    assert reply == Accepted(2, b(4, 1), b"v")
    assert changed and a.state == AcceptorState(b(4, 1), Proposal(b(4, 1), b"v"))


def test_acceptor_refuses_accept_below_its_promise() -> None:
    """Seed, 'Algorithm', step 3: having answered a Prepare numbered higher than n, the
    acceptor refuses an Accept numbered n, reports the promise, and keeps its state."""
    a = Acceptor(2)
    a.on_prepare(Prepare(1, b(1, 1)))
    a.on_prepare(Prepare(3, b(1, 3)))
    before = a.state
    reply, changed = a.on_accept(Accept(1, b(1, 1), b"late"))
    assert reply == Rejected(2, b(1, 1), b(1, 3))
    assert not changed and a.state == before


def test_acceptor_accepts_multiple_proposals_in_rising_ballots() -> None:
    """Seed, 'Choosing a value': an acceptor can accept more than one proposal; a later
    one with a higher ballot replaces the earlier, and one below it is then refused, so
    what it reports as accepted never goes backwards."""
    a = Acceptor(2)
    a.on_accept(Accept(1, b(1, 1), b"one"))
    reply, _ = a.on_accept(Accept(3, b(2, 3), b"two"))
    assert reply == Accepted(2, b(2, 3), b"two")
    reply, changed = a.on_accept(Accept(1, b(1, 1), b"one"))
    assert isinstance(reply, Rejected) and not changed
    assert a.state.accepted == Proposal(b(2, 3), b"two")


def test_duplicate_accept_is_acknowledged_without_a_new_record() -> None:
    """Seed, 'Algorithm', step 3 (duplicates on the network): an Accept repeated at the
    ballot already accepted is acknowledged again but changes nothing to make durable."""
    a = Acceptor(2)
    a.on_accept(Accept(1, b(1, 1), b"v"))
    reply, changed = a.on_accept(Accept(1, b(1, 1), b"v"))
    assert reply == Accepted(2, b(1, 1), b"v")
    assert not changed


# ------------------------------------------------------------ the value rule

proposals = st.builds(Proposal, ballots, st.binary(max_size=4))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), proposals), max_size=7), st.binary(max_size=4))
def test_choose_value_takes_highest_numbered_reported_proposal(
    reported: list[Proposal | None], own: bytes
) -> None:
    """Seed, 'Algorithm', phase 1: the proposer's value v is the value of the
    highest-numbered proposal among the responses, or any value of its own if none
    reported one."""
    real = [p for p in reported if p is not None]
    result = choose_value(reported, own)
    if not real:
        assert result == own
    else:
        top = max(p.ballot for p in real)
        assert result in {p.value for p in real if p.ballot == top}


def test_choose_value_prefers_higher_ballot_over_more_reports() -> None:
    """Seed, 'Choosing a value', condition 2: it is the highest-numbered proposal that
    counts, not the most common value."""
    reported = [
        Proposal(b(1, 1), b"common"),
        Proposal(b(1, 1), b"common"),
        Proposal(b(2, 2), b"rare"),
        None,
    ]
    assert choose_value(reported, b"own") == b"rare"
    assert choose_value([None, None], b"own") == b"own"


def test_proposer_adopts_highest_numbered_value_from_promises() -> None:
    """Seed, 'Algorithm', phase 1 then 2: after a quorum of promises the Accept carries
    the highest-numbered value they report, not the proposer's own."""
    p = proposer(1, (1, 2, 3, 4, 5))
    (prep,) = p.propose(b"mine", 0.0)
    p.on_promise(Promise(2, prep.ballot, Proposal(b(1, 2), b"low")), 0.0)
    p.on_promise(Promise(3, prep.ballot, None), 0.0)
    out = p.on_promise(Promise(4, prep.ballot, Proposal(b(1, 4), b"high")), 0.0)
    assert out == [Accept(1, prep.ballot, b"high")]


def test_proposer_uses_own_value_when_no_promise_reports_one() -> None:
    """Seed, 'Algorithm', phase 1: with no accepted proposal reported, the proposer is
    free to use its own value."""
    p = proposer(1)
    (prep,) = p.propose(b"mine", 0.0)
    p.on_promise(Promise(1, prep.ballot, None), 0.0)
    assert p.on_promise(Promise(2, prep.ballot, None), 0.0) == [Accept(1, prep.ballot, b"mine")]


# ---------------------------------------------------------------- proposer


def test_proposer_sends_accept_only_after_phase1_quorum() -> None:
    """Seed, 'Algorithm', phase 2: only once a majority has promised may the proposer
    issue its Accept, and it issues it once."""
    p = proposer(1, (1, 2, 3, 4, 5))
    (prep,) = p.propose(b"v", 0.0)
    assert p.phase is Phase.PREPARING
    assert p.on_promise(Promise(1, prep.ballot, None), 0.0) == []
    assert p.on_promise(Promise(2, prep.ballot, None), 0.0) == []
    assert p.on_promise(Promise(2, prep.ballot, None), 0.0) == []  # a duplicate is not a vote
    assert p.on_promise(Promise(3, prep.ballot, None), 0.0) == [Accept(1, prep.ballot, b"v")]
    assert p.phase is Phase.ACCEPTING
    assert p.on_promise(Promise(4, prep.ballot, None), 0.0) == []


def test_proposer_phase1_quorum_is_the_configured_size() -> None:
    """Seed, 'Algorithm', phase 1 (with Flexible Paxos quorums): "a majority" is the
    phase-1 quorum of the configuration; with 4 acceptors, q1=3 needs three promises."""
    qs = QuorumSystem.flexible((1, 2, 3, 4), phase1=3, phase2=2)
    p = Proposer(1, qs, random.Random(0), NO_BACKOFF)
    (prep,) = p.propose(b"v", 0.0)
    assert p.on_promise(Promise(1, prep.ballot, None), 0.0) == []
    assert p.on_promise(Promise(2, prep.ballot, None), 0.0) == []
    assert p.on_promise(Promise(3, prep.ballot, None), 0.0) == [Accept(1, prep.ballot, b"v")]


def test_proposer_ignores_promises_for_another_ballot() -> None:
    """Seed, 'Algorithm', phase 1: the responses must answer *this* proposal number;
    promises for an older ballot do not count toward the quorum."""
    p = proposer(1)
    p.observe(b(3, 2))
    (prep,) = p.propose(b"v", 0.0)
    assert prep.ballot == b(4, 1)
    assert p.on_promise(Promise(1, b(1, 1), None), 0.0) == []
    assert p.on_promise(Promise(2, b(1, 1), None), 0.0) == []
    assert p.phase is Phase.PREPARING


def test_proposer_retries_with_higher_ballot_after_rejection() -> None:
    """Seed, 'Liveness' (a proposal number greater than any already used): when an
    acceptor rejects the proposer's ballot because of a higher promise, the proposer
    starts phase 1 again with a ballot above that promise."""
    p = proposer(1)
    (prep,) = p.propose(b"v", 0.0)
    out = p.on_rejected(Rejected(2, prep.ballot, b(7, 3)), 0.0)
    assert len(out) == 1
    (retry,) = out
    assert isinstance(retry, Prepare)
    assert retry.ballot > b(7, 3) and retry.ballot.node_id == 1
    assert p.ballot == retry.ballot and p.phase is Phase.PREPARING


def test_proposer_ignores_rejection_of_an_old_ballot() -> None:
    """Seed, 'Write (as a proposer)': only a rejection of the *current* proposal makes the
    proposer start over; a late rejection of an older ballot is just remembered."""
    p = proposer(1)
    p.observe(b(2, 3))
    (prep,) = p.propose(b"v", 0.0)
    assert p.on_rejected(Rejected(2, b(1, 1), b(2, 3)), 0.0) == []
    assert p.ballot == prep.ballot and p.phase is Phase.PREPARING


def test_proposer_does_not_decide_a_value_is_chosen() -> None:
    """Seed, 'Role of Agents': the proposer only proposes; learning is the learner's job.
    A node whose own Accept went out has learned nothing until Accepted arrive."""
    node = make_node(1)
    obey(node, node.propose(b"v", 0.0))
    prep = Prepare(1, node.proposer.ballot)
    obey(node, node.step(Promise(2, prep.ballot, None), 0.0))
    sent = obey(node, node.step(Promise(3, prep.ballot, None), 0.0))
    assert any(isinstance(m, Accept) for _, m in sent)
    assert node.chosen is None


# ---------------------------------------------------- chosen by a majority


def test_learner_learns_at_exactly_a_phase2_quorum_of_one_ballot() -> None:
    """Seed, 'Learning a chosen value' / Theorem: a value is chosen when a majority of
    acceptors accepted it in the same ballot. With 5 acceptors the learner learns on the
    third Accepted, not before, and only once."""
    learner = Learner(QuorumSystem.majority((1, 2, 3, 4, 5)))
    assert learner.on_accepted(Accepted(1, b(1, 1), b"v")) is None
    assert learner.on_accepted(Accepted(2, b(1, 1), b"v")) is None
    assert learner.on_accepted(Accepted(2, b(1, 1), b"v")) is None  # same voter again
    assert learner.chosen is None
    assert learner.on_accepted(Accepted(3, b(1, 1), b"v")) == b"v"
    assert learner.chosen == b"v"
    assert learner.on_accepted(Accepted(4, b(1, 1), b"v")) is None


def test_learner_does_not_learn_from_votes_split_across_ballots() -> None:
    """Seed, Safety requirement 3 (never learn a value unless it was chosen): a majority
    of acceptances spread over different ballots is not a choice, even with one value."""
    learner = Learner(QuorumSystem.majority(MEMBERS))
    assert learner.on_accepted(Accepted(1, b(1, 1), b"v")) is None
    assert learner.on_accepted(Accepted(2, b(2, 2), b"v")) is None
    assert learner.on_accepted(Accepted(3, b(3, 3), b"w")) is None
    assert learner.chosen is None
    assert learner.on_accepted(Accepted(3, b(2, 2), b"v")) == b"v"


def test_learner_ignores_acceptances_from_non_acceptors() -> None:
    """Seed, 'Choosing a value': the majority is a majority *of acceptors*; votes from ids
    outside the acceptor set do not count."""
    learner = Learner(QuorumSystem.majority(MEMBERS))
    assert learner.on_accepted(Accepted(1, b(1, 1), b"v")) is None
    assert learner.on_accepted(Accepted(9, b(1, 1), b"v")) is None
    assert learner.chosen is None


# ------------------------------------------------- distinguished learners


def test_acceptors_send_accepted_to_distinguished_learners() -> None:
    """Seed, 'Learning a chosen value': acceptors respond with their acceptances to a set
    of distinguished learners, besides the proposer that asked."""
    node = make_node(2, config(learners=(3,)))
    sent = obey(node, node.step(Accept(1, b(1, 1), b"v"), 0.0))
    assert sorted(sent) == [(1, Accepted(2, b(1, 1), b"v")), (3, Accepted(2, b(1, 1), b"v"))]
    # When the proposer is itself the distinguished learner it is told once.
    node = make_node(2, config(learners=(3,)))
    sent = obey(node, node.step(Accept(3, b(1, 3), b"v"), 0.0))
    assert sent == [(3, Accepted(2, b(1, 3), b"v"))]


def test_distinguished_learner_learns_without_being_the_proposer() -> None:
    """Seed, 'Learning a chosen value': a distinguished learner counts acceptances sent
    to it and learns the value though it proposed nothing."""
    cluster = Cluster(config(learners=(3,)))
    cluster.propose(1, b"v")
    cluster.deliver()
    assert cluster.learned.get(3) == b"v"
    assert cluster.nodes[3].proposer.phase is Phase.DONE


def test_learner_that_learned_from_a_quorum_informs_the_others() -> None:
    """Seed, 'Learning a chosen value': a distinguished learner, once it knows the value
    is chosen, informs all the learners with `Chosen`; they learn it and reply `Learned`."""
    learner = make_node(3)
    obey(learner, learner.step(Accepted(1, b(1, 1), b"v"), 0.0))
    ready = learner.step(Accepted(2, b(1, 1), b"v"), 0.0)
    assert ready.learned == b"v"
    assert ready.persist is not None and ready.persist.chosen == b"v"
    obey(learner, ready)
    assert ready.wake_at == 0.0
    sent = obey(learner, learner.tick(0.0))
    assert sorted(sent) == [(1, Chosen(3, b"v")), (2, Chosen(3, b"v"))]

    other = make_node(1)
    ready = other.step(Chosen(3, b"v"), 0.0)
    assert ready.learned == b"v" and other.chosen == b"v"
    assert obey(other, ready) == [(3, Learned(1))]


def test_chosen_is_retransmitted_on_tick_until_acknowledged() -> None:
    """Seed, 'Learning a chosen value' (on a lossy network): the informing learner keeps
    sending `Chosen` to every learner that has not yet replied `Learned`, and stops once
    all have."""
    cfg = config(inform_interval=0.5)
    learner = make_node(3, cfg)
    obey(learner, learner.step(Accepted(1, b(1, 1), b"v"), 0.0))
    obey(learner, learner.step(Accepted(2, b(1, 1), b"v"), 0.0))
    assert {d for d, _ in obey(learner, learner.tick(0.0))} == {1, 2}
    assert obey(learner, learner.tick(0.2)) == []  # not due yet
    obey(learner, learner.step(Learned(1), 0.3))
    assert obey(learner, learner.tick(0.5)) == [(2, Chosen(3, b"v"))]
    assert obey(learner, learner.tick(1.0)) == [(2, Chosen(3, b"v"))]
    obey(learner, learner.step(Learned(2), 1.1))
    ready = learner.tick(1.5)
    assert ready.send == []
    assert ready.wake_at is None
    assert obey(learner, learner.tick(10.0)) == []


def test_learned_process_tells_a_proposer_that_is_behind() -> None:
    """Seed, 'Learning a chosen value': a process that knows the chosen value answers a
    proposer still trying (its Prepare) with `Chosen`, so the proposer learns and stops."""
    node = make_node(2, state=DurableState(b(1, 1), Proposal(b(1, 1), b"v"), 0, b"v"))
    sent = obey(node, node.step(Prepare(3, b(2, 3)), 0.0))
    assert (3, Chosen(2, b"v")) in sent


# ------------------------------------------------- writes to any member


def test_non_leader_forwards_write_to_distinguished_proposer() -> None:
    """Seed, 'Write (as a proposer)' with 'Liveness' (a distinguished proposer): a client
    may write to any member; a member that is not the distinguished proposer hands the
    value over with `Forward` and runs no phase 1 of its own."""
    node = make_node(3, config(distinguished=1))
    sent = obey(node, node.propose(b"v", 0.0))
    assert sent == [(1, Forward(3, b"v"))]
    assert node.proposer.phase is Phase.IDLE
    assert node.durable_state().last_round == 0


def test_distinguished_proposer_proposes_a_forwarded_value() -> None:
    """Seed, 'Write (as a proposer)': the member the client reached forwards; the
    distinguished proposer then sends Prepare to all the processes it knows."""
    leader = make_node(1, config(distinguished=1))
    sent = obey(leader, leader.step(Forward(3, b"v"), 0.0))
    assert sorted(d for d, _ in sent) == [1, 2, 3]
    assert all(isinstance(m, Prepare) and m.src == 1 for _, m in sent)
    assert leader.proposer.value == b"v"


def test_non_leader_ignores_a_forward() -> None:
    """Seed, 'Liveness': with a distinguished proposer set, only it issues proposals; a
    Forward that reaches another member starts nothing."""
    node = make_node(2, config(distinguished=1))
    ready = node.step(Forward(3, b"v"), 0.0)
    assert ready.send == [] and ready.persist is None
    assert node.proposer.phase is Phase.IDLE


def test_forward_is_retransmitted_until_the_value_is_learned() -> None:
    """Seed, 'Write (as a proposer)' (no single point of failure, lossy network): the
    forwarding member re-sends its Forward each retry timeout until it learns a value."""
    node = make_node(3, config(distinguished=1))
    ready = node.propose(b"v", 0.0)
    assert ready.wake_at == NO_BACKOFF.timeout
    assert obey(node, node.tick(0.5)) == []
    assert obey(node, node.tick(1.0)) == [(1, Forward(3, b"v"))]
    obey(node, node.step(Chosen(1, b"v"), 1.5))
    assert obey(node, node.tick(5.0)) == []


def test_leader_answers_forward_with_chosen_once_it_knows() -> None:
    """Seed, 'Write (as a proposer)': a write reaching the cluster after a value was
    chosen is answered with the chosen value rather than a new proposal."""
    leader = make_node(1, config(distinguished=1), DurableState(chosen=b"v"))
    sent = obey(leader, leader.step(Forward(3, b"other"), 0.0))
    assert sent == [(3, Chosen(1, b"v"))]
    assert leader.proposer.phase is Phase.DONE


def test_any_member_runs_phase1_itself_without_distinguished_proposer() -> None:
    """Seed, 'Write (as a proposer)': without a distinguished proposer the member a
    client contacted sends Prepare, with its own ballot, to every process it knows."""
    node = make_node(3)
    sent = obey(node, node.propose(b"v", 0.0))
    assert sorted(d for d, _ in sent) == [1, 2, 3]
    assert {m for _, m in sent} == {Prepare(3, b(1, 3))}


def test_write_to_any_member_gets_chosen_everywhere() -> None:
    """Seed, 'Write (as a proposer)': clients may send writes to any member. A write to a
    follower reaches the distinguished proposer, is chosen, and every member learns it."""
    cluster = Cluster(config(distinguished=1))
    cluster.propose(3, b"v")
    cluster.settle()
    assert cluster.learned == {1: b"v", 2: b"v", 3: b"v"}


# --------------------------------------------------- persist before send


def test_promise_is_held_until_its_record_is_persisted() -> None:
    """Seed, 'Algorithm', phase 1 ("a promise never again to accept..."): a promise must
    survive a crash, so the Promise is not in `Ready.send` until `persisted(seq)` is
    called with that record's seq; `Ready.persist` carries the new durable state."""
    node = make_node(2)
    ready = node.step(Prepare(1, b(1, 1)), 0.0)
    assert ready.send == []
    assert ready.persist == DurableState(promised=b(1, 1))
    assert ready.persist == node.durable_state()
    assert node.persisted(ready.persist_seq - 1).send == []
    assert node.persisted(ready.persist_seq).send == [(1, Promise(2, b(1, 1), None))]
    assert node.persisted(ready.persist_seq).send == []  # released once only


def test_accepted_is_held_until_its_record_is_persisted() -> None:
    """Seed, 'Algorithm', step 3: an acceptance is reported only once it is durable, so an
    acceptor can never deny after a crash what it told the learners."""
    node = make_node(2, config(learners=(3,)))
    ready = node.step(Accept(1, b(1, 1), b"v"), 0.0)
    assert ready.send == []
    assert ready.persist == DurableState(b(1, 1), Proposal(b(1, 1), b"v"))
    released = node.persisted(ready.persist_seq).send
    assert sorted(released) == [(1, Accepted(2, b(1, 1), b"v")), (3, Accepted(2, b(1, 1), b"v"))]


def test_prepare_is_held_until_its_round_is_persisted() -> None:
    """Seed, 'Liveness' (a number greater than any already used): the round of a new
    ballot is durable before any Prepare carrying it leaves, so a restart cannot reuse it."""
    node = make_node(1)
    ready = node.propose(b"v", 0.0)
    assert ready.send == []
    assert ready.persist is not None and ready.persist.last_round == 1
    assert len(node.persisted(ready.persist_seq).send) == 3


def test_rejection_waits_behind_an_unpersisted_promise() -> None:
    """Seed, check one, with persist-before-send: a Rejected reports the promised ballot,
    so it too waits until that promise is durable, and messages leave in order."""
    node = make_node(2)
    first = node.step(Prepare(3, b(2, 3)), 0.0)
    second = node.step(Prepare(1, b(1, 1)), 0.0)
    assert first.send == [] and second.send == []
    assert second.persist is None
    assert node.persisted(first.persist_seq).send == [
        (3, Promise(2, b(2, 3), None)),
        (1, Rejected(2, b(1, 1), b(2, 3))),
    ]


def test_persisting_an_older_record_releases_only_its_messages() -> None:
    """Seed, persist-before-send across events: `persisted(seq)` releases exactly the
    messages that waited for records up to `seq`; later ones keep waiting."""
    node = make_node(2)
    first = node.step(Prepare(1, b(1, 1)), 0.0)
    second = node.step(Accept(1, b(1, 1), b"v"), 0.0)
    assert second.persist_seq > first.persist_seq
    assert node.persisted(first.persist_seq).send == [(1, Promise(2, b(1, 1), None))]
    assert node.persisted(second.persist_seq).send == [(1, Accepted(2, b(1, 1), b"v"))]


def test_learned_reply_waits_until_the_chosen_value_is_durable() -> None:
    """Seed, 'Learning a chosen value': a learner confirms `Learned` only once it would
    still know the value after a crash (so the informer may stop telling it)."""
    node = make_node(1)
    ready = node.step(Chosen(3, b"v"), 0.0)
    assert ready.send == []
    assert ready.persist is not None and ready.persist.chosen == b"v"
    assert node.persisted(ready.persist_seq).send == [(3, Learned(1))]


# ---------------------------------------------------------------- restart


def test_restarted_acceptor_keeps_its_promise() -> None:
    """Seed, 'Algorithm', phase 1 ("never again"): a process restarted from its durable
    state still refuses a ballot below the promise it made before the crash."""
    node = make_node(2)
    ready = node.step(Prepare(3, b(5, 3)), 0.0)
    assert ready.persist is not None
    node = make_node(2, state=ready.persist)  # crash, restart
    sent = obey(node, node.step(Prepare(1, b(4, 1)), 0.0))
    assert sent == [(1, Rejected(2, b(4, 1), b(5, 3)))]
    sent = obey(node, node.step(Accept(1, b(4, 1), b"late"), 0.0))
    assert sent == [(1, Rejected(2, b(4, 1), b(5, 3)))]


def test_restarted_acceptor_still_reports_its_acceptance() -> None:
    """Seed, 'Algorithm', phase 1 item 2, across a crash: the accepted proposal is
    durable, so a promise after restart still reports it to the next proposer."""
    node = make_node(2)
    ready = node.step(Accept(1, b(1, 1), b"v"), 0.0)
    assert ready.persist is not None
    node = make_node(2, state=ready.persist)
    sent = obey(node, node.step(Prepare(3, b(2, 3)), 0.0))
    assert sent == [(3, Promise(2, b(2, 3), Proposal(b(1, 1), b"v")))]


def test_restarted_proposer_never_reuses_a_round() -> None:
    """Seed, 'Choosing a value' (proposals have unique numbers) across a crash: the
    highest round used is durable (`last_round`), so after a restart the proposer picks
    a higher round even though it has forgotten everything else."""
    node = make_node(1)
    ready = node.propose(b"v", 0.0)
    first = node.proposer.ballot
    assert ready.persist is not None and ready.persist.last_round == first.round
    obey(node, ready)
    node = make_node(1, state=ready.persist)
    sent = obey(node, node.propose(b"w", 0.0))
    (second,) = {m.ballot for _, m in sent if isinstance(m, Prepare)}
    assert second > first and second.round > first.round

    node = make_node(1, state=DurableState(last_round=7))
    sent = obey(node, node.propose(b"w", 0.0))
    assert {m for _, m in sent} == {Prepare(1, b(8, 1))}


def test_restarted_node_that_knew_the_value_tells_the_others() -> None:
    """Seed, 'Learning a chosen value', across a crash: a process that restarts knowing the
    chosen value does not propose again and informs the others at its first tick."""
    node = make_node(1, state=DurableState(chosen=b"v"))
    assert node.chosen == b"v"
    ready = node.propose(b"other", 0.0)
    assert ready.send == [] and ready.persist is None
    sent = obey(node, node.tick(0.0))
    assert sorted(sent) == [(2, Chosen(1, b"v")), (3, Chosen(1, b"v"))]


# ------------------------------------------------------ safety requirements


def test_second_proposer_after_choice_reproposes_the_chosen_value() -> None:
    """Seed, 'Safety Requirements' 1 and the Theorem: once v1 is chosen (here by nodes 1
    and 2 while node 3 was cut off), a later proposer whose quorum {2, 3} overlaps the
    choosing one hears of v1 in a Promise and must propose v1 itself, never its own."""
    cluster = Cluster()
    cluster.propose(1, b"first")
    cluster.deliver(between(1, 2))
    cluster.drop(everything)
    assert cluster.learned == {1: b"first"}
    assert cluster.nodes[3].acceptor.state == AcceptorState()

    cluster.propose(3, b"second")  # node 1 is now cut off
    cluster.deliver(between(2, 3))
    accepts = [m for _, m in cluster.sent if isinstance(m, Accept) and m.src == 3]
    assert accepts and {m.value for m in accepts} == {b"first"}
    assert accepts[0].ballot > b(1, 1)
    assert cluster.learned == {1: b"first", 3: b"first"}

    cluster.settle()
    assert cluster.learned == {1: b"first", 2: b"first", 3: b"first"}


def test_pre_empted_proposer_cannot_get_a_second_value_chosen() -> None:
    """Seed, 'Safety Requirements' 1 and the Theorem's second case: proposer 1 gathers
    promises, proposer 3 then gets a higher promise from the shared acceptor 2 before 1's
    Accept arrives. 1's Accept is refused by the majority, 3's value is chosen, and 1's
    retry with a higher ballot adopts 3's value. One value is chosen, and it was proposed."""
    cluster = Cluster()
    cluster.propose(1, b"one")
    cluster.propose(3, b"three")
    cluster.deliver(lambda d, m: isinstance(m, Prepare) and m.src == 1 and d in (1, 2))
    cluster.deliver(lambda d, m: isinstance(m, Prepare) and m.src == 3 and d in (2, 3))
    cluster.drop(lambda d, m: isinstance(m, Prepare))
    cluster.deliver(of_type(Promise))  # both proposers now send Accept
    cluster.deliver(of_type(Accept, src=1))
    refused = [m for _, m in cluster.sent if isinstance(m, Rejected) and m.ballot == b(1, 1)]
    assert {m.src for m in refused} == {2, 3}
    cluster.settle()
    assert set(cluster.learned.values()) == {b"three"}
    assert set(cluster.learned) == {1, 2, 3}
    assert set(cluster.learned.values()) <= cluster.proposed
    retries = [m for _, m in cluster.sent if isinstance(m, Accept) and m.src == 1]
    assert {m.value for m in retries if m.ballot > b(1, 3)} <= {b"three"}


def test_value_accepted_by_a_minority_may_be_replaced() -> None:
    """Seed, 'Safety Requirements' 3 and 'Choosing a value' condition 1: a value accepted
    by only one of three acceptors was never chosen, so nobody learns it, and a proposer
    whose quorum did not see it may get its own value chosen instead."""
    cluster = Cluster()
    cluster.propose(1, b"minority")
    cluster.deliver(lambda d, m: d == 1 or (isinstance(m, Prepare) and d == 2))
    cluster.drop(everything)
    assert cluster.nodes[1].acceptor.state.accepted == Proposal(b(1, 1), b"minority")
    assert cluster.learned == {}

    cluster.propose(3, b"majority")
    cluster.deliver(between(2, 3))
    assert cluster.learned == {3: b"majority"}
    cluster.settle()
    assert set(cluster.learned.values()) == {b"majority"}


def test_every_learned_value_was_accepted_by_a_quorum_in_one_ballot() -> None:
    """Seed, 'Safety Requirements' 2 and 3 in a five-node scenario with two proposers and
    duelling ballots: whatever each process learns was proposed by a client and was
    reported Accepted by a majority in one ballot before anyone learned it."""
    cluster = Cluster(config((1, 2, 3, 4, 5)))
    cluster.propose(1, b"a")
    cluster.propose(5, b"e")
    cluster.deliver(lambda d, m: not isinstance(m, Accept) or d != 3)
    cluster.settle()
    assert len(set(cluster.learned.values())) == 1
    assert set(cluster.learned) == {1, 2, 3, 4, 5}
    (value,) = set(cluster.learned.values())
    assert value in cluster.proposed
    votes: dict[Ballot, set[int]] = {}
    for _, m in cluster.sent:
        if isinstance(m, Accepted) and m.value == value:
            votes.setdefault(m.ballot, set()).add(m.src)
    assert any(len(voters) >= 3 for voters in votes.values())
