"""The safety invariants every simulated run is checked against.

The observer sees what the simulated processes do from outside: the values
clients proposed, every message a process sends, what each learner learns,
and the durable state a process comes back with after a crash. From the
acceptances reported on the wire it knows, as no single process can, which
value has actually been chosen. It checks the seed's three safety
requirements by name, and two rules about acceptors:

- S1 only one value is chosen
- S2 the chosen value was proposed
- S3 a process learns a value only once it has actually been chosen
- A1 an acceptor never accepts a ballot below one it has promised
- A2 an acceptor's promise and acceptance never go backwards across a crash
"""

from __future__ import annotations

from dataclasses import dataclass

from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.synod.messages import Accepted, Message, Promise, Rejected, Value
from pnyx.protocol.synod.node import DurableState

S1 = "S1 only one value is chosen"
S2 = "S2 the chosen value was proposed"
S3 = "S3 a process learns a value only once it has been chosen"
A1 = "A1 an acceptor never accepts a ballot below its promise"
A2 = "A2 an acceptor's promise and acceptance survive a crash"
RULES = (S1, S2, S3, A1, A2)


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    time: float
    detail: str

    def __str__(self) -> str:
        return f"t={self.time * 1000:.3f}ms  {self.rule}: {self.detail}"


def show(value: Value | None) -> str:
    return "-" if value is None else value.decode("utf-8", "backslashreplace")


class Observer:
    def __init__(self, quorums: QuorumSystem) -> None:
        self.quorums = quorums
        self.proposed: set[Value] = set()
        self.chosen: dict[Value, float] = {}  # value -> when it was first chosen
        self.learned: dict[int, Value] = {}
        self.violations: list[Violation] = []
        self._promised: dict[int, Ballot] = {}  # highest ballot each acceptor revealed promising
        self._accepted: dict[int, Ballot] = {}  # highest ballot each acceptor reported accepting
        self._votes: dict[tuple[Ballot, Value], set[int]] = {}

    def _violate(self, rule: str, now: float, detail: str) -> None:
        self.violations.append(Violation(rule, now, detail))

    def on_propose(self, node: int, value: Value, now: float) -> None:
        self.proposed.add(value)

    def on_send(self, src: int, message: Message, now: float) -> None:
        if isinstance(message, Promise):
            self._raise_promise(src, message.ballot)
        elif isinstance(message, Rejected):
            self._raise_promise(src, message.promised)
        elif isinstance(message, Accepted):
            self._on_accepted(src, message, now)

    def _raise_promise(self, acceptor: int, ballot: Ballot) -> None:
        if ballot > self._promised.get(acceptor, ZERO):
            self._promised[acceptor] = ballot

    def _on_accepted(self, src: int, m: Accepted, now: float) -> None:
        promised = self._promised.get(src, ZERO)
        if m.ballot < promised:
            self._violate(A1, now, f"node {src} accepted {m.ballot} after promising {promised}")
        self._raise_promise(src, m.ballot)
        if m.ballot > self._accepted.get(src, ZERO):
            self._accepted[src] = m.ballot
        voters = self._votes.setdefault((m.ballot, m.value), set())
        voters.add(src)
        if m.value in self.chosen or not self.quorums.is_phase2_quorum(voters):
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
        promised = self._promised.get(node, ZERO)
        if state.promised < promised:
            self._violate(
                A2, now, f"node {node} restarted promising {state.promised}, promised {promised}"
            )
        accepted = self._accepted.get(node, ZERO)
        have = state.accepted.ballot if state.accepted is not None else ZERO
        if have < accepted:
            self._violate(
                A2, now, f"node {node} restarted with acceptance {have}, had accepted {accepted}"
            )

    @property
    def decided_value(self) -> Value | None:
        return next(iter(self.chosen), None)
