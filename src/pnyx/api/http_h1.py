"""The HTTP API's server: HTTP/1.1 on `httptools` (llhttp, C), one protocol object per connection.

This module owns `H1Server`, which `serve_http` runs: the same routes, status
codes, headers and JSON error bodies as the aiohttp application of
`pnyx.api.http.make_app` (both are held to one contract by
tests/test_api_http.py, which runs every spec against each), with keep-alive
and pipelining (answers leave in the order the requests came), the limits of
`pnyx.api.limits` and `pnyx.api.http_parse`, and admission control.

**Why not aiohttp.** Measured on the 3-node cluster with `wrk` (bench/http_wrk.py,
bench/results/2026-12-03-perf/), aiohttp spends most of a write's CPU on the
request and response objects, the router, the middleware and a task per
request. Here a request costs one llhttp parse, a few callbacks, and, on a
node with the callback API (`submit_nowait`, as `pnyx.node.Node` has), no
task, future or coroutine at all: the node calls back and the answer's bytes
are written at once. aiohttp's application stays for embedding
(`make_app`) and behind `PNYX_HTTP_SERVER=aiohttp`.

**Per connection.** Requests are parsed as they arrive; each gets a place in
the connection's queue of answers, filled when its outcome is known, and the
queue is written from its head, so pipelined requests are answered in order
however they finish. A connection stops being read while `max_inflight` of
its requests are waiting or the client is not reading its answers (TCP
backpressure). What the parser refuses (a bad request line, a conflicting
`Content-Length`, a URL or header over the limits, an unknown method, TLS on
a plain port) is answered in the JSON error shape after the answers before
it, and the connection is closed.

**Time.** A server-wide sweep (every `ClientLimits.sweep_every`) answers 408
`body_timeout` to a body that has not arrived within the body timeout and
closes connections idle for the idle timeout (nothing waiting, nothing being
read: a half-sent request head is idle). A request at the node is retried
as `pnyx.api.http` retries it (only while its outcome is unknown, with the
same bytes) until the request timeout; a node that never answers is answered
503 `unavailable` after the timeout plus a grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import secrets
import socket
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import parse_qsl

import httptools

from pnyx.api.http_errors import HTTP_FAILURES, RETRY_AFTER_SECONDS, ApiError
from pnyx.api.http_parse import (
    GET_PARAMS,
    IDEMPOTENCY_HEADER,
    LIST_PARAMS,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_URL_BYTES,
    WRITE_PARAMS,
    idempotency_key_of,
    int_param,
    key_from_path,
    params_from_query,
    parse_conditions,
    parse_consistency,
    text_param,
)
from pnyx.api.limits import Admission, ClientLimits, Refusal, admission_for
from pnyx.api.node_api import leader_hint
from pnyx.protocol.multipaxos import Code, Outcome, ReadMode
from pnyx.statemachine import kv

if TYPE_CHECKING:
    from pnyx.api.node_api import NodeAPI

log = logging.getLogger("pnyx.api.http")

_IDEMPOTENCY_LOWER: Final = IDEMPOTENCY_HEADER.lower().encode()
_METHODS: Final = frozenset({"GET", "PUT", "DELETE", "POST", "HEAD", "OPTIONS", "PATCH"})
_RETRY_FIRST_DELAY: Final = 0.01
_RETRY_MAX_DELAY: Final = 0.2
_JSON: Final = b"application/json; charset=utf-8"
_CLOSE_GRACE: Final = 1.0  # how long a closing connection may take to send what is queued

# The routes: path -> (route label for the metrics, the methods it takes).
_KV_LABEL: Final = "/v1/kv/{key}"
_FIXED: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "/v1/kv": ("/v1/kv", ("GET",)),
    "/v1/status": ("/v1/status", ("GET",)),
    "/metrics": ("/metrics", ("GET",)),
    "/v1/log": ("/v1/log", ("GET",)),
    "/ui": ("/ui", ("GET",)),
    "/ui/events": ("/ui/events", ("GET",)),
    "/v1/snapshot": ("/v1/snapshot", ("GET",)),  # pnyx.api.backup
}
_KV_METHODS: Final = ("DELETE", "GET", "PUT")


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


_REASONS: Final = {s.value: _reason(s.value) for s in HTTPStatus}


def response_bytes(status: int, body: bytes, content_type: bytes = _JSON, *,
                   headers: dict[str, str] | None = None, close: bool = False,
                   head_only: bool = False) -> bytes:
    """One whole HTTP/1.1 answer."""
    out = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n" % (
        status, _REASONS.get(status) or _reason(status), content_type)]
    if headers:
        for name, value in headers.items():
            out.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    if close:
        out.append(b"Connection: close\r\n")
    out.append(b"Content-Length: %d\r\n\r\n" % len(body))
    if not head_only:
        out.append(body)
    return b"".join(out)


def error_bytes(status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                extra: dict[str, Any] | None = None, close: bool = False,
                head_only: bool = False) -> bytes:
    """An error in the API's shape: `{"error": {"code": ..., "message": ...}}` (as
    `http_errors.error_response` writes it: the same `json.dumps`)."""
    body = json.dumps({"error": {"code": code, "message": message, **(extra or {})}}).encode()
    return response_bytes(status, body, headers=headers, close=close, head_only=head_only)


class _Slot:
    """A place in a connection's queue of answers: bytes to write, and whether it is done."""

    __slots__ = ("close", "data", "done")

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.done = False
        self.close = False


class _Stopping(Exception):
    """The server is stopping."""


class _Refused(Exception):
    """Raised from a parser callback: the request is over a limit; answer this and close."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class H1Server:
    """The HTTP API of one node on one port; `await start(host, port, ssl)`, then `cleanup()`."""

    def __init__(self, node: NodeAPI, *, max_value: int, request_timeout: float,
                 limits: ClientLimits, shutdown_timeout: float,
                 admission: Admission | None = None) -> None:
        from pnyx.api import http as http_module  # the grace tests patch lives there

        self.node = node
        self.max_value = max_value
        self.request_timeout = request_timeout
        self.limits = limits
        self.shutdown_timeout = shutdown_timeout
        self.admission = admission if admission is not None else admission_for(
            node, limits.max_pending)
        self._http = http_module
        self.metrics = node.metrics
        self.fast = hasattr(node, "submit_nowait") and hasattr(node, "read_nowait")
        self.conns: set[_Connection] = set()
        self.calls: set[_Call] = set()  # requests at a node with the callback API
        self.listener: asyncio.Server | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stopping = False
        self.live_stop = asyncio.Event()
        self.refused = 0
        self.refusal = _refusal(limits)
        # Keys for writes without an Idempotency-Key: unique per server and request, and
        # cheaper than a uuid4 per request (no system call).
        self._fresh_prefix = secrets.token_hex(8)
        self._fresh = itertools.count(1)
        self.loop = asyncio.get_running_loop()
        self._page: str | None = None
        # (route, method, status) -> the metrics' recorder: the label sets are few (fixed
        # routes, known methods, statuses the server answers), the lookups many.
        self.recorders: dict[tuple[str, str, int], Callable[[float], None]] = {}

    def record(self, label: str, method: str, status: int, seconds: float) -> None:
        key = (label, method, status)
        recorder = self.recorders.get(key)
        if recorder is None:
            make = getattr(self.metrics, "request_recorder", None)
            if make is None:  # a node's own metrics without it: the plain call
                self.metrics.request(label, method, status, seconds)
                return
            recorder = self.recorders[key] = make(label, method, status)
        recorder(seconds)

    @property
    def server(self) -> H1Server:
        """The protocol factory, as aiohttp's `runner.server` is (fuzz/fuzz_http.py makes
        connections in memory with it)."""
        return self

    def fresh_key(self) -> str:
        return f"{self._fresh_prefix}{next(self._fresh):x}"

    def __call__(self) -> asyncio.Protocol:
        if len(self.conns) >= self.limits.max_connections or self.stopping:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.warning("HTTP: %d connections refused so far (at most %d at once; "
                            "--max-connections)", self.refused, self.limits.max_connections)
            return Refusal(self.refusal)
        return _Connection(self)

    async def start(self, host: str, port: int, ssl: ssl_module.SSLContext | None) -> int:
        self.listener = await self.loop.create_server(
            self, host, port, ssl=ssl, reuse_address=True,
            ssl_handshake_timeout=self.limits.body_timeout if ssl is not None else None)
        self.timer = self.loop.call_later(self.limits.sweep_every, self.sweep)
        return int(self.listener.sockets[0].getsockname()[1])

    def sweep(self) -> None:
        self.timer = None
        now = self.loop.time()
        limits = self.limits
        for call in [c for c in self.calls if c.give_up_at <= now]:
            call.hung(call.attempts)
        for conn in list(self.conns):
            conn.check_time(now, limits.body_timeout, limits.idle_timeout)
        if not self.stopping:
            self.timer = self.loop.call_later(limits.sweep_every, self.sweep)

    async def cleanup(self) -> None:
        """Stop: refuse new connections, answer 503 to bodies still arriving, wait up to
        the shutdown timeout for requests at the node, then close every connection."""
        if self.stopping:
            return
        self.stopping = True
        self.live_stop.set()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.listener is not None:
            self.listener.close()
        for conn in list(self.conns):
            conn.stop()
        deadline = self.loop.time() + self.shutdown_timeout
        while any(c.busy() for c in self.conns) and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.conns):
            conn.abort()
        if self.listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.listener.wait_closed(), 1.0)

    def page(self) -> str:
        if self._page is None:
            self._page = (resources.files("pnyx.viz") / "live.html").read_text(
                encoding="utf-8")
        return self._page

    @property
    def node_grace(self) -> float:
        return float(self._http._NODE_GRACE)


def _refusal(limits: ClientLimits) -> bytes:
    body = (b'{"error": {"code": "too_many_connections", "message": "too many connections '
            b'to this node (at most %d); try another node or later"}}' % limits.max_connections)
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: %d\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            % (RETRY_AFTER_SECONDS, len(body))) + body


class _Request:
    """One parsed request; what a handler reads."""

    __slots__ = ("head", "idempotency", "method", "path", "query", "slot", "started")

    def __init__(self, method: str, path: str, query: str, idempotency: list[str],
                 slot: _Slot, head: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.idempotency = idempotency
        self.slot = slot
        self.head = head
        self.started = time.perf_counter()


class _Connection(asyncio.Protocol):
    """One client connection: its parser, the request being read, its queue of answers."""

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Slot] = deque()
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
        self.calls: set[_Call] = server.calls
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
        slot = self._slot()
        self.closing_after(slot)
        self._done(slot, error_bytes(413, "value_too_large",
                                     f"value is larger than {self.server.max_value} bytes",
                                     close=True))
        self._metric("/v1/kv/{key}", "PUT", 413, time.perf_counter())

    def on_message_complete(self) -> None:
        self.in_body = False
        if self.discard:
            self.closing = True
            return
        self.last_active = self.loop.time()
        self._dispatch()

    # -- answers, in order --

    def _slot(self) -> _Slot:
        slot = _Slot()
        self.queue.append(slot)
        return slot

    def closing_after(self, slot: _Slot) -> None:
        slot.close = True

    def _done(self, slot: _Slot, data: bytes) -> None:
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
        slot = self._slot()
        slot.close = True
        self.closing = True
        self.in_body = False
        self._done(slot, error_bytes(status, code, message, close=True))

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
        self.server.record(label, method if method in _METHODS else "other", status,
                           time.perf_counter() - started)

    def _dispatch(self) -> None:
        parser = self.parser
        slot = self._slot()
        if not parser.should_keep_alive():
            slot.close = True
            self.closing = True
        method = parser.get_method().decode("ascii", "replace")
        target = self.url.decode("utf-8", "surrogateescape")
        target = target.partition("#")[0]
        path, _, query = target.partition("?")
        request = _Request(method, path, query, self.idempotency, slot, method == "HEAD")
        label = "unmatched"
        try:
            if path.startswith("/v1/kv/"):
                label = _KV_LABEL
                self._kv(request)
            else:
                route = _FIXED.get(path)
                if route is None:
                    raise ApiError(404, "no_route", "Not Found")
                label, methods = route
                if method not in methods:
                    self._method_not_allowed(request, methods, label)
                    return
                self._fixed(request, path)
        except ApiError as exc:
            self._answer_error(request, exc, label)
        except Exception:
            log.exception("unhandled error serving %s %s", method, path)
            self._answer(request, label, 500, error_bytes(
                500, "internal", "internal error; see the node's log", head_only=request.head))
        if self.waiting:
            self._update_reading()

    def _answer(self, request: _Request, label: str, status: int, data: bytes) -> None:
        self._metric(label, request.method, status, request.started)
        self._done(request.slot, data)

    def _answer_error(self, request: _Request, exc: ApiError, label: str) -> None:
        if exc.close:
            request.slot.close = True
            self.closing = True
        self._answer(request, label, exc.status, error_bytes(
            exc.status, exc.code, exc.message, headers=exc.headers, extra=exc.extra,
            close=exc.close or request.slot.close, head_only=request.head))

    def _method_not_allowed(self, request: _Request, methods: tuple[str, ...],
                            label: str) -> None:
        self._answer(request, label, 405, error_bytes(
            405, "method_not_allowed", "Method Not Allowed",
            headers={"Allow": ",".join(methods)}, close=request.slot.close,
            head_only=request.head))

    def _kv(self, request: _Request) -> None:
        method = request.method
        if method == "PUT":
            key = key_from_path(request.path)
            conditions = parse_conditions(params_from_query(request.query, WRITE_PARAMS))
            self._write(request, kv.Put(key, bytes(self.body), **conditions), key)
        elif method == "GET":
            if request.path == "/v1/kv/":
                self._list(request, _KV_LABEL)
                return
            key = key_from_path(request.path)
            mode = parse_consistency(params_from_query(request.query, GET_PARAMS))
            self._call(request, _KV_LABEL, write=False, encoded=kv.encode_query(key),
                       mode=mode, key=key)
        elif method == "DELETE":
            key = key_from_path(request.path)
            conditions = parse_conditions(params_from_query(request.query, WRITE_PARAMS))
            self._write(request, kv.Delete(key, **conditions), key)
        else:
            self._method_not_allowed(request, _KV_METHODS, _KV_LABEL)

    def _fixed(self, request: _Request, path: str) -> None:
        node = self.server.node
        if path == "/v1/kv":
            self._list(request, "/v1/kv")
        elif path == "/v1/status":
            params_from_query(request.query, frozenset())
            self._answer(request, path, 200, response_bytes(
                200, json.dumps(node.status()).encode(), close=request.slot.close,
                head_only=request.head))
        elif path == "/metrics":
            params_from_query(request.query, frozenset())
            self._answer(request, path, 200, response_bytes(
                200, node.metrics.render(), node.metrics.content_type.encode(),
                close=request.slot.close, head_only=request.head))
        elif path == "/v1/log":
            recent_log = getattr(node, "recent_log", None)
            if recent_log is None:
                raise ApiError(404, "no_log", "this node runs without consensus: it has no log")
            from pnyx.viz.live import DEFAULT_RECENT

            given = dict(parse_qsl(request.query, keep_blank_values=True))
            text = given.get("recent", str(DEFAULT_RECENT))
            if not text.isdigit() or len(text) > 6:
                raise ApiError(400, "bad_param",
                               f"recent must be a number of slots, not {text!r}")
            self._answer(request, path, 200, response_bytes(
                200, json.dumps(recent_log(int(text))).encode(),
                headers={"Access-Control-Allow-Origin": "*"}, close=request.slot.close))
        elif path == "/ui":
            self._answer(request, path, 200, response_bytes(
                200, self.server.page().encode(), b"text/html; charset=utf-8",
                headers={"Cache-Control": "no-cache"}, close=request.slot.close))
        elif path == "/v1/snapshot":  # streamed by pnyx.api.backup, as the events are
            from pnyx.api.backup import serve_h1

            self.sse = self.loop.create_task(serve_h1(self, request))
        else:  # /ui/events
            self._metric(path, request.method, 200, request.started)
            self.sse = self.loop.create_task(self._events(request.slot))

    async def _events(self, slot: _Slot) -> None:
        """The live view's server-sent events, chunked, until the client or the server goes."""
        from pnyx.viz.live import INTERVAL, sample

        slot.data.append(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")

        def chunk(data: bytes) -> None:
            slot.data.append(b"%x\r\n%s\r\n" % (len(data), data))
            if self.queue and self.queue[0] is slot:
                self._flush()

        stop = self.server.live_stop
        try:
            chunk(b"retry: 1000\n\n")  # reconnect within a second
            while not stop.is_set() and self.transport is not None:
                data = json.dumps(sample(self.server.node), separators=(",", ":"))
                chunk(f"data: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), INTERVAL)
        finally:
            self.sse = None
            slot.data.append(b"0\r\n\r\n")
            slot.done = True
            slot.close = slot.close or self.server.stopping
            if self.queue and self.queue[0] is slot:
                self._flush()

    def _list(self, request: _Request, label: str) -> None:
        params = params_from_query(request.query, LIST_PARAMS)
        prefix = text_param(params, "prefix")
        after = text_param(params, "after")
        limit = int_param(params, "limit", kv.DEFAULT_KEYS_LIMIT, 1, kv.MAX_KEYS_LIMIT)
        assert limit is not None
        mode = parse_consistency(params)
        self._call(request, label, write=False,
                   encoded=kv.encode_keys_query(prefix, after, limit), mode=mode, key=None)

    def _write(self, request: _Request, command: kv.Put | kv.Delete, key: str) -> None:
        server = self.server
        envelope = kv.IdempotentRequest(idempotency_key_of(request.idempotency,
                                                           server.fresh_key()), command)
        encoded = kv.encode_request(envelope)
        if command.prev_value is not None or command.prev_index is not None \
                or command.prev_exist is not None:
            try:
                # Rules only (contradictory conditions): the key was checked when parsed,
                # the size on the value, and the node enforces its own limit.
                kv.validate(encoded, limit=len(encoded))
            except kv.CommandError as exc:
                raise ApiError(400, "invalid", exc.message) from None
        self._call(request, _KV_LABEL, write=True, encoded=encoded, mode="linearizable",
                   key=key)

    def _call(self, request: _Request, label: str, *, write: bool, encoded: bytes,
              mode: ReadMode, key: str | None) -> None:
        server = self.server
        if not server.admission.try_enter():
            # Refused before the node saw it: a write is certainly not applied.
            raise ApiError(503, "overloaded", "this node has as many requests in flight as "
                           f"it takes ({server.admission.limit}); retry after a pause",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                           extra={"unknown": False} if write else None)
        self.waiting += 1
        _Call(self, request, label, write, encoded, mode, key).attempt()

    def finished_call(self) -> None:
        self.server.admission.leave()
        self.waiting -= 1
        if self.read_paused:
            self._update_reading()


class _Call:
    """One request at the node, retried as `pnyx.api.http._Handlers._until_done` retries:
    while its outcome is unknown (a write) or another attempt may mend it (a read), with
    the same bytes, until the request timeout."""

    __slots__ = ("attempts", "conn", "deadline", "delay", "encoded", "give_up_at", "guard",
                 "key", "label", "mode", "over", "request", "task", "unknown", "write")

    def __init__(self, conn: _Connection, request: _Request, label: str, write: bool,
                 encoded: bytes, mode: ReadMode, key: str | None) -> None:
        self.conn = conn
        self.request = request
        self.label = label
        self.write = write
        self.encoded = encoded
        self.mode = mode
        self.key = key
        self.deadline = conn.loop.time() + conn.server.request_timeout
        self.delay = _RETRY_FIRST_DELAY
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
        # Refused for the request itself, a member cut off (the client should go elsewhere
        # now), or a write that never reached the log (a retry would be a second attempt,
        # not a resubmission): answered now.
        if not outcome.code.retryable or outcome.code is Code.CUT_OFF \
                or (self.write and not outcome.unknown) \
                or conn.loop.time() + self.delay >= self.deadline:
            self._finish(*self._failure(outcome))
            return
        conn.loop.call_later(self.delay, self.attempt)
        self.delay = min(self.delay * 2, _RETRY_MAX_DELAY)

    def _finish(self, status: int, data: bytes) -> None:
        self.over = True
        conn = self.conn
        conn.finished_call()
        conn._answer(self.request, self.label, status, data)

    def _failure(self, outcome: Outcome) -> tuple[int, bytes]:
        failure = HTTP_FAILURES[outcome.code]
        message = outcome.error or "no quorum or no leader in time"
        extra: dict[str, Any] = (leader_hint(self.conn.server.node)
                                 if outcome.code is Code.CUT_OFF else {})
        unknown = self.unknown or outcome.unknown
        if failure.retry_after and self.write:
            extra["unknown"] = unknown
            if unknown:
                message += (" (the write may still take effect; retry with the same "
                            "Idempotency-Key)")
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if failure.retry_after else {}
        return failure.status, error_bytes(failure.status, failure.code, message,
                                           headers=headers, extra=extra,
                                           close=self.request.slot.close,
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
        exc = _result_error(result, self.key or "", request.idempotency)
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


def _result_error(result: kv.Result, key: str, given: list[str]) -> ApiError:
    """The machine's refusal as the API answers it (as `pnyx.api.http` does)."""
    if isinstance(result, kv.NotFound):
        return ApiError(404, "not_found", f"key {key!r} does not exist")
    if isinstance(result, kv.PreconditionFailed):
        return ApiError(412, "precondition_failed",
                        f"precondition failed: the key is at index {result.current_index}",
                        headers={"X-Pnyx-Index": str(result.current_index)},
                        extra={"index": result.current_index})
    if isinstance(result, kv.Error):
        if result.code == kv.ErrorCode.TOO_LARGE:
            return ApiError(413, "value_too_large", result.message)
        if result.code == kv.ErrorCode.REUSED:
            return ApiError(409, "idempotency_key_reused",
                            f"{IDEMPOTENCY_HEADER} {(given[0] if given else '')!r} was "
                            "already used for a different command")
        return ApiError(400, "invalid", result.message)
    return ApiError(500, "internal", f"unexpected result {type(result).__name__}")
