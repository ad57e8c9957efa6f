"""A client request at a driver: its attempts, its one deadline, the outcomes it may end with.

The driver (`pnyx.node.driver`) owns the machinery around it — the ids of
attempts, the deadline buckets, the retry pause — and `Request` is the state
one request carries through it, with no task, future or timer of its own.

What "shutting down" means, here and in `DirectNode` alike: a request that a
stopping node never handed to the replica never reached the log, so it failed
for certain (`unknown=False`); a command the replica already had may still be
chosen by the others, so its outcome is unknown (`unknown=True`); a read changes
nothing, so it is never unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pnyx.protocol.multipaxos import Code, LogReady, Outcome, ReadMode

if TYPE_CHECKING:
    from pnyx.node.driver import Driver

log = logging.getLogger("pnyx.node")

RETRY_PAUSE = 0.02  # between attempts of one request, seconds
DEADLINE_TICK = 0.05  # how late, at most, a request gives up after its deadline, seconds
NO_QUORUM = Outcome.failed(Code.NO_LEADER, "no quorum or no leader within the request timeout",
                           unknown=True)
SHUTTING_DOWN = Outcome.failed(Code.SHUTTING_DOWN, "the node is shutting down")
"""A request the stopping node never handed to the replica: it never reached the log."""
SHUTTING_DOWN_UNKNOWN = Outcome.failed(
    Code.SHUTTING_DOWN, "the node is shutting down; the command may still be chosen",
    unknown=True)
"""A command the replica had when its node stopped: it may yet be chosen."""


class Request:
    """One client request at the driver: its attempts so far and its one deadline.

    A read is attempted again (after `RETRY_PAUSE`) whenever an attempt fails,
    until the deadline; a command only when the failure says it was refused
    (never when its outcome is unknown). `done` hears the outcome exactly once.
    """

    __slots__ = ("attempt", "bucket", "command", "deadline", "done", "finished", "last",
                 "mode", "node", "retry_handle", "retry_unknown", "rid", "started")

    def __init__(self, node: Driver, attempt: Callable[[int], LogReady | None] | None,
                 done: Callable[[Outcome], None], deadline: float,
                 retry_unknown: bool, command: bytes | None = None,
                 mode: ReadMode | None = None) -> None:
        self.node = node
        # With `attempt` None, the driver makes each attempt itself (the fast path of
        # every write and read): `command` is a command to propose, or with `mode` the
        # query of a read. Otherwise `attempt` makes one more attempt.
        self.attempt = attempt
        self.command = command
        self.mode = mode
        self.done = done
        self.deadline = deadline
        self.retry_unknown = retry_unknown
        self.rid: int | None = None  # the id of the attempt at the replica, if any
        self.retry_handle: Any = None
        self.last: Outcome | None = None  # the last attempt's failure
        self.finished = False
        self.started = 0.0
        self.bucket = 0

    def cancel(self) -> None:
        """The caller gave up: forget the request; `done` is not called."""
        if not self.finished:
            self.finished = True
            self.node._forget(self)
            self.node._drop_deadline(self)

    def finish(self, outcome: Outcome) -> None:
        if not self.finished:
            self.finished = True
            self.node._drop_deadline(self)
            try:
                self.done(outcome)
            except Exception:
                # The caller's bug must not cost the other requests answered with it.
                log.exception("a request's done callback failed")

    def gave_up(self) -> Outcome:
        """The outcome of a request whose deadline passed, from its last failure."""
        last = self.last or NO_QUORUM
        unknown = last.unknown or last.code is Code.ABORTED
        return Outcome.failed(last.code, f"unavailable: {last.error}", unknown=unknown)

    def shut_down(self, handed: bool) -> Outcome:
        """The outcome of a request its stopping node still held; `handed` says its
        current attempt reached the replica. A read changes nothing, so it is never
        unknown (reads are the requests retried on an unknown outcome)."""
        return SHUTTING_DOWN_UNKNOWN if handed and not self.retry_unknown else SHUTTING_DOWN
