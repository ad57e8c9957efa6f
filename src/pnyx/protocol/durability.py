"""Persist-before-send: the rule that makes Paxos safe across crashes, in one place.

An acceptor's promise or acceptance must be durable before any message that
reports it leaves the process; otherwise a crash could make it forget a
promise someone already relies on. A process numbers the records it asks the
runtime to make durable; a message that reports state is held until every
record numbered by the time it was created is durable, and the runtime's
`persisted(seq)` releases what waited for it. Both the single-decree
`SynodNode` and the Multi-Paxos `Replica` use this gate.
"""

from __future__ import annotations

from typing import Generic, TypeVar

M = TypeVar("M")


class DurabilityGate(Generic[M]):
    def __init__(self) -> None:
        self.issued = 0  # the number of the latest record asked for
        self.durable = 0  # every record up to this number is durable
        self._held: list[tuple[int, int, M]] = []

    def issue(self) -> int:
        """Number a new record (or batch of records) to be made durable."""
        self.issued += 1
        return self.issued

    def send(self, dst: int, message: M, out: list[tuple[int, M]]) -> None:
        """Send now if everything recorded so far is durable; else hold the message."""
        if self.durable >= self.issued:
            out.append((dst, message))
        else:
            self._held.append((self.issued, dst, message))

    def persisted(self, seq: int, out: list[tuple[int, M]]) -> None:
        """Records up to `seq` are durable: release, in order, what waited for them."""
        seq = min(seq, self.issued)  # a record never issued cannot be durable
        if seq <= self.durable:
            return
        self.durable = seq
        keep = []
        for held_seq, dst, message in self._held:
            if held_seq <= seq:
                out.append((dst, message))
            else:
                keep.append((held_seq, dst, message))
        self._held = keep
