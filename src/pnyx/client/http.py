"""Python clients of a pnyx cluster: `Client` (blocking, stdlib only) and `AsyncClient` (aiohttp).

Both speak the HTTP API of `pnyx.api.http` and nothing else. Given the
addresses of the nodes, a client sticks to one that works and moves to the
next on a connection error or a 503 (no quorum or leader there), until the
call's `retry_timeout` runs out. Every node accepts every request, so any
reachable one will do.

**Retries are safe.** Each write call picks one random `Idempotency-Key` and
sends it on every attempt, to whichever node, so a write whose reply was lost
and which is then sent again is applied once and answered with its first
result. (Two separate calls are two writes: pass the same `idempotency_key=`
yourself to make a later call a retry of an earlier one; `Unavailable`
carries the key that was used.) Reads carry no key: they change nothing.

Errors are the typed exceptions of `pnyx.errors`.

    client = pnyx.Client(["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"])
    index = client.put("greeting", b"hello")
    value, index = client.get("greeting")
    client.cas("greeting", b"hello", b"hi")   # PreconditionFailed if someone got there first
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, quote_from_bytes

from pnyx.errors import (
    BadRequest,
    NotFound,
    PnyxError,
    PreconditionFailed,
    Unavailable,
    ValueTooLarge,
)

if TYPE_CHECKING:
    import aiohttp

DEFAULT_TIMEOUT: Final = 10.0  # per attempt; above the server's request timeout (5 s)
DEFAULT_CONNECT_TIMEOUT: Final = 2.0
DEFAULT_RETRY_TIMEOUT: Final = 30.0  # per call, over every attempt
MAX_PAGE: Final = 1000  # the server's largest page of keys
CONSISTENCY: Final = ("linearizable", "quorum", "stale")

_FIRST_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 1.0


def parse_endpoints(endpoints: Sequence[str] | str) -> list[tuple[str, int]]:
    """`["host:port", ...]` (or one comma-separated string) as `(host, port)` pairs.

    An `http://` prefix is allowed; IPv6 hosts go in brackets (`[::1]:8001`).
    Raises `ValueError` with the offending entry.
    """
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    out: list[tuple[str, int]] = []
    for entry in endpoints:
        if not isinstance(entry, str):
            raise ValueError(f"endpoint {entry!r} is not a string like 127.0.0.1:8001")
        text = entry.strip().removeprefix("http://").rstrip("/")
        host, sep, port_text = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"endpoint {entry!r} is not host:port (like 127.0.0.1:8001)")
        if any(c in host for c in "/?#@ ") or (":" in host and "[" not in text):
            raise ValueError(f"endpoint {entry!r} is not host:port (like 127.0.0.1:8001)")
        out.append((host, int(port_text)))
    if not out:
        raise ValueError("no endpoints given")
    return out


def _quote_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    # Encode "/" (a key is one path segment) and "." (so that keys "." and
    # ".." are not read as dot segments and normalized away).
    return quote(key, safe="").replace(".", "%2E")


def _as_bytes(value: bytes | bytearray | memoryview | str, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def _query(params: dict[str, bytes | str | int | None]) -> str:
    parts = []
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            raw = b"true" if value else b"false"
        elif isinstance(value, int):
            raw = str(value).encode()
        else:
            raw = _as_bytes(value, name)
        parts.append(f"{name}={quote_from_bytes(raw, safe='')}")
    return "?" + "&".join(parts) if parts else ""


def _check_consistency(consistency: str) -> None:
    if consistency not in CONSISTENCY:
        raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY)}, "
                         f"not {consistency!r}")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class _Failed(Exception):
    """One attempt got no answer; `sent` if the request may have reached the node."""

    def __init__(self, exc: BaseException, sent: bool) -> None:
        super().__init__(_describe(exc))
        self.reason = _describe(exc)
        self.sent = sent


@dataclass(slots=True)
class _Call:
    """One API call, ready to send to any node."""

    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    write: bool = False


@dataclass(slots=True)
class _Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise PnyxError(f"the node sent a body that is not JSON (status {self.status})",
                            status=self.status) from None

    def index(self) -> int:
        try:
            return int(self.headers["x-pnyx-index"])
        except (KeyError, ValueError):
            raise PnyxError("the node's answer has no X-Pnyx-Index", status=self.status) from None


def _error(response: _Response) -> PnyxError:
    """The exception for an error response."""
    code: str | None = None
    message = f"HTTP {response.status}"
    extra: dict[str, Any] = {}
    try:
        err = json.loads(response.body)["error"]
        code, message = str(err["code"]), str(err["message"])
        extra = err
    except (ValueError, KeyError, TypeError):
        pass
    status = response.status
    if status == 400:
        return BadRequest(message, status=status, code=code)
    if status == 404:
        return NotFound(message, status=status, code=code)
    if status == 412:
        index = extra.get("index")
        return PreconditionFailed(message, index=index if isinstance(index, int) else -1,
                                  status=status, code=code)
    if status == 413:
        return ValueTooLarge(message, status=status, code=code)
    if status == 503:
        return Unavailable(message, unknown=bool(extra.get("unknown", False)),
                           status=status, code=code)
    return PnyxError(message, status=status, code=code)


class _Base:
    """What both clients share: the endpoints and how each call is built and answered."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout),
                            ("retry_timeout", retry_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry_timeout = retry_timeout
        # Start at a random node, so many clients spread over the cluster.
        self._current = random.randrange(len(self.endpoints))

    @staticmethod
    def _write_headers(idempotency_key: str | None) -> dict[str, str]:
        return {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}

    def _put_call(self, key: str, value: bytes | str, prev_value: bytes | str | None,
                  prev_index: int | None, prev_exist: bool | None,
                  idempotency_key: str | None) -> _Call:
        query = _query({"prev_value": prev_value, "prev_index": prev_index,
                        "prev_exist": prev_exist})
        return _Call("PUT", f"/v1/kv/{_quote_key(key)}{query}", _as_bytes(value, "value"),
                     self._write_headers(idempotency_key), write=True)

    def _delete_call(self, key: str, prev_value: bytes | str | None, prev_index: int | None,
                     prev_exist: bool | None, idempotency_key: str | None) -> _Call:
        query = _query({"prev_value": prev_value, "prev_index": prev_index,
                        "prev_exist": prev_exist})
        return _Call("DELETE", f"/v1/kv/{_quote_key(key)}{query}",
                     headers=self._write_headers(idempotency_key), write=True)

    @staticmethod
    def _get_call(key: str, consistency: str) -> _Call:
        _check_consistency(consistency)
        query = _query({"consistency": None if consistency == "linearizable" else consistency})
        return _Call("GET", f"/v1/kv/{_quote_key(key)}{query}")

    @staticmethod
    def _keys_call(prefix: str, after: str, limit: int, consistency: str) -> _Call:
        query = _query({"prefix": prefix or None, "after": after or None, "limit": limit,
                        "consistency": None if consistency == "linearizable" else consistency})
        return _Call("GET", f"/v1/kv/{query}")

    @staticmethod
    def _check_keys_args(limit: int | None, consistency: str) -> None:
        _check_consistency(consistency)
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, not {limit!r}")

    @staticmethod
    def _page(response: _Response, out: list[tuple[str, int]]) -> str | None:
        """Add one page of keys to `out`; the `after` of the next page, or None if done."""
        page = response.json()
        try:
            out.extend((str(item["key"]), int(item["index"])) for item in page["keys"])
            return page["next"] if page["more"] and page["next"] else None
        except (KeyError, TypeError, ValueError):
            raise PnyxError("the node sent a malformed key listing") from None

    def _give_up(self, last: PnyxError | None, maybe_applied: bool, call: _Call,
                 ) -> Unavailable:
        reason = last.message if last is not None else "no attempt made"
        return Unavailable(
            f"no node could answer within {self.retry_timeout:g} s; last: {reason}",
            unknown=call.write and maybe_applied,
            idempotency_key=call.headers.get("Idempotency-Key"),
            status=last.status if last is not None else None,
        )


class Client(_Base):
    """A blocking client (stdlib `http.client`), safe to share between threads (calls
    take turns; use one client per thread for parallel requests).

    `endpoints`: node addresses, `["127.0.0.1:8001", ...]`. `timeout`: seconds one
    attempt may take; `connect_timeout`: seconds to connect; `retry_timeout`:
    seconds one call may spend over all its attempts and nodes.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 retry_timeout: float = DEFAULT_RETRY_TIMEOUT) -> None:
        super().__init__(endpoints, timeout=timeout, connect_timeout=connect_timeout,
                         retry_timeout=retry_timeout)
        self._conns: dict[int, http.client.HTTPConnection] = {}
        self._lock = threading.Lock()

    # -- the API --

    def put(self, key: str, value: bytes | str, *, prev_value: bytes | str | None = None,
            prev_index: int | None = None, prev_exist: bool | None = None,
            idempotency_key: str | None = None) -> int:
        """Set `key` to `value` if the conditions hold; returns the index it was written at."""
        return self._send(self._put_call(key, value, prev_value, prev_index, prev_exist,
                                         idempotency_key)).index()

    def get(self, key: str, *, consistency: str = "linearizable") -> tuple[bytes, int]:
        """`(value, mod_index)` of `key`; raises `NotFound`."""
        response = self._send(self._get_call(key, consistency))
        return response.body, response.index()

    def delete(self, key: str, *, prev_value: bytes | str | None = None,
               prev_index: int | None = None, prev_exist: bool | None = None,
               idempotency_key: str | None = None) -> int:
        """Remove `key` if the conditions hold; returns the index of the delete."""
        return self._send(self._delete_call(key, prev_value, prev_index, prev_exist,
                                            idempotency_key)).index()

    def cas(self, key: str, expected: bytes | str, new: bytes | str, *,
            idempotency_key: str | None = None) -> int:
        """Set `key` to `new` only if it is `expected`; raises `PreconditionFailed`/`NotFound`."""
        return self.put(key, new, prev_value=expected, idempotency_key=idempotency_key)

    def keys(self, prefix: str = "", limit: int | None = 100, *,
             consistency: str = "linearizable") -> list[tuple[str, int]]:
        """`(key, mod_index)` of up to `limit` keys under `prefix` (None: all), in key order,
        fetched a page at a time (each page is its own read, not one snapshot)."""
        self._check_keys_args(limit, consistency)
        out: list[tuple[str, int]] = []
        after: str | None = ""
        while after is not None and (limit is None or len(out) < limit):
            page = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(out))
            after = self._page(self._send(self._keys_call(prefix, after, page, consistency)),
                               out)
        return out

    def status(self) -> dict[str, Any]:
        """The status of whichever node answered."""
        result = self._send(_Call("GET", "/v1/status")).json()
        if not isinstance(result, dict):
            raise PnyxError("the node sent a status that is not an object")
        return result

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- sending --

    def _connection(self, i: int) -> tuple[http.client.HTTPConnection, bool]:
        conn = self._conns.get(i)
        if conn is not None:
            return conn, True
        host, port = self.endpoints[i]
        conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self.timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conns[i] = conn
        return conn, False

    def _drop(self, i: int) -> None:
        conn = self._conns.pop(i, None)
        if conn is not None:
            conn.close()

    def _attempt(self, i: int, call: _Call) -> _Response:
        """One request to node `i`; raises `_Failed` if no answer could be had."""
        sent = False
        for first_try in (True, False):
            try:
                conn, reused = self._connection(i)
            except OSError as exc:
                raise _Failed(exc, sent) from exc
            try:
                sent = True
                conn.request(call.method, call.path, body=call.body or None,
                             headers=call.headers)
                raw = conn.getresponse()
                body = raw.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop(i)
                # A kept-alive connection the node closed while idle fails at
                # once: try a fresh one before counting the node as down.
                if reused and first_try:
                    continue
                raise _Failed(exc, sent) from exc
            headers = {k.lower(): v for k, v in raw.getheaders()}
            if raw.will_close:
                self._drop(i)
            return _Response(raw.status, headers, body)
        raise AssertionError("unreachable")

    def _send(self, call: _Call) -> _Response:
        with self._lock:
            return self._send_locked(call)

    def _send_locked(self, call: _Call) -> _Response:
        deadline = time.monotonic() + self.retry_timeout
        backoff = _FIRST_BACKOFF
        last: PnyxError | None = None
        maybe_applied = False  # some attempt may have reached a node and taken effect
        n = len(self.endpoints)
        while True:
            for _ in range(n):
                i = self._current
                try:
                    response = self._attempt(i, call)
                except _Failed as failed:
                    maybe_applied = maybe_applied or failed.sent
                    last = Unavailable(f"{self._name(i)}: {failed.reason}")
                else:
                    if response.status < 300:
                        return response
                    error = _error(response)
                    if not isinstance(error, Unavailable):
                        raise error
                    maybe_applied = maybe_applied or error.unknown
                    last = error
                self._current = (i + 1) % n
                if time.monotonic() >= deadline:
                    raise self._give_up(last, maybe_applied, call)
            # A whole round failed: wait a little before the next one.
            time.sleep(max(0.0, min(backoff, deadline - time.monotonic())))
            backoff = min(backoff * 2, _MAX_BACKOFF)
            if time.monotonic() >= deadline:
                raise self._give_up(last, maybe_applied, call)

    def _name(self, i: int) -> str:
        host, port = self.endpoints[i]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AsyncClient(_Base):
    """The asyncio twin of `Client`, on `aiohttp`; use `async with` or `await close()`.

    Its HTTP session is made on first use, in the running event loop.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 retry_timeout: float = DEFAULT_RETRY_TIMEOUT) -> None:
        super().__init__(endpoints, timeout=timeout, connect_timeout=connect_timeout,
                         retry_timeout=retry_timeout)
        self._session: aiohttp.ClientSession | None = None

    # -- the API --

    async def put(self, key: str, value: bytes | str, *,
                  prev_value: bytes | str | None = None, prev_index: int | None = None,
                  prev_exist: bool | None = None, idempotency_key: str | None = None) -> int:
        """Set `key` to `value` if the conditions hold; returns the index it was written at."""
        call = self._put_call(key, value, prev_value, prev_index, prev_exist, idempotency_key)
        return (await self._send(call)).index()

    async def get(self, key: str, *, consistency: str = "linearizable") -> tuple[bytes, int]:
        """`(value, mod_index)` of `key`; raises `NotFound`."""
        response = await self._send(self._get_call(key, consistency))
        return response.body, response.index()

    async def delete(self, key: str, *, prev_value: bytes | str | None = None,
                     prev_index: int | None = None, prev_exist: bool | None = None,
                     idempotency_key: str | None = None) -> int:
        """Remove `key` if the conditions hold; returns the index of the delete."""
        call = self._delete_call(key, prev_value, prev_index, prev_exist, idempotency_key)
        return (await self._send(call)).index()

    async def cas(self, key: str, expected: bytes | str, new: bytes | str, *,
                  idempotency_key: str | None = None) -> int:
        """Set `key` to `new` only if it is `expected`; raises `PreconditionFailed`/`NotFound`."""
        return await self.put(key, new, prev_value=expected, idempotency_key=idempotency_key)

    async def keys(self, prefix: str = "", limit: int | None = 100, *,
                   consistency: str = "linearizable") -> list[tuple[str, int]]:
        """`(key, mod_index)` of up to `limit` keys under `prefix` (None: all), in key order."""
        self._check_keys_args(limit, consistency)
        out: list[tuple[str, int]] = []
        after: str | None = ""
        while after is not None and (limit is None or len(out) < limit):
            page = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(out))
            response = await self._send(self._keys_call(prefix, after, page, consistency))
            after = self._page(response, out)
        return out

    async def status(self) -> dict[str, Any]:
        """The status of whichever node answered."""
        result = (await self._send(_Call("GET", "/v1/status"))).json()
        if not isinstance(result, dict):
            raise PnyxError("the node sent a status that is not an object")
        return result

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- sending --

    async def _send(self, call: _Call) -> _Response:
        import asyncio

        import aiohttp
        from yarl import URL

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout,
                                              sock_connect=self.connect_timeout),
                # The API needs no cookies; the session must not keep a node's.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_timeout
        backoff = _FIRST_BACKOFF
        last: PnyxError | None = None
        maybe_applied = False
        n = len(self.endpoints)
        while True:
            for _ in range(n):
                i = self._current
                host, port = self.endpoints[i]
                netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                # encoded=True: the path is already quoted; yarl must not
                # re-quote it (it would turn %2E back into ".").
                url = URL(f"http://{netloc}{call.path}", encoded=True)
                try:
                    async with self._session.request(
                        call.method, url, data=call.body if call.body else None,
                        headers=call.headers,
                    ) as raw:
                        body = await raw.read()
                        response = _Response(
                            raw.status, {k.lower(): v for k, v in raw.headers.items()}, body)
                except aiohttp.ClientConnectorError as exc:
                    # Could not connect: the request never left.
                    last = Unavailable(f"{netloc}: {exc}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # Connected, so the request may have reached the node.
                    maybe_applied = True
                    last = Unavailable(f"{netloc}: {_describe(exc)}")
                else:
                    if response.status < 300:
                        return response
                    error = _error(response)
                    if not isinstance(error, Unavailable):
                        raise error
                    maybe_applied = maybe_applied or error.unknown
                    last = error
                self._current = (i + 1) % n
                if loop.time() >= deadline:
                    raise self._give_up(last, maybe_applied, call)
            await asyncio.sleep(max(0.0, min(backoff, deadline - loop.time())))
            backoff = min(backoff * 2, _MAX_BACKOFF)
            if loop.time() >= deadline:
                raise self._give_up(last, maybe_applied, call)
