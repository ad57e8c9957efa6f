"""The binary client server: `serve_clients(node, host, port)` speaks `pnyx.api.wire` to clients.

This module owns the server side of the binary client protocol (the frames
and structs are defined in `pnyx.api.wire`): accepting connections, splitting
the byte stream into frames, checking each request the way the HTTP layer
does, running it against the node (`NodeAPI`), and writing the answers back,
pipelined and in whatever order they finish. It also owns the framing helper
the client (`pnyx.fastclient`) shares, and the error codes both sides use.

**Answers.** `ok=True` means the node did it: `result` is the encoded KV
result (`kv.decode_result`; a `NotFound`, `PreconditionFailed` or `Error` is
still `ok=True`, as the machine's own answer), `index` the log index; for
`status`, `result` is the node's status as JSON.

**Errors.** A response with `ok=False` has `error = "<code>: <message>"`:

- `invalid`: the command or query breaks a rule (empty key, contradictory
  conditions, not a KV request at all). Never retry.
- `too_large`: the command is over the size limit. Never retry.
- `unavailable`: no quorum or no leader in time (or the node is stopping).
  `unknown=True` if a write may still take effect: retry the same bytes,
  here or at another node; de-duplication makes that safe.
- `bad_request`: a request `id` already in flight on this connection.
- `internal`: a bug in pnyx; see the node's log.

A frame that is not a well-formed `ClientRequest` (bad MessagePack, wrong
shape, a length over `max_frame`) is a broken client: it is logged and that
connection is closed. Nothing a client sends can stop the node or another
connection.

**Cost.** Per connection, answers are coalesced: every response produced in
one event-loop iteration goes out in one `write` (or every 256 KiB, when
a burst of reads asks for large values). A request whose node call
finishes without waiting (a status, a refused command, a node that answers at
once) is answered without creating a task; the rest cost one task each (the
node's API is coroutines). Each connection has at most `max_inflight`
requests at the node: past that, and while the client is not reading its
answers, the server stops reading from it (TCP backpressure).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import types
import weakref
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import msgspec

from pnyx.api import wire
from pnyx.protocol.multipaxos import Code, Outcome
from pnyx.statemachine import kv

if TYPE_CHECKING:
    from pnyx.api.node_api import NodeAPI

log = logging.getLogger(__name__)

# Error codes: the part of `ClientResponse.error` before the first ": ".
INVALID: Final = "invalid"
TOO_LARGE: Final = "too_large"
UNAVAILABLE: Final = "unavailable"
BAD_REQUEST: Final = "bad_request"
INTERNAL: Final = "internal"

DEFAULT_MAX_INFLIGHT: Final = 4096

# Grace on top of a request's own timeout before the server stops waiting for
# the node and answers `unavailable` itself: the node is meant to answer by
# the timeout (as in `pnyx.api.http`); this only guards against one that hangs.
NODE_GRACE: Final = 1.0

# Answers queued past this many bytes are written at once, not at the end of the iteration.
_FLUSH_AT: Final = 256 << 10

# How long a connection closed for bad input may take to send the answers queued before it.
_CLOSE_GRACE: Final = 5.0


class Cancellable(Protocol):
    """A request at the node: its task, or the node's handle for it."""

    def cancel(self) -> Any: ...


_query_decoder = msgspec.msgpack.Decoder(kv.Query)
_json = msgspec.json.Encoder()


def error_code(error: str) -> tuple[str, str]:
    """`(code, message)` of a `ClientResponse.error`; code "" if it has none."""
    code, sep, message = error.partition(": ")
    if not sep or " " in code:
        return "", error
    return code, message


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_query(query: bytes, limit: int) -> str | None:
    """Why `query` would only be answered with an error (as `KVMachine.query` would), or None.

    The same rules the HTTP layer applies to its paths and parameters, so a bad
    read is refused before it costs a read-index round.
    """
    if len(query) > limit:
        return f"query is {len(query)} bytes, over the limit of {limit}"
    try:
        decoded = _query_decoder.decode(query)
    except (msgspec.MsgspecError, ValueError) as exc:
        return f"malformed query: {exc}"
    if isinstance(decoded, kv.Keys):
        if not 1 <= decoded.limit <= kv.MAX_KEYS_LIMIT:
            return f"limit must be between 1 and {kv.MAX_KEYS_LIMIT}, not {decoded.limit}"
        for what, text in (("prefix", decoded.prefix), ("after", decoded.after)):
            if _utf8_len(text) > kv.MAX_KEY_BYTES:
                return f"{what} is longer than {kv.MAX_KEY_BYTES} bytes"
        return None
    if not decoded.key:
        return "key must not be empty"
    if _utf8_len(decoded.key) > kv.MAX_KEY_BYTES:
        return f"key is {_utf8_len(decoded.key)} bytes, longer than {kv.MAX_KEY_BYTES}"
    return None


# --- running a coroutine without a task when it does not need one -------------


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> Generator[Any, None, None]:
    """The rest of `coro`, which has already run up to yielding `waiting_on`, as a task body."""
    while True:
        try:
            yield waiting_on
        except BaseException as exc:  # a cancellation (or anything) thrown in by the task
            try:
                waiting_on = coro.throw(exc)
            except StopIteration:
                return
            continue
        yield from coro
        return


def start_eagerly(loop: asyncio.AbstractEventLoop,
                  coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run `coro` now until it first waits; a task for the rest, or None if it finished.

    A task costs ~5 µs on these machines, more than the rest of a request on
    the fast path, and most of it is wasted when the coroutine finishes at
    once. Python 3.12 does this itself (`eager_start`); on 3.11 the first step
    is taken by hand and the task is made only if the coroutine is still
    waiting. One difference on 3.11: until its first wait, `coro` runs outside
    any task (`asyncio.current_task()` is None there).
    """
    if sys.version_info >= (3, 12):
        task = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
        return None if task.done() else task
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return loop.create_task(_resume(coro, waiting_on))


# --- framing, shared with the client --------------------------------------------


class FramedProtocol(asyncio.Protocol):
    """An `asyncio.Protocol` that splits the stream into wire frames and coalesces writes.

    Subclasses implement `frame_received(view)` (return False to stop parsing
    for now: `resume_parsing()` continues with what is buffered) and
    `protocol_error(reason)`. `send(message)` queues one frame; everything
    queued in one event-loop iteration is written with one `write`.
    """

    def __init__(self, max_frame: int = wire.MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self._inbuf = bytearray()  # an incomplete frame (or frames not parsed yet)
        self._need = 0  # bytes _inbuf must hold before a parse can make progress
        self._parsing_paused = False
        self._out = bytearray()
        self._flush_scheduled = False

    # -- reading --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._inbuf
        if buf:
            buf += data
            if self._parsing_paused or len(buf) < self._need:
                # Most of a large frame: wait for the rest rather than copy the
                # buffer on every chunk.
                return
            data = bytes(buf)
            buf.clear()
        elif self._parsing_paused:
            buf += data
            return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        view = memoryview(data)
        size = len(data)
        pos = 0
        unpack = wire.LENGTH.unpack_from
        max_frame = self.max_frame
        need = 4
        while size - pos >= 4:
            (length,) = unpack(data, pos)
            if length > max_frame:
                self.protocol_error(f"frame of {length} bytes, over the limit of {max_frame}")
                return
            end = pos + 4 + length
            if end > size:
                need = 4 + length
                break
            keep_going = self.frame_received(view[pos + 4:end])
            pos = end
            if self.transport is None or self.transport.is_closing():
                return
            if not keep_going:
                self._parsing_paused = True
                break
        if pos < size:
            self._inbuf += view[pos:]
            self._need = need

    def resume_parsing(self) -> None:
        """Parse what arrived while `frame_received` had paused parsing."""
        if not self._parsing_paused:
            return
        self._parsing_paused = False
        if len(self._inbuf) >= 4:
            data = bytes(self._inbuf)
            self._inbuf.clear()
            self._parse(data)

    def frame_received(self, view: memoryview) -> bool:
        raise NotImplementedError

    def protocol_error(self, reason: str) -> None:
        raise NotImplementedError

    # -- writing --

    def send(self, message: wire.ClientRequest | wire.ClientResponse) -> None:
        out = self._out
        start = len(out)
        out += b"\0\0\0\0"
        # Straight into the outgoing buffer: no intermediate bytes per frame.
        wire.encoder.encode_into(message, out, start + 4)
        wire.LENGTH.pack_into(out, start, len(out) - start - 4)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        # A new buffer each time: the transport may keep a view of this one.
        self._out = bytearray()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out)


# --- the server ---------------------------------------------------------------------

# The connections of each server, so `close_server` can close them.
_connections: weakref.WeakKeyDictionary[asyncio.Server, set[_ClientConnection]] = (
    weakref.WeakKeyDictionary())


class _ClientConnection(FramedProtocol):
    """One client's connection: its requests in flight and its outgoing answers."""

    def __init__(self, node: NodeAPI, members: set[_ClientConnection], max_frame: int,
                 max_command: int, max_inflight: int) -> None:
        super().__init__(max_frame)
        self.node = node
        self.members = members
        self.max_command = max_command
        self.max_inflight = max_inflight
        self.resume_at = max(1, max_inflight * 3 // 4)
        self.peer = "?"
        # id -> (the time to give up on the node, its task or handle, None until it has one)
        self.inflight: dict[int, tuple[float, Cancellable | None]] = {}
        # A node with the callback API (`submit_nowait`, `read_nowait`) is driven without
        # a task per request; any other `NodeAPI` through its coroutines.
        self._fast = hasattr(node, "submit_nowait") and hasattr(node, "read_nowait")
        self._sweeper: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.members.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        self.members.discard(self)
        self.transport = None
        self._inbuf.clear()
        # Requests still at the node run on (like an HTTP handler whose client
        # left): a write may be half way through Paxos, and the node bounds
        # them by their timeout. Their answers are dropped.

    def protocol_error(self, reason: str) -> None:
        log.warning("binary client %s: %s; closing its connection", self.peer, reason)
        self._inbuf.clear()
        if self.transport is not None:
            self.flush()
            self.transport.close()
            # close() waits for the answers already queued to be sent; a client
            # that does not read them must not keep the socket forever.
            self.loop.call_later(_CLOSE_GRACE, self.transport.abort)

    # -- backpressure --

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop taking new requests.
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pause = self._write_paused or len(self.inflight) >= self.max_inflight
        if pause and not self._read_paused:
            self._read_paused = True
            transport.pause_reading()
        elif (not pause and self._read_paused
              and len(self.inflight) <= self.resume_at):
            self._read_paused = False
            transport.resume_reading()
            self.resume_parsing()

    # -- requests --

    def frame_received(self, view: memoryview) -> bool:
        try:
            request = wire.request_decoder.decode(view)
        except (msgspec.MsgspecError, ValueError) as exc:
            self.protocol_error(f"malformed request: {exc}")
            return False
        keep_going = self._handle(request)
        if len(self._out) >= _FLUSH_AT:
            # Answers made at once pile up while one chunk of requests is parsed
            # (a few bytes of `read` can ask for megabytes): hand them to the
            # transport now, which says (`pause_writing`) if the client is not
            # keeping up, and then stop until it does.
            self.flush()
        return keep_going and not self._write_paused

    def _handle(self, request: wire.ClientRequest) -> bool:
        """Answer or start one request; False to stop parsing (too many in flight)."""
        rid = request.id
        if rid in self.inflight:
            self._error(rid, BAD_REQUEST, f"request id {rid} is already in flight")
            return True
        op = request.op
        if op == "submit":
            try:
                kv.validate(request.payload, self.max_command)
            except kv.CommandError as exc:
                code = TOO_LARGE if exc.code == kv.ErrorCode.TOO_LARGE else INVALID
                self._error(rid, code, exc.message)
                return True
        elif op == "read":
            reason = check_query(request.payload, self.max_command)
            if reason is not None:
                self._error(rid, INVALID, reason)
                return True
        else:
            self._status(rid)
            return True
        self.inflight[rid] = (self.loop.time() + request.timeout + NODE_GRACE, None)
        pending: Cancellable | None
        if self._fast:
            # No task, future or timer per request: the node calls back.
            done = functools.partial(self._finished, rid)
            node: Any = self.node
            if op == "submit":
                handle = node.submit_nowait(request.payload, done, timeout=request.timeout)
            else:
                handle = node.read_nowait(request.payload, request.mode, done,
                                          timeout=request.timeout)
            pending = handle if rid in self.inflight else None
        else:
            pending = start_eagerly(self.loop, self._run(rid, request))
        if pending is not None:
            entry = self.inflight.get(rid)
            if entry is not None:
                self.inflight[rid] = (entry[0], pending)
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(NODE_GRACE / 2, self._sweep)
            if len(self.inflight) >= self.max_inflight:
                self._update_reading()
                return False
        return True

    async def _run(self, rid: int, request: wire.ClientRequest) -> None:
        try:
            if request.op == "submit":
                outcome = await self.node.submit(request.payload, timeout=request.timeout)
            else:
                outcome = await self.node.read(request.payload, request.mode,
                                               timeout=request.timeout)
        except asyncio.CancelledError:
            # By `_sweep`, which has answered already, or by the loop shutting down.
            self.inflight.pop(rid, None)
            raise
        except Exception as exc:
            log.exception("binary client %s: request %d failed", self.peer, rid)
            outcome = Outcome(False, error=f"{INTERNAL}: {type(exc).__name__}; see the "
                                            "node's log")
        self._finished(rid, outcome)

    def _finished(self, rid: int, outcome: Outcome) -> None:
        if self.inflight.pop(rid, None) is None:
            return  # `_sweep` gave up on it and answered
        self._answer(rid, outcome)
        if self._read_paused:
            self._update_reading()

    def _answer(self, rid: int, outcome: Outcome) -> None:
        if outcome.ok:
            self.send(wire.ClientResponse(rid, True, outcome.result, outcome.index))
            return
        error = outcome.error
        code, _ = error_code(error)
        if code not in (UNAVAILABLE, INTERNAL):
            # The node's own words; classify them as the HTTP layer does.
            if not outcome.unknown and outcome.code is Code.TOO_LARGE:
                error = f"{TOO_LARGE}: {error}"
            else:
                error = f"{UNAVAILABLE}: {error or 'no quorum or no leader in time'}"
        self.send(wire.ClientResponse(rid, False, index=outcome.index, error=error,
                                      unknown=outcome.unknown))

    def _error(self, rid: int, code: str, message: str, *, unknown: bool = False) -> None:
        self.send(wire.ClientResponse(rid, False, error=f"{code}: {message}", unknown=unknown))

    def _status(self, rid: int) -> None:
        try:
            body = _json.encode(self.node.status())
        except Exception as exc:
            log.exception("binary client %s: status failed", self.peer)
            self._error(rid, INTERNAL, f"{type(exc).__name__}; see the node's log")
            return
        self.send(wire.ClientResponse(rid, True, body))

    def _sweep(self) -> None:
        """Answer the requests the node has not answered by their deadline (plus grace)."""
        self._sweeper = None
        now = self.loop.time()
        expired = [rid for rid, (deadline, _) in self.inflight.items() if deadline <= now]
        for rid in expired:
            _, task = self.inflight.pop(rid)
            self._error(rid, UNAVAILABLE, "the node did not answer in time", unknown=True)
            if task is not None:
                task.cancel()
        if self.inflight:
            self._sweeper = self.loop.call_later(NODE_GRACE / 2, self._sweep)
        if expired and self._read_paused:
            self._update_reading()


async def serve_clients(
    node: NodeAPI,
    host: str,
    port: int,
    *,
    max_frame: int = wire.MAX_FRAME,
    max_command: int = kv.DEFAULT_COMMAND_LIMIT,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
) -> asyncio.Server:
    """Serve the binary client protocol for `node` on `host:port` (port 0: any free one).

    `max_frame` bounds a frame in bytes (a larger one closes the connection);
    `max_command` bounds an encoded command (larger: `too_large`), like the
    node's own limit; `max_inflight` bounds the requests of one connection at
    the node at once. Raises `OSError` if the address cannot be bound. Stop it
    with `close_server(server)`, which also closes the clients' connections.
    """
    if max_frame < 1 or max_command < 1 or max_inflight < 1:
        raise ValueError("max_frame, max_command and max_inflight must be positive")
    loop = asyncio.get_running_loop()
    members: set[_ClientConnection] = set()
    server = await loop.create_server(
        lambda: _ClientConnection(node, members, max_frame, max_command, max_inflight),
        host, port)
    _connections[server] = members
    return server


async def close_server(server: asyncio.Server) -> None:
    """Stop accepting, close every client connection of `server`, and wait until closed.

    Requests still at the node run to their end; their answers are dropped.
    (`asyncio.Server.close` alone leaves accepted connections open, and on
    Python 3.12+ `wait_closed` would wait for them.)
    """
    server.close()
    for conn in list(_connections.get(server, ())):
        if conn.transport is not None:
            conn.transport.abort()
    await server.wait_closed()
