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

import msgspec

from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.multipaxos import Outcome, ReadMode, Replica, Role
from pnyx.protocol.multipaxos import acceptor as mp_acceptor
from pnyx.protocol.multipaxos.election import Election
from pnyx.protocol.multipaxos.log import Log
from pnyx.protocol.multipaxos.membership import Change, Membership
from pnyx.protocol.multipaxos.messages import (
    NOOP,
    Batch,
    Entry,
    Heartbeat,
    HeartbeatAck,
    ReadIndex,
    ReadIndexReply,
)
from pnyx.protocol.multipaxos.messages import Prepare as LogPrepare
from pnyx.protocol.multipaxos.outcome import Code
from pnyx.protocol.multipaxos.pipeline import Pipeline
from pnyx.protocol.multipaxos.reads import PendingQuorumRead, Reads
from pnyx.protocol.multipaxos.records import (
    AcceptRecord,
    CompactRecord,
    LogRecord,
    ReplicaDurable,
)
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.synod.acceptor import Acceptor
from pnyx.protocol.synod.learner import Learner
from pnyx.protocol.synod.messages import Message, Prepare, Proposal, Value
from pnyx.protocol.synod.node import SynodNode
from pnyx.protocol.synod.proposer import Proposer
from pnyx.statemachine.dedup import DedupTable, Verdict
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


class AcceptorComparesRounds(Acceptor):
    """Compares ballots by round alone, so it promises a ballot equal in round but lower."""

    def may_promise(self, ballot: Ballot) -> bool:
        return ballot.round >= self.state.promised.round


class RoundNotSavedBeforeUse(SynodNode):
    """Sends a Prepare before its round is durable: a restart may use the ballot again."""

    def _broadcast_prepare(self, prepares: list[Prepare]) -> None:
        self._broadcast(prepares)


def _with(**roles: type) -> type[SynodNode]:
    return type("MutantNode", (SynodNode,), roles)


MUTANTS: dict[str, type[SynodNode]] = {
    "acceptor-ignores-promise": _with(acceptor_class=AcceptorIgnoresPromise),
    "proposer-ignores-accepted": _with(proposer_class=ProposerIgnoresAccepted),
    "learner-trusts-minority": _with(learner_class=LearnerTrustsMinority),
    "acceptor-replies-before-durable": RepliesBeforeDurable,
    "acceptor-compares-rounds": _with(acceptor_class=AcceptorComparesRounds),
    "round-not-saved-before-use": RoundNotSavedBeforeUse,
}


# ---------------------------------------------------------------- Multi-Paxos


class SkipsGapPhase1(Election):
    """A new leader that ignores what phase 1 reported and fills every gap with a no-op."""

    def pick_value(self, reported: Iterable[Entry]) -> Batch:
        return NOOP


class LearnsOnAccept(Log):
    """Treats a slot as chosen as soon as it accepts it (as if the leader had said so)."""

    def learn_commit(self, ballot: Ballot, commit: int, now: float) -> None:
        super().learn_commit(ballot, max(commit, self.acceptor.max_accepted), now)


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


class SnapshotWithoutDedupMachine(KVMachine):
    """The key-value machine whose snapshots leave the de-duplication table out: a
    replica restored from one applies a retried request a second time."""

    def restore(self, data: bytes) -> None:
        super().restore(data)
        self._dedup = DedupTable(self.max_clients)


class LogCompactsBeforeSnapshotIsDurable(Log):
    """Compacts the log as soon as a snapshot is taken, not once it is durable: a crash
    in between leaves slots neither in the log nor in any snapshot."""

    def maybe_snapshot(self) -> None:
        super().maybe_snapshot()
        upto = self.taking - self.config.snapshot_tail
        if self.taking and upto > self.floor:
            for slot in range(self.floor + 1, upto + 1):
                self.chosen.pop(slot, None)
            self.floor = upto
            self.acceptor.forget(upto)
            self.out.save(CompactRecord(upto))


class LogInstallKeepsLog(Log):
    """Installs a snapshot without resetting the log beneath it: the chosen slots and
    accepted entries it replaces stay, and the floor with them."""

    def install(self, slot: int, index: int, size: int, now: float,
                membership: bytes = b"") -> None:
        if slot <= self.applied:
            super().install(slot, index, size, now, membership)
            return
        floor = self.floor
        super().install(slot, index, size, now, membership)
        self.floor = floor


class AcceptorHidesCompaction(mp_acceptor.Acceptor):
    """Answers a Prepare for compacted slots as if it had accepted nothing there."""

    def on_prepare(self, m: LogPrepare) -> bool:
        compacted, self.compacted = self.compacted, 0
        try:
            return super().on_prepare(m)
        finally:
            self.compacted = compacted


class HidesCompaction(Replica):
    acceptor_class = AcceptorHidesCompaction


class CompactsBeforeDurable(Replica):
    log_class = LogCompactsBeforeSnapshotIsDurable


class InstallKeepsLog(Replica):
    log_class = LogInstallKeepsLog


class ReadsLocalState(Reads):
    """A leader that answers linearizable reads without confirming it still leads."""

    def add(self, request_id: int, query: bytes, mode: ReadMode, now: float) -> None:
        if mode == "linearizable" and self.election.role is Role.LEADER:
            self.out.outcome(request_id, Outcome(True, self.machine.query(query),
                                                 self.log.applied_index))
            return
        super().add(request_id, query, mode, now)

    def on_read_index(self, m: ReadIndex, now: float) -> None:
        if self.election.role is Role.LEADER:
            self.out.send(m.src, ReadIndexReply(self.election.node_id, m.id, self.log.commit,
                                                True))
        else:
            super().on_read_index(m, now)


class ReadIndexFromAnyAsker(Reads):
    """A leader that answers a follower's `ReadIndex` at once whatever the cluster's
    size: the asker and the leader are a quorum only of three voters. Not in
    `CLUSTER_MUTANTS`: the default sweep did not catch it in 100 seeds (a follower
    must still follow a deposed leader of five); the scenario in test_replica_reads
    catches it every time."""

    def on_read_index(self, m: ReadIndex, now: float) -> None:
        if self.election.role is Role.LEADER \
                and self.election.recovered_at <= self.log.commit:
            self._answer_read_index(m.src, m.id, self.log.commit)
        else:
            super().on_read_index(m, now)


class QuorumReadTakesFreshest(Reads):
    """A quorum read that answers with the single freshest reply."""

    def evaluate_quorum_read(self, read_id: int, read: PendingQuorumRead) -> None:
        freshest = max(read.replies.values(), key=lambda r: r.applied)
        del self.quorum[read_id]
        self.out.outcome(read_id, Outcome(True, freshest.result, freshest.index))


class PromisesByRound(mp_acceptor.Acceptor):
    """Compares ballots by round alone, so it promises a ballot equal in round but lower
    (and lowers its promise to it)."""

    def on_prepare(self, m: LogPrepare) -> bool:
        if m.ballot.round == self.promised.round and m.ballot < self.promised:
            self.promised = ZERO  # the round matches: as if nothing higher were promised
        return super().on_prepare(m)


class KeepsLeadingOnHigherBallot(Election):
    """A leader (or candidate) that sees a higher ballot and does not step down."""

    def observe(self, ballot: Ballot, now: float) -> bool:
        return self.acceptor.observe(ballot)


class AcksDeposedLeader(Election):
    """A follower that acknowledges a heartbeat below its promise (a deposed leader's),
    so that leader still counts it towards the quorum confirming its reads."""

    def on_heartbeat(self, m: Heartbeat, now: float) -> None:
        if m.ballot < self.acceptor.promised:
            self.out.send(m.src, HeartbeatAck(self.node_id, m.ballot, m.round,
                                              self.acceptor.max_accepted))
        super().on_heartbeat(m, now)


class LeaseWithoutGuard(Election):
    """Acks heartbeats as keeping the lease guard (`HeartbeatAck.lease`) but does not
    keep it: it promises another ballot, and stands itself, while the leader it acked
    may still answer reads on its lease. Not in `CLUSTER_MUTANTS`: the default sweep
    with leases did not catch it in 200 seeds (it needs a link cut between two members
    only, and no pre-vote); the scenario in test_read_lease catches it every time."""

    def guarding(self, now: float) -> bool:
        return False


class LeaseOutlivesGuard(Election):
    """A leader whose lease runs two election timeouts past the one it was given: past
    the guard of the members that acked it, so a newer leader may have chosen slots."""

    def has_lease(self, now: float) -> bool:
        return (self.role is Role.LEADER and self.lease_until > 0
                and now < self.lease_until + 2 * self.config.election_timeout)


class RoundNotSaved(mp_acceptor.Acceptor):
    """Uses a ballot round without saving it: a restart may use the ballot again."""

    def use_round(self, round: int) -> None:
        self.last_round = round


class FirstAcceptWinsOnReplay(ReplicaDurable):
    """Recovery replay that keeps the first acceptance of a slot, not the last: a restart
    brings back an older acceptance than the one the acceptor reported."""

    __slots__ = ()

    def apply(self, record: LogRecord) -> None:
        if isinstance(record, AcceptRecord) and record.entry.slot in self.accepted:
            self.promised = max(self.promised, record.entry.ballot)
            return
        super().apply(record)

    def copy(self) -> FirstAcceptWinsOnReplay:
        return FirstAcceptWinsOnReplay(
            self.promised, self.last_round, dict(self.accepted), dict(self.chosen),
            self.compacted, self.standing,
        )


class LeaderSkipsGapPhase1(Replica):
    election_class = SkipsGapPhase1


class AppliesBeforeChosen(Replica):
    log_class = LearnsOnAccept


class LinearizableReadFromLocalState(Replica):
    reads_class = ReadsLocalState


class ReadIndexFromAnyAskerReplica(Replica):
    reads_class = ReadIndexFromAnyAsker


class QuorumReadTakesFreshestReplica(Replica):
    reads_class = QuorumReadTakesFreshest


class PromisesEqualRoundLower(Replica):
    acceptor_class = PromisesByRound


class LeaderIgnoresHigherBallot(Replica):
    election_class = KeepsLeadingOnHigherBallot


class FollowerAcksDeposedLeader(Replica):
    election_class = AcksDeposedLeader


class LeaseOutlivesGuardReplica(Replica):
    election_class = LeaseOutlivesGuard


class RoundNotSavedBeforeUseReplica(Replica):
    acceptor_class = RoundNotSaved


class FirstAcceptWinsReplica(Replica):
    # Recovery replay is the meaning of the durable records (`ReplicaDurable.apply`,
    # which every store implements); the simulator's disks replay with this class.
    durable_class: type[ReplicaDurable] = FirstAcceptWinsOnReplay


# ------------------------------------------------------------- membership change


class MembershipInForceAtOnce(Membership):
    """A change chosen in slot i governs from slot i + 1, not i + ALPHA: a leader that
    proposed the slots after i under the old configuration (its window reaches ALPHA
    slots past its commit) and one that counts them under the new one disagree."""

    def apply(self, slot: int, change: Change) -> tuple[Code, str]:
        code, why = super().apply(slot, change)
        if code is Code.NONE:
            self.configs[-1] = msgspec.structs.replace(self.configs[-1], start=slot + 1)
        return code, why


class PromotesBeforeCaughtUp(Pipeline):
    """Takes every learner as caught up: it is promoted (and its votes awaited) while
    it still has the whole log to fetch."""

    def caught_up(self, node_id: int) -> bool:
        return True


class CountsElectedConfiguration(Pipeline):
    """A leader that counts every slot's votes with the quorums of the configuration it
    was elected under, even in the slots a newer configuration governs."""

    elected: QuorumSystem | None = None

    def lead(self, first: int, reported: dict[int, list[Entry]], last: int,
             now: float) -> None:
        membership = self.log.membership
        self.elected = membership.quorums(membership.at(first))
        super().lead(first, reported, last, now)

    def propose(self, slot: int, value: Batch, now: float) -> None:
        super().propose(slot, value, now)
        if self.elected is not None:
            self.inflight[slot].quorums = self.elected


class ConfigImmediate(Replica):
    membership_class = MembershipInForceAtOnce


class PromoteBeforeCaughtUp(Replica):
    pipeline_class = PromotesBeforeCaughtUp


class OldConfigQuorums(Replica):
    pipeline_class = CountsElectedConfiguration


CLUSTER_MUTANTS: dict[str, tuple[type[Replica], type[KVMachine]]] = {
    "leader-skips-gap-phase1": (LeaderSkipsGapPhase1, KVMachine),
    "applies-before-chosen": (AppliesBeforeChosen, KVMachine),
    "no-dedup": (Replica, NoDedupMachine),
    "linearizable-read-from-local-state": (LinearizableReadFromLocalState, KVMachine),
    "quorum-read-takes-freshest": (QuorumReadTakesFreshestReplica, KVMachine),
    "acceptor-compares-rounds": (PromisesEqualRoundLower, KVMachine),
    "leader-ignores-higher-ballot": (LeaderIgnoresHigherBallot, KVMachine),
    "follower-acks-deposed-leader": (FollowerAcksDeposedLeader, KVMachine),
    "first-accept-wins-on-replay": (FirstAcceptWinsReplica, KVMachine),
    "round-not-saved-before-use": (RoundNotSavedBeforeUseReplica, KVMachine),
    "compacts-before-snapshot-durable": (CompactsBeforeDurable, KVMachine),
    "install-keeps-log": (InstallKeepsLog, KVMachine),
    "snapshot-without-dedup": (Replica, SnapshotWithoutDedupMachine),
    "promise-hides-compaction": (HidesCompaction, KVMachine),
    "lease-outlives-guard": (LeaseOutlivesGuardReplica, KVMachine),
}

MEMBERSHIP_MUTANTS: dict[str, tuple[type[Replica], type[KVMachine]]] = {
    "config-immediate": (ConfigImmediate, KVMachine),
    "promote-before-caught-up": (PromoteBeforeCaughtUp, KVMachine),
    "old-config-quorums": (OldConfigQuorums, KVMachine),
}
"""The mutants of membership change, run like `CLUSTER_MUTANTS`: only a run with
configuration changes (`ClusterConfig.changes`) can catch them."""
