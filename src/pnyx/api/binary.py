"""The binary client server: `serve_clients(node, host, port)` speaks `pnyx.wire` to clients.

This module owns the server side of the binary client protocol (the frames
and messages are defined in `pnyx.wire`): accepting connections, checking
each request with the key-value machine's own rules (`kv.validate`,
`kv.validate_query`), running it against the node (`NodeAPI`), and writing
the answers back, pipelined and in whatever order they finish.

**Answers.** `ok=True` means the node did it: `result` is the encoded KV
result (`kv.decode_result`; a `NotFound`, `PreconditionFailed` or `Error` is
still `ok=True`, as the machine's own answer), `index` the log index; for
`status`, `result` is the node's status as JSON.

**Errors.** A response with `ok=False` carries a `pnyx.wire.ErrorCode` in
`code` and the node's words in `error`. An `Outcome`'s `Code` becomes a wire
code through one table, `WIRE_CODES`; the rest are the protocol's own
(`bad_request`: a request `id` already in flight on this connection).
`unknown=True` if a write may still take effect.

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
answers, the server stops reading from it (TCP backpressure). Admission
control (`ClientLimits.max_pending`, over every client port of the node): a
request past it is answered at once, `ok=False`, code `unavailable`, words
starting `overloaded`, and never reaches the node.

**Limits and TLS.** `serve_clients(..., limits=ClientLimits(...), ssl=ctx)`:
a frame started and not finished within `body_timeout` closes the connection,
as does `idle_timeout` with nothing in flight and nothing received; a
connection over `max_connections` gets one `ClientResponse` (id 0,
`unavailable`, "too many connections") and is closed (`pnyx.api.limits`). With
`ssl` (`pnyx.tls.client_port_context`) the port speaks TLS only, and with a
client CA in that context a client must present a certificate from it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl as ssl_module
import sys
import types
import weakref
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec

from pnyx import wire
from pnyx.api.limits import OVERLOADED, Admission, ClientLimits, Refusal, admission_for
from pnyx.protocol.multipaxos import Code, Outcome
from pnyx.statemachine import kv
from pnyx.wire import ErrorCode
from pnyx.wire.stream import FramedProtocol

if TYPE_CHECKING:
    from pnyx.api.node_api import NodeAPI

log = logging.getLogger(__name__)

# The one table from an outcome's `Code` to the wire's `ErrorCode`. Every code is here
# (a test checks); `NONE` on a failure is a node that did not say why: retry it.
WIRE_CODES: Final[dict[Code, ErrorCode]] = {
    Code.NONE: ErrorCode.UNAVAILABLE,
    Code.TOO_LARGE: ErrorCode.TOO_LARGE,
    Code.BAD_REQUEST: ErrorCode.INVALID,
    Code.ABORTED: ErrorCode.UNAVAILABLE,
    Code.NOT_LEADER: ErrorCode.UNAVAILABLE,
    Code.NO_LEADER: ErrorCode.UNAVAILABLE,
    Code.TIMEOUT: ErrorCode.UNAVAILABLE,
    Code.READ_DISAGREED: ErrorCode.UNAVAILABLE,
    Code.SHUTTING_DOWN: ErrorCode.UNAVAILABLE,
    Code.INTERNAL: ErrorCode.INTERNAL,
    Code.CUT_OFF: ErrorCode.UNAVAILABLE,  # at once; the message names the leader if known
    # Membership changes' refusals: the binary protocol carries no change, so a command
    # never gets these; were one to, it is a refusal of the request itself.
    Code.CONFLICT: ErrorCode.INVALID,
    Code.REFUSED: ErrorCode.INVALID,
}

DEFAULT_MAX_INFLIGHT: Final = ClientLimits().max_inflight

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


_json = msgspec.json.Encoder()


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


# --- the server ---------------------------------------------------------------------

class _Served:
    """One server's connections and the timer that holds them to the limits."""

    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits
        self.members: set[_ClientConnection] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.server: asyncio.Server | None = None
        self.refused = 0
        refusal = wire.ClientResponse(
            0, False, error=f"too many connections to this node (at most "
            f"{limits.max_connections}); try another node or later",
            code=ErrorCode.UNAVAILABLE)
        self.refusal = wire.frame(refusal)

    def sweep(self) -> None:
        """Close the connections that broke a timeout; runs every `limits.sweep_every`."""
        self.timer = None
        if self.server is None or not self.server.is_serving():
            return  # closed without close_server: nothing left to sweep for
        loop = asyncio.get_running_loop()
        now = loop.time()
        limits = self.limits
        for conn in list(self.members):
            if conn.stalled(now, limits.body_timeout):
                conn.protocol_error(f"a frame started {limits.body_timeout:g} s ago is "
                                    "still not complete")
            elif (not conn.inflight and not conn.decoder.buffered()
                  and now - conn.last_received >= limits.idle_timeout):
                conn.close_idle()
        self.timer = loop.call_later(limits.sweep_every, self.sweep)


# Every server's connections and limits, so `close_server` can close them.
_connections: weakref.WeakKeyDictionary[asyncio.Server, _Served] = weakref.WeakKeyDictionary()


class _ClientConnection(FramedProtocol):
    """One client's connection: its requests in flight and its outgoing answers."""

    def __init__(self, node: NodeAPI, members: set[_ClientConnection], max_frame: int,
                 max_command: int, max_inflight: int, admission: Admission | None = None,
                 ) -> None:
        super().__init__(max_frame)
        self.node = node
        self.admission = admission if admission is not None else Admission(
            ClientLimits().max_pending)
        self._overloaded = (f"{OVERLOADED}: this node has as many requests in flight as it "
                            f"takes ({self.admission.limit}); retry after a pause")
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

    def close_idle(self) -> None:
        log.debug("binary client %s: idle; closing its connection", self.peer)
        if self.transport is not None:
            self.transport.close()
            self.loop.call_later(_CLOSE_GRACE, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self.members.discard(self)
        self.transport = None
        self.decoder.clear()
        # Requests still at the node run on (like an HTTP handler whose client
        # left): a write may be half way through Paxos, and the node bounds
        # them by their timeout. Their answers are dropped.

    def protocol_error(self, reason: str) -> None:
        log.warning("binary client %s: %s; closing its connection", self.peer, reason)
        self.decoder.clear()
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
        if self.pending_output() >= _FLUSH_AT:
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
            self._error(rid, ErrorCode.BAD_REQUEST, f"request id {rid} is already in flight")
            return True
        op = request.op
        if op == "status":
            self._status(rid)
            return True
        if not self.admission.try_enter():
            # Admission control: the node has all the requests it takes; refused at once,
            # not queued (see `pnyx.api.limits`), and before any other work: under
            # overload, refusing must cost the node as little as it can.
            # `unavailable` is retried by every client.
            self._error(rid, ErrorCode.UNAVAILABLE, self._overloaded)
            return True
        try:
            if op == "submit":
                kv.validate(request.payload, self.max_command)
            else:
                kv.validate_query(request.payload, self.max_command)
        except kv.CommandError as exc:
            self.admission.leave()
            # Only a command is ever too large (to store); an oversized query is a bad
            # one, as the HTTP API answers an overlong key.
            too_large = op == "submit" and exc.code == kv.ErrorCode.TOO_LARGE
            self._fail(rid, Code.TOO_LARGE if too_large else Code.BAD_REQUEST, exc.message)
            return True
        # In flight from here: a node that answers before returning finds the entry.
        self.inflight[rid] = (self.loop.time() + request.timeout + NODE_GRACE, None)
        pending: Cancellable | None
        if self._fast:
            # No task, future or timer per request: the node calls back.
            done = functools.partial(self._finished, rid)
            node: Any = self.node
            try:
                if op == "submit":
                    handle = node.submit_nowait(request.payload, done, timeout=request.timeout)
                else:
                    handle = node.read_nowait(request.payload, request.mode, done,
                                              timeout=request.timeout)
            except Exception as exc:
                # The node refused to start it (not started, a bug): it is not in
                # flight, and the client gets an answer rather than silence.
                log.exception("binary client %s: the node refused request %d", self.peer, rid)
                self._finished(rid, Outcome.failed(
                    Code.INTERNAL, f"{type(exc).__name__}; see the node's log"))
                return True
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
            outcome = Outcome.failed(Code.INTERNAL, f"{type(exc).__name__}; see the node's log")
        self._finished(rid, outcome)

    def _finished(self, rid: int, outcome: Outcome) -> None:
        if self.inflight.pop(rid, None) is None:
            return  # `_sweep` gave up on it and answered
        self.admission.leave()
        if outcome.ok:
            self.send(wire.ClientResponse(rid, True, outcome.result, outcome.index))
        else:
            self.send(wire.ClientResponse(
                rid, False, index=outcome.index,
                error=outcome.error or "no quorum or no leader in time",
                unknown=outcome.unknown, code=WIRE_CODES[outcome.code]))
        if self._read_paused:
            self._update_reading()

    def _fail(self, rid: int, code: Code, message: str, *, unknown: bool = False) -> None:
        """Answer a request that failed with `code`, through the one table."""
        self.send(wire.ClientResponse(rid, False, error=message, unknown=unknown,
                                      code=WIRE_CODES[code]))

    def _error(self, rid: int, code: ErrorCode, message: str) -> None:
        """Answer with one of the protocol's own codes (no `Outcome` behind it)."""
        self.send(wire.ClientResponse(rid, False, error=message, code=code))

    def _status(self, rid: int) -> None:
        try:
            body = _json.encode(self.node.status())
        except Exception as exc:
            log.exception("binary client %s: status failed", self.peer)
            self._fail(rid, Code.INTERNAL, f"{type(exc).__name__}; see the node's log")
            return
        self.send(wire.ClientResponse(rid, True, body))

    def _sweep(self) -> None:
        """Answer the requests the node has not answered by their deadline (plus grace)."""
        self._sweeper = None
        now = self.loop.time()
        expired = [rid for rid, (deadline, _) in self.inflight.items() if deadline <= now]
        for rid in expired:
            _, task = self.inflight.pop(rid)
            self.admission.leave()
            self._fail(rid, Code.TIMEOUT, "the node did not answer in time", unknown=True)
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
    max_inflight: int | None = None,
    limits: ClientLimits | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> asyncio.Server:
    """Serve the binary client protocol for `node` on `host:port` (port 0: any free one).

    `max_frame` bounds a frame in bytes (a larger one closes the connection);
    `max_command` bounds an encoded command (larger: `too_large`), like the
    node's own limit; `limits` bounds connections in time and number
    (`pnyx.api.limits`), and `max_inflight`, if given, replaces its
    `max_inflight` (the requests of one connection at the node at once).
    `ssl`: serve TLS only (`pnyx.tls.client_port_context`). Raises `OSError` if
    the address cannot be bound. Stop it with `close_server(server)`, which
    also closes the clients' connections.
    """
    limits = limits or ClientLimits()
    inflight = limits.max_inflight if max_inflight is None else max_inflight
    if max_frame < 1 or max_command < 1 or inflight < 1:
        raise ValueError("max_frame, max_command and max_inflight must be positive")
    loop = asyncio.get_running_loop()
    served = _Served(limits)
    members = served.members
    admission = admission_for(node, limits.max_pending)

    def accept() -> asyncio.Protocol:
        if len(members) >= limits.max_connections:
            served.refused += 1
            if served.refused in (1, 10, 100) or served.refused % 1000 == 0:
                log.warning("binary clients: %d connections refused so far (at most %d at "
                            "once; --max-connections)", served.refused,
                            limits.max_connections)
            return Refusal(served.refusal)
        return _ClientConnection(node, members, max_frame, max_command, inflight, admission)

    server = await loop.create_server(
        accept, host, port, ssl=ssl,
        ssl_handshake_timeout=limits.body_timeout if ssl is not None else None)
    _connections[server] = served
    served.server = server
    served.timer = loop.call_later(limits.sweep_every, served.sweep)
    return server


async def close_server(server: asyncio.Server) -> None:
    """Stop accepting, close every client connection of `server`, and wait until closed.

    Requests still at the node run to their end; their answers are dropped.
    (`asyncio.Server.close` alone leaves accepted connections open, and on
    Python 3.12+ `wait_closed` would wait for them.)
    """
    server.close()
    served = _connections.get(server)
    if served is not None:
        if served.timer is not None:
            served.timer.cancel()
        for conn in list(served.members):
            if conn.transport is not None:
                conn.transport.abort()
    await server.wait_closed()
