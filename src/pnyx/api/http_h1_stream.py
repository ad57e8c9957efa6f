"""Streaming answers of the httptools server: the live view's events and the snapshot.

This module owns the handlers of the two routes whose answer is not one write
(`GET /ui/events`, `GET /v1/snapshot`): each runs as its connection's one
streaming task (`Connection.sse`, cancelled when the connection is lost or the
server stops) and appends its bytes to its request's slot, written once the
slot is at the head of the connection's queue. The live view's server-sent
events are written here; the snapshot's body is `pnyx.api.backup.serve_h1`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pnyx.api.http_h1_conn import Connection, Request, Slot


def start_events(conn: Connection, request: Request) -> None:
    """`GET /ui/events`: counted as a 200 at once, then streamed until either side goes."""
    conn._metric(request.path, request.method, 200, request.started)
    conn.sse = conn.loop.create_task(_events(conn, request.slot))


def start_snapshot(conn: Connection, request: Request) -> None:
    """`GET /v1/snapshot`: a snapshot at a linearizable point, streamed by `pnyx.api.backup`
    (which counts it when it ends)."""
    from pnyx.api.backup import serve_h1

    conn.sse = conn.loop.create_task(serve_h1(conn, request))


async def _events(conn: Connection, slot: Slot) -> None:
    """The live view's server-sent events, chunked, until the client or the server goes."""
    from pnyx.viz.live import INTERVAL, sample

    slot.data.append(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")

    def chunk(data: bytes) -> None:
        slot.data.append(b"%x\r\n%s\r\n" % (len(data), data))
        if conn.queue and conn.queue[0] is slot:
            conn._flush()

    stop = conn.server.live_stop
    try:
        chunk(b"retry: 1000\n\n")  # reconnect within a second
        while not stop.is_set() and conn.transport is not None:
            data = json.dumps(sample(conn.server.node), separators=(",", ":"))
            chunk(f"data: {data}\n\n".encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), INTERVAL)
    finally:
        conn.sse = None
        slot.data.append(b"0\r\n\r\n")
        slot.done = True
        slot.close = slot.close or conn.server.stopping
        if conn.queue and conn.queue[0] is slot:
            conn._flush()
