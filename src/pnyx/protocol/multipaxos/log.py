"""The learner: the chosen log, how far it is known and applied, and catch-up.

A slot is chosen once a phase-2 quorum of acceptors accepted it in one ballot
(`Votes`, the learner rule of `pnyx.protocol.synod.learner` for one slot). The
leader counts `Accepted` for the slots it proposes and learns them so; the
others learn from the leader's `commit` (on `Accept` and `Heartbeat`: a slot
they accepted in the leader's very ballot holds the chosen value) or, for a
slot they lack, from a `Chosen` reply to their `CatchUp`. Chosen values are
applied to the state machine strictly in slot order, each exactly once.
Their records are saved lazily: losing one in a crash breaks no promise.

It also owns the log's long life: a snapshot of the machine is taken once
`snapshot_every` commands (or `snapshot_bytes` bytes of them) were applied
since the last (`TakeSnapshot`, written by the driver off the event loop);
once it is durable the slots below it, but for a tail of `snapshot_tail` commands, are
compacted (`compact`: the one place that decides what is forgotten, and why it
is safe); a replica that needs compacted slots installs a snapshot fetched
from a peer (`pnyx.protocol.multipaxos.transfer`, then `install`).

        applied commands ----> TakeSnapshot(slot) ---> snapshotted(slot)
                                                          |
        chosen: [ forgotten | tail ........ | since the snapshot ...]
                          floor        snapshot_slot      applied  commit
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import KeepSnapshots, Outbox, TakeSnapshot
from pnyx.protocol.multipaxos.election import Role
from pnyx.protocol.multipaxos.membership import Membership, genesis
from pnyx.protocol.multipaxos.messages import Batch, CatchUp, Chosen, Decided, size_of
from pnyx.protocol.multipaxos.records import ChosenRecord, CompactRecord
from pnyx.protocol.quorum import QuorumSystem

if TYPE_CHECKING:
    from pnyx.protocol.multipaxos.acceptor import Acceptor
    from pnyx.protocol.multipaxos.election import Election
    from pnyx.protocol.multipaxos.pipeline import Pipeline
    from pnyx.protocol.multipaxos.reads import Reads
    from pnyx.protocol.multipaxos.transfer import Transfer


class SnapshotBase(Protocol):
    """A durable snapshot the machine was restored from: its slot, the commands
    applied up to it (`index`), the size of its file in bytes, and the membership
    after its slot (`Membership.encode`; empty in a snapshot made before membership
    changes existed, whose configuration is the first)."""

    slot: int
    index: int
    size: int

    @property
    def membership(self) -> bytes: ...


class Machine(Protocol):
    """What the replica applies chosen commands to (see `pnyx.statemachine`)."""

    def apply(self, command: bytes, index: int) -> bytes: ...

    def query(self, query: bytes) -> bytes: ...

    def snapshot(self) -> bytes: ...


def capture(machine: Machine) -> Iterator[bytes]:
    """The machine's state now, as chunks that may be drawn later, in another thread
    (its `snapshot_chunks`, copy-on-write; `SafeApply` passes it through) — or, for a
    machine without one, serialized at once in one piece. The one rule for it:
    `pnyx.statemachine.base.snapshot_chunks` is this."""
    take = getattr(machine, "snapshot_chunks", None)
    return take() if take is not None else iter((machine.snapshot(),))


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


# One step of a compaction (one CompactRecord) forgets at most this many slots, and
# stops at the first slot that takes it past this many bytes of values: deleting rows
# is one transaction of a group commit, and a follower commits on its event loop. The
# SQLite store deletes 10,000 small slots in ~5 ms, 15 MB of full slots in ~5 ms (43 ms
# while it zeroed what it freed); in one step on every member at once, that had the
# cluster stand still for 60-90 ms (bench/results/2026-12-04-compaction).
COMPACT_STEP = 10_000
COMPACT_STEP_BYTES = 1 << 20
COMPACT_PAUSE = 0.01  # seconds between two steps: the writes of other work go between


class Log:
    acceptor: Acceptor
    election: Election
    pipeline: Pipeline
    reads: Reads
    transfer: Transfer

    def __init__(self, node_id: int, config: ReplicaConfig, rng: random.Random,
                 machine: Machine, out: Outbox, chosen: dict[int, Batch],
                 compacted: int = 0, snapshot: SnapshotBase | None = None,
                 membership: Membership | None = None) -> None:
        self.node_id = node_id
        self.config = config
        self.rng = rng
        self.machine = machine
        self.out = out
        # The configurations, as the chosen slots applied so far make them (a change
        # is applied in its slot's turn, like a command).
        self.membership = membership if membership is not None else Membership(
            node_id, genesis(config.members, config.quorums))
        base = snapshot.slot if snapshot is not None else 0
        if base < compacted:
            raise ValueError(f"the log is compacted up to slot {compacted}, but the "
                             f"snapshot is of slot {base}: slots in between are lost")
        # Invariant: slots 1..floor are in the machine's state (from a snapshot) and
        # none of them is in `chosen`; floor <= applied.
        self.floor = base
        # slot -> value, for every slot above `floor` known chosen. Never overwritten.
        self.chosen: dict[int, Batch] = {s: v for s, v in chosen.items() if s > base}
        # Invariant: the highest slot in `chosen`, or `floor` if none is above it.
        self.max_chosen = max(self.chosen, default=base)
        # Invariant: every slot floor+1..commit is in `chosen`, and commit + 1 is not.
        self.commit = base
        # Invariant: floor <= applied <= commit; slots floor+1..applied were applied,
        # in order, once (those up to floor came with the snapshot).
        self.applied = base
        # Commands applied: the index a state machine sees. Never decreases.
        self.applied_index = snapshot.index if snapshot is not None else 0
        # When a CatchUp went out unanswered: time to ask again (None: not waiting).
        self.catchup_at: float | None = None
        # Durable snapshots kept: slot -> (index, size). The newest is `snapshot_slot`.
        self.snapshots: dict[int, tuple[int, int]] = {}
        self.snapshot_slot = self.snapshot_index = self.snapshot_size = 0
        if snapshot is not None and base:
            self._keep_snapshot(base, snapshot.index, snapshot.size)
        self.taking = 0  # the slot of a snapshot being written, 0 if none
        self.compact_target = 0  # where the compaction under way stops
        self.compact_at: float | None = None  # when it takes its next step
        # Commands applied since the last snapshot was taken, and their bytes (counted
        # only with a `snapshot_bytes` bound); at the start, less this member's phase.
        self.since_commands = -int(config.snapshot_phase * config.snapshot_every)
        self.since_bytes = -int(config.snapshot_phase * config.snapshot_bytes)
        self.advance_commit()

    def learn(self, slot: int, value: Batch, ballot: Ballot | None = None) -> None:
        """`value` is chosen in `slot`: in `ballot`, when the caller knows it."""
        chosen = self.chosen
        if slot in chosen or slot <= self.floor:
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
        if self.applied >= self.commit:
            return
        count_bytes = self.config.snapshot_bytes > 0
        while self.applied < self.commit:
            slot = self.applied + 1
            value = self.chosen[slot]
            if value.change is not None:
                self.apply_change(slot, value)
            for c in value.commands:
                self.applied_index += 1
                result = self.machine.apply(c.payload, self.applied_index)
                if c.origin == node_id:
                    self.pipeline.done(c.id, result, self.applied_index)
            self.since_commands += len(value.commands)
            if count_bytes:
                self.since_bytes += size_of(value)
            self.applied = slot
            self.out.ready.applied.append((slot, value))
        reads = self.reads
        if reads.by_index or reads.held:
            reads.advance()
        self.membership.trim(self.commit)
        self.maybe_snapshot()

    def apply_change(self, slot: int, value: Batch) -> None:
        """A membership change is chosen in `slot`: the configuration it makes governs
        from slot + ALPHA (`Membership.apply`); its origin hears whether it took."""
        change = value.change
        assert change is not None
        code, why = self.membership.apply(slot, change)
        self.pipeline.change_applied(slot, change, code, why, self.applied_index)

    # ---------------------------------------------------- snapshots, compaction

    def maybe_snapshot(self) -> None:
        """Take a snapshot at the slot applied last, once enough was applied since the
        last one. The driver captures the machine before the next event changes it."""
        config = self.config
        if self.taking or not (
            (config.snapshot_every and self.since_commands >= config.snapshot_every)
            or (config.snapshot_bytes and self.since_bytes >= config.snapshot_bytes)
        ):
            return
        self.taking = self.applied
        self.since_commands = self.since_bytes = 0
        # Captured here, between two applies: later slots of this very event must not
        # show in it. Drawn later, off the event loop (`Machine.snapshot_chunks`).
        self.out.snapshot(TakeSnapshot(self.applied, self.applied_index,
                                       capture(self.machine), self.membership.encode()))

    def snapshotted(self, slot: int, index: int, size: int, now: float) -> None:
        """The snapshot of `slot` is durable (`size` > 0), or could not be written (0:
        the log stays as it was, and the next threshold tries again)."""
        if slot == self.taking:
            self.taking = 0
        if size <= 0 or slot <= self.snapshot_slot:
            return
        self._keep_snapshot(slot, index, size)
        self.compact(now)

    def _keep_snapshot(self, slot: int, index: int, size: int) -> None:
        self.snapshots[slot] = (index, size)
        if slot > self.snapshot_slot:
            self.snapshot_slot, self.snapshot_index, self.snapshot_size = slot, index, size

    def kept_snapshots(self, now: float) -> tuple[int, ...]:
        """The snapshot files still needed: the newest, and those peers are fetching."""
        keep = {self.snapshot_slot, *self.transfer.held_slots(now)} & set(self.snapshots)
        for slot in [s for s in self.snapshots if s not in keep]:
            del self.snapshots[slot]
        return tuple(sorted(keep))

    def compact(self, now: float) -> None:
        """Forget the chosen slots and accepted entries the newest durable snapshot
        holds, but for a tail of `snapshot_tail` commands (for followers a little behind)
        and the slots above any snapshot a peer is fetching (so the log it continues
        from after installing is still here: no snapshot loop).

        Why this is safe — the one place it is decided:

        - only slots at or below a DURABLE snapshot are forgotten (`snapshotted` calls
          this after the driver wrote it, and `CompactRecord` is saved after that), so
          a crash at any point restarts from a snapshot at or above the compacted
          floor, and the state of every forgotten slot is in it;
        - only applied slots are forgotten (a snapshot is taken at `applied`), and so
          only chosen ones: no value that is still being decided is lost;
        - the promise is never forgotten (`promised` is not touched), and neither is
          the fact of the forgetting: the acceptor reports `compacted` in every
          `Promise`, so a candidate never takes "no entry" for a forgotten slot as
          "accepted nothing" (it must catch up before it may lead: `on_promise`);
          an `Accept` for a forgotten slot carries its chosen value (a leader may only
          propose there after a phase 1 that saw it), and is acknowledged unrecorded.
        """
        upto = self.tail_floor()
        held = self.transfer.held_slots(now)
        if held:
            upto = min(upto, held[0])
        upto = min(upto, self.applied)
        # In steps (`COMPACT_STEP`, `COMPACT_STEP_BYTES`); `tick` takes the next one
        # `COMPACT_PAUSE` later.
        self.compact_target = upto
        upto = min(upto, self.floor + COMPACT_STEP)
        if upto > self.floor:
            chosen = self.chosen
            size = 0
            slot = self.floor
            while slot < upto and size < COMPACT_STEP_BYTES:
                slot += 1
                value = chosen.pop(slot, None)
                if value is not None:
                    size += size_of(value)
            upto = self.floor = slot
            if self.max_chosen < upto:
                self.max_chosen = upto
            self.acceptor.forget(upto)
            self.out.save(CompactRecord(upto))
        self.compact_at = now + COMPACT_PAUSE if self.floor < self.compact_target else None
        self.out.snapshot(KeepSnapshots(self.kept_snapshots(now)))

    def tail_floor(self) -> int:
        """The highest slot below the snapshot that leaves at least `snapshot_tail`
        commands (a no-op counts as one) in the slots above it, up to the snapshot: a
        tail in commands, so it holds as much however full the slots are."""
        chosen, tail = self.chosen, self.config.snapshot_tail
        slot, kept = self.snapshot_slot, 0
        while slot > self.floor and kept < tail:
            value = chosen.get(slot)
            kept += max(1, len(value.commands)) if value is not None else 1
            slot -= 1
        return slot

    def install(self, slot: int, index: int, size: int, now: float,
                membership: bytes = b"") -> None:
        """The machine was restored from the durable snapshot of `slot` (fetched from a
        peer): the log continues from it. Everything at or below it is forgotten, as
        by `compact`, and for the same reasons; our commands that may have been chosen
        there will never be applied here, so their clients hear their outcome is
        unknown (their retries are de-duplicated)."""
        if slot <= self.applied:
            # Stale: we applied past it meanwhile (the driver did not restore it).
            self.transfer.installed(slot)
            self.catch_up(now)
            return
        chosen = self.chosen
        for s in [s for s in chosen if s <= slot]:
            del chosen[s]
        if self.taking <= slot:
            self.taking = 0  # a snapshot of ours being written is older: it is ignored
        self.floor = self.applied = slot
        self.commit = max(self.commit, slot)
        self.max_chosen = max(self.max_chosen, slot)
        self.applied_index = index
        if membership:
            self.membership.restore(membership)
        self.since_commands = self.since_bytes = 0
        self._keep_snapshot(slot, index, size)
        self.acceptor.forget(slot)
        self.out.save(CompactRecord(slot))
        self.out.ready.installed = slot
        self.pipeline.abort_forwarded()
        self.advance_commit()
        self.apply_chosen()
        reads = self.reads
        if reads.by_index or reads.held:
            reads.advance()
        self.transfer.installed(slot)
        self.out.snapshot(KeepSnapshots(self.kept_snapshots(now)))
        self.catch_up(now)

    # ------------------------------------------------------------ catch-up

    def catch_up(self, now: float, source: int | None = None) -> None:
        election = self.election
        if election.role is Role.LEADER:
            return  # phase 1 recovered every slot a leader does not know: it never catches up
        if self.transfer.fetch is not None:
            return  # a snapshot is on its way; the log after it comes once it is in
        leader = election.leader
        if source is None and leader not in (None, self.node_id):
            source = leader
        others = self.election.others
        if source is None and others:
            source = self.rng.choice(others)
        if source is not None:
            self.out.send(source, CatchUp(self.node_id, self.commit + 1))
            self.catchup_at = now + self.config.heartbeat_interval

    def lead(self) -> None:
        """We became the leader: phase 1 recovered what we lacked; no more catch-up."""
        self.catchup_at = None

    def tick(self, now: float) -> None:
        if self.compact_at is not None and now >= self.compact_at:
            self.compact(now)  # the next step of a long compaction
        if self.catchup_at is not None and now >= self.catchup_at:
            self.catchup_at = None
            self.catch_up(now)

    def on_catch_up(self, m: CatchUp) -> None:
        if m.first <= self.floor or (m.first <= self.commit and m.first not in self.chosen):
            self.transfer.offer(m.src)  # compacted here: only a snapshot has them
            return
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
        assert 0 <= self.floor <= self.applied <= self.commit <= self.max_chosen, (
            self.floor, self.applied, self.commit, self.max_chosen)
        assert self.commit + 1 not in self.chosen, self.commit
        assert self.commit == self.floor or self.commit in self.chosen, self.commit
        assert self.max_chosen == self.floor or self.max_chosen in self.chosen, (
            self.max_chosen)
        assert self.floor + 1 in self.chosen or self.commit == self.floor, self.floor
        assert self.floor not in self.chosen, self.floor
        assert self.applied_index >= 0
        assert self.snapshot_slot <= self.applied, (self.snapshot_slot, self.applied)
        assert self.floor <= self.snapshot_slot, (self.floor, self.snapshot_slot)
        assert not self.taking or self.snapshot_slot < self.taking <= self.applied, (
            self.taking, self.snapshot_slot)
