"""The HTTP API of a pnyx node: the key-value store's routes, status and metrics.

This module owns the mapping between HTTP and the key-value machine: it parses
and checks every path, query parameter, header and body; turns a request into
an encoded `kv` command or query; hands it to the node through `NodeAPI`; and
turns the `Outcome` back into a status code and body. It never redirects: any
node accepts any request and forwards it internally.

Routes (`make_app`)::

    PUT    /v1/kv/{key}      body = value        ?prev_value=&prev_index=&prev_exist=
    GET    /v1/kv/{key}      -> raw value         ?consistency=linearizable|quorum|stale
    DELETE /v1/kv/{key}                           ?prev_value=&prev_index=&prev_exist=
    GET    /v1/kv/           -> {"keys", "more", "next"}  ?prefix=&after=&limit=&consistency=
    GET    /v1/status        -> node.status()
    GET    /v1/log           -> node.recent_log(N)  ?recent=N (pnyx.viz.live; capped)
    GET    /metrics          -> Prometheus text
    GET    /v1/snapshot      -> a snapshot file at a linearizable point (pnyx.api.backup)
    GET/POST /v1/members, POST /v1/members/change, POST /v1/members/{id}/promote,
    DELETE /v1/members/{id}  -> membership (pnyx.api.members)

Keys are the path after `/v1/kv/`, percent-decoded to bytes and then read as
strict UTF-8 (so `a%2Fb` and `a/b` are the same key, and `%FF` is a 400, never
silently replaced). Query values are decoded the same way; `prev_value` is
taken as raw bytes.

Status codes: 200 success; 400 bad input (code `bad_key`, `bad_param`,
`bad_header`, `invalid`, and `bad_request` for what the HTTP parser refuses:
a conflicting `Content-Length`, a malformed line); 404 no such key
(`not_found`), also for a precondition that needs the key (`prev_value`,
`prev_index`, `prev_exist=true`) when it does not exist, or no such route
(`no_route`); 405 wrong method for the route; 408 the body did not arrive
within the body timeout (`body_timeout`, the connection is closed); 409 an
`Idempotency-Key` reused for a different command (`idempotency_key_reused`);
412 a precondition failed on a key that exists (`precondition_failed`, with
the key's current `index`); 413 value too large (`value_too_large`); 414 URL
over `MAX_URL_BYTES` (`url_too_long`); 431 a header over `MAX_HEADER_BYTES`
or more than `MAX_HEADERS` of them (`header_too_large`); 501 a method the
parser does not know (`unknown_method`); 503 with `Retry-After` when the node
could not get a quorum or a leader within the request timeout
(`unavailable`, with `unknown` saying whether a write may still take
effect), when the node already has `max_pending` requests at it (admission
control: `overloaded`, answered at once, never applied), or when the port
has `max_connections` already (`too_many_connections`). Every error body, the parser's included, is
`{"error": {"code": ..., "message": ...}}`. A 500 (`internal`) means a bug in
pnyx, never bad input.

`serve_http(node, host, port, limits=, ssl=)` serves the API with the
connection limits of `pnyx.api.limits` and, with `ssl`, HTTPS only, on the
httptools server of `pnyx.api.http_h1` (chosen by measurement: see that
module); `PNYX_HTTP_SERVER=aiohttp` serves `make_app` instead. Both keep
one contract (tests/test_api_http.py runs every spec against each).

This module owns the routes and their handlers (`make_app`) and `serve_http`.
Its parts are modules of their own: `http_errors` (the error body, `ApiError`,
the `HTTP_FAILURES` table), `http_parse` (reading a request, its limits),
`http_outcome` (retrying at the node; a failed outcome or the machine's
refusal as an error: both servers' rule), `http_serve` (aiohttp's server with
the connection cap and parser errors), `http_h1` (the httptools server, with
its own parts);
the names callers use are re-exported here.

**Exactly once.** Every write is sent as a `kv.IdempotentRequest`: under the
client's `Idempotency-Key` header if it gave one (so the client's own retries,
to this node or another, are answered with the first result), else under a
fresh random key made for this HTTP request. Within one request the same bytes
are resubmitted while the outcome is unknown and time remains, so a write is
never applied twice, only answered twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import http_exceptions, web

from pnyx.api.backup import add_snapshot_route
from pnyx.api.http_errors import (
    HTTP_FAILURES,
    RETRY_AFTER_SECONDS,
    ApiError,
    HttpFailure,
    error_response,
)
from pnyx.api.http_h1 import H1Server
from pnyx.api.http_members import add_member_routes
from pnyx.api.http_outcome import (
    RETRY_FIRST_DELAY,
    RETRY_MAX_DELAY,
    answer_now,
    failure_error,
    overloaded_error,
    result_error,
)
from pnyx.api.http_parse import (
    COUNTED_METHODS,
    GET_PARAMS,
    IDEMPOTENCY_HEADER,
    LIST_PARAMS,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_IDEMPOTENCY_KEY,
    MAX_URL_BYTES,
    WRITE_PARAMS,
    idempotency_key,
    int_param,
    parse_conditions,
    parse_consistency,
    parse_key,
    parse_params,
    text_param,
)
from pnyx.api.http_serve import HttpServer, parser_error, start_server
from pnyx.api.limits import Admission, ClientLimits, admission_for
from pnyx.api.node_api import NodeAPI
from pnyx.protocol.multipaxos import Code, Outcome, ReadMode
from pnyx.statemachine import kv
from pnyx.viz.live import add_live_routes

__all__ = [
    "APPLIED_INDEX_HEADER",
    "DEFAULT_LIST_LIMIT",
    "DEFAULT_MAX_VALUE",
    "HTTP_FAILURES",
    "IDEMPOTENCY_HEADER",
    "INDEX_HEADER",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_LIST_LIMIT",
    "MAX_URL_BYTES",
    "RETRY_AFTER_SECONDS",
    "ApiError",
    "HttpFailure",
    "HttpServer",
    "error_response",
    "make_app",
    "parser_error",
    "serve_http",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_VALUE: Final = 1 << 20
DEFAULT_LIST_LIMIT: Final = kv.DEFAULT_KEYS_LIMIT
MAX_LIST_LIMIT: Final = kv.MAX_KEYS_LIMIT

INDEX_HEADER: Final = "X-Pnyx-Index"
APPLIED_INDEX_HEADER: Final = "X-Pnyx-Applied-Index"

# Grace on top of the node's own deadline before the HTTP layer stops waiting:
# the node is meant to answer by `timeout`, this only guards against one that hangs.
_NODE_GRACE: Final = 1.0

# `PNYX_HTTP_SERVER=aiohttp` serves the API with aiohttp (`make_app`) instead of the
# httptools server (`pnyx.api.http_h1`): for comparing the two (bench/http_wrk.py).
SERVER_ENV: Final = "PNYX_HTTP_SERVER"


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class _Handlers:
    def __init__(self, node: NodeAPI, max_value: int, request_timeout: float,
                 body_timeout: float, admission: Admission) -> None:
        self.node = node
        self.admission = admission
        self.max_value = max_value
        self.request_timeout = request_timeout
        self.body_timeout = body_timeout
        # Requests waiting for their body: a stopping node answers them at once.
        self.reading: dict[int, web.Request] = {}  # by id(): a Request is not hashable

    async def on_shutdown(self, app: web.Application) -> None:
        for request in list(self.reading.values()):
            request.content.set_exception(_Stopping())

    @web.middleware
    async def middleware(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        started = time.perf_counter()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            # aiohttp's own answers (no route, wrong method), as JSON like ours.
            code = {404: "no_route", 405: "method_not_allowed", 413: "value_too_large"}.get(
                exc.status, f"http_{exc.status}")
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            response = error_response(exc.status, code, exc.reason, headers=headers)
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            response = error_response(500, "internal", "internal error; see the node's log")
        method = request.method if request.method in COUNTED_METHODS else "other"
        self.node.metrics.request(_route_label(request), method, response.status,
                                  time.perf_counter() - started)
        return response

    # -- talking to the node --

    async def _ask(self, call: Callable[[float], Awaitable[Outcome]], remaining: float,
                   ) -> Outcome:
        try:
            return await asyncio.wait_for(call(remaining), remaining + _NODE_GRACE)
        except TimeoutError:
            return Outcome.failed(Code.NO_LEADER, "the node did not answer in time", unknown=True)

    async def _until_done(self, call: Callable[[float], Awaitable[Outcome]],
                          *, write: bool) -> tuple[kv.Result, Outcome]:
        """Call the node until it succeeds, refuses, or the request's time is up.

        A write is retried only while its outcome is unknown, and always with
        the same bytes, so de-duplication answers a retry of a command that did
        get chosen. A read is retried on any failure another attempt may mend: it
        changes nothing. The answer to a failure is `HTTP_FAILURES[outcome.code]`.
        Past the node's admission bound (`ClientLimits.max_pending`), refused at once
        with 503 `overloaded`.
        """
        if not self.admission.try_enter():
            raise overloaded_error(self.admission, write)
        try:
            return await self._attempts(call, write=write)
        finally:
            self.admission.leave()

    async def _attempts(self, call: Callable[[float], Awaitable[Outcome]],
                        *, write: bool) -> tuple[kv.Result, Outcome]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        delay = RETRY_FIRST_DELAY
        unknown = False  # an earlier attempt's outcome was unknown: the write may yet apply
        while True:
            outcome = await self._ask(call, max(deadline - loop.time(), 0.0))
            unknown = unknown or outcome.unknown
            if outcome.ok:
                try:
                    return kv.decode_result(outcome.result), outcome
                except kv.MalformedResult as exc:
                    raise ApiError(500, "internal", f"the node returned a bad result: {exc}",
                                   ) from None
            if answer_now(outcome, write) or loop.time() + delay >= deadline:
                raise failure_error(outcome, write, unknown, self.node)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)

    async def _write(self, request: web.Request, command: kv.Put | kv.Delete,
                     ) -> web.Response:
        envelope = kv.IdempotentRequest(idempotency_key(request), command)
        encoded = kv.encode_request(envelope)
        try:
            # Rules only (empty key, contradictory conditions): the size was
            # checked on the value, and the node enforces its own limit.
            kv.validate(encoded, limit=len(encoded))
        except kv.CommandError as exc:
            raise ApiError(400, "invalid", exc.message) from None
        result, _ = await self._until_done(
            lambda t: self.node.submit(encoded, timeout=t), write=True)
        if isinstance(result, kv.Ok):
            return web.json_response({"index": result.index},
                                     headers={INDEX_HEADER: str(result.index)})
        raise self._result_error(result, request)

    def _result_error(self, result: kv.Result, request: web.Request) -> ApiError:
        # The path is read for the key only where the answer names it.
        key = parse_key(request) if isinstance(result, kv.NotFound) else ""
        return result_error(result, key, request.headers.get(IDEMPOTENCY_HEADER, ""))

    async def _read_body(self, request: web.Request) -> bytes:
        too_large = ApiError(413, "value_too_large",
                             f"value is larger than {self.max_value} bytes")
        if request.content_length is not None and request.content_length > self.max_value:
            raise too_large
        body = bytearray()
        self.reading[id(request)] = request
        try:
            async with asyncio.timeout(self.body_timeout):
                # Chunked bodies have no Content-Length: count as they arrive.
                async for chunk in request.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > self.max_value:
                        raise too_large
        except TimeoutError:
            log.info("HTTP client %s: its request body did not arrive within %g s; answered "
                     "408 and closing its connection", request.remote, self.body_timeout)
            raise ApiError(408, "body_timeout",
                           f"the request body did not arrive within {self.body_timeout:g} s",
                           close=True) from None
        except (web.RequestPayloadError, http_exceptions.HttpProcessingError) as exc:
            # A body the parser refused once its handler had begun reading it (aiohttp's
            # Python parser; its C parser answers these itself): bad input, not a bug.
            # Found by fuzz/fuzz_http.py.
            log.debug("HTTP client %s: malformed request body: %r", request.remote, exc)
            request.content.feed_eof()  # nothing more to read: aiohttp must not linger on it
            raise ApiError(400, "bad_request", "the request body is malformed (its chunked "
                           "encoding or length)", close=True) from None
        except ConnectionResetError:
            # The client left before its body arrived: nobody reads the answer, and it is
            # not a bug of ours (was a 500 and a traceback; found by fuzz/fuzz_http.py).
            log.info("HTTP client %s: its connection closed before the request body "
                     "arrived", request.remote)
            raise ApiError(400, "bad_request", "the connection closed before the request "
                           "body arrived", close=True) from None
        except _Stopping:
            raise ApiError(503, "unavailable", "the node is stopping",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                           close=True) from None
        finally:
            self.reading.pop(id(request), None)
        return bytes(body)

    async def _read(self, query: bytes, mode: ReadMode) -> tuple[kv.Result, Outcome]:
        return await self._until_done(
            lambda t: self.node.read(query, mode, timeout=t), write=False)

    # -- routes --

    async def put(self, request: web.Request) -> web.Response:
        key = parse_key(request)
        conditions = parse_conditions(parse_params(request, WRITE_PARAMS))
        value = await self._read_body(request)
        return await self._write(request, kv.Put(key, value, **conditions))

    async def delete(self, request: web.Request) -> web.Response:
        key = parse_key(request)
        conditions = parse_conditions(parse_params(request, WRITE_PARAMS))
        return await self._write(request, kv.Delete(key, **conditions))

    async def get(self, request: web.Request) -> web.Response:
        raw = request.rel_url.raw_path.split("/", 3)
        if len(raw) < 4 or raw[3] == "":
            return await self.list_keys(request)
        key = parse_key(request)
        mode = parse_consistency(parse_params(request, GET_PARAMS))
        result, outcome = await self._read(kv.encode_query(key), mode)
        headers = {APPLIED_INDEX_HEADER: str(outcome.index)} if mode == "stale" else {}
        if isinstance(result, kv.Ok):
            headers[INDEX_HEADER] = str(result.index)
            return web.Response(body=result.value or b"", headers=headers,
                                content_type="application/octet-stream")
        error = self._result_error(result, request)
        error.headers.update(headers)
        raise error

    async def list_keys(self, request: web.Request) -> web.Response:
        params = parse_params(request, LIST_PARAMS)
        prefix = text_param(params, "prefix")
        after = text_param(params, "after")
        limit = int_param(params, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
        assert limit is not None
        mode = parse_consistency(params)
        result, outcome = await self._read(kv.encode_keys_query(prefix, after, limit), mode)
        if not isinstance(result, kv.KeyList):
            raise self._result_error(result, request)
        headers = {APPLIED_INDEX_HEADER: str(outcome.index)} if mode == "stale" else {}
        return web.json_response(
            {
                "keys": [{"key": key, "index": index} for key, index in result.items],
                "more": result.more,
                "next": result.items[-1][0] if result.more and result.items else None,
            },
            headers=headers,
        )

    async def status(self, request: web.Request) -> web.Response:
        parse_params(request, frozenset())
        return web.json_response(self.node.status())

    async def metrics(self, request: web.Request) -> web.Response:
        parse_params(request, frozenset())
        return web.Response(body=self.node.metrics.render(),
                            headers={"Content-Type": self.node.metrics.content_type})


def make_app(
    node: NodeAPI,
    *,
    max_value: int = DEFAULT_MAX_VALUE,
    request_timeout: float = 5.0,
    body_timeout: float = ClientLimits().body_timeout,
    max_pending: int = ClientLimits().max_pending,
) -> web.Application:
    """The aiohttp application serving `node`; run it with `aiohttp.web.AppRunner`.

    `max_value` bounds a value in bytes (larger is a 413); make the node's own
    command limit a little larger, since a command also carries the key, the
    conditions and the idempotency key. `request_timeout` bounds how long a
    request waits for a quorum or a leader before it is answered with 503;
    `body_timeout` how long a PUT's body may take to arrive (else 408).
    """
    if max_value < 0:
        raise ValueError(f"max_value must not be negative, not {max_value}")
    if not request_timeout > 0:
        raise ValueError(f"request_timeout must be positive, not {request_timeout}")
    if not body_timeout > 0:
        raise ValueError(f"body_timeout must be positive, not {body_timeout}")
    h = _Handlers(node, max_value, request_timeout, body_timeout,
                  admission_for(node, max_pending))
    # client_max_size is aiohttp's limit for request.read(); bodies are read
    # by _read_body, which applies max_value itself.
    app = web.Application(middlewares=[h.middleware], client_max_size=max_value + 1)
    app.on_shutdown.append(h.on_shutdown)
    kv_key = app.router.add_resource("/v1/kv/{key:[\\s\\S]*}", name="kv")
    kv_key.add_route("GET", h.get)
    kv_key.add_route("PUT", h.put)
    kv_key.add_route("DELETE", h.delete)
    app.router.add_resource("/v1/kv", name="kv_list").add_route("GET", h.list_keys)
    app.router.add_resource("/v1/status", name="status").add_route("GET", h.status)
    app.router.add_resource("/metrics", name="metrics").add_route("GET", h.metrics)
    add_live_routes(app, node)  # /ui, /ui/events, /v1/log: the live view (pnyx.viz.live)
    add_snapshot_route(app, node, request_timeout=request_timeout)  # pnyx.api.backup
    add_member_routes(app, node, request_timeout=request_timeout)  # pnyx.api.members
    return app


class _Stopping(Exception):
    """Thrown into a request body's reader when the node stops."""


async def serve_http(
    node: NodeAPI,
    host: str,
    port: int,
    *,
    max_value: int = DEFAULT_MAX_VALUE,
    request_timeout: float = 5.0,
    limits: ClientLimits | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> HttpServer:
    """Serve `make_app(node)` on `host:port` (0: any free port) within `limits`, HTTPS only
    if `ssl` is given (`pnyx.tls.client_port_context`). Raises `OSError` if the address
    cannot be bound. Stopping waits for requests at the node (up to the request timeout)
    but not for bodies that have not arrived."""
    limits = limits or ClientLimits()
    if os.environ.get(SERVER_ENV, "h1") == "aiohttp":
        app = make_app(node, max_value=max_value, request_timeout=request_timeout,
                       body_timeout=limits.body_timeout, max_pending=limits.max_pending)
        # A request waiting for its outcome is answered within the request timeout.
        return await start_server(app, host, port, limits=limits, ssl=ssl,
                                  shutdown_timeout=request_timeout + _NODE_GRACE)
    if max_value < 0:
        raise ValueError(f"max_value must not be negative, not {max_value}")
    if not request_timeout > 0:
        raise ValueError(f"request_timeout must be positive, not {request_timeout}")
    server = H1Server(node, max_value=max_value, request_timeout=request_timeout,
                      limits=limits, shutdown_timeout=request_timeout + _NODE_GRACE)
    return HttpServer(server, await server.start(host, port, ssl))
