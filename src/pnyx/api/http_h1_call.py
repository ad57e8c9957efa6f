"""A request of the httptools server at the node: asked, retried, and answered from its outcome.

This module owns `start_call` (admission control: past `max_pending`, 503
`overloaded` at once) and `Call`, one request at the node, retried by the rule
of `pnyx.api.http_outcome` (while a write's outcome is unknown, or while
another attempt may mend a read; always the same bytes; until the request
timeout) and turned into its answer's bytes: the success of a write, a read or
a listing, the machine's refusal, or the failed outcome as `HTTP_FAILURES`
says. A node with the callback API (`submit_nowait`, `read_nowait`) costs no
task per request; one without is awaited in a task (`_run`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pnyx.api.http_bytes import error_bytes, response_bytes
from pnyx.api.http_outcome import (
    RETRY_FIRST_DELAY,
    RETRY_MAX_DELAY,
    answer_now,
    failure_error,
    overloaded_error,
    result_error,
)
from pnyx.protocol.multipaxos import Code, Outcome, ReadMode
from pnyx.statemachine import kv

if TYPE_CHECKING:
    from pnyx.api.http_h1_conn import Connection, Request

log = logging.getLogger("pnyx.api.http")


def start_call(conn: Connection, request: Request, label: str, *, write: bool, encoded: bytes,
               mode: ReadMode, key: str | None) -> None:
    """Ask the node (`encoded` a command if `write`, else a query read at `mode`); the
    answer goes to `request`'s slot, counted under `label`."""
    server = conn.server
    if not server.admission.try_enter():
        raise overloaded_error(server.admission, write)
    conn.waiting += 1
    Call(conn, request, label, write, encoded, mode, key).attempt()


class Call:
    """One request at the node, retried as `pnyx.api.http._Handlers._until_done` retries
    it (`http_outcome.answer_now`), with the same bytes, until the request timeout; a
    node with the callback API calls `done`, the server's sweep `hung`."""

    __slots__ = ("attempts", "conn", "deadline", "delay", "encoded", "give_up_at", "guard",
                 "key", "label", "mode", "over", "request", "task", "unknown", "write")

    def __init__(self, conn: Connection, request: Request, label: str, write: bool,
                 encoded: bytes, mode: ReadMode, key: str | None) -> None:
        self.conn = conn
        self.request = request
        self.label = label
        self.write = write
        self.encoded = encoded
        self.mode = mode
        self.key = key
        self.deadline = conn.loop.time() + conn.server.request_timeout
        self.delay = RETRY_FIRST_DELAY
        self.attempts = 0
        self.guard: asyncio.TimerHandle | None = None
        self.give_up_at = 0.0
        self.task: asyncio.Task[None] | None = None  # a coroutine node's attempt
        self.over = False
        self.unknown = False  # an earlier attempt's outcome was unknown: the write may apply

    def attempt(self) -> None:
        conn = self.conn
        server = conn.server
        node: Any = server.node
        self.attempts += 1
        n = self.attempts
        remaining = max(self.deadline - conn.loop.time(), 0.0)
        done = functools.partial(self.done, n)
        try:
            if server.fast:
                if self.write:
                    node.submit_nowait(self.encoded, done, timeout=remaining)
                else:
                    node.read_nowait(self.encoded, self.mode, done, timeout=remaining)
            else:
                coro = (node.submit(self.encoded, timeout=remaining) if self.write
                        else node.read(self.encoded, self.mode, timeout=remaining))
                self.task = conn.loop.create_task(_run(coro, done))
        except Exception as exc:
            log.exception("HTTP: the node refused a request")
            self.done(n, Outcome.failed(Code.INTERNAL, f"{type(exc).__name__}; see the log"))
            return
        if not self.over and self.attempts == n:
            give_up_at = conn.loop.time() + remaining + server.node_grace
            if server.fast:
                # The node answers by the timeout; the server's sweep catches one that
                # does not (no timer per request on the hot path).
                self.give_up_at = give_up_at
                conn.calls.add(self)
            else:
                self.guard = conn.loop.call_at(give_up_at, self.hung, n)

    def hung(self, n: int) -> None:
        self.guard = None
        self.conn.calls.discard(self)
        if self.task is not None:
            self.task.cancel()  # as `wait_for` does in `pnyx.api.http`
            self.task = None
        self.done(n, Outcome.failed(Code.NO_LEADER, "the node did not answer in time",
                                    unknown=True))

    def done(self, n: int, outcome: Outcome) -> None:
        if self.over or n != self.attempts:
            return  # an attempt given up on: its answer is not wanted
        if self.guard is not None:
            self.guard.cancel()
            self.guard = None
        conn = self.conn
        conn.calls.discard(self)
        if outcome.ok:
            self._finish(*self._success(outcome))
            return
        self.unknown = self.unknown or outcome.unknown
        if answer_now(outcome, self.write) or conn.loop.time() + self.delay >= self.deadline:
            self._finish(*self._failure(outcome))
            return
        conn.loop.call_later(self.delay, self.attempt)
        self.delay = min(self.delay * 2, RETRY_MAX_DELAY)

    def _finish(self, status: int, data: bytes) -> None:
        self.over = True
        conn = self.conn
        conn.finished_call()
        conn.answer(self.request, self.label, status, data)

    def _failure(self, outcome: Outcome) -> tuple[int, bytes]:
        exc = failure_error(outcome, self.write, self.unknown, self.conn.server.node)
        return exc.status, error_bytes(exc.status, exc.code, exc.message, headers=exc.headers,
                                       extra=exc.extra, close=self.request.slot.close,
                                       head_only=self.request.head)

    def _success(self, outcome: Outcome) -> tuple[int, bytes]:
        request = self.request
        close = request.slot.close
        try:
            result = kv.decode_result(outcome.result)
        except kv.MalformedResult as exc:
            return 500, error_bytes(500, "internal", f"the node returned a bad result: {exc}",
                                    close=close)
        stale = self.mode == "stale" and not self.write
        headers = {"X-Pnyx-Applied-Index": str(outcome.index)} if stale else {}
        if self.write:
            if isinstance(result, kv.Ok):
                body = b'{"index": %d}' % result.index
                return 200, (b"HTTP/1.1 200 OK\r\nContent-Type: application/json; "
                             b"charset=utf-8\r\nX-Pnyx-Index: %d\r\n%sContent-Length: %d"
                             b"\r\n\r\n%s" % (result.index,
                                                b"Connection: close\r\n" if close else b"",
                                                len(body), body))
        elif self.key is None:
            if isinstance(result, kv.KeyList):
                body = json.dumps({
                    "keys": [{"key": k, "index": i} for k, i in result.items],
                    "more": result.more,
                    "next": result.items[-1][0] if result.more and result.items else None,
                }).encode()
                return 200, response_bytes(200, body, headers=headers, close=close)
        elif isinstance(result, kv.Ok):
            headers["X-Pnyx-Index"] = str(result.index)
            return 200, response_bytes(200, result.value or b"", b"application/octet-stream",
                                       headers=headers, close=close, head_only=request.head)
        given = request.idempotency
        exc = result_error(result, self.key or "", given[0] if given else "")
        exc.headers.update(headers)
        return exc.status, error_bytes(exc.status, exc.code, exc.message, headers=exc.headers,
                                       extra=exc.extra, close=close)


async def _run(coro: Any, done: Callable[[Outcome], None]) -> None:
    """A node without the callback API: its coroutine, its outcome to `done`."""
    try:
        outcome = await coro
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("HTTP: the node failed a request")
        outcome = Outcome.failed(Code.INTERNAL, f"{type(exc).__name__}; see the node's log")
    done(outcome)
