"""The simulated ports a driver runs on in the cluster simulator: clock, disk, network.

This module owns `SimClock` (virtual time; a crash of the node cancels its
timers), `SimDisk` (a write is durable one fsync after the disk is free, and a
crash before then loses it) and `SimNetwork` (sends through the seeded
network). Each is the simulator's side of a port in `pnyx.node.ports`; the
engine they call into is `pnyx.sim.cluster.ClusterSim`.
"""

from __future__ import annotations

from collections.abc import Callable
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
        if sim.trace:
            sim.trace.emit(sim.now, "durable", node=self.i, records=len(records))
        done(None)


class SimNetwork:
    def __init__(self, sim: ClusterSim, i: int) -> None:
        self.sim = sim
        self.i = i

    def send(self, dst: int, message: LogMessage) -> None:
        self.sim.send(self.i, dst, message)
