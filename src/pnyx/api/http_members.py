"""The membership routes on both HTTP servers: `/v1/members` and the paths under it.

This module owns the handlers of `pnyx.api.members`'s routes for each server:
for the httptools server (`pnyx.api.http_h1_routes` puts them in its table:
`MEMBERS_ROUTE`, and `members_route` for the paths under `/v1/members/`), and
for aiohttp (`add_member_routes`, which `pnyx.api.http.make_app` calls). Both
read the request with `pnyx.api.members` and answer with its view or its
`ApiError`, so the two servers give the same status and body for every request
(tests/test_members_api.py runs each spec against both).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from pnyx.api import members
from pnyx.api.http_bytes import error_bytes, response_bytes
from pnyx.api.http_errors import ApiError
from pnyx.api.http_parse import params_from_query, parse_params

if TYPE_CHECKING:
    from pnyx.api.http_h1_conn import Connection, Request

log = logging.getLogger("pnyx.api.http")

LABEL: Final = "/v1/members"
CHANGE_LABEL: Final = "/v1/members/change"
ID_LABEL: Final = "/v1/members/{id}"
PROMOTE_LABEL: Final = "/v1/members/{id}/promote"
PREFIX: Final = "/v1/members/"

# The changes at the node, so none is collected while it waits (the loop keeps weak ones).
_running: set[asyncio.Task[None]] = set()


# --- httptools (`pnyx.api.http_h1`) ------------------------------------------------


def _answer_view(conn: Connection, request: Request) -> None:
    params_from_query(request.query, frozenset())
    body = json.dumps(members.view(conn.server.node)).encode()
    conn.answer(request, LABEL, 200, response_bytes(200, body, close=request.slot.close,
                                                    head_only=request.head))


def _start(conn: Connection, request: Request, label: str,
           parse: Callable[[], members.MemberChange]) -> None:
    """Read the change now (a bad one raises, answered by `dispatch`), then ask the node in
    a task; its answer is written in the request's turn. The caller checked the query."""
    node = conn.server.node
    members.view(node)  # a node without a membership: 404 now, not from the task
    task = conn.loop.create_task(_run_change(conn, request, label, node, parse(),
                                             conn.server.request_timeout))
    _running.add(task)
    task.add_done_callback(_running.discard)


async def _run_change(conn: Connection, request: Request, label: str, node: Any,
                      change: members.MemberChange, timeout: float) -> None:
    close = request.slot.close
    try:
        body = await members.change(node, change, timeout)
    except ApiError as exc:
        conn.answer(request, label, exc.status, error_bytes(
            exc.status, exc.code, exc.message, headers=exc.headers, extra=exc.extra,
            close=close))
        return
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        conn.answer(request, label, 500, error_bytes(
            500, "internal", "internal error; see the node's log", close=close))
        return
    conn.answer(request, label, 200, response_bytes(200, json.dumps(body).encode(),
                                                    close=close))


def _add(conn: Connection, request: Request) -> None:
    params_from_query(request.query, frozenset())
    body = bytes(conn.body)
    _start(conn, request, LABEL, lambda: members.parse_add(body))


def _change(conn: Connection, request: Request) -> None:
    params_from_query(request.query, frozenset())
    body = bytes(conn.body)
    _start(conn, request, CHANGE_LABEL, lambda: members.parse_change(body))


def _promote(conn: Connection, request: Request) -> None:
    found = members.member_path(request.path)
    assert found is not None
    params_from_query(request.query, frozenset())
    body = bytes(conn.body)
    _start(conn, request, PROMOTE_LABEL, lambda: members.parse_promote(found[0], body))


def _remove(conn: Connection, request: Request) -> None:
    found = members.member_path(request.path)
    assert found is not None
    params = params_from_query(request.query, members.BASE_PARAMS)
    _start(conn, request, ID_LABEL, lambda: members.parse_remove(found[0], params))


# (label, handlers by method); `pnyx.api.http_h1_routes` makes them its `Route`s.
H1_ROUTES: Final[dict[str, dict[str, Callable[[Connection, Request], None]]]] = {
    LABEL: {"GET": _answer_view, "POST": _add},
    CHANGE_LABEL: {"POST": _change},
    ID_LABEL: {"DELETE": _remove},
    PROMOTE_LABEL: {"POST": _promote},
}


def h1_label(path: str) -> str | None:
    """The route of a path under `/v1/members/` (None: no such route)."""
    if path == PREFIX + "change":
        return CHANGE_LABEL
    found = members.member_path(path)
    if found is None:
        return None
    return PROMOTE_LABEL if found[1] else ID_LABEL


# --- aiohttp (`pnyx.api.http.make_app`) --------------------------------------------


def add_member_routes(app: web.Application, node: Any, *, request_timeout: float) -> None:
    """Serve the membership routes of `node` on `app` (its middleware answers `ApiError`)."""

    async def read(request: web.Request) -> bytes:
        members.view(node)  # a node without a membership: 404 before the body is read
        if request.content_length is not None and request.content_length > members.MAX_BODY:
            raise ApiError(413, "value_too_large",
                           f"the body is larger than {members.MAX_BODY} bytes")
        return await request.read()

    async def answer(change: members.MemberChange) -> web.Response:
        return web.json_response(await members.change(node, change, request_timeout))

    async def get_view(request: web.Request) -> web.Response:
        parse_params(request, frozenset())
        return web.json_response(members.view(node))

    async def add(request: web.Request) -> web.Response:
        parse_params(request, frozenset())
        return await answer(members.parse_add(await read(request)))

    async def change(request: web.Request) -> web.Response:
        parse_params(request, frozenset())
        return await answer(members.parse_change(await read(request)))

    async def promote(request: web.Request) -> web.Response:
        member = members.member_id(request.match_info["id"])
        parse_params(request, frozenset())
        return await answer(members.parse_promote(member, await read(request)))

    async def remove(request: web.Request) -> web.Response:
        member = members.member_id(request.match_info["id"])
        params = parse_params(request, members.BASE_PARAMS)
        members.view(node)
        return await answer(members.parse_remove(member, params))

    resource = app.router.add_resource(LABEL, name="members")
    resource.add_route("GET", get_view)
    resource.add_route("POST", add)
    app.router.add_resource(CHANGE_LABEL, name="members_change").add_route("POST", change)
    app.router.add_resource("/v1/members/{id:[0-9]{1,19}}", name="member").add_route(
        "DELETE", remove)
    app.router.add_resource("/v1/members/{id:[0-9]{1,19}}/promote",
                            name="member_promote").add_route("POST", promote)
