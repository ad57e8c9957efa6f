"""The safety invariants every simulated run is checked against.

The observer sees what the simulated processes do from outside: the values
clients proposed, every message a process sends, what each learner learns,
and the durable state a process comes back with after a crash. From the
acceptances reported on the wire it knows, as no single process can, which
value has actually been chosen. It checks the seed's three safety
requirements by name, and rules about acceptors and ballots:

- S1 only one value is chosen
- S2 the chosen value was proposed
- S3 a process learns a value only once it has actually been chosen
- A1 an acceptor never accepts a ballot below one it has promised
- A2 an acceptor's promise and acceptance never go backwards across a crash
- A3 an acceptor never promises a ballot below one it has promised
- B1 a ballot belongs to one proposer and is used once: its owner's ballots
  only go up, across crashes too, and a ballot carries one value

The observer shares no code with the protocol it checks: it is given the
acceptors and the phase-2 quorum size as plain numbers and counts each
quorum itself, so a broken quorum or learner object cannot vouch for itself.
It compares ballots as (round, node) pairs with its own arithmetic for the
same reason.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.synod.messages import (
    Accept,
    Accepted,
    Message,
    Prepare,
    Promise,
    Rejected,
    Value,
)
from pnyx.protocol.synod.node import DurableState

S1 = "S1 only one value is chosen"
S2 = "S2 the chosen value was proposed"
S3 = "S3 a process learns a value only once it has been chosen"
A1 = "A1 an acceptor never accepts a ballot below its promise"
A2 = "A2 an acceptor's promise and acceptance survive a crash"
A3 = "A3 an acceptor never promises a ballot below its promise"
B1 = "B1 a ballot is used once, by its owner, for one value"
RULES = (S1, S2, S3, A1, A2, A3, B1)

# A ballot as the observer orders it: (round, node). Nothing below (0, 0).
Key = tuple[int, int]
NONE: Key = (0, 0)


def key(ballot: Ballot) -> Key:
    return (ballot.round, ballot.node_id)


def shown(k: Key) -> str:
    return f"{k[0]}.{k[1]}"


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    time: float
    detail: str

    def __str__(self) -> str:
        return f"t={self.time * 1000:.3f}ms  {self.rule}: {self.detail}"


def show(value: Value | None) -> str:
    return "-" if value is None else value.decode("utf-8", "backslashreplace")


class BallotUses:
    """B1 for Prepares: a proposer's ballots are its own and only go up, across
    restarts too. One Prepare goes to every acceptor, so within one
    incarnation a ballot is seen once per member; after a restart, never again."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[Key, bool]] = {}  # proposer -> (highest, restarted since)

    def prepare(self, src: int, b: Key) -> str | None:
        """What is wrong with `src` sending a Prepare in `b`, if anything."""
        if b[1] != src:
            return f"node {src} sent a Prepare for ballot {shown(b)}, not its own"
        last, restarted = self._last.get(src, (NONE, False))
        if b >= last:
            self._last[src] = (b, False)
        if b < last or (b == last and restarted):
            again = " after restarting" if restarted else ""
            return f"node {src} used ballot {shown(b)}{again}, having used {shown(last)}"
        return None

    def restart(self, node: int) -> None:
        if node in self._last:
            self._last[node] = (self._last[node][0], True)


class Observer:
    def __init__(self, acceptors: Collection[int], phase2: int) -> None:
        if not 1 <= phase2 <= len(acceptors):
            raise ValueError(f"phase-2 quorum {phase2} outside 1..{len(acceptors)}")
        self.acceptors = frozenset(acceptors)
        self.phase2 = phase2
        self.proposed: set[Value] = set()
        self.chosen: dict[Value, float] = {}  # value -> when it was first chosen
        self.learned: dict[int, Value] = {}
        self.violations: list[Violation] = []
        self._promised: dict[int, Key] = {}  # highest ballot each acceptor revealed promising
        self._accepted: dict[int, Key] = {}  # highest ballot each acceptor reported accepting
        # (ballot, value) -> acceptors that reported accepting it; a quorum of them is chosen
        self._votes: dict[tuple[Key, Value], set[int]] = {}
        self._ballots = BallotUses()
        self._proposed_in: dict[Key, Value] = {}  # the value each ballot's Accept carried

    def _violate(self, rule: str, now: float, detail: str) -> None:
        self.violations.append(Violation(rule, now, detail))

    def on_propose(self, node: int, value: Value, now: float) -> None:
        self.proposed.add(value)

    def on_send(self, src: int, message: Message, now: float) -> None:
        if isinstance(message, Promise):
            b = key(message.ballot)
            promised = self._promised.get(src, NONE)
            if b < promised:
                self._violate(A3, now, f"node {src} promised {shown(b)} after promising "
                                       f"{shown(promised)}")
            self._raise_promise(src, b)
        elif isinstance(message, Rejected):
            self._raise_promise(src, key(message.promised))
        elif isinstance(message, Accepted):
            self._on_accepted(src, message, now)
        elif isinstance(message, Prepare):
            self._on_prepare(src, key(message.ballot), now)
        elif isinstance(message, Accept):
            self._on_accept(src, key(message.ballot), message.value, now)

    def _on_prepare(self, src: int, b: Key, now: float) -> None:
        wrong = self._ballots.prepare(src, b)
        if wrong is not None:
            self._violate(B1, now, wrong)

    def _on_accept(self, src: int, b: Key, value: Value, now: float) -> None:
        before = self._proposed_in.setdefault(b, value)
        if before != value:
            self._violate(B1, now, f"ballot {shown(b)} carried {show(before)} and then "
                                   f"{show(value)}")

    def _raise_promise(self, acceptor: int, b: Key) -> None:
        if b > self._promised.get(acceptor, NONE):
            self._promised[acceptor] = b

    def _on_accepted(self, src: int, m: Accepted, now: float) -> None:
        b = key(m.ballot)
        promised = self._promised.get(src, NONE)
        if b < promised:
            self._violate(A1, now, f"node {src} accepted {shown(b)} after promising "
                                   f"{shown(promised)}")
        self._raise_promise(src, b)
        if b > self._accepted.get(src, NONE):
            self._accepted[src] = b
        voters = self._votes.setdefault((b, m.value), set())
        if src in self.acceptors:
            voters.add(src)
        if m.value in self.chosen or len(voters) < self.phase2:
            return
        self.chosen[m.value] = now
        if len(self.chosen) > 1:
            values = ", ".join(show(v) for v in self.chosen)
            self._violate(S1, now, f"values chosen: {values} (last in ballot {m.ballot})")
        if m.value not in self.proposed:
            self._violate(S2, now, f"{show(m.value)} was chosen but never proposed")

    def on_learned(self, node: int, value: Value, now: float) -> None:
        before = self.learned.get(node)
        if before is not None and before != value:
            self._violate(S3, now, f"node {node} learned {show(value)} after {show(before)}")
        self.learned[node] = value
        if value not in self.chosen:
            self._violate(S3, now, f"node {node} learned {show(value)}, which is not chosen")

    def on_restart(self, node: int, state: DurableState, now: float) -> None:
        self._ballots.restart(node)
        promised = self._promised.get(node, NONE)
        if key(state.promised) < promised:
            self._violate(A2, now, f"node {node} restarted promising {state.promised}, "
                                   f"promised {shown(promised)}")
        accepted = self._accepted.get(node, NONE)
        have = key(state.accepted.ballot) if state.accepted is not None else NONE
        if have < accepted:
            self._violate(A2, now, f"node {node} restarted with acceptance {shown(have)}, "
                                   f"had accepted {shown(accepted)}")

    @property
    def decided_value(self) -> Value | None:
        return next(iter(self.chosen), None)


# ---------------------------------------------------------------- Multi-Paxos

A4 = "A4 a promise reports each slot's acceptance no older than one the acceptor sent"
H1 = "H1 a replica never acks a heartbeat below its promise"
R1 = "R1 a replica never leads (Accept, Heartbeat) in a ballot below its own promise"
LOG_RULES = (A1, A3, A4, B1, H1, R1)


class LogObserver:
    """The acceptor and ballot rules of Multi-Paxos, checked on the wire alone.

    Fed every message a replica sends (`on_send`) and every restart
    (`on_restart`), it needs nothing from the replica or its records: what an
    acceptor promised and accepted is what its own messages revealed. It
    catches a rule broken where the log-level checks (agreement,
    linearizability) would need a rare schedule to show the harm: a lower
    promise (A3), a ballot used twice (B1), a restart that brings back an older
    acceptance than one already reported (A4), a stale heartbeat acknowledged
    (H1), a leader that keeps leading after promising a higher ballot (R1).
    Messages are matched by class name, so one observer serves any message
    family with these fields.
    """

    def __init__(self, violations: list[Violation] | None = None) -> None:
        # The list it appends to: a simulation may pass its own.
        self.violations: list[Violation] = violations if violations is not None else []
        self._promised: dict[int, Key] = {}  # highest ballot each replica revealed promising
        self._accepted: dict[tuple[int, int], Key] = {}  # (replica, slot) -> highest accepted
        self._ballots = BallotUses()
        self._proposed_in: dict[tuple[Key, int], object] = {}  # (ballot, slot) -> value

    def _violate(self, rule: str, now: float, detail: str) -> None:
        self.violations.append(Violation(rule, now, detail))

    def _raise(self, node: int, b: Key) -> None:
        if b > self._promised.get(node, NONE):
            self._promised[node] = b

    def on_send(self, src: int, m: object, now: float) -> None:
        kind = type(m).__name__
        if kind == "Promise":
            self._on_promise(src, m, now)
        elif kind == "Accepted":
            b, slot = key(m.ballot), m.slot  # type: ignore[attr-defined]
            promised = self._promised.get(src, NONE)
            if b < promised:
                self._violate(A1, now, f"node {src} accepted {shown(b)} in slot {slot} after "
                                       f"promising {shown(promised)}")
            self._raise(src, b)
            if b > self._accepted.get((src, slot), NONE):
                self._accepted[(src, slot)] = b
        elif kind == "Rejected":
            self._raise(src, key(m.promised))  # type: ignore[attr-defined]
        elif kind == "Prepare":
            self._on_prepare(src, key(m.ballot), now)  # type: ignore[attr-defined]
        elif kind == "HeartbeatAck":
            b = key(m.ballot)  # type: ignore[attr-defined]
            promised = self._promised.get(src, NONE)
            if b < promised:
                self._violate(H1, now, f"node {src} acked a heartbeat of {shown(b)} after "
                                       f"promising {shown(promised)}")
        elif kind in ("Accept", "Heartbeat"):
            b = key(m.ballot)  # type: ignore[attr-defined]
            promised = self._promised.get(src, NONE)
            if b < promised:
                self._violate(R1, now, f"node {src} sent {kind}({shown(b)}) after promising "
                                       f"{shown(promised)}")
            if kind == "Accept":
                slot, value = m.slot, m.value  # type: ignore[attr-defined]
                before = self._proposed_in.setdefault((b, slot), value)
                if before != value:
                    self._violate(B1, now, f"ballot {shown(b)} carried two values for slot "
                                           f"{slot}")

    def _on_promise(self, src: int, m: object, now: float) -> None:
        b = key(m.ballot)  # type: ignore[attr-defined]
        promised = self._promised.get(src, NONE)
        if b < promised:
            self._violate(A3, now, f"node {src} promised {shown(b)} after promising "
                                   f"{shown(promised)}")
        self._raise(src, b)
        for entry in m.entries:  # type: ignore[attr-defined]
            had = self._accepted.get((src, entry.slot), NONE)
            if key(entry.ballot) < had:
                self._violate(A4, now, f"node {src} reported slot {entry.slot} accepted in "
                                       f"{entry.ballot}, having accepted it in {shown(had)}")

    def _on_prepare(self, src: int, b: Key, now: float) -> None:
        wrong = self._ballots.prepare(src, b)
        if wrong is not None:
            self._violate(B1, now, wrong)

    def on_restart(self, node: int, now: float) -> None:
        self._ballots.restart(node)
