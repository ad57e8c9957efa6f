"""The ports a `Driver` runs a replica against: a clock, a disk and a network.

The driver (`pnyx.node.driver`) obeys what the replica asks for through these
three, and nothing else. The node plugs in asyncio's event loop, SQLite and TCP
(`pnyx.node.runtime`); the simulator plugs in virtual time, simulated disks
that lose what was not yet durable when their node crashes, and the seeded
simulated network (`pnyx.sim.cluster`). So the code that serves real clients —
requests, deadlines, gathering, group commit, persist-before-send — is the code
the simulator checks.

`Clock` has the names of asyncio's event loop, so the node passes its loop as
the clock with no adapter in the way of the hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

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
