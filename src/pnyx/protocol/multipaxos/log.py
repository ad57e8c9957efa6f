"""The learner: the chosen log, how far it is known and applied, and catch-up.

A slot is chosen once a phase-2 quorum of acceptors accepted it in one ballot
(`Votes`, the learner rule of `pnyx.protocol.synod.learner` for one slot). The
leader counts `Accepted` for the slots it proposes and learns them so; the
others learn from the leader's `commit` (on `Accept` and `Heartbeat`: a slot
they accepted in the leader's very ballot holds the chosen value) or, for a
slot they lack, from a `Chosen` reply to their `CatchUp`. Chosen values are
applied to the state machine strictly in slot order, each exactly once.
Their records are saved lazily: losing one in a crash breaks no promise.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Protocol

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import Outbox
from pnyx.protocol.multipaxos.election import Role
from pnyx.protocol.multipaxos.messages import Batch, CatchUp, Chosen, Decided, size_of
from pnyx.protocol.multipaxos.records import ChosenRecord
from pnyx.protocol.quorum import QuorumSystem

if TYPE_CHECKING:
    from pnyx.protocol.multipaxos.acceptor import Acceptor
    from pnyx.protocol.multipaxos.election import Election
    from pnyx.protocol.multipaxos.pipeline import Pipeline
    from pnyx.protocol.multipaxos.reads import Reads


class Machine(Protocol):
    """What the replica applies chosen commands to (see `pnyx.statemachine`)."""

    def apply(self, command: bytes, index: int) -> bytes: ...

    def query(self, query: bytes) -> bytes: ...


class Votes:
    """The learner rule for one slot: chosen once a phase-2 quorum of acceptors has
    accepted it in ONE ballot, `ballot`. An `Accepted` of any other ballot — even
    one of the same leader's older ballots, for the same value — counts for nothing:
    votes of different ballots do not add up to a choice."""

    __slots__ = ("ballot", "quorums", "voters")

    def __init__(self, ballot: Ballot, quorums: QuorumSystem) -> None:
        self.ballot = ballot
        self.quorums = quorums
        self.voters: set[int] = set()  # acceptors that accepted the slot in `ballot`

    def accepted(self, src: int, ballot: Ballot) -> bool:
        """Count `src`'s acceptance in `ballot`; whether the slot is now chosen."""
        if ballot != self.ballot:
            return False
        voters = self.voters
        voters.add(src)
        return self.quorums.is_phase2_quorum(voters)


class Log:
    acceptor: Acceptor
    election: Election
    pipeline: Pipeline
    reads: Reads

    def __init__(self, node_id: int, config: ReplicaConfig, rng: random.Random,
                 machine: Machine, out: Outbox, chosen: dict[int, Batch]) -> None:
        self.node_id = node_id
        self.config = config
        self.rng = rng
        self.machine = machine
        self.out = out
        self.others = tuple(m for m in config.members if m != node_id)
        # slot -> value, for every slot known chosen. Invariant: never overwritten.
        self.chosen: dict[int, Batch] = dict(chosen)
        # Invariant: the highest slot in `chosen`, 0 if none.
        self.max_chosen = max(self.chosen, default=0)
        # Invariant: every slot 1..commit is in `chosen`, and commit + 1 is not.
        self.commit = 0
        # Invariant: applied <= commit; slots 1..applied were applied, in order, once.
        self.applied = 0
        # Commands applied: the index a state machine sees. Never decreases.
        self.applied_index = 0
        # When a CatchUp went out unanswered: time to ask again (None: not waiting).
        self.catchup_at: float | None = None
        self.advance_commit()

    def learn(self, slot: int, value: Batch, ballot: Ballot | None = None) -> None:
        """`value` is chosen in `slot`: in `ballot`, when the caller knows it."""
        chosen = self.chosen
        if slot in chosen:
            return  # known chosen: nothing may overwrite it
        chosen[slot] = value
        if slot > self.max_chosen:
            self.max_chosen = slot
        acceptor = self.acceptor
        entry = acceptor.accepted.get(slot)  # recorded when accepted, so before this record
        # The store may keep a reference to the accepted entry only if no entry this
        # replica may still accept for the slot holds another value: so only once it has
        # promised the ballot the value was chosen in (every proposal in that ballot or a
        # higher one carries the value). Not for a value learned by catch-up: its ballot
        # is unknown, and a late Accept of an older ballot may still replace the entry.
        same = (entry is not None and entry.value is value and ballot is not None
                and acceptor.promised >= ballot)
        self.out.save_lazily(ChosenRecord(slot, value, same))
        self.advance_commit()

    def advance_commit(self) -> None:
        chosen = self.chosen
        commit = self.commit
        while commit + 1 in chosen:
            commit += 1
        self.commit = commit

    def chosen_beyond_commit(self) -> tuple[int, ...]:
        """The slots known chosen past the gap after `commit`, in order (a walk of the
        few slots past it, not of the whole log)."""
        return tuple(s for s in range(self.commit + 2, self.max_chosen + 1) if s in self.chosen)

    def chosen_in(self, first: int, last: int) -> dict[int, Batch]:
        """Read-only, for observers: the slots in first..last known chosen, with their
        values (a walk of that range only)."""
        chosen = self.chosen
        return {s: v for s in range(max(1, first), last + 1) if (v := chosen.get(s)) is not None}

    def learn_commit(self, ballot: Ballot, commit: int, now: float) -> None:
        """The leader of `ballot` says slots up to `commit` are chosen. A slot we
        accepted in that very ballot holds the chosen value; others we fetch."""
        accepted = self.acceptor.accepted
        max_accepted = self.acceptor.max_accepted
        # Only slots we accepted can be learned here (a huge `commit` must not mean a huge
        # loop); anything beyond them is fetched.
        missing = commit > max_accepted
        for slot in range(self.commit + 1, min(commit, max_accepted) + 1):
            if slot in self.chosen:
                continue
            entry = accepted.get(slot)
            if entry is not None and entry.ballot == ballot:
                self.learn(slot, entry.value, ballot)
            else:
                missing = True
        self.apply_chosen()
        if missing and self.commit < commit and self.catchup_at is None:
            self.catch_up(now)

    def apply_chosen(self) -> None:
        """Apply chosen slots strictly in order, each exactly once."""
        node_id = self.node_id
        while self.applied < self.commit:
            slot = self.applied + 1
            value = self.chosen[slot]
            for c in value.commands:
                self.applied_index += 1
                result = self.machine.apply(c.payload, self.applied_index)
                if c.origin == node_id:
                    self.pipeline.done(c.id, result, self.applied_index)
            self.applied = slot
            self.out.ready.applied.append((slot, value))
        reads = self.reads
        if reads.by_index or reads.held:
            reads.advance()

    # ------------------------------------------------------------ catch-up

    def catch_up(self, now: float) -> None:
        election = self.election
        if election.role is Role.LEADER:
            return  # phase 1 recovered every slot a leader does not know: it never catches up
        leader = election.leader
        source = leader if leader not in (None, self.node_id) else None
        if source is None and self.others:
            source = self.rng.choice(self.others)
        if source is not None:
            self.out.send(source, CatchUp(self.node_id, self.commit + 1))
            self.catchup_at = now + self.config.heartbeat_interval

    def lead(self) -> None:
        """We became the leader: phase 1 recovered what we lacked; no more catch-up."""
        self.catchup_at = None

    def tick(self, now: float) -> None:
        if self.catchup_at is not None and now >= self.catchup_at:
            self.catchup_at = None
            self.catch_up(now)

    def on_catch_up(self, m: CatchUp) -> None:
        entries = []
        size = 0
        slot = m.first
        chosen = self.chosen
        # Bounded in slots and in bytes, so a reply always fits in a transport frame.
        while slot in chosen and len(entries) < self.config.catchup_chunk:
            value = chosen[slot]
            size += size_of(value)
            if entries and size > self.config.catchup_bytes:
                break
            entries.append(Decided(slot, value))
            slot += 1
        if entries:
            self.out.send(m.src, Chosen(self.node_id, tuple(entries), self.commit))

    def on_chosen(self, m: Chosen, now: float) -> None:
        if self.election.role is Role.LEADER:
            # A leader tells followers `commit`, and they take a slot they accepted in its
            # ballot as chosen: so a leader may only learn slots through its own phase 2.
            # (A deposed leader that learned a newer leader's value here would vouch for
            # its own, unchosen proposal in that slot.)
            return
        for d in m.entries:
            self.learn(d.slot, d.value)
        self.apply_chosen()
        self.catchup_at = None
        if self.commit < m.commit:
            self.catch_up(now)

    def check_invariants(self) -> None:
        assert 0 <= self.applied <= self.commit <= self.max_chosen, (
            self.applied, self.commit, self.max_chosen)
        assert self.commit + 1 not in self.chosen, self.commit
        assert self.commit == 0 or self.commit in self.chosen, self.commit
        assert self.max_chosen == 0 or self.max_chosen in self.chosen, self.max_chosen
        assert self.applied_index >= 0
