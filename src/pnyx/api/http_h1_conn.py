"""One HTTP/1.1 connection of `pnyx.api.http_h1`: its parser, its limits, its answers in order.

This module owns `Connection`, the `asyncio.Protocol` of one client connection:
the llhttp parser's callbacks (the request line, the three headers that matter,
the body up to `max_value`), the request limits of `pnyx.api.http_parse` and
what the parser refuses (answered in the JSON error shape after the answers
before it, then the connection is closed), keep-alive and pipelining (each
request gets a `Slot` in the connection's queue of answers, written from its
head, so answers leave in the order the requests came however they finish),
backpressure (reading stops while `max_inflight` requests wait at the node or
the client does not read), the idle and body timeouts the server's sweep
checks, and closing (a FIN after the last answer, then a short linger).

What a finished request becomes is not decided here: `Request` goes to
`pnyx.api.http_h1_routes.dispatch`. A streaming answer (`pnyx.api.http_h1_stream`,
`pnyx.api.backup.serve_h1`) runs as the connection's `sse` task and writes its
slot through `queue`, `_flush` and `_metric`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from pnyx.api.http_bytes import error_bytes
from pnyx.api.http_h1_routes import KV_LABEL, dispatch
from pnyx.api.http_parse import (
    COUNTED_METHODS,
    IDEMPOTENCY_HEADER,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_URL_BYTES,
)

if TYPE_CHECKING:
    from pnyx.api.http_h1 import H1Server
    from pnyx.api.http_h1_call import Call

log = logging.getLogger("pnyx.api.http")

_IDEMPOTENCY_LOWER: Final = IDEMPOTENCY_HEADER.lower().encode()
_CLOSE_GRACE: Final = 1.0  # how long a closing connection may take to send what is queued


class Slot:
    """A place in a connection's queue of answers: bytes to write, and whether it is done."""

    __slots__ = ("close", "data", "done")

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.done = False
        self.close = False


class Request:
    """One parsed request; what a handler reads."""

    __slots__ = ("head", "idempotency", "method", "path", "query", "slot", "started")

    def __init__(self, method: str, path: str, query: str, idempotency: list[str],
                 slot: Slot, head: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.idempotency = idempotency
        self.slot = slot
        self.head = head
        self.started = time.perf_counter()


class _Refused(Exception):
    """Raised from a parser callback: the request is over a limit; answer this and close."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Connection(asyncio.Protocol):
    """One client connection: its parser, the request being read, its queue of answers."""

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Slot] = deque()
        self.peer = "?"
        self.last_active = self.loop.time()
        # The request being read.
        self.url = bytearray()
        self.header_count = 0
        self.content_length: int | None = None
        self.expect_continue = False
        self.idempotency: list[str] = []
        self.body = bytearray()
        self.in_body = False
        self.headers_at = 0.0
        self.discard = False  # its body is over the limit: answered already, dropped
        self.waiting = 0  # requests at the node (their slots not done)
        # Those at a node with the callback API: the server's, so the sweep finds them
        # after their connection has gone too.
        self.calls: set[Call] = server.calls
        self.closing = False  # nothing more is read; close once the queue is written
        self.read_paused = False
        self.write_paused = False
        self.first = True
        self.eof_sent = False
        self.sse: asyncio.Task[None] | None = None

    # -- asyncio --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.conns.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # An answer is one write: send it now, not when the last one is acknowledged.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.transport = None
        if self.sse is not None:
            self.sse.cancel()
        # Requests still at the node run on (a write may be half way through Paxos) and
        # are bounded by their timeout; their answers are dropped.

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        pause = self.write_paused or self.waiting >= self.server.limits.max_inflight
        if pause and not self.read_paused:
            self.read_paused = True
            t.pause_reading()
        elif not pause and self.read_paused:
            self.read_paused = False
            t.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.first:
            self.first = False
            if data[:2] == b"\x16\x03":  # a TLS ClientHello: HTTPS to a plain port
                self._refuse(400, "bad_request", "TLS on a plain HTTP port: use http://, or "
                             "serve HTTPS with --cert-file and --key-file")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status, refused.code, refused.message)
            else:
                log.error("HTTP: error serving %s", self.peer, exc_info=refused or exc)
                self._refuse(500, "internal", "internal error; see the node's log")
        except httptools.HttpParserInvalidMethodError:
            self._refuse(501, "unknown_method", "unknown HTTP method")
        except httptools.HttpParserUpgrade:
            # The request before the upgrade has been answered; no protocol switch here.
            self.closing = True
            self._flush()
        except httptools.HttpParserError as exc:
            text = str(exc).strip().splitlines()
            self._refuse(400, "bad_request", (text[0] if text else "bad request")[:200])

    # -- the parser's callbacks --

    def on_message_begin(self) -> None:
        self.url.clear()
        self.header_count = 0
        self.content_length = None
        self.expect_continue = False
        self.idempotency = []
        self.body = bytearray()
        self.discard = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_URL_BYTES:
            raise _Refused(414, "url_too_long",
                           f"the request line is longer than {MAX_URL_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) + 2 > MAX_HEADER_BYTES:
            raise _Refused(431, "header_too_large",
                           f"a header is longer than {MAX_HEADER_BYTES} bytes")
        self.header_count += 1
        if self.header_count > MAX_HEADERS:
            raise _Refused(431, "header_too_large", f"more than {MAX_HEADERS} headers")
        # Only three headers matter here; their lengths sort out the rest cheaply.
        n = len(name)
        if n == 14 and name.lower() == b"content-length":
            value = value.strip()
            self.content_length = int(value) if value.isdigit() else None
        elif n == 15 and name.lower() == _IDEMPOTENCY_LOWER:
            self.idempotency.append(value.decode("latin-1"))
        elif n == 6 and name.lower() == b"expect":
            self.expect_continue = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self.in_body = True
        self.headers_at = self.loop.time()
        length = self.content_length
        expect = self.expect_continue
        if length is not None and length > self.server.max_value and \
                self.parser.get_method() == b"PUT":
            # Answered now, before a body nobody will read arrives; the rest is dropped.
            self.discard = True
            self._too_large()
        elif expect and self.transport is not None and not self.queue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.discard:
            return
        self.body += body
        if len(self.body) > self.server.max_value:
            self.discard = True
            self.body = bytearray()
            self._too_large()

    def _too_large(self) -> None:
        slot = self.new_slot()
        self.closing_after(slot)
        self.done(slot, error_bytes(413, "value_too_large",
                                     f"value is larger than {self.server.max_value} bytes",
                                     close=True))
        self._metric(KV_LABEL, "PUT", 413, time.perf_counter())

    def on_message_complete(self) -> None:
        self.in_body = False
        if self.discard:
            self.closing = True
            return
        self.last_active = self.loop.time()
        # The request is whole: it takes its place in the queue of answers and goes to its
        # route (one call less than a method of its own: this runs once per request).
        parser = self.parser
        slot = self.new_slot()
        if not parser.should_keep_alive():
            slot.close = True
            self.closing = True
        method = parser.get_method().decode("ascii", "replace")
        target = self.url.decode("utf-8", "surrogateescape")
        target = target.partition("#")[0]
        path, _, query = target.partition("?")
        dispatch(self, Request(method, path, query, self.idempotency, slot, method == "HEAD"))
        if self.waiting:
            self._update_reading()

    # -- answers, in order --

    def new_slot(self) -> Slot:
        slot = Slot()
        self.queue.append(slot)
        return slot

    def closing_after(self, slot: Slot) -> None:
        slot.close = True

    def done(self, slot: Slot, data: bytes) -> None:
        slot.data.append(data)
        slot.done = True
        if self.queue and self.queue[0] is slot:
            self._flush()

    def _flush(self) -> None:
        t = self.transport
        queue = self.queue
        while queue:
            head = queue[0]
            if head.data:
                if t is not None:
                    t.write(b"".join(head.data) if len(head.data) > 1 else head.data[0])
                head.data.clear()
            if not head.done:
                break
            queue.popleft()
            if head.close:
                self.closing = True
                queue.clear()
                break
        self.last_active = self.loop.time()
        if self.closing and not queue and t is not None and not self.eof_sent:
            self._linger(t)

    def _linger(self, t: asyncio.Transport) -> None:
        """Close after the answers: send our end's FIN and read (and drop) what the client
        still sends until it closes, for at most `_CLOSE_GRACE`. Closing a socket with
        unread input resets it, which can destroy an answer in flight (a 413 before its
        body, say)."""
        self.eof_sent = True
        if self.read_paused:
            self.read_paused = False
            t.resume_reading()
        try:
            half_close = t.can_write_eof()
        except NotImplementedError:  # a transport that does not say
            half_close = False
        if half_close:
            t.write_eof()
        else:  # TLS: no half-close
            t.close()
        self.loop.call_later(_CLOSE_GRACE, t.abort)

    def eof_received(self) -> bool:
        return False  # the client is done sending: close (after what is queued is sent)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """What the parser refused: answered after the answers before it, then closed."""
        log.debug("refused a request from %s: %s", self.peer, message)
        slot = self.new_slot()
        slot.close = True
        self.closing = True
        self.in_body = False
        self.done(slot, error_bytes(status, code, message, close=True))

    # -- time --

    def busy(self) -> bool:
        return bool(self.queue) and self.transport is not None

    def check_time(self, now: float, body_timeout: float, idle_timeout: float) -> None:
        t = self.transport
        if t is None or self.closing:
            return
        if self.in_body:
            if now - self.headers_at >= body_timeout:
                log.info("HTTP client %s: its request body did not arrive within %g s; "
                         "answered 408 and closing its connection", self.peer, body_timeout)
                self._refuse(408, "body_timeout",
                             f"the request body did not arrive within {body_timeout:g} s")
        elif not self.queue and now - self.last_active >= idle_timeout:
            self.closing = True
            t.close()
            self.loop.call_later(_CLOSE_GRACE, t.abort)

    def stop(self) -> None:
        """The server is stopping: a body still arriving is answered 503; an idle
        connection is closed; one with requests at the node closes after answering them."""
        if self.transport is None:
            return
        if self.in_body and not self.discard:
            self._refuse(503, "unavailable", "the node is stopping")
            return
        self.closing = True
        if not self.queue:
            self.transport.close()
        elif self.sse is not None:
            self.sse.cancel()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- requests --

    def _metric(self, label: str, method: str, status: int, started: float) -> None:
        self.server.record(label, method if method in COUNTED_METHODS else "other", status,
                           time.perf_counter() - started)

    def answer(self, request: Request, label: str, status: int, data: bytes) -> None:
        """`request`'s whole answer is `data`: counted, and written in its turn."""
        self._metric(label, request.method, status, request.started)
        self.done(request.slot, data)

    def finished_call(self) -> None:
        """A request at the node has its outcome: one more may be read."""
        self.server.admission.leave()
        self.waiting -= 1
        if self.read_paused:
            self._update_reading()
