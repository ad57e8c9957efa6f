"""The ports a `Driver` runs a replica against: a clock, a disk, a network, snapshots.

The driver (`pnyx.node.driver`) obeys what the replica asks for through these
three, and nothing else. The node plugs in asyncio's event loop, SQLite and TCP
(`pnyx.node.runtime`); the simulator plugs in virtual time, simulated disks
that lose what was not yet durable when their node crashes, and the seeded
simulated network (`pnyx.sim.cluster`). So the code that serves real clients —
requests, deadlines, gathering, group commit, persist-before-send — is the code
the simulator checks.

`Clock` has the names of asyncio's event loop, so the node passes its loop as
the clock with no adapter in the way of the hot path. `SnapshotPort` is the
node's snapshot files (`pnyx.storage.snapshots`): the node does its work in a
thread, off the event loop; the simulator in virtual time, losing what was not
finished when its node crashes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any, Protocol

from pnyx.protocol.multipaxos.log import SnapshotBase
from pnyx.protocol.multipaxos.messages import LogMessage
from pnyx.protocol.multipaxos.records import LogRecord


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time and callbacks; a callback never runs inside the call that scheduled it."""

    def time(self) -> float: ...
    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer: ...
    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer: ...
    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Timer: ...


class Disk(Protocol):
    """Durable storage for the replica's records, one write at a time."""

    def write(self, records: list[LogRecord],
              done: Callable[[BaseException | None], None]) -> None:
        """Make `records` durable, in order, after everything written before; then call
        `done(None)` (possibly before returning), or `done(error)` if they cannot be.
        The driver starts no second write before `done` of the first."""
        ...


class Network(Protocol):
    """Messages to other members (never to this one: the driver delivers those itself)."""

    def send(self, dst: int, message: LogMessage) -> None: ...


class SnapshotPort(Protocol):
    """Snapshot files: written, read in chunks for peers, staged from a peer, installed.

    Every method returns at once and calls `done` later, on the driver's clock
    (never inside the call). A failure is reported, never raised."""

    def save(self, slot: int, index: int, chunks: Iterator[bytes],
             done: Callable[[int, BaseException | None], None],
             membership: bytes = b"") -> None:
        """Write the snapshot of `slot` from `chunks` (the machine's state captured
        already: they may be drawn off the event loop) and `membership` (the cluster's
        membership after `slot`) atomically and durably; then `done(size, None)`, or
        `done(0, error)` leaving the previous snapshot intact."""
        ...

    def read(self, slot: int, offset: int, size: int,
             done: Callable[[bytes | None, int], None]) -> None:
        """Bytes offset..offset+size of snapshot `slot`'s file and the file's size, or
        `done(None, 0)` if that snapshot is no longer kept."""
        ...

    def begin_staging(self, slot: int, done: Callable[[int], None]) -> None:
        """Keep what is staged of snapshot `slot` (drop any other); `done(bytes staged)`."""
        ...

    def stage(self, slot: int, offset: int, data: bytes,
              done: Callable[[int], None]) -> None:
        """Append `data` at `offset` of the staged snapshot; `done(bytes staged)` (0 if
        the store failed or refused: the transfer starts again)."""
        ...

    def install(self, slot: int,
                done: Callable[[SnapshotBase | None, bytes | None, BaseException | None],
                               None]) -> None:
        """Verify the staged snapshot `slot` and make it the node's snapshot; then
        `done(info, body, None)` with the machine's bytes to restore, or
        `done(None, None, error)` (refused: the staged bytes are dropped)."""
        ...

    def keep(self, slots: Collection[int]) -> None:
        """Snapshot files of other slots may be deleted."""
        ...
