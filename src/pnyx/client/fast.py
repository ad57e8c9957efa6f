"""`AsyncFastClient` and `FastClient`: the fast Python clients, over the binary protocol.

They have the API of `pnyx.AsyncClient` and `pnyx.Client` (`put`, `get`,
`delete`, `cas`, `keys`, `status`, the same arguments, return values and
`pnyx.errors` exceptions) but speak `pnyx.api.wire` to a node's client port
(`pnyx.api.binary.serve_clients`) instead of HTTP, which caps a node near
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
`unavailable`), so code written against `pnyx.Client` handles them unchanged.

    async with pnyx.AsyncFastClient(["127.0.0.1:7001", "127.0.0.1:7002"]) as client:
        indexes = await asyncio.gather(*(client.put(f"k{i}", b"v") for i in range(1000)))
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar

import msgspec

from pnyx.api import wire
from pnyx.api.binary import (
    BAD_REQUEST,
    INTERNAL,
    INVALID,
    TOO_LARGE,
    UNAVAILABLE,
    FramedProtocol,
    error_code,
)
from pnyx.client import (
    CONSISTENCY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RETRY_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_PAGE,
    parse_endpoints,
)
from pnyx.errors import (
    BadRequest,
    NotFound,
    PnyxError,
    PreconditionFailed,
    Unavailable,
    ValueTooLarge,
)
from pnyx.statemachine import kv

T = TypeVar("T")

DEFAULT_REQUEST_TIMEOUT: Final = 5.0  # what the node may take, as the HTTP API's request_timeout

_CLIENT_KEY_PREFIX: Final = "h:"  # the HTTP API's namespace for clients' idempotency keys
MAX_IDEMPOTENCY_KEY: Final = kv.MAX_ID_BYTES - len(_CLIENT_KEY_PREFIX)
_GRACE: Final = 2.0  # past the node's timeout: the server's own grace, and the trip back
_MAX_WIRE_TIMEOUT: Final = 300.0  # the largest `ClientRequest.timeout` the wire allows
_MAX_PAYLOAD: Final = wire.MAX_FRAME - 64  # room for the rest of the request frame
_FIRST_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 1.0

_json = msgspec.json.Decoder()


class _Failed(Exception):
    """One attempt got no answer; `sent` if the request may have reached the node."""

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _as_bytes(value: bytes | bytearray | memoryview | str, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    return key


def _check_consistency(consistency: str) -> None:
    if consistency not in CONSISTENCY:
        raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY)}, "
                         f"not {consistency!r}")


class _Connection(FramedProtocol):
    """The connection to one node: its calls waiting for answers, by request id."""

    def __init__(self, client: AsyncFastClient, index: int) -> None:
        super().__init__(wire.MAX_FRAME)
        self.client = client
        self.index = index
        # id -> (the caller's future, when to give up on it)
        self.pending: dict[int, tuple[asyncio.Future[wire.ClientResponse], float]] = {}
        self.closed = False
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
        return True

    def protocol_error(self, reason: str) -> None:
        self.lost_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if exc is not None:
            self.lost_reason = _describe(exc)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.resume_writing()
        self.client._lost(self)
        pending, self.pending = self.pending, {}
        failure = _Failed(f"connection lost: {self.lost_reason}", sent=True)
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
                fut.set_exception(_Failed("no answer in time", sent=True))
        if self.pending and not self.closed:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()


class AsyncFastClient:
    """An asyncio client of a pnyx cluster over the binary protocol; see the module docs.

    `endpoints`: the nodes' client addresses, `["127.0.0.1:7001", ...]`.
    `timeout`: seconds one attempt may wait for its answer; `connect_timeout`:
    seconds to connect; `retry_timeout`: seconds one call may spend over all
    its attempts and nodes; `request_timeout`: seconds the node may take to
    get a quorum or a leader before answering `unavailable`. Use `async with`
    or `await close()`; it is bound to the event loop of its first call.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self.endpoints = parse_endpoints(endpoints)
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout),
                            ("retry_timeout", retry_timeout),
                            ("request_timeout", request_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry_timeout = retry_timeout
        self.request_timeout = min(request_timeout, _MAX_WIRE_TIMEOUT)
        # Start at a random node, so many clients spread over the cluster.
        self._current = secrets.randbelow(len(self.endpoints))
        self._conns: dict[int, _Connection] = {}
        self._connecting: dict[int, asyncio.Future[_Connection]] = {}
        self._ids = itertools.count(1)
        # Generated idempotency keys: a random prefix and a counter are as
        # unique as uuid4 per call, at a fraction of the cost.
        self._key_prefix = secrets.token_hex(12) + "."
        self._key_counter = itertools.count(1)
        self._closed = False

    # -- the API --

    async def put(self, key: str, value: bytes | str, *,
                  prev_value: bytes | str | None = None, prev_index: int | None = None,
                  prev_exist: bool | None = None, idempotency_key: str | None = None) -> int:
        """Set `key` to `value` if the conditions hold; returns the index it was written at."""
        command = kv.Put(
            _check_key(key), _as_bytes(value, "value"),
            None if prev_value is None else _as_bytes(prev_value, "prev_value"),
            prev_index, prev_exist)
        return await self._write(command, idempotency_key)

    async def get(self, key: str, *, consistency: str = "linearizable") -> tuple[bytes, int]:
        """`(value, mod_index)` of `key`; raises `NotFound`."""
        _check_consistency(consistency)
        query = kv.encode_query(_check_key(key))
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
            _check_key(key), None if prev_value is None else _as_bytes(prev_value, "prev_value"),
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
        _check_consistency(consistency)
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, not {limit!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be str, not {type(prefix).__name__}")
        out: list[tuple[str, int]] = []
        after = ""
        while limit is None or len(out) < limit:
            page = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(out))
            query = kv.encode_keys_query(prefix, after, page)
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
        _check_consistency(mode)
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
        if idempotency_key is None:
            key = f"{self._key_prefix}{next(self._key_counter)}"
        else:
            key = idempotency_key
            if (not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY
                    or not all(" " <= c <= "~" for c in key)):
                raise BadRequest(
                    f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
                    "characters", status=400, code="invalid")
        payload = kv.encode_request(kv.IdempotentRequest(_CLIENT_KEY_PREFIX + key, command))
        response = await self._call("submit", payload, "linearizable", write=True, key=key)
        result = self._result(response)
        if isinstance(result, kv.Ok):
            return result.index
        raise self._result_error(result, command.key)

    @staticmethod
    def _result(response: wire.ClientResponse) -> kv.Result:
        if not response.ok:
            raise _refused(response)
        try:
            return kv.decode_result(response.result)
        except kv.MalformedResult as exc:
            raise PnyxError(f"the node sent a malformed result: {exc}") from None

    @staticmethod
    def _result_error(result: kv.Result, key: str) -> PnyxError:
        if isinstance(result, kv.NotFound):
            return NotFound(f"key {key!r} does not exist", status=404, code="not_found")
        if isinstance(result, kv.PreconditionFailed):
            return PreconditionFailed(
                f"precondition failed: the key is at index {result.current_index}",
                index=result.current_index)
        if isinstance(result, kv.Error):
            if result.code == kv.ErrorCode.TOO_LARGE:
                return ValueTooLarge(result.message, status=413, code="value_too_large")
            if result.code == kv.ErrorCode.REUSED:
                return PnyxError(result.message, status=409, code="idempotency_key_reused")
            return BadRequest(result.message, status=400, code="invalid")
        return PnyxError(f"unexpected result {type(result).__name__}", status=500,
                         code="internal")

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
        deadline = loop.time() + self.retry_timeout
        backoff = _FIRST_BACKOFF
        last = "no attempt made"
        last_status: int | None = None  # 503 if the last failure was a node's answer
        maybe_applied = False  # some attempt may have reached a node and taken effect
        n = len(self.endpoints)
        while True:
            for _ in range(n):
                i = self._current
                try:
                    conn = self._conns.get(i)
                    if conn is None or conn._writable is not None:
                        conn = await self._ready(loop, i, conn)
                    # Not a coroutine of its own: on the fast path a call is one
                    # frame and one future, nothing more.
                    response = await self._request(conn, op, payload, mode, loop.time(),
                                                   deadline)
                except _Failed as failed:
                    maybe_applied = maybe_applied or failed.sent
                    last, last_status = f"{self._name(i)}: {failed.reason}", None
                    if self._closed:
                        raise Unavailable("the client was closed during the call",
                                          unknown=write and maybe_applied,
                                          idempotency_key=key) from None
                else:
                    if response.ok or error_code(response.error)[0] != UNAVAILABLE:
                        return response
                    maybe_applied = maybe_applied or response.unknown
                    last, last_status = f"{self._name(i)}: {response.error}", 503
                if self._current == i:
                    # Many calls fail together when a node goes: move on once, not once each.
                    self._current = (i + 1) % n
                if loop.time() >= deadline:
                    raise self._give_up(last, last_status, write and maybe_applied, key)
            # A whole round failed: wait a little before the next one.
            await asyncio.sleep(max(0.0, min(backoff, deadline - loop.time())))
            backoff = min(backoff * 2, _MAX_BACKOFF)
            if loop.time() >= deadline:
                raise self._give_up(last, last_status, write and maybe_applied, key)

    async def _ready(self, loop: asyncio.AbstractEventLoop, i: int,
                     conn: _Connection | None) -> _Connection:
        """A connection to node `i` that takes requests now: made, or no longer paused."""
        if conn is None:
            return await self._connect(loop, i)
        await conn.writable()
        return conn

    def _request(self, conn: _Connection, op: str, payload: bytes, mode: str, now: float,
                 deadline: float) -> asyncio.Future[wire.ClientResponse]:
        """Send one attempt on `conn`; the future of its answer (or of `_Failed`)."""
        if conn.closed:
            raise _Failed(f"connection lost: {conn.lost_reason}", sent=False)
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
                    loop.create_connection(lambda: _Connection(self, i), host, port),
                    self.connect_timeout)
                if self._closed:
                    conn.close()
                    raise _Failed("the client is closed", sent=False)
                self._conns[i] = conn
                pending.set_result(conn)
            except (OSError, TimeoutError) as exc:
                failure = _Failed(f"cannot connect: {_describe(exc)}", sent=False)
                pending.set_exception(failure)
                pending.exception()  # retrieved: no "never retrieved" warning if no one waits
                raise failure from None
            except BaseException:
                # This caller was cancelled (or worse): the others sharing the
                # attempt move on as from a failed connect.
                pending.set_exception(_Failed("connecting was interrupted", sent=False))
                pending.exception()
                raise
            finally:
                del self._connecting[i]
            return conn
        return await asyncio.shield(pending)

    def _lost(self, conn: _Connection) -> None:
        if self._conns.get(conn.index) is conn:
            del self._conns[conn.index]

    def _give_up(self, last: str, status: int | None, maybe_applied: bool, key: str | None,
                 ) -> Unavailable:
        return Unavailable(f"no node could answer within {self.retry_timeout:g} s; last: {last}",
                           unknown=maybe_applied, idempotency_key=key, status=status)

    def _name(self, i: int) -> str:
        host, port = self.endpoints[i]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _refused(response: wire.ClientResponse) -> PnyxError:
    """The exception for an `ok=False` answer that is not `unavailable`."""
    code, message = error_code(response.error)
    if code == INVALID:
        return BadRequest(message, status=400, code="invalid")
    if code == TOO_LARGE:
        return ValueTooLarge(message, status=413, code="value_too_large")
    if code == BAD_REQUEST:
        return BadRequest(message, status=400, code="bad_request")
    if code == INTERNAL:
        return PnyxError(message, status=500, code="internal")
    return PnyxError(response.error or "the node refused the request")


class FastClient:
    """A blocking `AsyncFastClient`: the same calls, run on an event loop in a thread of its own.

    Safe to share between threads, and calls from many threads are pipelined
    over the same connection. Use `with` or `close()`.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self._client = AsyncFastClient(endpoints, timeout=timeout,
                                       connect_timeout=connect_timeout,
                                       retry_timeout=retry_timeout,
                                       request_timeout=request_timeout)
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
