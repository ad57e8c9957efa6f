"""The routes of the httptools server (`pnyx.api.http_h1`): which path and method go where.

This module owns the route table (`ROUTES`, `KV_ROUTE`), `dispatch`, which
sends a parsed request to its handler and answers what the handler raises
(`ApiError` in the JSON error shape, anything else as a logged 500), and the
handlers that answer at once or hand the request to the node
(`pnyx.api.http_h1_call`). The same routes, with the same status codes and
bodies, are `pnyx.api.http.make_app`'s on aiohttp (tests/test_api_http.py
holds both to one contract).

**Adding a route.** Write a handler `def handler(conn: Connection, request:
Request) -> None` that answers with `conn.answer(request, label, status,
bytes)` (`http_bytes.response_bytes`), or starts a request at the node with
`http_h1_call.start_call`, or raises `ApiError`; then add one line to
`ROUTES`: `"/v1/path": Route("/v1/path", {"GET": handler, "POST": ...})`.
A path with a parameter in it (as under `/v1/members/`) goes in `dispatch`
with a function from the path to its route (`members_route`).
The label is the route's name in the metrics (keep it bounded: no key in it).
A method a route does not list is answered 405 with `Allow`; a path not in
`ROUTES` (nor under `/v1/kv/`) is answered 404 `no_route`. Add the route to
`make_app` too, and a spec to tests/test_api_http.py, which runs against both.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, NamedTuple
from urllib.parse import parse_qsl

from pnyx.api import http_members
from pnyx.api.http_bytes import error_bytes, response_bytes
from pnyx.api.http_errors import ApiError
from pnyx.api.http_h1_call import start_call
from pnyx.api.http_h1_stream import start_events, start_snapshot
from pnyx.api.http_parse import (
    GET_PARAMS,
    LIST_PARAMS,
    WRITE_PARAMS,
    idempotency_key_of,
    int_param,
    key_from_path,
    params_from_query,
    parse_conditions,
    parse_consistency,
    text_param,
)
from pnyx.statemachine import kv

if TYPE_CHECKING:
    from pnyx.api.http_h1_conn import Connection, Request

log = logging.getLogger("pnyx.api.http")

Handler = Callable[["Connection", "Request"], None]


class Route(NamedTuple):
    """A route: its label in the metrics, and its handler for each method it takes."""

    label: str
    methods: Mapping[str, Handler]


# -- handlers: the key-value store --


def _put(conn: Connection, request: Request) -> None:
    key = key_from_path(request.path)
    conditions = parse_conditions(params_from_query(request.query, WRITE_PARAMS))
    _write(conn, request, kv.Put(key, bytes(conn.body), **conditions), key)


def _get(conn: Connection, request: Request) -> None:
    if request.path == "/v1/kv/":
        _list(conn, request, KV_LABEL)
        return
    key = key_from_path(request.path)
    mode = parse_consistency(params_from_query(request.query, GET_PARAMS))
    start_call(conn, request, KV_LABEL, write=False, encoded=kv.encode_query(key), mode=mode,
               key=key)


def _delete(conn: Connection, request: Request) -> None:
    key = key_from_path(request.path)
    conditions = parse_conditions(params_from_query(request.query, WRITE_PARAMS))
    _write(conn, request, kv.Delete(key, **conditions), key)


def _list_keys(conn: Connection, request: Request) -> None:
    _list(conn, request, "/v1/kv")


def _list(conn: Connection, request: Request, label: str) -> None:
    params = params_from_query(request.query, LIST_PARAMS)
    prefix = text_param(params, "prefix")
    after = text_param(params, "after")
    limit = int_param(params, "limit", kv.DEFAULT_KEYS_LIMIT, 1, kv.MAX_KEYS_LIMIT)
    assert limit is not None
    mode = parse_consistency(params)
    start_call(conn, request, label, write=False,
               encoded=kv.encode_keys_query(prefix, after, limit), mode=mode, key=None)


def _write(conn: Connection, request: Request, command: kv.Put | kv.Delete, key: str) -> None:
    envelope = kv.IdempotentRequest(idempotency_key_of(request.idempotency,
                                                       conn.server.fresh_key()), command)
    encoded = kv.encode_request(envelope)
    if command.prev_value is not None or command.prev_index is not None \
            or command.prev_exist is not None:
        try:
            # Rules only (contradictory conditions): the key was checked when parsed,
            # the size on the value, and the node enforces its own limit.
            kv.validate(encoded, limit=len(encoded))
        except kv.CommandError as exc:
            raise ApiError(400, "invalid", exc.message) from None
    start_call(conn, request, KV_LABEL, write=True, encoded=encoded, mode="linearizable",
               key=key)


# -- handlers: the node's state, the live view --


def _status(conn: Connection, request: Request) -> None:
    params_from_query(request.query, frozenset())
    conn.answer(request, "/v1/status", 200, response_bytes(
        200, json.dumps(conn.server.node.status()).encode(), close=request.slot.close,
        head_only=request.head))


def _metrics(conn: Connection, request: Request) -> None:
    params_from_query(request.query, frozenset())
    metrics = conn.server.node.metrics
    conn.answer(request, "/metrics", 200, response_bytes(
        200, metrics.render(), metrics.content_type.encode(), close=request.slot.close,
        head_only=request.head))


def _log(conn: Connection, request: Request) -> None:
    recent_log = getattr(conn.server.node, "recent_log", None)
    if recent_log is None:
        raise ApiError(404, "no_log", "this node runs without consensus: it has no log")
    from pnyx.viz.live import DEFAULT_RECENT

    given = dict(parse_qsl(request.query, keep_blank_values=True))
    text = given.get("recent", str(DEFAULT_RECENT))
    if not text.isdigit() or len(text) > 6:
        raise ApiError(400, "bad_param", f"recent must be a number of slots, not {text!r}")
    conn.answer(request, "/v1/log", 200, response_bytes(
        200, json.dumps(recent_log(int(text))).encode(),
        headers={"Access-Control-Allow-Origin": "*"}, close=request.slot.close))


def _ui(conn: Connection, request: Request) -> None:
    conn.answer(request, "/ui", 200, response_bytes(
        200, conn.server.page().encode(), b"text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"}, close=request.slot.close))


# -- the route table --

# Every path under /v1/kv/ is one route: the key is the rest of the path.
KV_PREFIX: Final = "/v1/kv/"
KV_LABEL: Final = "/v1/kv/{key}"
KV_ROUTE: Final = Route(KV_LABEL, {"DELETE": _delete, "GET": _get, "PUT": _put})

# The fixed paths: path -> its route. Add a route here (see the module's docstring).
ROUTES: Final[dict[str, Route]] = {
    "/v1/kv": Route("/v1/kv", {"GET": _list_keys}),
    "/v1/status": Route("/v1/status", {"GET": _status}),
    "/metrics": Route("/metrics", {"GET": _metrics}),
    "/v1/log": Route("/v1/log", {"GET": _log}),
    "/ui": Route("/ui", {"GET": _ui}),
    "/ui/events": Route("/ui/events", {"GET": start_events}),  # streamed
    "/v1/snapshot": Route("/v1/snapshot", {"GET": start_snapshot}),  # streamed: api.backup
    # Membership (pnyx.api.members); the paths under /v1/members/ are `members_route`'s.
    http_members.LABEL: Route(http_members.LABEL, http_members.H1_ROUTES[http_members.LABEL]),
}

MEMBERS_PREFIX: Final = http_members.PREFIX
_MEMBER_ROUTES: Final = {label: Route(label, methods)
                         for label, methods in http_members.H1_ROUTES.items()}


def members_route(path: str) -> Route | None:
    """The route of a path under `/v1/members/` (`/change`, `/{id}`, `/{id}/promote`)."""
    label = http_members.h1_label(path)
    return None if label is None else _MEMBER_ROUTES[label]


def dispatch(conn: Connection, request: Request) -> None:
    """Send `request` to its route's handler; answer an error the handler raises."""
    path = request.path
    label = "unmatched"
    try:
        if path.startswith(KV_PREFIX):
            route: Route | None = KV_ROUTE
        elif path.startswith(MEMBERS_PREFIX):
            route = members_route(path)
        else:
            route = ROUTES.get(path)
        if route is None:
            raise ApiError(404, "no_route", "Not Found")
        label, methods = route
        handler = methods.get(request.method)
        if handler is None:
            _method_not_allowed(conn, request, route)
            return
        handler(conn, request)
    except ApiError as exc:
        _answer_error(conn, request, exc, label)
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, path)
        conn.answer(request, label, 500, error_bytes(
            500, "internal", "internal error; see the node's log", head_only=request.head))


def _answer_error(conn: Connection, request: Request, exc: ApiError, label: str) -> None:
    if exc.close:
        request.slot.close = True
        conn.closing = True
    conn.answer(request, label, exc.status, error_bytes(
        exc.status, exc.code, exc.message, headers=exc.headers, extra=exc.extra,
        close=exc.close or request.slot.close, head_only=request.head))


def _method_not_allowed(conn: Connection, request: Request, route: Route) -> None:
    conn.answer(request, route.label, 405, error_bytes(
        405, "method_not_allowed", "Method Not Allowed",
        headers={"Allow": ",".join(sorted(route.methods))}, close=request.slot.close,
        head_only=request.head))

