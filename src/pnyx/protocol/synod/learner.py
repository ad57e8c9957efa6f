"""The learner: knowing that a value has been chosen, and only then.

A value is chosen once a phase-2 quorum of acceptors has accepted it in the
same ballot. A learner that counts such a quorum of `Accepted` messages is
one of the seed's distinguished learners; it then informs the others with
`Chosen` (see `pnyx.protocol.synod.node`), which they take on trust.
"""

from __future__ import annotations

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.synod.messages import Accepted, Value


class Learner:
    def __init__(self, quorums: QuorumSystem, chosen: Value | None = None) -> None:
        self.quorums = quorums
        self.chosen = chosen
        self._voters: dict[Ballot, set[int]] = {}

    def is_chosen_by(self, voters: set[int]) -> bool:
        """Chosen means: a phase-2 quorum accepted the same ballot."""
        return self.quorums.is_phase2_quorum(voters)

    def on_accepted(self, m: Accepted) -> Value | None:
        """Count one acceptance; return the value if this one made it chosen."""
        if self.chosen is not None:
            return None
        voters = self._voters.setdefault(m.ballot, set())
        voters.add(m.src)
        if self.is_chosen_by(voters):
            self.chosen = m.value
            self._voters.clear()
            return m.value
        return None

    def on_chosen(self, value: Value) -> Value | None:
        """Be told by another learner; return the value if it is news."""
        if self.chosen is not None:
            return None
        self.chosen = value
        self._voters.clear()
        return value
