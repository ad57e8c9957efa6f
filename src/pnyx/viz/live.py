"""The live view of a running cluster: `/ui` and its event stream `/ui/events`.

This module owns the routes `pnyx.api.http.make_app` adds with
`add_live_routes`: `/v1/log?recent=N` the last N slots of this replica (at
most `pnyx.node.runtime.MAX_RECENT`: chosen, accepted, in flight with their
votes, gaps; computed when asked), `/ui` is one page (`live.html` beside this module: plain
HTML, CSS and JavaScript), `/ui/events` a server-sent event stream that, while
someone watches, sends this member's status and a few of its counters twice
a second, with the recent log for the page's slot strip. Nothing runs when
nobody watches: the stream's loop exists only for
an open connection, so the serving path pays nothing.

The page opens the stream of the member that served it, learns from its status
where every other member serves HTTP (each member advertises it in its peer
Hello), and opens each one's stream itself: so any member shows the whole
cluster, and a member that is down (or whose address is not known yet) shows as
such while the others keep going. `/ui?members=host:port,...` names the members
to watch instead.
The stream allows any origin, as `/v1/status` already tells anyone who asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from importlib import resources
from typing import Any

from aiohttp import web

from pnyx.api.http_errors import ApiError

# The counters the page turns into rates and means (summed over their labels).
_SAMPLES = frozenset({
    "pnyx_chosen_commands_total", "pnyx_chosen_slots_total", "pnyx_proposals_total",
    "pnyx_commit_latency_seconds_sum", "pnyx_commit_latency_seconds_count",
    "pnyx_fsync_seconds_sum", "pnyx_fsync_seconds_count",
    "pnyx_fsync_records_sum", "pnyx_fsync_records_count",
    "pnyx_batch_size_sum", "pnyx_batch_size_count",
    "pnyx_leader_changes_total", "pnyx_elections_total",
})
_STOP = web.AppKey("pnyx_live_stop", asyncio.Event)
INTERVAL = 0.5  # seconds between two samples of one stream
RECENT = 40  # slots of the recent log each sample carries (the page's slot strip)
DEFAULT_RECENT = 32  # slots `/v1/log` describes when not told how many


def sample(node: Any) -> dict[str, Any]:
    """What one event of the stream carries: the member's status and its counters."""
    counters: dict[str, float] = {}
    registry = getattr(getattr(node, "metrics", None), "registry", None)
    if registry is not None:
        for family in registry.collect():
            for s in family.samples:
                if s.name in _SAMPLES:
                    counters[s.name] = counters.get(s.name, 0.0) + float(s.value)
    out: dict[str, Any] = {"t": time.time(), "status": node.status(), "m": counters}
    recent_log = getattr(node, "recent_log", None)  # a node without consensus has none
    if recent_log is not None and out["status"].get("role") != "stopped":
        out["log"] = recent_log(RECENT)
    return out


def add_live_routes(app: web.Application, node: Any) -> None:
    """Serve `/ui` and `/ui/events` for `node` on `app` (before it starts)."""
    app[_STOP] = asyncio.Event()

    async def page(request: web.Request) -> web.Response:
        text = (resources.files("pnyx.viz") / "live.html").read_text(encoding="utf-8")
        return web.Response(text=text, content_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "Access-Control-Allow-Origin": "*",
        })
        await response.prepare(request)
        stop = request.app[_STOP]
        try:
            await response.write(b"retry: 1000\n\n")  # reconnect within a second
            while not stop.is_set():
                data = json.dumps(sample(node), separators=(",", ":"))
                await response.write(f"data: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), INTERVAL)
        except (ConnectionResetError, ConnectionError):
            pass  # the watcher left
        return response

    async def stopping(app: web.Application) -> None:
        app[_STOP].set()  # end every open stream, so the server stops at once

    app.on_shutdown.append(stopping)
    app.router.add_resource("/ui", name="ui").add_route("GET", page)
    app.router.add_resource("/ui/events", name="ui_events").add_route("GET", events)

    async def recent(request: web.Request) -> web.Response:
        recent_log = getattr(node, "recent_log", None)
        if recent_log is None:
            raise ApiError(404, "no_log", "this node runs without consensus: it has no log")
        text = request.query.get("recent", str(DEFAULT_RECENT))
        if not text.isdigit() or len(text) > 6:
            raise ApiError(400, "bad_param", f"recent must be a number of slots, not {text!r}")
        return web.json_response(recent_log(int(text)),
                                 headers={"Access-Control-Allow-Origin": "*"})

    app.router.add_resource("/v1/log", name="log").add_route("GET", recent)
