"""Deliberately broken variants of the protocol, for proving the checks work.

Each mutant breaks exactly one rule: of the seed's Basic Paxos (`MUTANTS`,
run by `pnyx.sim.simulation`) or of the replicated log and its reads
(`CLUSTER_MUTANTS`, run by `pnyx.sim.cluster`). The simulator must catch
every one of them (a safety invariant fails) within a bounded number of
seeds; a test asserts it. A simulator that finds nothing wrong with a broken
protocol proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos import LogReady, Outcome, ReadMode, Replica, Role
from pnyx.protocol.multipaxos.messages import NOOP, Accept, Batch, Entry, ReadIndex, ReadIndexReply
from pnyx.protocol.synod.acceptor import Acceptor
from pnyx.protocol.synod.learner import Learner
from pnyx.protocol.synod.messages import Message, Proposal, Value
from pnyx.protocol.synod.node import SynodNode
from pnyx.protocol.synod.proposer import Proposer
from pnyx.statemachine.dedup import Verdict
from pnyx.statemachine.kv import KVMachine


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


# ---------------------------------------------------------------- Multi-Paxos


class LeaderSkipsGapPhase1(Replica):
    """A new leader that ignores what phase 1 reported and fills every gap with a no-op."""

    def pick_value(self, reported: Iterable[Entry]) -> Batch:
        return NOOP


class AppliesBeforeChosen(Replica):
    """Treats a slot as chosen as soon as it accepts it."""

    def _on_accept(self, m: Accept, now: float) -> None:
        super()._on_accept(m, now)
        entry = self.accepted.get(m.slot)
        if entry is not None and entry.ballot == m.ballot and m.slot not in self.chosen:
            self._learn(m.slot, m.value)
            self._apply_chosen()


class _ForgetfulTable:
    """A de-duplication table that never remembers anything."""

    def check(self, *args: object) -> tuple[Verdict, None]:
        return Verdict.NEW, None

    def record(self, *args: object) -> None:
        pass

    def entries(self) -> list[object]:
        return []

    def __len__(self) -> int:
        return 0


class NoDedupMachine(KVMachine):
    """The key-value machine with de-duplication switched off."""

    def __init__(self) -> None:
        super().__init__()
        self._dedup = _ForgetfulTable()  # type: ignore[assignment]


class LinearizableReadFromLocalState(Replica):
    """A leader that answers linearizable reads without confirming it still leads."""

    def read(self, request_id: int, query: bytes, mode: ReadMode, now: float) -> LogReady:
        if mode == "linearizable" and self.role is Role.LEADER:
            self._outcome(request_id, Outcome(True, self.machine.query(query), self.applied_index))
            return self._flush(now)
        return super().read(request_id, query, mode, now)

    def _on_read_index(self, m: ReadIndex, now: float) -> None:
        if self.role is Role.LEADER:
            self._send(m.src, ReadIndexReply(self.node_id, m.id, self.commit, True))
        else:
            super()._on_read_index(m, now)


class QuorumReadTakesFreshest(Replica):
    """A quorum read that answers with the single freshest reply."""

    def evaluate_quorum_read(self, read_id: int, read: Any) -> None:
        freshest = max(read.replies.values(), key=lambda r: r.applied)
        del self._qreads[read_id]
        self._outcome(read_id, Outcome(True, freshest.result, freshest.index))


CLUSTER_MUTANTS: dict[str, tuple[type[Replica], type[KVMachine]]] = {
    "leader-skips-gap-phase1": (LeaderSkipsGapPhase1, KVMachine),
    "applies-before-chosen": (AppliesBeforeChosen, KVMachine),
    "no-dedup": (Replica, NoDedupMachine),
    "linearizable-read-from-local-state": (LinearizableReadFromLocalState, KVMachine),
    "quorum-read-takes-freshest": (QuorumReadTakesFreshest, KVMachine),
}
