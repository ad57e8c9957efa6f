"""The acceptor: the seed's two promise rules, and nothing else.

"Check one": a Prepare is promised only if its ballot is higher than any the
acceptor has promised; the promise carries the highest-numbered proposal it
has accepted. An Accept is accepted unless the acceptor has promised a higher
ballot. Every change of state is returned to the caller to be made durable;
the reply reports that state and so may only leave once it is durable (the
ordering is enforced by `pnyx.protocol.synod.node`). The two rules are functions,
`may_promise` and `may_accept`, which Multi-Paxos (`pnyx.protocol.multipaxos.acceptor`)
applies with one promise for every slot.
"""

from __future__ import annotations

import msgspec

from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.synod.messages import Accept, Accepted, Prepare, Promise, Proposal, Rejected


def may_promise(promised: Ballot, ballot: Ballot) -> bool:
    """The seed's check one: promise only a ballot higher than any promised before."""
    return ballot > promised


def may_accept(promised: Ballot, ballot: Ballot) -> bool:
    """Accept unless a Prepare with a higher ballot has been answered."""
    return ballot >= promised


class AcceptorState(msgspec.Struct, frozen=True, array_like=True):
    """What an acceptor must never forget: its promise and its accepted proposal."""

    promised: Ballot = ZERO
    accepted: Proposal | None = None


class Acceptor:
    def __init__(self, node_id: int, state: AcceptorState | None = None) -> None:
        self.node_id = node_id
        self.state = state if state is not None else AcceptorState()

    def may_promise(self, ballot: Ballot) -> bool:
        return may_promise(self.state.promised, ballot)

    def may_accept(self, ballot: Ballot) -> bool:
        return may_accept(self.state.promised, ballot)

    def on_prepare(self, m: Prepare) -> tuple[Promise | Rejected, bool]:
        """The reply, and whether the state changed (and must be made durable first)."""
        if not self.may_promise(m.ballot):
            return Rejected(self.node_id, m.ballot, self.state.promised), False
        self.state = AcceptorState(m.ballot, self.state.accepted)
        return Promise(self.node_id, m.ballot, self.state.accepted), True

    def on_accept(self, m: Accept) -> tuple[Accepted | Rejected, bool]:
        if not self.may_accept(m.ballot):
            return Rejected(self.node_id, m.ballot, self.state.promised), False
        new = AcceptorState(m.ballot, Proposal(m.ballot, m.value))
        changed = new != self.state
        self.state = new
        return Accepted(self.node_id, m.ballot, m.value), changed
