"""`GET /v1/snapshot`: a consistent snapshot of the node's state, for `pnyx backup`.

This module owns the route on both HTTP servers (`add_snapshot_route` for the
aiohttp application, `serve_h1` for the httptools server of `pnyx.api.http_h1`)
and what they share (`take`).

**At a linearizable point.** `take` first passes a linearizable read through the
node (the path a linearizable GET takes: the leader confirms it still leads and
the node waits until it has applied up to the read's index), then, in the same
step of the event loop and with no await in between, captures the machine
(`snapshot_chunks`: copy-on-write, O(shards)) and the replica's `applied` slot
and `applied_index`. That pair is the snapshot's slot and index, and the state
captured is exactly the state after that slot: every write acknowledged before
the request began is in it (it was chosen at or below the read's index), and
whatever else it holds was chosen before the answer was sent. A node that cannot
confirm a leader answers 503 `unavailable`, as a linearizable read does.

**Spooled, then streamed.** The file's header states the body's length, known
only once the chunks are drawn, so the chunks are drawn in a worker thread (the
loop keeps serving) into a temporary file in the node's snapshot directory, and
the snapshot file is written from it (`write_file`: header, body, checksum),
without fsync: it is a copy for the client, deleted when the answer ends. Only
then does the answer start, with its `Content-Length`, `X-Pnyx-Slot`,
`X-Pnyx-Index` and `X-Pnyx-Keys` (the key count, when the machine tells it);
the file is read in 1 MiB chunks, in a thread, each sent when the connection has
room for it. Memory stays bounded whatever the state's size; the disk holds the
body twice for a moment. Names end in `.tmp`, so a node killed meanwhile
removes them at its next start (`SnapshotStore.open`). A failure after the
answer started closes the connection: the client sees a short body, which the
snapshot format refuses (`save_file`).

A node without consensus (`DirectNode`) has no log and no snapshot: 404
`no_snapshot`; a cluster that has chosen nothing yet has nothing to back up: 409
`empty`. Backups take no admission ticket: they are rare, and refusing one
under load would only make the operator retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from pnyx.api.http_errors import HTTP_FAILURES, RETRY_AFTER_SECONDS, ApiError
from pnyx.api.http_parse import params_from_query, parse_params
from pnyx.api.node_api import leader_hint
from pnyx.protocol.multipaxos import Code, Outcome
from pnyx.statemachine import kv
from pnyx.statemachine.base import snapshot_chunks
from pnyx.storage.snapshots import SnapshotInfo, SnapshotMeta, write_file

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger("pnyx.api.http")

SNAPSHOT_PATH: Final = "/v1/snapshot"
SLOT_HEADER: Final = "X-Pnyx-Slot"
INDEX_HEADER: Final = "X-Pnyx-Index"
KEYS_HEADER: Final = "X-Pnyx-Keys"
CONTENT_TYPE: Final = "application/octet-stream"
CHUNK: Final = 1 << 20
# The read barrier reads this key; its value (if any) is not used.
_BARRIER_KEY: Final = "pnyx/backup-barrier"
_NODE_GRACE: Final = 1.0  # as pnyx.api.http: on top of the node's own deadline
_RETRY_FIRST_DELAY: Final = 0.01
_RETRY_MAX_DELAY: Final = 0.2
# The h1 connection has no awaitable "drained": the stream waits, polling, until what
# it wrote is down to this much (and its answer is at the head of the connection's queue).
_HIGH_WATER: Final = 1 << 20
_POLL: Final = 0.005


@dataclass(slots=True)
class Backup:
    """A snapshot file spooled for one answer; `close` deletes it."""

    path: Path
    info: SnapshotInfo
    keys: int | None

    def headers(self) -> dict[str, str]:
        headers = {SLOT_HEADER: str(self.info.slot), INDEX_HEADER: str(self.info.index)}
        if self.keys is not None:
            headers[KEYS_HEADER] = str(self.keys)
        return headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file, `CHUNK` bytes at a time, each read in a worker thread."""
        f = await asyncio.to_thread(open, self.path, "rb")
        # Its name goes at once (the open file keeps the bytes): nothing is left in the
        # snapshot directory once the answer starts, whenever the answer ends.
        self.close()
        try:
            while data := await asyncio.to_thread(f.read, CHUNK):
                yield data
        finally:
            f.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def _unavailable(outcome: Outcome, node: Any) -> ApiError:
    failure = HTTP_FAILURES[outcome.code]
    extra = leader_hint(node) if outcome.code is Code.CUT_OFF else {}
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if failure.retry_after else {}
    return ApiError(failure.status, failure.code,
                    outcome.error or "no quorum or no leader in time", headers=headers,
                    extra=extra)


async def _barrier(node: Any, timeout: float) -> None:
    """A linearizable read through `node`, retried as `pnyx.api.http` retries one, until
    it succeeds (return) or the time is up (`ApiError`, as the read would answer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = _RETRY_FIRST_DELAY
    query = kv.encode_query(_BARRIER_KEY)
    while True:
        remaining = max(deadline - loop.time(), 0.0)
        try:
            outcome = await asyncio.wait_for(
                node.read(query, "linearizable", timeout=remaining), remaining + _NODE_GRACE)
        except TimeoutError:
            outcome = Outcome.failed(Code.NO_LEADER, "the node did not answer in time")
        if outcome.ok:
            return
        if (not outcome.code.retryable or outcome.code is Code.CUT_OFF
                or loop.time() + delay >= deadline):
            raise _unavailable(outcome, node)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX_DELAY)


def _key_count(machine: Any) -> int | None:
    inner = getattr(machine, "machine", machine)  # through SafeApply
    count = getattr(inner, "key_count", None)
    return count if isinstance(count, int) else None


def _spool_dir(node: Any) -> Path:
    store = getattr(node, "snapshot_store", None)
    directory = getattr(store, "directory", None)
    if directory is not None:
        return Path(directory)
    return Path(node.config.data_dir)


def _write(path: Path, meta: SnapshotMeta, chunks: Iterator[bytes]) -> SnapshotInfo:
    """Draw `chunks` into a spool beside `path`, then write the snapshot file of `meta`
    (its body length now known) at `path`. Runs in a worker thread."""
    spool = path.with_name(path.name.replace(".pnyx.tmp", ".spool.tmp"))
    try:
        length = 0
        with open(spool, "w+b") as f:
            for chunk in chunks:
                f.write(chunk)
                length += len(chunk)
            f.seek(0)
            meta = SnapshotMeta(meta.slot, meta.index, meta.cluster_id, meta.members, length,
                                meta.membership)
            return write_file(path, meta, iter(lambda: f.read(CHUNK), b""), fsync=False)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            spool.unlink(missing_ok=True)


async def take(node: Any, timeout: float) -> Backup:
    """A snapshot of `node` at a linearizable point, spooled to a temporary file (see the
    module's docstring); `ApiError` if there is none to have within `timeout`."""
    machine = getattr(node, "machine", None)
    config = getattr(node, "config", None)
    if machine is None or config is None or not hasattr(node, "replica"):
        raise ApiError(404, "no_snapshot",
                       "this node runs without consensus: it has no snapshot to give")
    await _barrier(node, timeout)
    # From here to `meta`, no await: the state captured is the state after `slot`.
    replica = node.replica
    if replica is None or getattr(node, "closed", False):
        raise ApiError(503, "unavailable", "the node is stopping",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    chunks = snapshot_chunks(machine)
    slot, index = replica.applied, replica.applied_index
    keys = _key_count(machine)
    if slot < 1:  # past the barrier: the cluster has chosen nothing yet
        raise ApiError(409, "empty", "nothing to back up: no command has been chosen yet")
    meta = SnapshotMeta(slot, index, config.cluster_id, tuple(sorted(config.members)), 0,
                        replica.membership.encode())
    path = _spool_dir(node) / f"backup-{secrets.token_hex(6)}.pnyx.tmp"
    started = time.perf_counter()
    try:
        info = await asyncio.to_thread(_write, path, meta, chunks)
    except Exception as exc:
        log.warning("node %s: backup snapshot of slot %s not written: %s",
                    getattr(node, "node_id", "?"), slot, exc)
        raise ApiError(503, "unavailable", f"the node could not write the snapshot: {exc}",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    log.info("node %s: backup of slot %s (index %s, %d bytes) spooled in %.3f s",
             getattr(node, "node_id", "?"), slot, index, info.size,
             time.perf_counter() - started)
    return Backup(path, info, keys)


# ------------------------------------------------------------------ aiohttp


def add_snapshot_route(app: web.Application, node: Any, *, request_timeout: float) -> None:
    """Serve `GET /v1/snapshot` for `node` on the aiohttp application `app`."""

    async def snapshot(request: web.Request) -> web.StreamResponse:
        parse_params(request, frozenset())
        backup = await take(node, request_timeout)  # ApiError: the middleware answers it
        try:
            response = web.StreamResponse(headers=backup.headers())
            response.content_type = CONTENT_TYPE
            response.content_length = backup.info.size
            await response.prepare(request)
            try:
                async for data in backup.chunks():
                    await response.write(data)  # waits while the client is not reading
                await response.write_eof()
            except ConnectionResetError:  # the client left: nobody reads the rest
                log.info("HTTP client %s left during a backup", request.remote)
            return response
        finally:
            backup.close()

    app.router.add_resource(SNAPSHOT_PATH, name="snapshot").add_route("GET", snapshot)


# ------------------------------------------------------------------ httptools


async def serve_h1(conn: Any, request: Any) -> None:
    """Answer `GET /v1/snapshot` on an `http_h1` connection: run as the connection's
    streaming task (`conn.sse`, cancelled when the connection is lost or the server
    stops). Uses the connection's queue of answers as `_events` does: the answer's
    bytes go to its slot, written once the slot is at the head of the queue."""
    from pnyx.api.http_bytes import error_bytes

    slot = request.slot
    status = 200
    backup: Backup | None = None
    started = False

    def send(data: bytes) -> None:
        slot.data.append(data)
        if conn.queue and conn.queue[0] is slot:
            conn._flush()

    async def room() -> None:
        while True:
            t = conn.transport
            if t is None or t.is_closing():
                raise ConnectionResetError("the client left")
            if conn.queue and conn.queue[0] is slot and t.get_write_buffer_size() < _HIGH_WATER:
                return
            await asyncio.sleep(_POLL)

    try:
        try:
            params_from_query(request.query, frozenset())
            backup = await take(conn.server.node, conn.server.request_timeout)
        except ApiError as exc:
            status = exc.status
            send(error_bytes(exc.status, exc.code, exc.message, headers=exc.headers,
                             extra=exc.extra, close=slot.close))
            return
        head = [b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n" % CONTENT_TYPE.encode()]
        head += [f"{name}: {value}\r\n".encode() for name, value in backup.headers().items()]
        if slot.close:
            head.append(b"Connection: close\r\n")
        head.append(b"Content-Length: %d\r\n\r\n" % backup.info.size)
        await room()
        started = True
        send(b"".join(head))
        async for data in backup.chunks():
            await room()
            send(data)
    except ConnectionResetError:
        status = 499  # the client left: nobody reads the rest
        slot.close = True
    except asyncio.CancelledError:
        status = 499  # the connection was lost, or the server stops
        slot.close = True
        raise
    except Exception:
        log.exception("unhandled error serving GET %s", SNAPSHOT_PATH)
        status = 500
        slot.close = True  # a body cut short must not pass for a whole one
        if not started:
            send(error_bytes(500, "internal", "internal error; see the node's log",
                             close=True))
    finally:
        if backup is not None:
            backup.close()
        if conn.sse is asyncio.current_task():
            conn.sse = None
        slot.done = True
        if conn.queue and conn.queue[0] is slot:
            conn._flush()
        conn._metric(SNAPSHOT_PATH, request.method, status, request.started)
