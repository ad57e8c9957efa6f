"""The HTTP API's server: HTTP/1.1 on `httptools` (llhttp, C); this module starts and stops it.

This module owns `H1Server`, which `pnyx.api.http.serve_http` runs: the
listening socket and the connection cap (past `max_connections`, a 503
`too_many_connections` and close), the server-wide sweep (every
`ClientLimits.sweep_every`: 408 `body_timeout` to a body that has not arrived
within the body timeout, closing connections idle for the idle timeout, 503
`unavailable` to a request the node never answered within the request timeout
plus a grace), the stop (refuse new connections, 503 to bodies still
arriving, wait up to the shutdown timeout for requests at the node, then close
every connection), and what every connection shares (the node, the limits,
admission control, the metrics' recorders, fresh idempotency keys).

It serves the same routes, status codes, headers and JSON error bodies as the
aiohttp application of `pnyx.api.http.make_app` (tests/test_api_http.py runs
every spec against each). Its parts:

- `pnyx.api.http_h1_conn`: one connection: the parser's callbacks and limits,
  keep-alive and pipelining (answers leave in the order the requests came),
  backpressure, timeouts, closing;
- `pnyx.api.http_h1_routes`: the route table (add a route there) and the
  handlers that answer at once;
- `pnyx.api.http_h1_call`: a request at the node, retried, and its answer;
- `pnyx.api.http_h1_stream`: the streamed answers (live events, the snapshot);
- `pnyx.api.http_bytes`: an answer as bytes, the error shape's included.

**Why not aiohttp.** Measured on the 3-node cluster with `wrk` (bench/http_wrk.py,
bench/results/2026-12-03-perf/), aiohttp spends most of a write's CPU on the
request and response objects, the router, the middleware and a task per
request. Here a request costs one llhttp parse, a few callbacks, and, on a
node with the callback API (`submit_nowait`, as `pnyx.node.Node` has), no
task, future or coroutine at all: the node calls back and the answer's bytes
are written at once. aiohttp's application stays for embedding
(`make_app`) and behind `PNYX_HTTP_SERVER=aiohttp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import ssl as ssl_module
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING

from pnyx.api.http_bytes import refusal_bytes
from pnyx.api.http_h1_call import Call
from pnyx.api.http_h1_conn import Connection
from pnyx.api.limits import Admission, ClientLimits, Refusal, admission_for

if TYPE_CHECKING:
    from pnyx.api.node_api import NodeAPI

log = logging.getLogger("pnyx.api.http")


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
        self.conns: set[Connection] = set()
        self.calls: set[Call] = set()  # requests at a node with the callback API
        self.listener: asyncio.Server | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.stopping = False
        self.live_stop = asyncio.Event()
        self.refused = 0
        self.refusal = refusal_bytes(limits)
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
        return Connection(self)

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
