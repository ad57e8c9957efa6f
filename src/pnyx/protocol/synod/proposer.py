"""The proposer: phase 1, the value rule, phase 2, and retrying.

A proposer picks a ballot higher than any it has seen, asks the acceptors
for promises (phase 1), and once a phase-1 quorum has promised proposes the
value of the highest-numbered proposal they report, or its own value if they
report none (the value rule). It then asks them to accept (phase 2). When a
higher ballot gets in the way (a `Rejected`) or a phase takes too long, it
backs off for a random time and tries again with a higher ballot: without
randomness two proposers can pre-empt each other for ever (the seed's
liveness section).

The proposer does not decide that a value is chosen; the learner does.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pnyx.protocol.ballot import ZERO, Ballot, sight
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.synod.messages import Accept, Prepare, Promise, Proposal, Rejected, Value


class _HasBallot(Protocol):
    @property
    def ballot(self) -> Ballot: ...


P = TypeVar("P", bound=_HasBallot)


def highest_numbered(reported: Iterable[P | None]) -> P | None:
    """The proposal with the highest ballot among those reported, if any."""
    highest: P | None = None
    for p in reported:
        if p is not None and (highest is None or p.ballot > highest.ballot):
            highest = p
    return highest


def choose_value(reported: Iterable[Proposal | None], own: Value) -> Value:
    """The value rule: the highest-numbered accepted proposal's value, else our own."""
    highest = highest_numbered(reported)
    return own if highest is None else highest.value


class Phase(enum.Enum):
    IDLE = "idle"
    PREPARING = "preparing"
    ACCEPTING = "accepting"
    BACKING_OFF = "backing off"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to give up on a ballot and how long to wait before the next one (seconds)."""

    timeout: float = 0.05
    backoff_base: float = 0.005
    backoff_cap: float = 0.2
    randomized: bool = True

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.backoff_base < 0 or self.backoff_cap < self.backoff_base:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Randomized exponential backoff; without randomness, retry at once."""
        if not self.randomized:
            return 0.0
        return rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2 ** min(attempt, 30)))


class Proposer:
    def __init__(
        self,
        node_id: int,
        quorums: QuorumSystem,
        rng: random.Random,
        policy: RetryPolicy,
        last_round: int = 0,
    ) -> None:
        self.node_id = node_id
        self.quorums = quorums
        self.rng = rng
        self.policy = policy
        self.last_round = last_round  # highest round ever used; durable, so never reused
        self.value: Value | None = None
        self.phase = Phase.IDLE
        self.ballot = ZERO
        self.highest_seen = ZERO
        self.refused = 0  # peers' ballots refused as out of reach (`ballot.sight`)
        self.deadline: float | None = None
        self.attempts = 0
        self._promises: dict[int, Proposal | None] = {}

    def propose(self, value: Value, now: float) -> list[Prepare]:
        if self.value is None:
            self.value = value
        if self.phase is Phase.IDLE:
            return [self._start_phase1(now)]
        return []

    def observe(self, ballot: Ballot) -> bool:
        """Remember a peer's ballot, so the next one we pick is above it; whether it is
        within reach (`pnyx.protocol.ballot.sight`), else its message is ignored."""
        self.highest_seen, admitted = sight(self.highest_seen, self.last_round, ballot)
        if not admitted:
            self.refused += 1
        return admitted

    def recall(self, ballot: Ballot) -> None:
        """A ballot from our own durable state (trusted: no reach check)."""
        self.highest_seen = max(self.highest_seen, ballot)

    def _start_phase1(self, now: float) -> Prepare:
        floor = max(self.highest_seen, Ballot(self.last_round, self.node_id))
        self.ballot = floor.successor(self.node_id)
        self.last_round = self.ballot.round
        self.phase = Phase.PREPARING
        self._promises = {}
        self.deadline = now + self.policy.timeout
        return Prepare(self.node_id, self.ballot)

    def on_promise(self, m: Promise, now: float) -> list[Accept]:
        if self.phase is not Phase.PREPARING or m.ballot != self.ballot:
            return []
        self._promises[m.src] = m.accepted
        if not self.quorums.is_phase1_quorum(self._promises.keys()):
            return []
        assert self.value is not None
        value = self.pick_value(self._promises.values(), self.value)
        self.phase = Phase.ACCEPTING
        self.deadline = now + self.policy.timeout
        return [Accept(self.node_id, self.ballot, value)]

    def pick_value(self, reported: Iterable[Proposal | None], own: Value) -> Value:
        return choose_value(reported, own)

    def on_rejected(self, m: Rejected, now: float) -> list[Prepare]:
        # A refused `promised` still pre-empts us: our next ballot, above the floor it
        # lifted, is how an acceptor far ahead is caught up with.
        admitted = self.observe(m.promised)
        promised = m.promised if admitted else self.highest_seen
        pre_empted = m.ballot == self.ballot and promised > self.ballot
        if pre_empted and self.phase in (Phase.PREPARING, Phase.ACCEPTING):
            return self._back_off(now)
        return []

    def on_tick(self, now: float) -> list[Prepare]:
        if self.deadline is None or now < self.deadline:
            return []
        if self.phase in (Phase.PREPARING, Phase.ACCEPTING):
            return self._back_off(now)
        if self.phase is Phase.BACKING_OFF:
            return [self._start_phase1(now)]
        return []

    def _back_off(self, now: float) -> list[Prepare]:
        self.attempts += 1
        delay = self.policy.delay(self.attempts, self.rng)
        if delay <= 0.0:
            return [self._start_phase1(now)]
        self.phase = Phase.BACKING_OFF
        self.deadline = now + delay
        return []

    def finish(self) -> None:
        """The value is chosen (whoever's it is): stop proposing."""
        self.phase = Phase.DONE
        self.deadline = None
