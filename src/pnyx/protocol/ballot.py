"""Ballots: the seed's "sequence number" that orders proposals.

A ballot is a `(round, node_id)` pair compared lexicographically, so ballots
are totally ordered and two proposers never share one: they differ in
`node_id` even when they pick the same round.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
# Far beyond any honest use, and low enough that a successor still encodes: a peer
# cannot wedge the cluster by promising the largest integer the wire can carry.
MAX_ROUND = 2**62
Round = Annotated[int, msgspec.Meta(ge=0, le=MAX_ROUND)]


class Ballot(msgspec.Struct, frozen=True, order=True, array_like=True, gc=False):
    """A proposal number. Real ballots have `round >= 1`; `ZERO` is below them all."""

    round: Round
    node_id: NonNegative

    def __str__(self) -> str:
        return f"{self.round}.{self.node_id}"

    def successor(self, node_id: int) -> Ballot:
        """The smallest ballot owned by `node_id` that is higher than this one."""
        return Ballot(self.round + 1, node_id)


ZERO = Ballot(0, 0)
