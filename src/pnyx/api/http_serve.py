"""Serving the HTTP API: aiohttp's server with our connection cap, parser errors and TLS.

This module owns `start_server`, which runs an application within
`ClientLimits` (at most `max_connections`, the rest refused with a 503 before
aiohttp sees them; idle and body timeouts; a TLS handshake bounded by the body
timeout) and the request limits of `pnyx.api.http_parse`; and
`parser_error`, which answers what aiohttp's parser refuses (a URL or header
too long, too many headers, an unknown method, TLS on a plain port) in the
API's JSON shape instead of aiohttp's plain text. The routes are
`pnyx.api.http`'s.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from typing import Any, NamedTuple, Protocol

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from pnyx.api.http_bytes import refusal_bytes
from pnyx.api.http_errors import error_response
from pnyx.api.http_parse import MAX_HEADER_BYTES, MAX_HEADERS, MAX_URL_BYTES
from pnyx.api.limits import ClientLimits, Refusal

# The HTTP API's one logger, as before this module was split from it: operators
# configure "pnyx.api.http", whichever of its modules logs.
log = logging.getLogger("pnyx.api.http")


def parser_error(exc: BaseException | None, message: str | None) -> tuple[int, str, str]:
    """Status, code and message for a request the HTTP parser refused."""
    text = (message or (str(exc) if exc is not None else "") or "bad request").strip()
    first = text.splitlines()[0].strip().rstrip(":") if text else "bad request"
    if isinstance(exc, http_exceptions.LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == MAX_URL_BYTES:
            return 414, "url_too_long", f"the request line is longer than {MAX_URL_BYTES} bytes"
        return 431, "header_too_large", f"a header is longer than {MAX_HEADER_BYTES} bytes"
    if isinstance(exc, http_exceptions.BadHttpMethod):
        if "HTTPS" in first:
            return 400, "bad_request", ("TLS on a plain HTTP port: use http://, or serve "
                                        "HTTPS with --cert-file and --key-file")
        return 501, "unknown_method", "unknown HTTP method"
    if isinstance(exc, http_exceptions.BadHttpMessage) and "Too many headers" in first:
        return 431, "header_too_large", f"more than {MAX_HEADERS} headers"
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return 400, "bad_request", first[:200]
    return 500, "internal", "internal error; see the node's log"


class _RequestHandler(RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses in our JSON shape."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp's: an answer has begun already
            raise ConnectionError("an answer has been sent already; cannot send an error")
        if status >= 500 and not isinstance(exc, http_exceptions.HttpProcessingError):
            log.error("error serving a request from %s", request.remote, exc_info=exc)
            answer = (500, "internal", "internal error; see the node's log")
        else:
            answer = parser_error(exc, message)
            log.debug("refused a request from %s: %s", request.remote, answer[2])
        response = error_response(*answer)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp's Python parser hands a malformed body it was draining after the answer
        # (a 404's, say) to this log as an error: the client's fault, not ours (found by
        # fuzz/fuzz_http.py).
        if isinstance(kw.get("exc_info"),
                      (web.RequestPayloadError, http_exceptions.HttpProcessingError)):
            self.log_debug("dropped a malformed request body: %s", kw["exc_info"])
            return
        super().log_exception(*args, **kw)


class _Server(web.Server):
    """aiohttp's server, with our connection handler and a cap on connections."""

    max_connections: int = ClientLimits().max_connections
    refusal: bytes = b""
    refused: int = 0

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        if len(self._connections) >= self.max_connections:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.warning("HTTP: %d connections refused so far (at most %d at once; "
                            "--max-connections)", self.refused, self.max_connections)
            return Refusal(self.refusal)
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    def __init__(self, app: web.Application, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        # aiohttp builds its Server in here; ours is the same with two methods replaced
        # (it reads the same private fields aiohttp's own __call__ does).
        base = await super()._make_server()
        server = _Server(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, loop=base._loop,
                         **base._kwargs)
        server.max_connections = self.limits.max_connections
        server.refusal = refusal_bytes(self.limits)
        return server


class _Site(web.TCPSite):
    """A TCP site whose TLS handshakes must finish within the body timeout."""

    def __init__(self, runner: _Runner, host: str, port: int,
                 ssl_context: ssl_module.SSLContext | None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        self.handshake_timeout = runner.limits.body_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        assert self._runner.server is not None
        self._server = await loop.create_server(
            self._runner.server, self._host, self._port, ssl=self._ssl_context,
            ssl_handshake_timeout=self.handshake_timeout if self._ssl_context else None,
            backlog=self._backlog, reuse_address=self._reuse_address)
        self._bound_port = self._server.sockets[0].getsockname()[1]


class _Runner_(Protocol):
    async def cleanup(self) -> None: ...


class HttpServer(NamedTuple):
    """A running HTTP API: `port` is the bound one; stop it with `await close()`.
    `runner` is what serves it (`pnyx.api.http_h1.H1Server`, or aiohttp's runner)."""

    runner: _Runner_
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_server(app: web.Application, host: str, port: int, *, limits: ClientLimits,
                       ssl: ssl_module.SSLContext | None,
                       shutdown_timeout: float) -> HttpServer:
    """Serve `app` on `host:port` (0: any free port) within `limits`, HTTPS only if `ssl`
    is given. Raises `OSError` if the address cannot be bound. Stopping waits up to
    `shutdown_timeout` for requests being answered."""
    runner = _Runner(
        app, limits, access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=limits.idle_timeout,
        # A body left unread (an early 413, a DELETE with a body) is drained this long
        # before the connection is closed.
        lingering_time=min(limits.body_timeout, 1.0),
        max_line_size=MAX_URL_BYTES, max_field_size=MAX_HEADER_BYTES,
        max_headers=MAX_HEADERS)
    await runner.setup()
    site = _Site(runner, host, port, ssl)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return HttpServer(runner, site.port)
