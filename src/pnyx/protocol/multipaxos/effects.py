"""The effects of one event, gathered by every unit of the replica into one `Outbox`.

A unit never sends or writes anything itself: it asks the outbox to make a
record durable (`save`, or `save_lazily` for a chosen value that may ride on
the next write), to send a message that reports nothing durable (`send`), to
send one that reports acceptor state (`emit`: held by the `DurabilityGate`
until every record asked for so far is durable — persist-before-send), or to
tell a client what became of its request (`outcome`). The facade hands the
gathered effects to the driver as one `LogReady` (`take`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pnyx.protocol.durability import DurabilityGate
from pnyx.protocol.multipaxos.messages import Batch, LogMessage
from pnyx.protocol.multipaxos.outcome import Outcome
from pnyx.protocol.multipaxos.records import ChosenRecord, LogRecord

LAZY_RECORDS = 64  # chosen records held back for the next write, at most


# What the replica asks of the driver's snapshot store (`pnyx.node.ports.SnapshotPort`);
# each answers with an event (`Replica.snapshotted`, `staged`, `installed`).


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """Write durably the machine's state after slot `slot` (`index` commands applied),
    captured at that moment as `chunks` (drawn by the store, off the event loop, while
    the machine goes on applying); then `snapshotted`."""

    slot: int
    index: int
    chunks: Iterator[bytes]
    # The membership after `slot` (`Membership.encode`): a snapshot carries it.
    membership: bytes = b""


@dataclass(frozen=True, slots=True)
class SendChunk:
    """Send peer `dst` the bytes of snapshot `slot` from `offset` on, at most `size`
    (a `SnapshotChunk`), or tell the replica the file is gone (`snapshot_gone`)."""

    dst: int
    slot: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class BeginStaging:
    """A transfer of snapshot `slot` begins or resumes: keep what is staged of it (a
    transfer cut short by a crash), drop any other; then `staged(slot, size)`."""

    slot: int


@dataclass(frozen=True, slots=True)
class StageChunk:
    """Append `data`, bytes `offset`.. of snapshot `slot`, to the transfer staged; then
    `staged(slot, size)`."""

    slot: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """The staged snapshot `slot` is complete: verify it, make it the node's snapshot,
    restore the machine from it; then `installed` (or `staged(slot, 0)` if refused)."""

    slot: int


@dataclass(frozen=True, slots=True)
class KeepSnapshots:
    """Snapshot files other than these slots may be deleted."""

    slots: tuple[int, ...]


SnapshotOp = (TakeSnapshot | SendChunk | BeginStaging | StageChunk | InstallSnapshot
              | KeepSnapshots)


@dataclass(slots=True)
class LogReady:
    """Effects of one event. Write `persist` in order, call `persisted(persist_seq)`
    once durable; send `send` now; hand `outcomes` to the waiting clients."""

    persist: list[LogRecord] = field(default_factory=list)
    persist_seq: int = 0
    send: list[tuple[int, LogMessage]] = field(default_factory=list)
    outcomes: list[tuple[int, Outcome]] = field(default_factory=list)
    applied: list[tuple[int, Batch]] = field(default_factory=list)  # (slot, value) in order
    snapshots: list[SnapshotOp] = field(default_factory=list)
    installed: int = 0  # the slot of a snapshot the machine was restored from (observers)
    # The members changed (ids and addresses): the driver reconnects (`Replica.configs`).
    members_changed: bool = False
    # This replica was removed from the cluster and decides nothing any more: stop.
    removed: bool = False
    wake_at: float | None = None


class Outbox:
    __slots__ = ("gate", "lazy", "members", "node_id", "ready")

    def __init__(self, node_id: int, members: tuple[int, ...]) -> None:
        # Everyone `broadcast` sends to (ourself included): every member of a
        # configuration known, voter or learner. Replaced when it changes.
        self.node_id = node_id
        self.members = members
        # The effects of the event being handled; replaced by `take`.
        self.ready = LogReady()
        # Invariant: a message reporting acceptor state is in `ready.send` only once
        # every record issued before it was made is durable.
        self.gate: DurabilityGate[LogMessage] = DurabilityGate()
        # Chosen records not yet handed out; fewer than LAZY_RECORDS.
        self.lazy: list[ChosenRecord] = []

    def outcome(self, request_id: int, outcome: Outcome) -> None:
        self.ready.outcomes.append((request_id, outcome))

    def save(self, record: LogRecord) -> None:
        ready = self.ready
        if not ready.persist or ready.persist_seq != self.gate.issued:
            self.gate.issue()  # one number for all the records of one step
        if self.lazy:
            ready.persist.extend(self.lazy)
            self.lazy.clear()
        ready.persist.append(record)
        ready.persist_seq = self.gate.issued

    def save_lazily(self, record: ChosenRecord) -> None:
        """A chosen value needs no fsync of its own: losing it in a crash breaks no
        promise (the acceptors keep the value, and `commit`/catch-up teach it again).
        So it rides along with the next record that must be durable, or goes once
        enough have gathered — one fsync fewer per slot on every replica."""
        self.lazy.append(record)
        if len(self.lazy) >= LAZY_RECORDS:
            self.save(self.lazy.pop())

    def emit(self, dst: int, message: LogMessage) -> None:
        """A message that reports acceptor state: held until that state is durable."""
        self.gate.send(dst, message, self.ready.send)

    def snapshot(self, op: SnapshotOp) -> None:
        self.ready.snapshots.append(op)

    def send(self, dst: int, message: LogMessage) -> None:
        """A message that reports nothing durable: it may leave at once."""
        self.ready.send.append((dst, message))

    def broadcast(self, message: LogMessage, include_self: bool = False,
                  gated: bool = False) -> None:
        for member in self.members:
            if member != self.node_id or include_self:
                if gated:
                    self.emit(member, message)
                else:
                    self.send(member, message)

    def persisted(self, seq: int) -> None:
        """Every record up to `seq` is durable: release the messages that waited for it."""
        self.gate.persisted(seq, self.ready.send)

    def take(self) -> LogReady:
        ready = self.ready
        self.ready = LogReady()
        return ready

    def check_invariants(self) -> None:
        gate = self.gate
        assert gate.durable <= gate.issued, (gate.durable, gate.issued)
        assert len(self.lazy) < LAZY_RECORDS, len(self.lazy)
