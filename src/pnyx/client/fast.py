"""`AsyncFastClient` and `FastClient`: the fast Python clients, over the binary protocol.

They have the API of `pnyx.AsyncClient` and `pnyx.Client` (`put`, `get`,
`delete`, `cas`, `keys`, `status`, the same arguments, return values and
`pnyx.errors` exceptions) but speak the binary client protocol (`pnyx.wire`) to a
node's client port (`pnyx serve --client`) instead of HTTP, which caps a node near
20 k requests/s. This module owns the client side of that protocol: the
connections, request ids, pipelining, timeouts, failover and retries.

**One connection per node, shared by every call.** Any number of calls may be
in flight at once (start them with `asyncio.gather` or from many tasks); each
is one frame on the connection to the current node, and the answers come
back in any order, matched by request id. Frames written in one event-loop
iteration go out in one write.

**Failover.** Like `AsyncClient`, the client sticks to one node and moves to
the next on a connection error, a timeout, or an `unavailable` answer (no
quorum or leader there), until the call's `retry_timeout` runs out.

**Retries are safe.** Every write goes as a `kv.IdempotentRequest` under one
key for all its attempts, to whichever node, so a write whose answer was lost
is applied once and answered with its first result. The keys live in the same
namespace as the HTTP API's `Idempotency-Key` (`h:` + key), so a key from
`Unavailable.idempotency_key` may be retried through either client.

Errors carry the `status` and `code` the HTTP API would have given for the
same answer (404 `not_found`, 412 `precondition_failed`, 413
`value_too_large`, 400 `invalid`, 409 `idempotency_key_reused`, 503
`unavailable`), so code written against `pnyx.Client` handles them unchanged:
a wire `ErrorCode` becomes its HTTP status and code in one table,
`HTTP_EQUIVALENT`, and then the exception `pnyx.client.common.error_for` picks.
This module imports no server code (only `pnyx.wire`, the key-value
machine's encoding, and the clients' common code).

    async with pnyx.AsyncFastClient(["127.0.0.1:7001", "127.0.0.1:7002"]) as client:
        indexes = await asyncio.gather(*(client.put(f"k{i}", b"v") for i in range(1000)))
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar

import msgspec

from pnyx import wire
from pnyx.client.common import (
    CLIENT_KEY_PREFIX,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RETRY_TIMEOUT,
    DEFAULT_TIMEOUT,
    ClientBase,
    Failed,
    PathLike,
    as_bytes,
    check_consistency,
    check_key,
    check_keys_args,
    describe,
    error_for,
    page_size,
    untrusted,
)
from pnyx.errors import (
    PnyxError,
    ValueTooLarge,
)
from pnyx.statemachine import kv
from pnyx.wire import ErrorCode
from pnyx.wire.stream import FramedProtocol

T = TypeVar("T")

DEFAULT_REQUEST_TIMEOUT: Final = 5.0  # what the node may take, as the HTTP API's request_timeout

_GRACE: Final = 2.0  # past the node's timeout: the server's own grace, and the trip back
_MAX_WIRE_TIMEOUT: Final = 300.0  # the largest `ClientRequest.timeout` the wire allows
_MAX_PAYLOAD: Final = wire.MAX_FRAME - 64  # room for the rest of the request frame

# The one table from a wire error code to what the HTTP API answers for the same
# failure: (status, code). `unavailable` is not here: it is retried, not raised.
HTTP_EQUIVALENT: Final[dict[ErrorCode, tuple[int, str]]] = {
    ErrorCode.INVALID: (400, "invalid"),
    ErrorCode.TOO_LARGE: (413, "value_too_large"),
    ErrorCode.BAD_REQUEST: (400, "bad_request"),
    ErrorCode.INTERNAL: (500, "internal"),
}

_json = msgspec.json.Decoder()


class _Connection(FramedProtocol):
    """The connection to one node: its calls waiting for answers, by request id."""

    def __init__(self, client: AsyncFastClient, index: int) -> None:
        super().__init__(wire.MAX_FRAME)
        self.client = client
        self.index = index
        # id -> (the caller's future, when to give up on it)
        self.pending: dict[int, tuple[asyncio.Future[wire.ClientResponse], float]] = {}
        self.closed = False
        self.refused = False
        self.lost_reason = "connection closed"
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = min(max(client.timeout / 10, 0.01), 0.5)
        self._writable: asyncio.Future[None] | None = None

    def request(self, message: wire.ClientRequest, deadline: float,
                ) -> asyncio.Future[wire.ClientResponse]:
        fut: asyncio.Future[wire.ClientResponse] = self.loop.create_future()
        self.pending[message.id] = (fut, deadline)
        self.send(message)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)
        return fut

    async def writable(self) -> None:
        """Wait while the node is not reading (its buffer, and so ours, is full)."""
        while self._writable is not None and not self.closed:
            await asyncio.shield(self._writable)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set_result(None)
            self._writable = None

    def frame_received(self, view: memoryview) -> bool:
        try:
            response = wire.response_decoder.decode(view)
        except (msgspec.MsgspecError, ValueError) as exc:
            self.protocol_error(f"malformed response: {exc}")
            return False
        entry = self.pending.pop(response.id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(response)
        elif response.id == 0 and not response.ok:
            # The node refused the connection (too many): it read none of our requests.
            self.refused = True
            self.lost_reason = response.error or "the node refused the connection"
        return True

    def protocol_error(self, reason: str) -> None:
        self.lost_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if exc is not None:
            self.lost_reason = describe(exc)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.resume_writing()
        self.client._lost(self)
        pending, self.pending = self.pending, {}
        failure = Failed(f"connection lost: {self.lost_reason}", sent=not self.refused)
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(failure)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        expired = [rid for rid, (_, deadline) in self.pending.items() if deadline <= now]
        for rid in expired:
            fut, _ = self.pending.pop(rid)
            if not fut.done():
                fut.set_exception(Failed("no answer in time", sent=True))
        if self.pending and not self.closed:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()


class AsyncFastClient(ClientBase):
    """An asyncio client of a pnyx cluster over the binary protocol; see the module docs.

    `endpoints`: the nodes' client addresses, `["127.0.0.1:7001", ...]`.
    `timeout`: seconds one attempt may wait for its answer; `connect_timeout`:
    seconds to connect; `retry_timeout`: seconds one call may spend over all
    its attempts and nodes; `request_timeout`: seconds the node may take to
    get a quorum or a leader before answering `unavailable`. TLS: `cacert=`
    (the cluster's CA), `cert=` and `key=` (a client certificate), or
    `ssl_context=`; `https://` endpoints also turn it on. Use `async with`
    or `await close()`; it is bound to the event loop of its first call.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 ssl_context: ssl.SSLContext | None = None, cacert: PathLike | None = None,
                 cert: PathLike | None = None, key: PathLike | None = None) -> None:
        super().__init__(endpoints, timeout=timeout, connect_timeout=connect_timeout,
                         retry_timeout=retry_timeout, ssl_context=ssl_context,
                         cacert=cacert, cert=cert, key=key)
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be positive, not {request_timeout!r}")
        self.request_timeout = min(request_timeout, _MAX_WIRE_TIMEOUT)
        self._conns: dict[int, _Connection] = {}
        self._connecting: dict[int, asyncio.Future[_Connection]] = {}
        self._ids = itertools.count(1)
        self._closed = False

    # -- the API --

    async def put(self, key: str, value: bytes | str, *,
                  prev_value: bytes | str | None = None, prev_index: int | None = None,
                  prev_exist: bool | None = None, idempotency_key: str | None = None) -> int:
        """Set `key` to `value` if the conditions hold; returns the index it was written at."""
        command = kv.Put(
            check_key(key), as_bytes(value, "value"),
            None if prev_value is None else as_bytes(prev_value, "prev_value"),
            prev_index, prev_exist)
        return await self._write(command, idempotency_key)

    async def get(self, key: str, *, consistency: str = "linearizable") -> tuple[bytes, int]:
        """`(value, mod_index)` of `key`; raises `NotFound`."""
        check_consistency(consistency)
        query = kv.encode_query(check_key(key))
        response = await self._call("read", query, consistency, write=False, key=None)
        result = self._result(response)
        if isinstance(result, kv.Ok):
            return result.value or b"", result.index
        raise self._result_error(result, key)

    async def delete(self, key: str, *, prev_value: bytes | str | None = None,
                     prev_index: int | None = None, prev_exist: bool | None = None,
                     idempotency_key: str | None = None) -> int:
        """Remove `key` if the conditions hold; returns the index of the delete."""
        command = kv.Delete(
            check_key(key), None if prev_value is None else as_bytes(prev_value, "prev_value"),
            prev_index, prev_exist)
        return await self._write(command, idempotency_key)

    async def cas(self, key: str, expected: bytes | str, new: bytes | str, *,
                  idempotency_key: str | None = None) -> int:
        """Set `key` to `new` only if it is `expected`; raises `PreconditionFailed`/`NotFound`."""
        return await self.put(key, new, prev_value=expected, idempotency_key=idempotency_key)

    async def keys(self, prefix: str = "", limit: int | None = 100, *,
                   consistency: str = "linearizable") -> list[tuple[str, int]]:
        """`(key, mod_index)` of up to `limit` keys under `prefix` (None: all), in key order,
        fetched a page at a time (each page is its own read, not one snapshot)."""
        check_keys_args(limit, consistency)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be str, not {type(prefix).__name__}")
        out: list[tuple[str, int]] = []
        after = ""
        while limit is None or len(out) < limit:
            query = kv.encode_keys_query(prefix, after, page_size(limit, len(out)))
            response = await self._call("read", query, consistency, write=False, key=None)
            result = self._result(response)
            if not isinstance(result, kv.KeyList):
                raise self._result_error(result, prefix)
            out.extend(result.items)
            if not (result.more and result.items):
                break
            after = result.items[-1][0]
        return out

    async def status(self) -> dict[str, Any]:
        """The status of whichever node answered."""
        response = await self._call("status", b"", "linearizable", write=False, key=None)
        if not response.ok:
            raise _refused(response)
        try:
            result = _json.decode(response.result)
        except msgspec.DecodeError:
            raise PnyxError("the node sent a status that is not JSON") from None
        if not isinstance(result, dict):
            raise PnyxError("the node sent a status that is not an object")
        return result

    async def submit_raw(self, command: bytes) -> wire.ClientResponse:
        """Submit an encoded KV request (`kv.encode_request`) as is; the node's answer.

        Retried (the same bytes, so give the request an identity: an
        `IdempotentRequest`, or a `Request` whose client id has nothing else in
        flight) over connection failures and `unavailable` answers, like every
        call; raises `Unavailable` when `retry_timeout` runs out. Any other
        answer is returned as it came, `ok=False` ones included: decode
        `result` with `kv.decode_result`.
        """
        return await self._call("submit", bytes(command), "linearizable", write=True, key=None)

    async def read_raw(self, query: bytes, mode: str = "linearizable") -> wire.ClientResponse:
        """Answer an encoded query (`kv.encode_query`, `kv.encode_keys_query`) in `mode`;
        the node's answer, retried like `submit_raw`."""
        check_consistency(mode)
        return await self._call("read", bytes(query), mode, write=False, key=None)

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()
        # Let the transports' close callbacks run.
        await asyncio.sleep(0)

    async def __aenter__(self) -> AsyncFastClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- building calls and reading answers --

    async def _write(self, command: kv.Put | kv.Delete, idempotency_key: str | None) -> int:
        key = self._idempotency_keys.key(idempotency_key)
        payload = kv.encode_request(kv.IdempotentRequest(CLIENT_KEY_PREFIX + key, command))
        response = await self._call("submit", payload, "linearizable", write=True, key=key)
        result = self._result(response)
        if isinstance(result, kv.Ok):
            return result.index
        raise self._result_error(result, command.key, idempotency_key=key)

    @staticmethod
    def _result(response: wire.ClientResponse) -> kv.Result:
        if not response.ok:
            raise _refused(response)
        try:
            return kv.decode_result(response.result)
        except kv.MalformedResult as exc:
            raise PnyxError(f"the node sent a malformed result: {exc}") from None

    @staticmethod
    def _result_error(result: kv.Result, key: str, *, idempotency_key: str = "",
                      ) -> PnyxError:
        """The exception for the machine's own refusal, as the HTTP API reports it."""
        if isinstance(result, kv.NotFound):
            return error_for(404, "not_found", f"key {key!r} does not exist")
        if isinstance(result, kv.PreconditionFailed):
            return error_for(
                412, "precondition_failed",
                f"precondition failed: the key is at index {result.current_index}",
                extra={"index": result.current_index})
        if isinstance(result, kv.Error):
            if result.code == kv.ErrorCode.TOO_LARGE:
                return error_for(413, "value_too_large", result.message)
            if result.code == kv.ErrorCode.REUSED:
                # As the HTTP API words it: the caller's key, not the stored (prefixed) one.
                return error_for(409, "idempotency_key_reused",
                                 f"Idempotency-Key {idempotency_key!r} was already used for "
                                 "a different command")
            return error_for(400, "invalid", result.message)
        return error_for(500, "internal", f"unexpected result {type(result).__name__}")

    # -- sending --

    async def _call(self, op: str, payload: bytes, mode: str, *, write: bool,
                    key: str | None) -> wire.ClientResponse:
        """Send one request until a node answers it other than `unavailable`."""
        if self._closed:
            raise PnyxError("the client is closed")
        if len(payload) > _MAX_PAYLOAD:
            # The server would close the connection, failing every call on it.
            raise ValueTooLarge(f"the request is {len(payload)} bytes, over the protocol's "
                                f"limit of {_MAX_PAYLOAD}", status=413, code="value_too_large")
        loop = asyncio.get_running_loop()
        attempts = self._attempts(loop.time(), write=write, key=key)
        # After a failed attempt `_turns` moves on from the node: many calls fail
        # together when a node goes, and move on once, not once each.
        for i in self._turns(attempts, loop.time):
            if i is None:
                # A whole round failed: wait a little before the next one.
                await asyncio.sleep(attempts.pause(loop.time()))
                continue
            try:
                conn = self._conns.get(i)
                if conn is None or conn._writable is not None:
                    conn = await self._ready(loop, i, conn)
                # Not a coroutine of its own: on the fast path a call is one
                # frame and one future, nothing more.
                response = await self._request(conn, op, payload, mode, loop.time(),
                                               attempts.deadline)
            except Failed as failed:
                attempts.failed(self._name(i), failed.reason, sent=failed.sent)
                if self._closed:
                    raise attempts.give_up("the client was closed during the call") from None
            else:
                if response.ok or response.code is not ErrorCode.UNAVAILABLE:
                    self._answered_by(i)
                    return response
                attempts.failed(self._name(i), response.error, sent=response.unknown,
                                status=503)
        raise AssertionError("unreachable: _turns ends only by raising")

    async def _ready(self, loop: asyncio.AbstractEventLoop, i: int,
                     conn: _Connection | None) -> _Connection:
        """A connection to node `i` that takes requests now: made, or no longer paused."""
        if conn is None:
            return await self._connect(loop, i)
        await conn.writable()
        return conn

    def _request(self, conn: _Connection, op: str, payload: bytes, mode: str, now: float,
                 deadline: float) -> asyncio.Future[wire.ClientResponse]:
        """Send one attempt on `conn`; the future of its answer (or of `Failed`)."""
        if conn.closed:
            raise Failed(f"connection lost: {conn.lost_reason}", sent=False)
        node_timeout = self.request_timeout
        if deadline - now < node_timeout:
            node_timeout = max(deadline - now, 0.001)
        message = wire.ClientRequest(next(self._ids), op, payload, mode,  # type: ignore[arg-type]
                                     node_timeout)
        wait = node_timeout + _GRACE
        return conn.request(message, now + (wait if wait < self.timeout else self.timeout))

    async def _connect(self, loop: asyncio.AbstractEventLoop, i: int) -> _Connection:
        """The connection to node `i`; concurrent callers share one attempt."""
        pending = self._connecting.get(i)
        if pending is None:
            pending = loop.create_future()
            self._connecting[i] = pending
            try:
                host, port = self.endpoints[i]
                _, conn = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Connection(self, i), host, port, ssl=self.ssl,
                        server_hostname=host if self.ssl is not None else None),
                    self.connect_timeout)
                if self._closed:
                    conn.close()
                    raise Failed("the client is closed", sent=False)
                self._conns[i] = conn
                pending.set_result(conn)
            except ssl.SSLCertVerificationError as exc:
                refused = untrusted(self._name(i), exc)
                pending.set_exception(refused)
                pending.exception()
                raise refused from None
            except (OSError, TimeoutError) as exc:
                failure = Failed(f"cannot connect: {describe(exc)}", sent=False)
                pending.set_exception(failure)
                pending.exception()  # retrieved: no "never retrieved" warning if no one waits
                raise failure from None
            except BaseException:
                # This caller was cancelled (or worse): the others sharing the
                # attempt move on as from a failed connect.
                pending.set_exception(Failed("connecting was interrupted", sent=False))
                pending.exception()
                raise
            finally:
                del self._connecting[i]
            return conn
        return await asyncio.shield(pending)

    def _lost(self, conn: _Connection) -> None:
        if self._conns.get(conn.index) is conn:
            del self._conns[conn.index]


def _refused(response: wire.ClientResponse) -> PnyxError:
    """The exception for an `ok=False` answer that is not `unavailable`."""
    known = HTTP_EQUIVALENT.get(response.code)
    if known is None:
        # A code this client does not know (a newer server, or none at all): say so.
        return PnyxError(f"the node answered {response.code or 'an error without a code'}: "
                         f"{response.error}", code=response.code or None)
    status, code = known
    return error_for(status, code, response.error or f"the node answered {code}")


class FastClient:
    """A blocking `AsyncFastClient`: the same calls, run on an event loop in a thread of its own.

    Safe to share between threads, and calls from many threads are pipelined
    over the same connection. Use `with` or `close()`.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 ssl_context: ssl.SSLContext | None = None, cacert: PathLike | None = None,
                 cert: PathLike | None = None, key: PathLike | None = None) -> None:
        self._client = AsyncFastClient(endpoints, timeout=timeout,
                                       connect_timeout=connect_timeout,
                                       retry_timeout=retry_timeout,
                                       request_timeout=request_timeout,
                                       ssl_context=ssl_context, cacert=cacert, cert=cert,
                                       key=key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="pnyx-fastclient", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return self._client.endpoints

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise PnyxError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def put(self, key: str, value: bytes | str, *, prev_value: bytes | str | None = None,
            prev_index: int | None = None, prev_exist: bool | None = None,
            idempotency_key: str | None = None) -> int:
        """Set `key` to `value` if the conditions hold; returns the index it was written at."""
        return self._run(self._client.put(key, value, prev_value=prev_value,
                                          prev_index=prev_index, prev_exist=prev_exist,
                                          idempotency_key=idempotency_key))

    def get(self, key: str, *, consistency: str = "linearizable") -> tuple[bytes, int]:
        """`(value, mod_index)` of `key`; raises `NotFound`."""
        return self._run(self._client.get(key, consistency=consistency))

    def delete(self, key: str, *, prev_value: bytes | str | None = None,
               prev_index: int | None = None, prev_exist: bool | None = None,
               idempotency_key: str | None = None) -> int:
        """Remove `key` if the conditions hold; returns the index of the delete."""
        return self._run(self._client.delete(key, prev_value=prev_value, prev_index=prev_index,
                                             prev_exist=prev_exist,
                                             idempotency_key=idempotency_key))

    def cas(self, key: str, expected: bytes | str, new: bytes | str, *,
            idempotency_key: str | None = None) -> int:
        """Set `key` to `new` only if it is `expected`; raises `PreconditionFailed`/`NotFound`."""
        return self._run(self._client.cas(key, expected, new, idempotency_key=idempotency_key))

    def keys(self, prefix: str = "", limit: int | None = 100, *,
             consistency: str = "linearizable") -> list[tuple[str, int]]:
        """`(key, mod_index)` of up to `limit` keys under `prefix` (None: all), in key order."""
        return self._run(self._client.keys(prefix, limit, consistency=consistency))

    def status(self) -> dict[str, Any]:
        """The status of whichever node answered."""
        return self._run(self._client.status())

    def submit_raw(self, command: bytes) -> wire.ClientResponse:
        """See `AsyncFastClient.submit_raw`."""
        return self._run(self._client.submit_raw(command))

    def read_raw(self, query: bytes, mode: str = "linearizable") -> wire.ClientResponse:
        """See `AsyncFastClient.read_raw`."""
        return self._run(self._client.read_raw(query, mode))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def __enter__(self) -> FastClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
