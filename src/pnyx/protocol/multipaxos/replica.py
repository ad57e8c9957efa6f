"""A Multi-Paxos replica: one instance of Paxos per log slot, driven from outside.

This is the seed's "Multi-Paxos" section. Every replica is an acceptor for
every slot, a learner of the log and, when elected, the distinguished
proposer (the leader). Like `SynodNode` it is pure: it is fed events and
returns a `LogReady` of effects, and it holds back every message that reports
acceptor state until the records behind it are durable (`persisted`).

- **Leader election**: a follower that has not heard from a leader within a
  randomized election timeout first asks the others whether they miss the
  leader too (`PreVote`, the idea of Raft's pre-vote) and runs phase 1 only if
  a quorum agrees, so a replica returning from a partition cannot depose a
  healthy leader. Any replica that sees a higher ballot steps down.
- **Phase 1 once for all slots**: the new leader's one `Prepare` covers every
  slot from the first it does not know chosen, except the later ones it does
  know; each `Promise` returns every accepted entry in that range.
- **Gap filling**: slots some acceptor accepted get the highest-numbered
  value reported (the value rule, per slot); slots nobody accepted get a
  no-op, so the log has no holes.
- **Pipelining and batching**: up to `window` slots in flight, each holding a
  batch of the commands that queued while the window was full.
- **Learning**: the leader learns a slot is chosen from a phase-2 quorum of
  `Accepted`, and tells the others through `commit` on its next `Accept` or
  `Heartbeat`; a replica missing a chosen value fetches it (`CatchUp`). Every
  replica applies chosen commands strictly in slot order, each once.
- **Writes through any member**: a follower forwards commands to the leader,
  and with no leader known it starts an election itself.
- **Fail fast**: a leader that loses its ballot tells each command's origin
  that the command may not be chosen as proposed (`Aborted`); the client
  retries, and the state machine's de-duplication keeps that safe.
- **Reads**: `linearizable` (read-index: the leader confirms with a quorum
  that it still leads, then answers once it has applied up to its commit),
  `quorum` (the seed's read as a learner, made linearizable in the manner of
  Paxos Quorum Reads: ask every replica, take the highest accepted slot among
  a quorum of replies, and answer only with a result that a quorum of replicas
  which have applied that slot agree on), and `stale` (local state).
"""

from __future__ import annotations

import enum
import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, TypeVar

from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.codec import MalformedMessage
from pnyx.protocol.durability import DurabilityGate
from pnyx.protocol.multipaxos.messages import (
    LOG_MESSAGE_TYPES,
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
    HeartbeatAck,
    LogMessage,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    QuorumRead,
    QuorumReadReply,
    ReadIndex,
    ReadIndexReply,
    Rejected,
    decode,
)
from pnyx.protocol.multipaxos.outcome import Code, Outcome, ReadMode
from pnyx.protocol.multipaxos.records import (
    AcceptRecord,
    ChosenRecord,
    LogRecord,
    PromiseRecord,
    ReplicaDurable,
    RoundRecord,
)
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.synod.acceptor import may_accept, may_promise
from pnyx.protocol.synod.proposer import highest_numbered

LAZY_RECORDS = 64  # chosen records held back for the next write, at most


class Machine(Protocol):
    """What the replica applies chosen commands to (see `pnyx.statemachine`)."""

    def apply(self, command: bytes, index: int) -> bytes: ...

    def query(self, query: bytes) -> bytes: ...


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    members: tuple[int, ...]
    quorums: QuorumSystem
    heartbeat_interval: float = 0.02
    election_timeout: float = 0.1  # each wait is drawn from [this, 2 x this)
    prevote: bool = True
    window: int = 32  # slots in flight
    max_batch: int = 256  # commands per slot; 1 turns batching off
    max_batch_bytes: int = 1 << 20
    max_command: int = 1 << 20
    catchup_chunk: int = 64
    catchup_bytes: int = 4 << 20
    promise_bytes: int = 4 << 20  # entries per Promise message; more go in more parts
    read_timeout: float = 0.5
    quorum_read_attempts: int = 20

    @classmethod
    def majority(cls, members: Iterable[int], **kwargs: object) -> ReplicaConfig:
        ids = tuple(sorted(members))
        return cls(ids, QuorumSystem.majority(ids), **kwargs)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if set(self.quorums.acceptors) != set(self.members):
            raise ValueError("every member is an acceptor: quorums must be over the members")
        if self.window < 1 or self.max_batch < 1 or self.max_command < 1:
            raise ValueError("window, max_batch and max_command must be at least 1")
        if not 0 < self.heartbeat_interval < self.election_timeout:
            raise ValueError("need 0 < heartbeat_interval < election_timeout")

    @property
    def read_quorum(self) -> int:
        """Replies a quorum read needs: enough to meet every phase-2 quorum."""
        return len(self.members) - self.quorums.phase2 + 1


@dataclass(slots=True)
class LogReady:
    """Effects of one event. Write `persist` in order, call `persisted(persist_seq)`
    once durable; send `send` now; hand `outcomes` to the waiting clients."""

    persist: list[LogRecord] = field(default_factory=list)
    persist_seq: int = 0
    send: list[tuple[int, LogMessage]] = field(default_factory=list)
    outcomes: list[tuple[int, Outcome]] = field(default_factory=list)
    applied: list[tuple[int, Batch]] = field(default_factory=list)  # (slot, value) in order
    wake_at: float | None = None


@dataclass(slots=True)
class _InFlight:
    """A slot the leader proposed and has not yet seen chosen."""

    value: Batch
    votes: set[int]
    sent_at: float


@dataclass(slots=True)
class _LocalRead:
    query: bytes
    deadline: float
    index: int | None = None  # the read is served once applied reaches this slot


_R = TypeVar("_R")
_T = TypeVar("_T")


@dataclass(slots=True)
class _QuorumRead:
    query: bytes
    deadline: float
    replies: dict[int, QuorumReadReply] = field(default_factory=dict)
    attempts: int = 1
    read_slot: int | None = None


class Replica:
    def __init__(
        self,
        node_id: int,
        config: ReplicaConfig,
        rng: random.Random,
        machine: Machine,
        durable: ReplicaDurable | None = None,
        now: float = 0.0,
    ) -> None:
        if node_id not in config.members:
            raise ValueError(f"node {node_id} is not a member of {config.members}")
        d = durable if durable is not None else ReplicaDurable()
        self.node_id = node_id
        self.config = config
        self.quorums = config.quorums
        self.rng = rng
        self.machine = machine
        self.others = tuple(m for m in config.members if m != node_id)
        self.dropped = 0  # malformed or foreign messages, counted and ignored

        # Acceptor, for every slot at once.
        self.promised = max([d.promised, *(e.ballot for e in d.accepted.values())])
        self.accepted: dict[int, Entry] = dict(d.accepted)
        self.max_accepted = max(self.accepted, default=0)
        self.last_round = d.last_round
        self.highest_seen = self.promised

        # Learner: the chosen log, and how far it is known and applied.
        self.chosen: dict[int, Batch] = dict(d.chosen)
        self.max_chosen = max(self.chosen, default=0)
        self.commit = 0  # every slot up to here is known chosen
        self.applied = 0  # every slot up to here is applied
        self.applied_index = 0  # commands applied, the index a state machine sees
        self._advance_commit()

        # Leadership.
        self.role = Role.FOLLOWER
        self.leader: int | None = None
        self.leader_ballot = ZERO
        self.ballot = ZERO  # ours, when candidate or leader
        self._heard_at = now
        self._election_at = now + self._election_wait()
        self._prevote_ballot: Ballot | None = None
        self._prevotes: set[int] = set()
        self._promises: dict[int, Promise] = {}  # complete promises, by acceptor
        self._promise_parts: dict[int, dict[int, Promise]] = {}  # acceptor -> part -> it
        self._first = 1  # first slot of our phase 1

        # Leader's proposals.
        self._queue: deque[Command] = deque()
        self._inflight: dict[int, _InFlight] = {}
        self._told_commit = 0  # the commit index the followers were last sent
        self.next_slot = 1
        self._recovered_at = 0  # slot up to which phase 1 recovered the log
        self._hb_at: float | None = None
        self._hb_round = 0
        self._acks: dict[int, set[int]] = {}  # heartbeat round -> who acked it
        self._confirmed_round = 0  # the latest round a quorum acked
        self._quorum_seen_at = now

        # Clients' requests that entered here.
        self._waiting: dict[int, Command] = {}  # our commands not yet applied
        self._forwarded: dict[int, Command] = {}  # sent to a leader, not yet applied
        self._unrouted: deque[Command] = deque()  # waiting for a leader to exist
        self._reads: dict[int, _LocalRead] = {}  # linearizable reads
        self._read_round: dict[int, list[tuple[int, int, int]]] = {}  # round -> (src, id, index)
        self._reads_unsent: list[tuple[int, int]] = []  # (src, id) awaiting a heartbeat round
        self._qreads: dict[int, _QuorumRead] = {}
        # The same reads in the order of their deadlines (which is the order they came in:
        # one read_timeout for all), and the local reads that know their read index, by
        # it: so the next deadline and the reads to serve are found without a scan.
        self._reads_by_deadline: deque[tuple[float, int, _LocalRead]] = deque()
        self._qreads_by_deadline: deque[tuple[float, int, _QuorumRead]] = deque()
        self._reads_by_index: list[tuple[int, int, int, _LocalRead]] = []  # a heap
        self._read_seq = 0
        self._held_qreads: list[tuple[int, QuorumRead]] = []
        self._catchup_at: float | None = None

        # Persist-before-send.
        self._lazy: list[ChosenRecord] = []  # records that may wait for the next write
        self._gate: DurabilityGate[LogMessage] = DurabilityGate()
        self._ready = LogReady()
        self._apply_chosen()
        self._ready.outcomes.clear()

    # =========================================================== events in

    def submit(self, request_id: int, payload: bytes, now: float) -> LogReady:
        """A client's command reached this member. Its outcome comes back under
        `request_id`, which must not be reused while it is pending."""
        return self.submit_many([(request_id, payload)], now)

    def submit_many(self, requests: list[tuple[int, bytes]], now: float) -> LogReady:
        """Several commands at once: they are routed together, so they can share a
        slot (a driver that gathers what arrives in one loop iteration batches
        even while the pipelining window has room)."""
        self._last_now = now
        commands = []
        for request_id, payload in requests:
            if len(payload) > self.config.max_command:
                self._outcome(request_id, Outcome.failed(
                    Code.TOO_LARGE, f"command too large: {len(payload)} bytes, "
                    f"limit {self.config.max_command}"))
                continue
            command = Command(self.node_id, request_id, payload)
            self._waiting[request_id] = command
            commands.append(command)
        if commands:
            self._route(commands, now)
        return self._flush(now)

    def read(self, request_id: int, query: bytes, mode: ReadMode, now: float) -> LogReady:
        self._last_now = now
        if mode == "stale":
            self._outcome(request_id, Outcome(True, self.machine.query(query),
                                              self.applied_index))
        elif mode == "linearizable":
            read = self._reads[request_id] = _LocalRead(query, now + self.config.read_timeout)
            self._reads_by_deadline.append((read.deadline, request_id, read))
            if self.role is Role.LEADER:
                self._reads_unsent.append((self.node_id, request_id))
            elif self.leader is not None:
                self._send(self.leader, ReadIndex(self.node_id, request_id))
            else:
                self._want_leader(now)
        elif mode == "quorum":
            qread = self._qreads[request_id] = _QuorumRead(query, now + self.config.read_timeout)
            self._qreads_by_deadline.append((qread.deadline, request_id, qread))
            self._broadcast(QuorumRead(self.node_id, request_id, query, 0), include_self=True)
        else:
            self._outcome(request_id,
                          Outcome.failed(Code.BAD_REQUEST, f"unknown read mode {mode!r}"))
        return self._flush(now)

    def cancel(self, request_id: int) -> None:
        """The client gave up: forget the request (a command may still be applied)."""
        command = self._waiting.get(request_id)
        if command is not None:
            # Not proposed anywhere yet: it need never be.
            for queue in (self._unrouted, self._queue):
                if command in queue:
                    queue.remove(command)
        self._waiting.pop(request_id, None)
        self._forwarded.pop(request_id, None)
        self._reads.pop(request_id, None)
        self._qreads.pop(request_id, None)

    def receive(self, data: bytes, now: float) -> LogReady:
        try:
            message = decode(data)
        except MalformedMessage:
            self.dropped += 1
            return self._flush(now)
        return self.step(message, now)

    def step(self, m: LogMessage, now: float) -> LogReady:
        self._last_now = now
        if not isinstance(m, LOG_MESSAGE_TYPES) or m.src not in self.config.members:
            self.dropped += 1
            return self._flush(now)
        getattr(self, self._handlers[type(m)])(m, now)
        return self._flush(now)

    def tick(self, now: float) -> LogReady:
        self._last_now = now
        if self.role is Role.LEADER:
            if self._reads_unsent or (self._hb_at is not None and now >= self._hb_at):
                self._heartbeat(now)
            if now - self._quorum_seen_at > 2 * self.config.election_timeout:
                self._step_down(now)  # cut off from a quorum: let clients fail over
        elif now >= self._election_at:
            self._on_election_timeout(now)
        if self._catchup_at is not None and now >= self._catchup_at:
            self._catchup_at = None
            self._catch_up(now)
        self._expire_reads(now)
        return self._flush(now)

    def persisted(self, seq: int) -> LogReady:
        """Every record up to `seq` is durable: release the messages that waited for it."""
        self._gate.persisted(seq, self._ready.send)
        return self._flush(None)

    # ======================================================== inspection

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def durable(self) -> ReplicaDurable:
        """The state the records so far add up to (whether or not yet durable)."""
        return ReplicaDurable(self.promised, self.last_round, dict(self.accepted),
                              dict(self.chosen))

    # ====================================================== client routing

    def _route(self, commands: list[Command], now: float) -> None:
        if self.role is Role.LEADER:
            self._queue.extend(commands)
            self._fill_window()
        elif self.leader is not None:
            for c in commands:
                if c.origin == self.node_id:
                    self._forwarded[c.id] = c
            # In messages of at most a slot's worth of bytes, so each fits in a frame.
            for part in _in_parts(tuple(commands), _payload_size,
                                  self.config.max_batch_bytes):
                self._send(self.leader, Forward(self.node_id, part))
        else:
            self._unrouted.extend(commands)
            self._want_leader(now)

    def _want_leader(self, now: float) -> None:
        """No leader is known: the seed says any member may start phase 1 itself."""
        if self.role is Role.FOLLOWER and self._prevote_ballot is None:
            self._on_election_timeout(now)

    def _on_forward(self, m: Forward, now: float) -> None:
        if self.role is Role.LEADER:
            self._queue.extend(m.commands)
            self._fill_window()
        else:
            self._send(m.src, Aborted(self.node_id, tuple(c.id for c in m.commands)))

    def _on_aborted(self, m: Aborted, now: float) -> None:
        for request_id in m.ids:
            self._abort_waiter(request_id, "the leader lost its ballot before it was chosen")

    def _abort_waiter(self, request_id: int, why: str) -> None:
        if self._waiting.pop(request_id, None) is not None:
            self._forwarded.pop(request_id, None)
            self._outcome(request_id, Outcome.failed(Code.ABORTED, f"aborted: {why}", unknown=True))

    # ============================================================ election

    def _election_wait(self) -> float:
        t = self.config.election_timeout
        return self.rng.uniform(t, 2 * t)

    def _on_election_timeout(self, now: float) -> None:
        self._election_at = now + self._election_wait()
        if self.role is Role.CANDIDATE:
            self.role = Role.FOLLOWER  # phase 1 did not finish in time: try again
        if self.leader is not None and now - self._heard_at < self.config.election_timeout:
            return
        if self.leader is not None:
            self._lose_leader(now)
        if self.config.prevote and self.others:
            self._prevote_ballot = self._next_ballot()
            self._prevotes = {self.node_id}
            self._broadcast(PreVote(self.node_id, self._prevote_ballot))
        else:
            self._start_phase1(now)

    def _misses_leader(self, now: float) -> bool:
        return (
            self.role is not Role.LEADER
            and (self.leader is None or now - self._heard_at >= self.config.election_timeout)
        )

    def _on_prevote(self, m: PreVote, now: float) -> None:
        granted = m.ballot > self.promised and self._misses_leader(now)
        self._send(m.src, PreVoteReply(self.node_id, m.ballot, granted))

    def _on_prevote_reply(self, m: PreVoteReply, now: float) -> None:
        if m.ballot != self._prevote_ballot or not m.granted or self.role is not Role.FOLLOWER:
            return
        self._prevotes.add(m.src)
        if self.quorums.is_phase1_quorum(self._prevotes):
            self._start_phase1(now)

    def _next_ballot(self) -> Ballot:
        floor = max(self.highest_seen, self.promised, Ballot(self.last_round, self.node_id))
        return floor.successor(self.node_id)

    def _start_phase1(self, now: float) -> None:
        self._prevote_ballot = None
        self.role = Role.CANDIDATE
        self.ballot = self._next_ballot()
        self.last_round = self.ballot.round
        self._save(RoundRecord(self.last_round))  # a ballot is never used twice
        self._promises = {}
        self._promise_parts = {}
        self._first = self.commit + 1
        known = self._chosen_beyond_commit()
        self._election_at = now + self._election_wait()
        self._broadcast(Prepare(self.node_id, self.ballot, self._first, known),
                        include_self=True, gated=True)

    def _on_prepare(self, m: Prepare, now: float) -> None:
        self._observe(m.ballot, now)
        if not may_promise(self.promised, m.ballot):
            self._emit(m.src, Rejected(self.node_id, m.ballot, self.promised))
            return
        self.promised = m.ballot
        self._save(PromiseRecord(m.ballot))
        known = set(m.known)
        # Walk the prepared range, not the whole log (which only grows): an election
        # costs what is in flight, not what was ever accepted.
        accepted = self.accepted
        entries = tuple(
            e for s in range(m.first, self.max_accepted + 1)
            if (e := accepted.get(s)) is not None and s not in known
        )
        # In parts that each fit in a message: an acceptor may hold more accepted entries
        # than a transport frame carries.
        parts = _in_parts(entries, _entry_size, self.config.promise_bytes)
        for i, part in enumerate(parts):
            self._emit(m.src, Promise(self.node_id, m.ballot, part, i, len(parts)))
        if m.src != self.node_id and self.leader is not None:
            self._lose_leader(now)  # a new leader is being elected

    def _on_promise(self, m: Promise, now: float) -> None:
        if self.role is not Role.CANDIDATE or m.ballot != self.ballot:
            return
        if m.part >= m.parts:
            self.dropped += 1  # not a part of anything: a faulty sender
            return
        parts = self._promise_parts.setdefault(m.src, {})
        parts[m.part] = m
        if len(parts) < m.parts or any(p.parts != m.parts for p in parts.values()):
            return
        # Every part is in: the promise counts, with all the entries it reports.
        self._promises[m.src] = Promise(
            m.src, m.ballot, tuple(e for i in range(m.parts) for e in parts[i].entries))
        if self.quorums.is_phase1_quorum(self._promises):
            self._become_leader(now)

    def _become_leader(self, now: float) -> None:
        self.role = Role.LEADER
        self._catchup_at = None
        self.leader = self.node_id
        self.leader_ballot = self.ballot
        self._quorum_seen_at = now
        reported: dict[int, list[Entry]] = {}
        for promise in self._promises.values():
            for e in promise.entries:
                reported.setdefault(e.slot, []).append(e)
        self._promises = {}
        self._promise_parts = {}
        last = max([self.commit, *reported, *self._chosen_beyond_commit()])
        for slot in range(self._first, last + 1):
            if slot in self.chosen:
                continue
            value = self.pick_value(reported.get(slot, ()))
            self._propose(slot, value)
        self.next_slot = last + 1
        self._recovered_at = last
        # Reads that waited for a leader are now ours to confirm.
        self._reads_unsent.extend(
            (self.node_id, rid) for rid, read in self._reads.items() if read.index is None
        )
        self._heartbeat(now)
        self._queue.extend(self._unrouted)
        self._unrouted.clear()
        self._fill_window()

    def pick_value(self, reported: Iterable[Entry]) -> Batch:
        """Gap filling: the highest-numbered value accepted in the slot, else a no-op."""
        highest = highest_numbered(reported)
        return NOOP if highest is None else highest.value

    def _observe(self, ballot: Ballot, now: float) -> None:
        if ballot > self.highest_seen:
            self.highest_seen = ballot
        if self.role is not Role.FOLLOWER and ballot > self.ballot:
            self._step_down(now)

    def _follow(self, src: int, ballot: Ballot, now: float) -> None:
        """`src` leads with `ballot`, which we did not refuse."""
        if src == self.node_id:
            return
        if ballot > self.leader_ballot or self.leader != src:
            if self.role is not Role.FOLLOWER:
                self._step_down(now)
            self._lose_leader(now)
            self.leader = src
            self.leader_ballot = ballot
            self._prevote_ballot = None
            if self._unrouted:
                commands = list(self._unrouted)
                self._unrouted.clear()
                self._route(commands, now)
            for request_id, read in self._reads.items():
                if read.index is None:
                    self._send(src, ReadIndex(self.node_id, request_id))
        self._heard_at = now
        self._election_at = now + self._election_wait()

    def _lose_leader(self, now: float) -> None:
        """The leader we followed is gone: what we forwarded to it may never be chosen."""
        self.leader = None
        for request_id in list(self._forwarded):
            self._abort_waiter(request_id, "the leader changed before it was chosen")

    def _step_down(self, now: float) -> None:
        """We lost our ballot: fail fast every command we had not got chosen."""
        if self.role is Role.FOLLOWER:
            return
        was_leader = self.role is Role.LEADER
        self.role = Role.FOLLOWER
        self.leader = None
        self._hb_at = None
        self._acks.clear()
        self._election_at = now + self._election_wait()
        if not was_leader:
            return
        lost: dict[int, list[int]] = {}
        for proposal in self._inflight.values():
            for c in proposal.value.commands:
                lost.setdefault(c.origin, []).append(c.id)
        for c in self._queue:
            lost.setdefault(c.origin, []).append(c.id)
        self._inflight.clear()
        self._queue.clear()
        for origin, ids in sorted(lost.items()):
            if origin == self.node_id:
                for request_id in ids:
                    self._abort_waiter(request_id, "this leader lost its ballot")
            else:
                self._send(origin, Aborted(self.node_id, tuple(ids)))
        for pending in self._read_round.values():
            for src, read_id, _ in pending:
                self._answer_read_index(src, read_id, None)
        self._read_round.clear()
        for src, read_id in self._reads_unsent:
            self._answer_read_index(src, read_id, None)
        self._reads_unsent.clear()

    # ============================================================ phase 2

    def _fill_window(self) -> None:
        cfg = self.config
        while self._queue and len(self._inflight) < cfg.window and self.role is Role.LEADER:
            commands = [self._queue.popleft()]
            size = len(commands[0].payload)
            while self._queue and len(commands) < cfg.max_batch:
                nxt = len(self._queue[0].payload)
                if size + nxt > cfg.max_batch_bytes:
                    break
                commands.append(self._queue.popleft())
                size += nxt
            slot = self.next_slot
            self.next_slot += 1
            self._propose(slot, Batch(tuple(commands)))

    def _propose(self, slot: int, value: Batch) -> None:
        self._inflight[slot] = _InFlight(value, set(), self._last_now)
        self._told_commit = self.commit
        self._broadcast(Accept(self.node_id, self.ballot, slot, value, self.commit),
                        include_self=True)

    def _on_accept(self, m: Accept, now: float) -> None:
        self._observe(m.ballot, now)
        if not may_accept(self.promised, m.ballot):
            self._emit(m.src, Rejected(self.node_id, m.ballot, self.promised))
            return
        self.promised = m.ballot
        entry = Entry(m.slot, m.ballot, m.value)
        if self.accepted.get(m.slot) != entry:
            self.accepted[m.slot] = entry
            self.max_accepted = max(self.max_accepted, m.slot)
            self._save(AcceptRecord(entry))
        self._emit(m.src, Accepted(self.node_id, m.ballot, m.slot))
        self._follow(m.src, m.ballot, now)
        self._learn_commit(m.ballot, m.commit, now)

    def _on_accepted(self, m: Accepted, now: float) -> None:
        if self.role is not Role.LEADER or m.ballot != self.ballot:
            return
        proposal = self._inflight.get(m.slot)
        if proposal is None:
            return
        proposal.votes.add(m.src)
        if self.quorums.is_phase2_quorum(proposal.votes):
            del self._inflight[m.slot]
            self._learn(m.slot, proposal.value, self.ballot)
            self._apply_chosen()
            self._fill_window()
            if self.commit > self._told_commit:
                # No Accept is going out to carry the news: tell the followers now, so a
                # client waiting at one of them hears without waiting for the heartbeat.
                self._heartbeat(now)

    def _on_rejected(self, m: Rejected, now: float) -> None:
        self._observe(m.promised, now)
        if m.ballot == self.ballot and m.promised > self.ballot:
            self._step_down(now)

    # ============================================================ learning

    def _learn(self, slot: int, value: Batch, ballot: Ballot | None = None) -> None:
        """`value` is chosen in `slot`: in `ballot`, when the caller knows it."""
        if slot in self.chosen:
            return
        self.chosen[slot] = value
        self.max_chosen = max(self.max_chosen, slot)
        entry = self.accepted.get(slot)  # recorded when accepted, so before this record
        # The store may keep a reference to the accepted entry only if no entry this
        # replica may still accept for the slot holds another value: so only once it has
        # promised the ballot the value was chosen in (every proposal in that ballot or a
        # higher one carries the value). Not for a value learned by catch-up: its ballot
        # is unknown, and a late Accept of an older ballot may still replace the entry.
        same = (entry is not None and entry.value is value and ballot is not None
                and self.promised >= ballot)
        self._save_lazily(ChosenRecord(slot, value, same))
        self._advance_commit()

    def _chosen_beyond_commit(self) -> tuple[int, ...]:
        """The slots known chosen past the gap after `commit`, in order (a walk of the
        few slots past it, not of the whole log)."""
        return tuple(s for s in range(self.commit + 2, self.max_chosen + 1) if s in self.chosen)

    def _advance_commit(self) -> None:
        while self.commit + 1 in self.chosen:
            self.commit += 1

    def _learn_commit(self, ballot: Ballot, commit: int, now: float) -> None:
        """The leader of `ballot` says slots up to `commit` are chosen. A slot we
        accepted in that very ballot holds the chosen value; others we fetch."""
        # Only slots we accepted can be learned here (a huge `commit` must not mean a huge
        # loop); anything beyond them is fetched.
        missing = commit > self.max_accepted
        for slot in range(self.commit + 1, min(commit, self.max_accepted) + 1):
            if slot in self.chosen:
                continue
            entry = self.accepted.get(slot)
            if entry is not None and entry.ballot == ballot:
                self._learn(slot, entry.value, ballot)
            else:
                missing = True
        self._apply_chosen()
        if missing and self.commit < commit and self._catchup_at is None:
            self._catch_up(now)

    def _catch_up(self, now: float) -> None:
        if self.role is Role.LEADER:
            return  # phase 1 recovered every slot a leader does not know: it never catches up
        source = self.leader if self.leader not in (None, self.node_id) else None
        if source is None and self.others:
            source = self.rng.choice(self.others)
        if source is not None:
            self._send(source, CatchUp(self.node_id, self.commit + 1))
            self._catchup_at = now + self.config.heartbeat_interval

    def _on_catch_up(self, m: CatchUp, now: float) -> None:
        entries = []
        size = 0
        slot = m.first
        # Bounded in slots and in bytes, so a reply always fits in a transport frame.
        while slot in self.chosen and len(entries) < self.config.catchup_chunk:
            value = self.chosen[slot]
            size += _size(value)
            if entries and size > self.config.catchup_bytes:
                break
            entries.append(Decided(slot, value))
            slot += 1
        if entries:
            self._send(m.src, Chosen(self.node_id, tuple(entries), self.commit))

    def _on_chosen(self, m: Chosen, now: float) -> None:
        if self.role is Role.LEADER:
            # A leader tells followers `commit`, and they take a slot they accepted in its
            # ballot as chosen: so a leader may only learn slots through its own phase 2.
            # (A deposed leader that learned a newer leader's value here would vouch for
            # its own, unchosen proposal in that slot.)
            return
        for d in m.entries:
            self._learn(d.slot, d.value)
        self._apply_chosen()
        self._catchup_at = None
        if self.commit < m.commit:
            self._catch_up(now)

    def _apply_chosen(self) -> None:
        """Apply chosen slots strictly in order, each exactly once."""
        while self.applied < self.commit:
            slot = self.applied + 1
            value = self.chosen[slot]
            for c in value.commands:
                self.applied_index += 1
                result = self.machine.apply(c.payload, self.applied_index)
                if c.origin == self.node_id and self._waiting.pop(c.id, None) is not None:
                    self._forwarded.pop(c.id, None)
                    self._outcome(c.id, Outcome(True, result, self.applied_index))
            self.applied = slot
            self._ready.applied.append((slot, value))
        if self._reads_by_index:
            self._serve_reads()
        if self._held_qreads:
            held, self._held_qreads = self._held_qreads, []
            for src, q in held:
                if self.applied >= q.min_applied:
                    self._answer_quorum_read(src, q)
                else:
                    self._held_qreads.append((src, q))

    # ========================================================== heartbeats

    def _heartbeat(self, now: float) -> None:
        self._hb_round += 1
        self._hb_at = now + self.config.heartbeat_interval
        if self.quorums.is_phase2_quorum({self.node_id}):
            self._confirmed_round = self._hb_round  # a cluster of one confirms itself
            self._quorum_seen_at = now
        else:
            self._acks[self._hb_round] = {self.node_id}
        if self._reads_unsent:
            self._read_round[self._hb_round] = [
                (src, rid, self.commit) for src, rid in self._reads_unsent
            ]
            self._reads_unsent = []
        self._told_commit = self.commit
        self._broadcast(Heartbeat(self.node_id, self.ballot, self.commit, self._hb_round))
        # Messages get lost: ask again whoever has not yet accepted a slot in flight too long.
        for slot, proposal in self._inflight.items():
            if now - proposal.sent_at < self.config.heartbeat_interval:
                continue
            proposal.sent_at = now
            accept = Accept(self.node_id, self.ballot, slot, proposal.value, self.commit)
            for member in self.config.members:
                if member not in proposal.votes:
                    self._send(member, accept)
        self._check_read_rounds()

    def _on_heartbeat(self, m: Heartbeat, now: float) -> None:
        self._observe(m.ballot, now)
        if m.ballot < self.promised:
            self._emit(m.src, Rejected(self.node_id, m.ballot, self.promised))
            return
        self._follow(m.src, m.ballot, now)
        self._send(m.src, HeartbeatAck(self.node_id, m.ballot, m.round, self.max_accepted))
        self._learn_commit(m.ballot, m.commit, now)

    def _on_heartbeat_ack(self, m: HeartbeatAck, now: float) -> None:
        if self.role is not Role.LEADER or m.ballot != self.ballot:
            return
        if m.accepted >= self.next_slot and m.accepted < self.next_slot + self.config.window:
            # A slot beyond ours was accepted in an older ballot by someone outside our
            # phase-1 quorum, so it cannot have been chosen: close it with no-ops rather
            # than leave quorum reads waiting for it until the next write.
            for slot in range(self.next_slot, m.accepted + 1):
                self._propose(slot, NOOP)
            self.next_slot = m.accepted + 1
        acks = self._acks.get(m.round)
        if acks is None:
            return
        acks.add(m.src)
        if self.quorums.is_phase2_quorum(acks):
            self._quorum_seen_at = now
            # A quorum acked this round, so it confirms every earlier one too.
            self._confirmed_round = m.round
            for rnd in [r for r in self._acks if r <= m.round]:
                del self._acks[rnd]
            self._check_read_rounds()

    # ============================================================== reads

    def _on_read_index(self, m: ReadIndex, now: float) -> None:
        if self.role is Role.LEADER:
            self._reads_unsent.append((m.src, m.id))
        else:
            self._send(m.src, ReadIndexReply(self.node_id, m.id, 0, False))

    def _check_read_rounds(self) -> None:
        """Reads wait for a heartbeat round sent after they arrived to be acked by a
        quorum: then no other leader can have chosen anything we do not know of."""
        if not self._read_round or self._recovered_at > self.commit:
            return
        for rnd in sorted(self._read_round):
            if rnd > self._confirmed_round:
                break
            for src, read_id, index in self._read_round.pop(rnd):
                self._answer_read_index(src, read_id, max(index, self._recovered_at))

    def _answer_read_index(self, src: int, read_id: int, index: int | None) -> None:
        if src != self.node_id:
            self._send(src, ReadIndexReply(self.node_id, read_id, index or 0, index is not None))
            return
        read = self._reads.get(read_id)
        if read is None:
            return
        if index is None:
            del self._reads[read_id]
            self._outcome(read_id, Outcome.failed(Code.NOT_LEADER, "not the leader any more"))
        else:
            self._set_read_index(read_id, read, index)

    def _on_read_index_reply(self, m: ReadIndexReply, now: float) -> None:
        read = self._reads.get(m.id)
        if read is None or read.index is not None:
            return
        if not m.ok:
            del self._reads[m.id]
            self._outcome(m.id, Outcome.failed(Code.NOT_LEADER,
                                                      "asked a replica that is not the leader"))
            return
        self._set_read_index(m.id, read, m.index)

    def _set_read_index(self, read_id: int, read: _LocalRead, index: int) -> None:
        read.index = index
        # The counter keeps equal (index, id) pairs (an id used again after its read
        # expired) from comparing the reads themselves.
        self._read_seq += 1
        heapq.heappush(self._reads_by_index, (index, self._read_seq, read_id, read))
        self._serve_reads()

    def _serve_reads(self) -> None:
        """Answer the reads whose read index this replica has applied."""
        heap = self._reads_by_index
        while heap and heap[0][0] <= self.applied:
            _, _, rid, read = heapq.heappop(heap)
            if self._reads.get(rid) is read:  # else it expired or was cancelled
                del self._reads[rid]
                self._outcome(rid, Outcome(True, self.machine.query(read.query),
                                           self.applied_index))

    def _on_quorum_read(self, m: QuorumRead, now: float) -> None:
        if self.applied >= m.min_applied:
            self._answer_quorum_read(m.src, m)
        elif len(self._held_qreads) < 10_000:
            self._held_qreads.append((m.src, m))

    def _answer_quorum_read(self, src: int, m: QuorumRead) -> None:
        result = self.machine.query(m.query)
        self._send(src, QuorumReadReply(self.node_id, m.id, self.applied, self.max_accepted,
                                        result, self.applied_index))

    def _on_quorum_read_reply(self, m: QuorumReadReply, now: float) -> None:
        read = self._qreads.get(m.id)
        if read is None:
            return
        read.replies[m.src] = m
        if len(read.replies) >= self.config.read_quorum:
            self.evaluate_quorum_read(m.id, read)

    def evaluate_quorum_read(self, read_id: int, read: _QuorumRead) -> None:
        """Paxos Quorum Read: the read slot is the highest slot any replier accepted;
        answer with a result that a quorum of replicas applied past it agree on."""
        need = self.config.read_quorum
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
            if len(agreeing) >= need:
                del self._qreads[read_id]
                index = min(r.index for r in agreeing)
                self._outcome(read_id, Outcome(True, result, index))
                return
        # Rinse: ask again, to be answered once each replica has applied the read slot.
        if read.attempts >= self.config.quorum_read_attempts:
            del self._qreads[read_id]
            self._outcome(read_id, Outcome.failed(Code.READ_DISAGREED,
                                                         "quorum read: replicas did not agree"))
            return
        read.attempts += 1
        read.replies = {s: r for s, r in read.replies.items() if r.applied >= read_slot}
        self._broadcast(QuorumRead(self.node_id, read_id, read.query, read_slot),
                        include_self=True)

    def _expire_reads(self, now: float) -> None:
        for pending, order, error in (
            (self._reads, self._reads_by_deadline, "linearizable read timed out"),
            (self._qreads, self._qreads_by_deadline, "quorum read: no quorum answered in time"),
        ):
            while _next_deadline(pending, order) is not None and order[0][0] <= now:
                _, rid, _ = order.popleft()
                del pending[rid]
                self._outcome(rid, Outcome.failed(Code.TIMEOUT, error))

    # ============================================================ plumbing

    # Message type -> method name (looked up on the instance, so subclasses may override).
    _handlers: ClassVar[dict[type, str]] = {}

    def _outcome(self, request_id: int, outcome: Outcome) -> None:
        self._ready.outcomes.append((request_id, outcome))

    def _save(self, record: LogRecord) -> None:
        if not self._ready.persist or self._ready.persist_seq != self._gate.issued:
            self._gate.issue()  # one number for all the records of one step
        if self._lazy:
            self._ready.persist.extend(self._lazy)
            self._lazy.clear()
        self._ready.persist.append(record)
        self._ready.persist_seq = self._gate.issued

    def _save_lazily(self, record: ChosenRecord) -> None:
        """A chosen value needs no fsync of its own: losing it in a crash breaks no
        promise (the acceptors keep the value, and `commit`/catch-up teach it again).
        So it rides along with the next record that must be durable, or goes once
        enough have gathered — one fsync fewer per slot on every replica."""
        self._lazy.append(record)
        if len(self._lazy) >= LAZY_RECORDS:
            self._save(self._lazy.pop())

    def _emit(self, dst: int, message: LogMessage) -> None:
        """A message that reports acceptor state: held until that state is durable."""
        self._gate.send(dst, message, self._ready.send)

    def _send(self, dst: int, message: LogMessage) -> None:
        """A message that reports nothing durable: it may leave at once."""
        self._ready.send.append((dst, message))

    def _broadcast(self, message: LogMessage, include_self: bool = False,
                   gated: bool = False) -> None:
        for member in self.config.members:
            if member != self.node_id or include_self:
                if gated:
                    self._emit(member, message)
                else:
                    self._send(member, message)

    _last_now = 0.0

    def _flush(self, now: float | None) -> LogReady:
        if now is not None:
            self._last_now = now
        ready = self._ready
        deadlines = [self._election_at] if self.role is not Role.LEADER else []
        if self._hb_at is not None:
            deadlines.append(self._hb_at)
        if self._catchup_at is not None:
            deadlines.append(self._catchup_at)
        for pending, order in ((self._reads, self._reads_by_deadline),
                               (self._qreads, self._qreads_by_deadline)):
            deadline = _next_deadline(pending, order)
            if deadline is not None:
                deadlines.append(deadline)
        if self._reads_unsent and self.role is Role.LEADER:
            deadlines.append(self._last_now)  # a read waits for a heartbeat round: send it now
        ready.wake_at = min(deadlines) if deadlines else None
        self._ready = LogReady()
        return ready


def _size(value: Batch) -> int:
    """Roughly the bytes `value` takes in a message: what budgets of bytes count."""
    return sum(len(c.payload) + 32 for c in value.commands) + 16


def _entry_size(entry: Entry) -> int:
    return _size(entry.value)


def _payload_size(command: Command) -> int:
    return len(command.payload)


def _in_parts(items: tuple[_T, ...], size: Callable[[_T], int],
              budget: int) -> list[tuple[_T, ...]]:
    """`items` in order, cut into parts of at most `budget` bytes by `size` (a part
    holds at least one item; there is at least one part, empty if `items` is)."""
    parts: list[tuple[_T, ...]] = []
    start, total = 0, 0
    for i, item in enumerate(items):
        n = size(item)
        if i > start and total + n > budget:
            parts.append(items[start:i])
            start, total = i, 0
        total += n
    parts.append(items[start:])
    return parts


def _next_deadline(pending: dict[int, _R], order: deque[tuple[float, int, _R]]) -> float | None:
    """The earliest deadline of the reads still `pending`; `order` is by deadline, and
    forgets (lazily, here) the reads that were answered, expired or cancelled."""
    while order and pending.get(order[0][1]) is not order[0][2]:
        order.popleft()
    return order[0][0] if order else None


Replica._handlers = {
    Prepare: "_on_prepare",
    Promise: "_on_promise",
    Accept: "_on_accept",
    Accepted: "_on_accepted",
    Rejected: "_on_rejected",
    Heartbeat: "_on_heartbeat",
    HeartbeatAck: "_on_heartbeat_ack",
    PreVote: "_on_prevote",
    PreVoteReply: "_on_prevote_reply",
    CatchUp: "_on_catch_up",
    Chosen: "_on_chosen",
    Forward: "_on_forward",
    Aborted: "_on_aborted",
    ReadIndex: "_on_read_index",
    ReadIndexReply: "_on_read_index_reply",
    QuorumRead: "_on_quorum_read",
    QuorumReadReply: "_on_quorum_read_reply",
}
