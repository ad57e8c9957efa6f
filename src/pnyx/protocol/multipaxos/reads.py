"""Reads: read index (linearizable), Paxos quorum reads, and stale reads.

- `linearizable` (read index): the leader notes its commit index, then waits
  for a heartbeat round sent after the read arrived to be acked by a quorum
  (then no other leader can have chosen anything it does not know); the read
  is served once this replica has applied up to that index. A follower asks
  the leader for the index (`ReadIndex`) and serves the read itself. A new
  leader never gives an index below the slots its phase 1 recovered. Where
  the asker and the leader are a quorum (three voters), the asker's promise,
  sent with `ReadIndex`, and the leader's own stand for that round's acks.
  Batched at both ends, never across the rule: one heartbeat round confirms
  every read that arrived before it went out (the leader sends it at its next
  tick), and a follower asks once for all the reads of one call
  (`Replica.read_many`), in one `ReadIndex` named by the newest of them: the
  round that answers it went out after that read arrived, so after all of them.
  With a leader lease (`ReplicaConfig.read_lease`, opt-in; see
  `pnyx.protocol.multipaxos.election` for the rule and its clock assumption),
  the leader answers a read, its own or a follower's `ReadIndex`, at once with
  its commit index while the lease lasts: no heartbeat round.
- `quorum` (the seed's "read as a learner", made linearizable in the manner
  of Paxos Quorum Reads): ask every replica; the read slot is the highest
  slot accepted among the first quorum of replies; answer with a result that
  a quorum of replicas which have applied the read slot agree on, asking
  again (rinse) until they do.
- `stale`: local state, at once.

Every read field lives here; the verbs are `add`, `ack` (a heartbeat round
was confirmed), `advance` (more was applied), `expire` and `next_deadline`.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pnyx.protocol.ballot import ZERO
from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import Outbox
from pnyx.protocol.multipaxos.election import Role
from pnyx.protocol.multipaxos.membership import ALPHA
from pnyx.protocol.multipaxos.messages import (
    QuorumRead,
    QuorumReadReply,
    ReadIndex,
    ReadIndexReply,
)
from pnyx.protocol.multipaxos.outcome import Code, Outcome, ReadMode

if TYPE_CHECKING:
    from pnyx.protocol.multipaxos.acceptor import Acceptor
    from pnyx.protocol.multipaxos.election import Election
    from pnyx.protocol.multipaxos.log import Log, Machine
    from pnyx.protocol.multipaxos.standing import Standings

_R = TypeVar("_R")
MAX_HELD = 10_000  # quorum reads of others held until we apply their read slot, at most


@dataclass(slots=True)
class LocalRead:
    """A linearizable read that entered here."""

    query: bytes
    deadline: float
    index: int | None = None  # the read is served once applied reaches this slot


@dataclass(slots=True)
class PendingQuorumRead:
    """A quorum read that entered here, and the replies so far (one per replica)."""

    query: bytes
    deadline: float
    replies: dict[int, QuorumReadReply] = field(default_factory=dict)
    attempts: int = 1
    read_slot: int | None = None  # fixed by the first quorum of replies


class Reads:
    acceptor: Acceptor
    election: Election
    log: Log
    standings: Standings

    def __init__(self, node_id: int, config: ReplicaConfig, machine: Machine,
                 out: Outbox) -> None:
        self.node_id = node_id
        self.config = config
        self.machine = machine
        self.out = out
        # request id -> linearizable read not yet answered.
        self.local: dict[int, LocalRead] = {}
        # LEADER: heartbeat round -> the reads (src, id, commit when queued) it confirms.
        # Invariant: empty unless leader.
        self.rounds: dict[int, list[tuple[int, int, int]]] = {}
        # LEADER: reads (src, id) waiting for the next heartbeat round; since when.
        # Invariant: empty unless leader.
        self.unsent: list[tuple[int, int]] = []
        self.unsent_since = 0.0
        # FOLLOWER: reads of this call, to ask the leader for one index at the end of
        # it (`ask`); and the batches asked, by the id of their newest read, in the
        # order asked. Invariant: `to_ask` is empty between calls; both are empty at
        # a leader.
        self.to_ask: list[tuple[int, LocalRead]] = []
        self.asked: dict[int, list[tuple[int, LocalRead]]] = {}
        # request id -> quorum read not yet answered.
        self.quorum: dict[int, PendingQuorumRead] = {}
        # The same reads in the order of their deadlines (which is the order they came
        # in: one read_timeout for all), and the local reads that know their read index,
        # by it (a heap): so the next deadline and the reads to serve are found without
        # a scan. Both forget answered reads lazily. Invariant: every pending read is in
        # its deadline queue; every local read with an index is in `by_index`.
        self.local_by_deadline: deque[tuple[float, int, LocalRead]] = deque()
        self.quorum_by_deadline: deque[tuple[float, int, PendingQuorumRead]] = deque()
        self.by_index: list[tuple[int, int, int, LocalRead]] = []
        self.seq = 0  # tie-breaker in `by_index`
        # Others' quorum reads held until we have applied their `min_applied`.
        self.held: list[tuple[int, QuorumRead]] = []

    # -------------------------------------------------------------- add

    def add(self, request_id: int, query: bytes, mode: ReadMode, now: float) -> None:
        out = self.out
        if mode == "stale":
            out.outcome(request_id, Outcome(True, self.machine.query(query),
                                            self.log.applied_index))
        elif mode == "linearizable":
            read = self.local[request_id] = LocalRead(query, now + self.config.read_timeout)
            self.local_by_deadline.append((read.deadline, request_id, read))
            election = self.election
            if election.role is Role.LEADER:
                if self._leased(now):
                    self._set_index(request_id, read, self.log.commit)
                else:
                    self._queue(self.node_id, request_id, now)
            elif election.leader is not None:
                self.to_ask.append((request_id, read))
            else:
                election.want_leader(now)  # asked for when we learn who leads: `follow`
        elif mode == "quorum":
            qread = self.quorum[request_id] = PendingQuorumRead(
                query, now + self.config.read_timeout)
            self.quorum_by_deadline.append((qread.deadline, request_id, qread))
            out.broadcast(QuorumRead(self.node_id, request_id, query, 0), include_self=True)
        else:
            out.outcome(request_id,
                        Outcome.failed(Code.BAD_REQUEST, f"unknown read mode {mode!r}"))

    def cancel(self, request_id: int) -> None:
        self.local.pop(request_id, None)
        self.quorum.pop(request_id, None)

    # ------------------------------------------------------- read index

    def _queue(self, src: int, read_id: int, now: float) -> None:
        if not self.unsent:
            self.unsent_since = now
        self.unsent.append((src, read_id))

    def on_read_index(self, m: ReadIndex, now: float) -> None:
        election = self.election
        if election.role is not Role.LEADER:
            self.out.send(m.src, ReadIndexReply(self.node_id, m.id, 0, False))
        elif (m.promised == election.ballot == self.acceptor.promised
              and election.is_quorum({self.node_id, m.src})
              and election.recovered_at <= self.log.commit):
            # The asker and we are a quorum (three voters): its promise when it asked,
            # after its reads arrived, and ours now, are the acks of a round sent after
            # them. No leader of a higher ballot can have chosen anything before then.
            self._answer_read_index(m.src, m.id, self.log.commit)
        elif self._leased(now):
            self._answer_read_index(m.src, m.id, self.log.commit)
        else:
            self._queue(m.src, m.id, now)

    def _leased(self, now: float) -> bool:
        """A read may take our commit index at once: we lead with a lease, and every
        slot phase 1 recovered is chosen."""
        election = self.election
        return election.has_lease(now) and election.recovered_at <= self.log.commit

    def lead(self, now: float) -> None:
        """We became the leader: reads that waited for one are ours to confirm."""
        self.to_ask.clear()
        self.asked.clear()
        for rid, read in self.local.items():
            if read.index is None:
                self._queue(self.node_id, rid, now)

    def follow(self, leader: int) -> None:
        """`leader` is new to us: ask it for the index of every read waiting for one."""
        self.asked.clear()
        self.to_ask = [(rid, read) for rid, read in self.local.items() if read.index is None]
        self.ask()

    def ask(self) -> None:
        """Ask the leader for one read index for every read in `to_ask` (at the end of
        the call that brought them), named by the newest: every read in the batch arrived
        before it (`local` and `to_ask` keep the order reads arrive in), so the round
        confirming `ReadIndex(newest)` went out after each of them arrived. Request ids
        never repeat (the driver counts them up across restarts), so no reply to an
        earlier request can be taken for this one."""
        batch, self.to_ask = self.to_ask, []
        leader = self.election.leader
        if not batch or leader is None or leader == self.node_id:
            return  # they wait for a leader: `follow` and `lead` ask for them
        self._forget_asked()
        newest = batch[-1][0]
        earlier = self.asked.pop(newest, None)  # only if an id was used again
        if earlier is not None:
            batch = [p for p in earlier if self.local.get(p[0]) is p[1]] + batch
        self.asked[newest] = batch
        promised = self.acceptor.promised if self.standings.votes else ZERO
        self.out.send(leader, ReadIndex(self.node_id, newest, promised))

    def _forget_asked(self) -> None:
        """Drop the oldest batches none of whose reads is still waiting (the leader may
        never answer: a lost message). Reads time out in the order they came, so this
        keeps `asked` to the batches of the last `read_timeout`."""
        asked, local = self.asked, self.local
        while asked:
            first = next(iter(asked))
            if any(local.get(rid) is read for rid, read in asked[first]):
                return
            del asked[first]

    def round_sent(self, rnd: int, commit: int) -> None:
        """Heartbeat round `rnd` went out: it confirms the reads waiting for one."""
        if self.unsent:
            self.rounds[rnd] = [(src, rid, commit) for src, rid in self.unsent]
            self.unsent = []

    def ack(self, confirmed_round: int) -> None:
        """A quorum acked every heartbeat round up to `confirmed_round`: no other leader
        can have chosen anything we do not know before those rounds went out."""
        election = self.election
        if not self.rounds or election.recovered_at > self.log.commit:
            return
        recovered_at = election.recovered_at
        for rnd in sorted(self.rounds):
            if rnd > confirmed_round:
                break
            for src, read_id, index in self.rounds.pop(rnd):
                # Never below what phase 1 recovered: a slot chosen under an older
                # leader may sit there, and the read must see it.
                self._answer_read_index(src, read_id, max(index, recovered_at))

    def lose_ballot(self) -> None:
        """We lost our ballot: no read waiting for us to confirm it can be answered."""
        for pending in self.rounds.values():
            for src, read_id, _ in pending:
                self._answer_read_index(src, read_id, None)
        self.rounds.clear()
        for src, read_id in self.unsent:
            self._answer_read_index(src, read_id, None)
        self.unsent.clear()

    def _answer_read_index(self, src: int, read_id: int, index: int | None) -> None:
        if src != self.node_id:
            self.out.send(src, ReadIndexReply(self.node_id, read_id, index or 0,
                                              index is not None))
            return
        read = self.local.get(read_id)
        if read is None:
            return
        if index is None:
            del self.local[read_id]
            self.out.outcome(read_id, Outcome.failed(Code.NOT_LEADER, "not the leader any more"))
        else:
            self._set_index(read_id, read, index)

    def on_read_index_reply(self, m: ReadIndexReply) -> None:
        batch = self.asked.pop(m.id, None)
        if batch is None:
            return  # answered already, or asked of a leader we no longer follow
        local = self.local
        for rid, read in batch:
            if local.get(rid) is not read or read.index is not None:
                continue  # expired, cancelled, or answered
            if m.ok:
                self._set_index(rid, read, m.index)
            else:
                del local[rid]
                self.out.outcome(rid, Outcome.failed(Code.NOT_LEADER,
                                                     "asked a replica that is not the leader"))

    def _set_index(self, read_id: int, read: LocalRead, index: int) -> None:
        log = self.log
        if index <= log.applied:  # the common case: served at once
            del self.local[read_id]
            self.out.outcome(read_id, Outcome(True, self.machine.query(read.query),
                                              log.applied_index))
            return
        read.index = index
        # The counter keeps equal (index, id) pairs (an id used again after its read
        # expired) from comparing the reads themselves.
        self.seq += 1
        heapq.heappush(self.by_index, (index, self.seq, read_id, read))

    def advance(self) -> None:
        """More slots were applied: serve the reads that waited for them."""
        if self.by_index:
            self._serve()
        if self.held:
            applied = self.log.applied
            held, self.held = self.held, []
            for src, q in held:
                if applied >= q.min_applied:
                    self._answer_quorum_read(src, q)
                else:
                    self.held.append((src, q))

    def _serve(self) -> None:
        """Answer the reads whose read index this replica has applied."""
        heap = self.by_index
        log = self.log
        while heap and heap[0][0] <= log.applied:
            _, _, rid, read = heapq.heappop(heap)
            if self.local.get(rid) is read:  # else it expired or was cancelled
                del self.local[rid]
                self.out.outcome(rid, Outcome(True, self.machine.query(read.query),
                                              log.applied_index))

    # ------------------------------------------------------ quorum reads

    def on_quorum_read(self, m: QuorumRead) -> None:
        if not self.standings.votes:
            return  # a quorum read counts acceptors; a learner is none
        if self.log.applied >= m.min_applied:
            self._answer_quorum_read(m.src, m)
        elif len(self.held) < MAX_HELD:
            self.held.append((m.src, m))

    def _answer_quorum_read(self, src: int, m: QuorumRead) -> None:
        result = self.machine.query(m.query)
        log = self.log
        self.out.send(src, QuorumReadReply(self.node_id, m.id, log.applied,
                                           self.acceptor.max_accepted, result,
                                           log.applied_index))

    def on_quorum_read_reply(self, m: QuorumReadReply) -> None:
        read = self.quorum.get(m.id)
        if read is None:
            return
        read.replies[m.src] = m
        if self._read_quorum(read.replies):
            self.evaluate_quorum_read(m.id, read)

    def _read_quorum(self, repliers: dict[int, QuorumReadReply] | list[int]) -> bool:
        """Enough replies to meet every phase-2 quorum of the configurations governing
        the slots after our commit (`Membership.read_quorum_met`)."""
        first = self.log.commit + 1
        return self.log.membership.read_quorum_met(repliers, first, first + ALPHA - 1)

    def evaluate_quorum_read(self, read_id: int, read: PendingQuorumRead) -> None:
        """Paxos Quorum Read: the read slot is the highest slot any replier accepted;
        answer with a result that a quorum of replicas applied past it agree on."""
        if read.read_slot is None:
            # Fixed by the first quorum of replies (as in Paxos Quorum Reads): later
            # replies only show later writes, which the read need not wait for.
            read.read_slot = max(r.accepted for r in read.replies.values())
        read_slot = read.read_slot
        votes: dict[bytes, list[QuorumReadReply]] = {}
        for r in read.replies.values():
            if r.applied >= read_slot:
                votes.setdefault(r.result, []).append(r)
        for result, agreeing in votes.items():
            if self._read_quorum([r.src for r in agreeing]):
                del self.quorum[read_id]
                index = min(r.index for r in agreeing)
                self.out.outcome(read_id, Outcome(True, result, index))
                return
        # Rinse: ask again, to be answered once each replica has applied the read slot.
        if read.attempts >= self.config.quorum_read_attempts:
            del self.quorum[read_id]
            self.out.outcome(read_id, Outcome.failed(Code.READ_DISAGREED,
                                                     "quorum read: replicas did not agree"))
            return
        read.attempts += 1
        read.replies = {s: r for s, r in read.replies.items() if r.applied >= read_slot}
        self.out.broadcast(QuorumRead(self.node_id, read_id, read.query, read_slot),
                           include_self=True)

    # --------------------------------------------------------- deadlines

    def expire(self, now: float) -> None:
        if self.asked:
            self._forget_asked()
        for pending, order, error in (
            (self.local, self.local_by_deadline, "linearizable read timed out"),
            (self.quorum, self.quorum_by_deadline, "quorum read: no quorum answered in time"),
        ):
            while _next_deadline(pending, order) is not None and order[0][0] <= now:
                _, rid, _ = order.popleft()
                del pending[rid]
                self.out.outcome(rid, Outcome.failed(Code.TIMEOUT, error))

    def next_deadline(self, leading: bool) -> float | None:
        """When these reads next need a tick: a deadline, or at once for reads that wait
        for a heartbeat round (`leading`)."""
        if not (self.local or self.quorum or self.unsent):
            # Nothing pending (the common case): whatever the queues hold is stale.
            if self.local_by_deadline:
                self.local_by_deadline.clear()
            if self.quorum_by_deadline:
                self.quorum_by_deadline.clear()
            return None
        local = _next_deadline(self.local, self.local_by_deadline)
        quorum = _next_deadline(self.quorum, self.quorum_by_deadline)
        soonest = local if quorum is None or (local is not None and local <= quorum) else quorum
        if self.unsent and leading and (soonest is None or self.unsent_since < soonest):
            soonest = self.unsent_since
        return soonest

    def check_invariants(self) -> None:
        if self.election.role is not Role.LEADER:
            assert not self.rounds and not self.unsent, "reads queued at a non-leader"
        else:
            assert not self.asked, "a leader waiting for another's read index"
        assert not self.to_ask, "reads not asked for at the end of a call"
        heap = self.by_index
        for i in range(1, len(heap)):
            assert heap[(i - 1) // 2][:2] <= heap[i][:2], "by_index is not a heap"
        if heap:
            # Served as soon as applied: nothing still pending waits below `applied`.
            index, _, rid, read = heap[0]
            assert index > self.log.applied or self.local.get(rid) is not read, (
                index, self.log.applied)
        assert len(self.local_by_deadline) >= len(self.local), "a read without a deadline"
        assert len(self.quorum_by_deadline) >= len(self.quorum), "a read without a deadline"


def _next_deadline(pending: dict[int, _R], order: deque[tuple[float, int, _R]]) -> float | None:
    """The earliest deadline of the reads still `pending`; `order` is by deadline, and
    forgets (lazily, here) the reads that were answered, expired or cancelled."""
    while order and pending.get(order[0][1]) is not order[0][2]:
        order.popleft()
    return order[0][0] if order else None
