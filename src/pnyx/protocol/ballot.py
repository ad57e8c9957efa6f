"""Ballots: the seed's "sequence number" that orders proposals, and the one rule for
a ballot that arrives from a peer.

A ballot is a `(round, node_id)` pair compared lexicographically, so ballots
are totally ordered and two proposers never share one: they differ in
`node_id` even when they pick the same round.

Where a member's ballot is trusted and where it is checked
-----------------------------------------------------------

Paxos trusts every ballot a member sends: an acceptor promises any higher one,
and a proposer picks its next ballot above the highest it has seen. Ballots are
finite on the wire (`MAX_ROUND`, checked at decode time), so one member that
sends the largest round could leave nobody a higher ballot: promised by a
quorum, the cluster would be wedged for good, across restarts. Any decode bound
B has this hole (a member sends exactly B, and the honest successor B+1 does
not decode), and so do unbounded rounds (a member sends a round as long as a
frame). So the bound that matters is not on a ballot's size but on its *jump*:

    A ballot from a peer is acted on only if its round is at most
    MAX_ROUND_STEP above the receiver's floor (the highest round it has seen
    or used itself). A ballot beyond that is refused: no promise, no
    acceptance, no following, no reply, and it never becomes the highest seen;
    the receiver's floor rises by MAX_ROUND_STEP - 1 instead (`sight`).

It is applied where a replica observes a peer's ballot: `multipaxos.acceptor.
Acceptor.observe` (every Prepare, Accept, Heartbeat and Rejected goes through
`multipaxos.election.Election.observe`) and `synod.proposer.Proposer.observe`
(every Prepare, Accept and Rejected of a `SynodNode`). Ballots a replica
compares only for equality with its own (Promise, Accepted, HeartbeatAck,
PreVoteReply) or never keeps (PreVote, the ballots of reported entries) are not
observed and need no check. A replica's own durable state is trusted.

Every other field a member sends is trusted, as Paxos trusts its members: pnyx
tolerates crashes, not liars, and mutual TLS makes sure only members speak as
members (README, Security). The round is the one field checked because its
number space can be used up: that lie alone would outlast the liar (a promise on
disk stops the cluster across restarts), and checking it costs honest replicas
nothing but a few elections after a long separation.

Why this keeps the cluster live whatever a member sends:

- *An attacker must climb.* Each message lifts a receiver's floor by at most
  MAX_ROUND_STEP = 2**16, so reaching MAX_ROUND = 2**62 takes 2**46 ≈ 7.0e13
  messages to each of a quorum of replicas. A replica's core takes about
  160,000 such Heartbeats a second (measured on the 2-core machines of
  DESIGN.md, bytes in, no network): 14 years of flooding. Even at 10**6 a second
  — more than a node decodes (DESIGN.md: 1.3 M msgpack pack+unpack a second)
  — it is 2.2 years; if every promise waited for its own fsync (250 µs,
  DESIGN.md) it would be 560 years. Every refusal is counted (`refused`).
  Below that, a member's ballot only costs elections, as a higher ballot always
  could: with the floor lifted by MAX_ROUND_STEP - 1, the receiver's next ballot
  (floor + MAX_ROUND_STEP) is the highest that a peer at its old floor accepts.
- *Honest rounds do not jump.* A replica's next ballot is one round above its
  floor, so honest rounds rise by one per election. With pre-vote, a replica
  starts phase 1 only when a quorum agrees, so replicas diverge by the
  elections one of them missed: 2**16 elections is 45 days of a leader lost
  every minute. Without pre-vote, a replica cut off from a quorum runs an
  election every 1 to 2 election timeouts (0.1 s by default): about 6.7 rounds a
  second, 2**16 after 2.7 hours of partition.
- *An honest replica beyond the step still rejoins.* A refused ballot lifts the
  receiver's floor by MAX_ROUND_STEP - 1 and counts as a higher ballot seen (a
  leader or candidate steps down, as for any higher ballot), so each refusal
  brings the two sides that much closer while honest rounds move by one: a
  replica far behind follows its leader after ceil(gap / (MAX_ROUND_STEP - 1))
  heartbeats (20 ms each); one far ahead (no pre-vote, long partition) is caught
  up by as many elections, about one per 2.7 hours it was away.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
# The decode bound: far beyond any honest round, low enough that a successor still
# encodes and that a ballot round fits SQLite's signed 64-bit integers.
MAX_ROUND = 2**62
Round = Annotated[int, msgspec.Meta(ge=0, le=MAX_ROUND)]
# The most a peer's ballot round may exceed the receiver's floor (see the docstring).
MAX_ROUND_STEP = 2**16


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


def sight(seen: Ballot, own_round: int, ballot: Ballot) -> tuple[Ballot, bool]:
    """A peer's `ballot` reaches a replica whose highest seen ballot is `seen` and whose
    own highest round is `own_round`: its highest seen ballot after that, and whether
    it may act on `ballot` at all (False: ignore the message).

    The one rule for every ballot from a peer (the module's docstring says why)."""
    floor = max(seen.round, own_round)
    if ballot.round - floor <= MAX_ROUND_STEP:
        return max(seen, ballot), True
    # Refused: never the ballot itself, only the highest floor a peer at ours still
    # reaches with its next ballot, so honest replicas far apart converge.
    return max(seen, Ballot(floor + MAX_ROUND_STEP - 1, 0)), False
