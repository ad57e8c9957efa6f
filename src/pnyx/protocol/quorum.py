"""Quorum systems: which sets of acceptors are enough for phase 1 and phase 2.

Safety rests on one fact: every phase-1 quorum intersects every phase-2
quorum, so a new proposer always hears of a value that may have been chosen.
Classic Paxos uses majorities for both phases. Flexible Paxos (Howard,
Malkhi, Spiegelman 2016) lets the two sizes differ as long as
`phase1 + phase2 > n`; a configuration that breaks this is refused here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


class QuorumError(ValueError):
    """A quorum configuration whose phase-1 and phase-2 quorums need not intersect."""


@dataclass(frozen=True, slots=True)
class QuorumSystem:
    """Counting quorums over a fixed set of acceptors."""

    acceptors: tuple[int, ...]
    phase1: int
    phase2: int

    def __post_init__(self) -> None:
        n = len(self.acceptors)
        if n == 0:
            raise QuorumError("a quorum system needs at least one acceptor")
        if len(set(self.acceptors)) != n:
            raise QuorumError(f"acceptor ids must be distinct, got {list(self.acceptors)}")
        for name, size in (("phase-1", self.phase1), ("phase-2", self.phase2)):
            if not 1 <= size <= n:
                raise QuorumError(f"{name} quorum size {size} is outside 1..{n}")
        if self.phase1 + self.phase2 <= n:
            raise QuorumError(
                f"phase-1 quorum {self.phase1} + phase-2 quorum {self.phase2} must exceed "
                f"{n} acceptors, or a new proposer could miss a chosen value"
            )

    @classmethod
    def majority(cls, acceptors: Collection[int]) -> QuorumSystem:
        """Classic Paxos: any majority, for both phases."""
        ids = tuple(sorted(acceptors))
        q = len(ids) // 2 + 1
        return cls(ids, q, q)

    @classmethod
    def flexible(cls, acceptors: Collection[int], phase1: int, phase2: int) -> QuorumSystem:
        """Flexible Paxos: separate sizes, refused unless `phase1 + phase2 > n`."""
        return cls(tuple(sorted(acceptors)), phase1, phase2)

    def is_phase1_quorum(self, voters: Collection[int]) -> bool:
        return self._count(voters) >= self.phase1

    def is_phase2_quorum(self, voters: Collection[int]) -> bool:
        return self._count(voters) >= self.phase2

    def _count(self, voters: Collection[int]) -> int:
        members = self.acceptors
        return sum(1 for v in set(voters) if v in members)
