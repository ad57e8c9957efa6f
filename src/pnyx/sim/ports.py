"""The simulated ports a driver runs on in the cluster simulator: clock, disk, network,
snapshots.

This module owns `SimClock` (virtual time; a crash of the node cancels its
timers), `SimDisk` (a write is durable one fsync after the disk is free, and a
crash before then loses it), `SimNetwork` (sends through the seeded
network) and `SimSnapshots` (snapshot files, written and installed in virtual
time, lost if their node crashes first). Each is the simulator's side of a port
in `pnyx.node.ports`; the engine they call into is `pnyx.sim.cluster.ClusterSim`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

from pnyx.protocol.multipaxos.messages import LogMessage
from pnyx.protocol.multipaxos.records import LogRecord
from pnyx.sim.engine import SimTimer

if TYPE_CHECKING:
    from pnyx.sim.cluster import ClusterSim


class SimClock:
    """Virtual time as a driver's clock; a crash of its node cancels its timers."""

    def __init__(self, sim: ClusterSim, i: int) -> None:
        self.sim = sim
        self.i = i

    def time(self) -> float:
        return self.sim.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> SimTimer:
        return self.sim.timer(self.i, when, callback, args)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> SimTimer:
        return self.sim.timer(self.i, self.sim.now + delay, callback, args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> SimTimer:
        return self.sim.timer(self.i, self.sim.now, callback, args)


class SimDisk:
    """One node's disk: a write is durable one fsync after the disk is free; a crash
    before then loses it (its completion is a timer of the crashed incarnation)."""

    def __init__(self, sim: ClusterSim, i: int) -> None:
        self.sim = sim
        self.i = i
        self.free_at = sim.now

    def write(self, records: list[LogRecord],
              done: Callable[[BaseException | None], None]) -> None:
        sim = self.sim
        self.free_at = max(sim.now, self.free_at) + sim.fsync
        sim.timer(self.i, self.free_at, self._durable, (records, done))

    def _durable(self, records: list[LogRecord],
                 done: Callable[[BaseException | None], None]) -> None:
        sim = self.sim
        sim.disks[self.i] = sim.write(sim.disks[self.i], records)
        sim.on_durable(self.i, records)
        if sim.trace:
            sim.trace.emit(sim.now, "durable", node=self.i, records=len(records))
        done(None)


class SimNetwork:
    def __init__(self, sim: ClusterSim, i: int) -> None:
        self.sim = sim
        self.i = i

    def send(self, dst: int, message: LogMessage) -> None:
        self.sim.send(self.i, dst, message)


class SimSnapshotFile:
    """A snapshot file on a simulated disk: the machine's bytes and what they hold."""

    __slots__ = ("body", "index", "membership", "slot")

    def __init__(self, slot: int, index: int, body: bytes, membership: bytes = b"") -> None:
        self.slot, self.index, self.body, self.membership = slot, index, body, membership

    @property
    def size(self) -> int:
        return len(self.body) + len(self.membership) + FILE_OVERHEAD

    def data(self) -> bytes:
        """The file's bytes: index, CRC of the rest, the membership's length, the
        membership, body."""
        rest = len(self.membership).to_bytes(4, "big") + self.membership + self.body
        return self.index.to_bytes(8, "big") + zlib.crc32(rest).to_bytes(4, "big") + rest

    @classmethod
    def parse(cls, slot: int, data: bytes) -> SimSnapshotFile | None:
        if len(data) < FILE_OVERHEAD:
            return None
        rest = data[12:]
        if zlib.crc32(rest) != int.from_bytes(data[8:12], "big"):
            return None
        n = int.from_bytes(rest[:4], "big")
        return cls(slot, int.from_bytes(data[:8], "big"), rest[4 + n:], rest[4:4 + n])


FILE_OVERHEAD = 16


class SimSnapshots:
    """One node's snapshot files on its simulated disk. A snapshot is drawn from the
    machine's chunks only when its write completes (so the machine goes on applying
    meanwhile, as it does on a node) and is durable one fsync after that; a crash
    before then loses it. Staged bytes of a fetched snapshot survive a crash (a
    transfer resumes); `install` verifies them first."""

    def __init__(self, sim: ClusterSim, i: int) -> None:
        self.sim = sim
        self.i = i

    @property
    def files(self) -> dict[int, SimSnapshotFile]:
        return self.sim.snapshot_files[self.i]

    def _later(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        self.sim.timer(self.i, self.sim.now + delay, callback, args)

    def save(self, slot: int, index: int, chunks: Iterator[bytes],
             done: Callable[[int, BaseException | None], None],
             membership: bytes = b"") -> None:
        self._later(2 * self.sim.fsync, self._saved, slot, index, chunks, done, membership)

    def _saved(self, slot: int, index: int, chunks: Iterator[bytes],
               done: Callable[[int, BaseException | None], None], membership: bytes) -> None:
        body = b"".join(chunks)
        if self.sim.snapshot_write_fails():
            done(0, OSError(28, "No space left on device (simulated)"))
            return
        file = SimSnapshotFile(slot, index, body, membership)
        self.files[slot] = file
        self.sim.snapshots_taken += 1
        done(file.size, None)

    def read(self, slot: int, offset: int, size: int,
             done: Callable[[bytes | None, int], None]) -> None:
        file = self.files.get(slot)
        if file is None:
            self._later(0.0, done, None, 0)
            return
        data = file.data()
        self._later(0.0, done, data[offset:offset + size], len(data))

    def begin_staging(self, slot: int, done: Callable[[int], None]) -> None:
        staged = self.sim.staged[self.i]
        if staged is None or staged[0] != slot:
            staged = self.sim.staged[self.i] = (slot, bytearray())
        self._later(0.0, done, len(staged[1]))

    def stage(self, slot: int, offset: int, data: bytes, done: Callable[[int], None]) -> None:
        staged = self.sim.staged[self.i]
        if offset == 0 and (staged is None or staged[0] != slot):
            # As the node's store does: a transfer's first chunk starts its staged file.
            staged = self.sim.staged[self.i] = (slot, bytearray())
        if staged is None or staged[0] != slot or len(staged[1]) != offset:
            self._later(0.0, done, 0)
            self.sim.staged[self.i] = None
            return
        staged[1].extend(data)
        self._later(0.0, done, len(staged[1]))

    def install(self, slot: int, done: Callable[[Any, bytes | None, BaseException | None],
                                                None]) -> None:
        self._later(self.sim.fsync, self._install, slot, done)

    def _install(self, slot: int, done: Callable[[Any, bytes | None, BaseException | None],
                                                 None]) -> None:
        staged = self.sim.staged[self.i]
        if staged is None or staged[0] != slot:
            # Another transfer began meanwhile (its staged file replaced this one's): it
            # stays, as the node's store keeps a staged file per slot.
            done(None, None, ValueError(f"no staged snapshot {slot}"))
            return
        self.sim.staged[self.i] = None
        file = SimSnapshotFile.parse(slot, bytes(staged[1]))
        if file is None:
            done(None, None, ValueError(f"staged snapshot {slot} is incomplete or damaged"))
            return
        self.files[slot] = file
        done(file, file.body, None)

    def keep(self, slots: Collection[int]) -> None:
        files = self.files
        newest = max(files, default=0)
        for slot in [s for s in files if s not in slots and s != newest]:
            del files[slot]
