"""Deliberately broken variants of the protocol, for proving the checks work.

Each mutant breaks exactly one rule of the seed. The simulator must catch
every one of them (a safety invariant fails) within a bounded number of
seeds; a test asserts it. A simulator that finds nothing wrong with a broken
protocol proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from pnyx.protocol.acceptor import Acceptor
from pnyx.protocol.ballot import Ballot
from pnyx.protocol.learner import Learner
from pnyx.protocol.messages import Message, Proposal, Value
from pnyx.protocol.proposer import Proposer
from pnyx.protocol.synod import SynodNode


class AcceptorIgnoresPromise(Acceptor):
    """Accepts any ballot, even one below what it promised."""

    def may_accept(self, ballot: Ballot) -> bool:
        return True


class ProposerIgnoresAccepted(Proposer):
    """Proposes its own value even when a promise reported an accepted one."""

    def pick_value(self, reported: Iterable[Proposal | None], own: Value) -> Value:
        return own


class LearnerTrustsMinority(Learner):
    """Declares a value chosen when one acceptor short of a quorum accepted it."""

    def is_chosen_by(self, voters: set[int]) -> bool:
        return len(voters) >= max(1, self.quorums.phase2 - 1)


class RepliesBeforeDurable(SynodNode):
    """Sends promises and acceptances before they are durable."""

    def _emit(self, dst: int, message: Message) -> None:
        self._ready.send.append((dst, message))


def _with(**roles: type) -> type[SynodNode]:
    return type("MutantNode", (SynodNode,), roles)


MUTANTS: dict[str, type[SynodNode]] = {
    "acceptor-ignores-promise": _with(acceptor_class=AcceptorIgnoresPromise),
    "proposer-ignores-accepted": _with(proposer_class=ProposerIgnoresAccepted),
    "learner-trusts-minority": _with(learner_class=LearnerTrustsMinority),
    "acceptor-replies-before-durable": RepliesBeforeDurable,
}
