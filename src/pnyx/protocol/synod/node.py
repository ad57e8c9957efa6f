"""One process of single-decree Paxos (the Synod): proposer, acceptor and learner.

This is the pure core's outer surface. It is fed events and returns effects:

    events in:   propose(value, now) · step(message, now) · receive(bytes, now)
                 · tick(now) · persisted(seq)
    effects out: a `Ready` — a durable record to write, messages that may be
                 sent now, the value if it was just learned, when to tick next

The rule that makes Paxos safe across crashes is `pnyx.protocol.durability`,
applied in `_emit`: a message created while a record is not yet durable is
held back, and released by `persisted(seq)` once the runtime has made that
record durable.
So a promise, an acceptance or a ballot is never reported before it would
survive a crash. The core reads no clock (`now` is passed in) and draws no
random number except from the `rng` it is given.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import msgspec

from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.durability import DurabilityGate
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.synod.acceptor import Acceptor, AcceptorState
from pnyx.protocol.synod.learner import Learner
from pnyx.protocol.synod.messages import (
    MESSAGE_TYPES,
    Accept,
    Accepted,
    Chosen,
    Forward,
    Learned,
    MalformedMessage,
    Message,
    Prepare,
    Promise,
    Proposal,
    Rejected,
    Value,
    decode,
)
from pnyx.protocol.synod.proposer import Proposer, RetryPolicy


class DurableState(msgspec.Struct, frozen=True, array_like=True):
    """Everything a process must remember across a crash, written as one record."""

    promised: Ballot = ZERO
    accepted: Proposal | None = None
    last_round: int = 0
    chosen: Value | None = None


@dataclass(frozen=True, slots=True)
class SynodConfig:
    """The cluster as one process sees it. Every member is acceptor and learner."""

    members: tuple[int, ...]
    quorums: QuorumSystem
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    distinguished: int | None = None  # the only proposer, when set; others forward to it
    learners: tuple[int, ...] = ()  # distinguished learners told of every acceptance
    inform_interval: float = 0.05

    @classmethod
    def majority(cls, members: tuple[int, ...], **kwargs: object) -> SynodConfig:
        return cls(members, QuorumSystem.majority(members), **kwargs)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"member ids must be distinct, got {list(self.members)}")
        if set(self.quorums.acceptors) != set(self.members):
            raise ValueError("every member is an acceptor: quorums must be over the members")
        if self.distinguished is not None and self.distinguished not in self.members:
            raise ValueError(f"distinguished proposer {self.distinguished} is not a member")
        if not set(self.learners) <= set(self.members):
            raise ValueError(f"distinguished learners {self.learners} are not all members")


@dataclass(slots=True)
class Ready:
    """Effects of one event. Write `persist` (if any), call `persisted(persist_seq)`
    once it is durable, and send `send` now: those messages are already safe."""

    persist: DurableState | None = None
    persist_seq: int = 0
    send: list[tuple[int, Message]] = field(default_factory=list)
    learned: Value | None = None
    wake_at: float | None = None


class SynodNode:
    # The roles are attributes so that a test can swap in a deliberately broken one.
    acceptor_class: type[Acceptor] = Acceptor
    proposer_class: type[Proposer] = Proposer
    learner_class: type[Learner] = Learner

    def __init__(
        self,
        node_id: int,
        config: SynodConfig,
        rng: random.Random,
        state: DurableState | None = None,
    ) -> None:
        if node_id not in config.members:
            raise ValueError(f"node {node_id} is not a member of {config.members}")
        state = state if state is not None else DurableState()
        self.node_id = node_id
        self.config = config
        self.acceptor = self.acceptor_class(node_id, AcceptorState(state.promised, state.accepted))
        self.proposer = self.proposer_class(
            node_id, config.quorums, rng, config.retry, state.last_round
        )
        self.learner = self.learner_class(config.quorums, state.chosen)
        self.dropped = 0  # malformed or foreign messages, counted and ignored
        self._gate: DurabilityGate[Message] = DurabilityGate()
        self._ready = Ready()
        self._informed: set[int] = {node_id}
        # A process that restarts knowing the value tells whoever may not know it yet.
        self._inform_at: float | None = 0.0 if state.chosen is not None else None
        self._forward: Value | None = None
        self._forward_at: float | None = None
        self.proposer.recall(state.promised)
        if state.chosen is not None:
            self.proposer.finish()

    # ----------------------------------------------------------------- events

    def propose(self, value: Value, now: float) -> Ready:
        """A client asks this process to get `value` chosen (any member will do)."""
        if self.learner.chosen is None:
            leader = self.config.distinguished
            if leader is None or leader == self.node_id:
                self._broadcast_prepare(self.proposer.propose(value, now))
            else:
                self._forward = value
                self._forward_at = now + self.config.retry.timeout
                self._emit(leader, Forward(self.node_id, value))
        return self._flush()

    def receive(self, data: bytes, now: float) -> Ready:
        """Decode and step; malformed bytes are counted and change nothing."""
        try:
            message = decode(data)
        except MalformedMessage:
            self.dropped += 1
            return self._flush()
        return self.step(message, now)

    def step(self, m: Message, now: float) -> Ready:
        if not isinstance(m, MESSAGE_TYPES) or m.src not in self.config.members:
            self.dropped += 1
            return self._flush()
        if isinstance(m, (Prepare, Accept)) and not self.proposer.observe(m.ballot):
            pass  # out of reach (`pnyx.protocol.ballot.sight`): neither promised nor accepted
        elif isinstance(m, Prepare):
            reply, changed = self.acceptor.on_prepare(m)
            self._acceptor_reply(m.src, reply, changed)
            self._tell_if_known(m.src)
        elif isinstance(m, Accept):
            reply, changed = self.acceptor.on_accept(m)
            self._acceptor_reply(m.src, reply, changed)
            if isinstance(reply, Accepted):
                for learner in self.config.learners:
                    if learner != m.src:
                        self._emit(learner, reply)
            self._tell_if_known(m.src)
        elif isinstance(m, Promise):
            self._broadcast(self.proposer.on_promise(m, now))
        elif isinstance(m, Accepted):
            value = self.learner.on_accepted(m)
            if value is not None:
                self._learn(value, now, distinguished=True)
        elif isinstance(m, Rejected):
            self._broadcast_prepare(self.proposer.on_rejected(m, now))
        elif isinstance(m, Chosen):
            value = self.learner.on_chosen(m.value)
            if value is not None:
                self._learn(value, now, distinguished=False)
            self._emit(m.src, Learned(self.node_id))
        elif isinstance(m, Learned):
            self._informed.add(m.src)
        elif isinstance(m, Forward):
            if self.learner.chosen is not None:
                self._tell_if_known(m.src)
            elif self.config.distinguished in (None, self.node_id):
                self._broadcast_prepare(self.proposer.propose(m.value, now))
        return self._flush()

    def tick(self, now: float) -> Ready:
        """Time has reached `now`: retry, re-forward and re-inform as due."""
        self._broadcast_prepare(self.proposer.on_tick(now))
        if self._inform_at is not None and now >= self._inform_at:
            for member in self.config.members:
                if member not in self._informed:
                    self._emit(member, Chosen(self.node_id, self._chosen_value()))
            self._inform_at = now + self.config.inform_interval
            if self._informed.issuperset(self.config.members):
                self._inform_at = None
        if self._forward_at is not None and now >= self._forward_at:
            assert self._forward is not None and self.config.distinguished is not None
            self._emit(self.config.distinguished, Forward(self.node_id, self._forward))
            self._forward_at = now + self.config.retry.timeout
        return self._flush()

    def persisted(self, seq: int) -> Ready:
        """The runtime made every record up to `seq` durable: release what waited for it."""
        self._gate.persisted(seq, self._ready.send)
        return self._flush()

    # ------------------------------------------------------------ inspection

    @property
    def chosen(self) -> Value | None:
        return self.learner.chosen

    def durable_state(self) -> DurableState:
        a = self.acceptor.state
        return DurableState(a.promised, a.accepted, self.proposer.last_round, self.learner.chosen)

    # --------------------------------------------------------------- helpers

    def _acceptor_reply(self, dst: int, reply: Message, changed: bool) -> None:
        if changed:
            self._save()
        self._emit(dst, reply)

    def _broadcast_prepare(self, prepares: list[Prepare]) -> None:
        if prepares:
            self._save()  # the ballot's round is durable before anyone hears of it
            self._broadcast(prepares)

    def _broadcast(self, messages: list[Prepare] | list[Accept]) -> None:
        for message in messages:
            for member in self.config.members:
                self._emit(member, message)

    def _learn(self, value: Value, now: float, *, distinguished: bool) -> None:
        self.proposer.finish()
        self._forward = self._forward_at = None
        self._save()
        self._ready.learned = value
        if distinguished:
            self._inform_at = now

    def _tell_if_known(self, dst: int) -> None:
        if self.learner.chosen is not None and dst not in self._informed:
            self._emit(dst, Chosen(self.node_id, self.learner.chosen))

    def _chosen_value(self) -> Value:
        assert self.learner.chosen is not None
        return self.learner.chosen

    def _save(self) -> None:
        self._ready.persist = self.durable_state()
        self._ready.persist_seq = self._gate.issue()

    def _emit(self, dst: int, message: Message) -> None:
        """Send now if everything this process has recorded is durable; else hold."""
        self._gate.send(dst, message, self._ready.send)

    def _flush(self) -> Ready:
        ready = self._ready
        deadlines = [
            d
            for d in (self.proposer.deadline, self._inform_at, self._forward_at)
            if d is not None
        ]
        ready.wake_at = min(deadlines) if deadlines else None
        self._ready = Ready()
        return ready
