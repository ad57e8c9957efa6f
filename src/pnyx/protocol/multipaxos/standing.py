"""Standing: whether this replica may vote, and how a replica with an empty disk finds out.

An acceptor's promises and acceptances are Paxos state: a replica that lost its
disk has forgotten what it promised and accepted, and were it to vote again
under its old identity, a quorum counting its new votes could miss a value it
helped choose before. Its empty disk looks exactly like the disk of a member
of a brand-new cluster, so a replica that starts empty asks the others::

    NEW --(every other member answers "empty")--> READY --(every other member
     |                                    is READY or VOTER, or any is a VOTER)--> VOTER
     +--(any member answers "not empty")--> LEARNER, for good

A LEARNER learns the log (snapshots and catch-up), serves reads through the
leader and forwards writes, but never promises, accepts, acks a heartbeat,
grants a pre-vote, stands for election or answers a quorum read. (Making it
a voter again is a membership change: a new identity.)

Why "every other member is empty" makes voting safe: a vote of ours can only
have counted if some proposer asked for it, and a proposer durably records its
ballot round before its Prepare or Accept leaves (rule D1), so it answers "not
empty" from then on. If that proposer was another member, its answer tells us.
If it was us, our vote counted only together with another member's vote (a
quorum of one exists only in a cluster of one), and that member recorded its
promise or acceptance before answering us: it too answers "not empty".

Why READY: a member that found the others empty must not start voting at once,
or another member still asking would find it "not empty" and turn learner in a
cluster that is merely forming. So a READY member stays empty (it neither
votes nor stands for election) until every other member is READY or VOTER
too; by then each has made its own decision. A member that answers VOTER saw
exactly that before it began to vote, so one VOTER's answer is enough: a
member that died after the cluster formed cannot keep a READY one waiting.
READY is durable: a member that restarts READY keeps it (a wiped one is NEW
again, and finds history if the cluster has any). A cluster of one has no one to ask: it votes.

Each standing is durable (`StandingRecord`) before it is acted on: the first
vote's records come after it (persist-before-send orders them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import Outbox
from pnyx.protocol.multipaxos.messages import Probe, ProbeReply
from pnyx.protocol.multipaxos.records import Standing, StandingRecord

if TYPE_CHECKING:
    from pnyx.protocol.multipaxos.acceptor import Acceptor
    from pnyx.protocol.multipaxos.log import Log

_ASKING = (Standing.NEW, Standing.READY)


class Standings:
    acceptor: Acceptor
    log: Log

    def __init__(self, node_id: int, config: ReplicaConfig, out: Outbox,
                 standing: Standing) -> None:
        self.node_id = node_id
        self.config = config
        self.out = out
        self.others = tuple(m for m in config.members if m != node_id)
        # Invariant: changes only NEW -> READY -> VOTER or NEW -> LEARNER.
        self.standing = standing
        # NEW: members that answered "empty"; READY: members that answered "ready".
        self.answered: set[int] = set()
        self.probe_at = 0.0  # when to ask again those that did not answer
        if standing in _ASKING and not self.others:
            self._decide(Standing.VOTER)

    @property
    def votes(self) -> bool:
        """Whether this replica may promise, accept and count in any quorum."""
        return self.standing is Standing.VOTER

    def _decide(self, standing: Standing) -> None:
        self.standing = standing
        self.answered = set()
        self.probe_at = 0.0
        self.out.save(StandingRecord(standing))

    def tick(self, now: float) -> None:
        if self.standing in _ASKING and now >= self.probe_at:
            self.probe_at = now + self.config.heartbeat_interval
            for member in self.others:
                if member not in self.answered:
                    self.out.send(member, Probe(self.node_id))

    def is_empty(self) -> bool:
        """Never used a round, promised, accepted or learned anything (in memory, which
        is at least what the disk holds: "not empty" is the safe error)."""
        a, log = self.acceptor, self.log
        return (a.last_round == 0 and a.promised.round == 0 and a.max_accepted == 0
                and log.max_chosen == 0 and log.floor == 0 and log.applied == 0)

    def on_probe(self, m: Probe) -> None:
        ready = self.standing in (Standing.READY, Standing.VOTER)
        self.out.send(m.src, ProbeReply(self.node_id, self.is_empty(), ready,
                                        self.standing is Standing.VOTER))

    def on_probe_reply(self, m: ProbeReply) -> None:
        if self.standing is Standing.NEW:
            if not m.empty:
                self._decide(Standing.LEARNER)
                return
            self.answered.add(m.src)
            if self.answered.issuperset(self.others):
                self._decide(Standing.READY)
        elif self.standing is Standing.READY and m.ready:
            self.answered.add(m.src)
            if m.voter or self.answered.issuperset(self.others):
                self._decide(Standing.VOTER)

    def next_deadline(self) -> float | None:
        return self.probe_at if self.standing in _ASKING else None

    def check_invariants(self) -> None:
        assert self.standing in Standing, self.standing
        assert self.answered <= set(self.others), self.answered
        if self.standing is not Standing.VOTER:  # it never voted nor stood for election
            a = self.acceptor
            assert a.promised.round == 0 and a.last_round == 0, (a.promised, a.last_round)
