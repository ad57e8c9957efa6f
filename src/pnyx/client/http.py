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

**Membership** (`members`, `add_member`, `promote_member`, `remove_member`,
`change_members`, `replace_member`; `pnyx.client.members`): a change is not
sent again once it may have reached a node (it has no idempotency key), so a
lost answer is `Unavailable(unknown=True)`: read `members()` before retrying.
A 409 is `Conflict` (`code` "conflict": another change got in first;
"refused": the leader will not propose it now). An add carries one random
`incarnation` on every attempt, so a retried add that took is answered as added.

    client = pnyx.Client(["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"])
    index = client.put("greeting", b"hello")
    value, index = client.get("greeting")
    client.cas("greeting", b"hello", b"hi")   # PreconditionFailed if someone got there first
    client.add_member(4, "10.0.0.4:7001", http="10.0.0.4:8001")   # a learner, then a voter
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_from_bytes

from pnyx.client import members as _members
from pnyx.client.common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RETRY_TIMEOUT,
    DEFAULT_TIMEOUT,
    Attempts,
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
    parse_endpoints,
    untrusted,
)
from pnyx.errors import PnyxError, Unavailable

if TYPE_CHECKING:
    import aiohttp


def _quote_key(key: str) -> str:
    # Encode "/" (a key is one path segment) and "." (so that keys "." and
    # ".." are not read as dot segments and normalized away).
    return quote(check_key(key), safe="").replace(".", "%2E")


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
            raw = as_bytes(value, name)
        parts.append(f"{name}={quote_from_bytes(raw, safe='')}")
    return "?" + "&".join(parts) if parts else ""


@dataclass(slots=True)
class _Call:
    """One API call, ready to send to any node."""

    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    write: bool = False
    # False for a membership change: once it may have reached a node it is not sent
    # again (it has no idempotency key; a second attempt of one that took is refused).
    resend: bool = True


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
    """The exception for an error response: its JSON error's code and message, by status."""
    code: str | None = None
    message = f"HTTP {response.status}"
    extra: dict[str, Any] = {}
    try:
        err = json.loads(response.body)["error"]
        code, message = str(err["code"]), str(err["message"])
        extra = err
    except (ValueError, KeyError, TypeError):
        pass
    return error_for(response.status, code, message, extra=extra)


class _Base(ClientBase):
    """What both HTTP clients share: how each call is built and its answer read."""

    def _write_headers(self, idempotency_key: str | None) -> dict[str, str]:
        # The caller's own key is checked by the node (a 400 names the header).
        key = idempotency_key or self._idempotency_keys.key(None)
        return {"Idempotency-Key": key}

    def _put_call(self, key: str, value: bytes | str, prev_value: bytes | str | None,
                  prev_index: int | None, prev_exist: bool | None,
                  idempotency_key: str | None) -> _Call:
        query = _query({"prev_value": prev_value, "prev_index": prev_index,
                        "prev_exist": prev_exist})
        return _Call("PUT", f"/v1/kv/{_quote_key(key)}{query}", as_bytes(value, "value"),
                     self._write_headers(idempotency_key), write=True)

    def _delete_call(self, key: str, prev_value: bytes | str | None, prev_index: int | None,
                     prev_exist: bool | None, idempotency_key: str | None) -> _Call:
        query = _query({"prev_value": prev_value, "prev_index": prev_index,
                        "prev_exist": prev_exist})
        return _Call("DELETE", f"/v1/kv/{_quote_key(key)}{query}",
                     headers=self._write_headers(idempotency_key), write=True)

    @staticmethod
    def _get_call(key: str, consistency: str) -> _Call:
        check_consistency(consistency)
        query = _query({"consistency": None if consistency == "linearizable" else consistency})
        return _Call("GET", f"/v1/kv/{_quote_key(key)}{query}")

    @staticmethod
    def _keys_call(prefix: str, after: str, limit: int, consistency: str) -> _Call:
        query = _query({"prefix": prefix or None, "after": after or None, "limit": limit,
                        "consistency": None if consistency == "linearizable" else consistency})
        return _Call("GET", f"/v1/kv/{query}")

    # -- membership (`pnyx.api.members`) --

    @staticmethod
    def _add_member_call(node_id: int, peer: str, http: str | None, learner: bool,
                         incarnation: int | None, base: int | None) -> _Call:
        # Resent freely: the same incarnation on every attempt makes a retry of a join
        # that took an answer "added" (the API's rule).
        return _Call("POST", "/v1/members",
                     _members.add_body(node_id, peer, http, learner, incarnation, base),
                     {"Content-Type": "application/json"}, write=True)

    @staticmethod
    def _change_call(add: Iterable[Mapping[str, Any]], remove: Iterable[int],
                     promote: Iterable[int], base: int | None,
                     move: Iterable[Mapping[str, Any]] = ()) -> _Call:
        return _Call("POST", "/v1/members/change",
                     _members.change_body(add, remove, promote, base, move),
                     {"Content-Type": "application/json"}, write=True, resend=False)

    @staticmethod
    def _promote_call(node_id: int, base: int | None) -> _Call:
        body = b"" if base is None else json.dumps({"base": base}).encode()
        return _Call("POST", f"/v1/members/{_members.check_id(node_id)}/promote", body,
                     {"Content-Type": "application/json"}, write=True, resend=False)

    @staticmethod
    def _remove_call(node_id: int, base: int | None) -> _Call:
        return _Call("DELETE", f"/v1/members/{_members.check_id(node_id)}"
                     f"{_members.base_query(base)}", write=True, resend=False)

    @staticmethod
    def _page(response: _Response, out: list[tuple[str, int]]) -> str | None:
        """Add one page of keys to `out`; the `after` of the next page, or None if done."""
        page = response.json()
        try:
            out.extend((str(item["key"]), int(item["index"])) for item in page["keys"])
            return page["next"] if page["more"] and page["next"] else None
        except (KeyError, TypeError, ValueError):
            raise PnyxError("the node sent a malformed key listing") from None


class Client(_Base):
    """A blocking client (stdlib `http.client`), safe to share between threads (calls
    take turns; use one client per thread for parallel requests).

    `endpoints`: node addresses, `["127.0.0.1:8001", ...]`. `timeout`: seconds one
    attempt may take; `connect_timeout`: seconds to connect; `retry_timeout`:
    seconds one call may spend over all its attempts and nodes. TLS: `https://`
    endpoints, or `cacert=` (the cluster's CA), `cert=` and `key=` (a client
    certificate), or `ssl_context=` (`pnyx.client.common.tls_context`).
    """

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
                 ssl_context: ssl.SSLContext | None = None, cacert: PathLike | None = None,
                 cert: PathLike | None = None, key: PathLike | None = None) -> None:
        super().__init__(endpoints, timeout=timeout, connect_timeout=connect_timeout,
                         retry_timeout=retry_timeout, ssl_context=ssl_context,
                         cacert=cacert, cert=cert, key=key)
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
        check_keys_args(limit, consistency)
        out: list[tuple[str, int]] = []
        after: str | None = ""
        while after is not None and (limit is None or len(out) < limit):
            page = page_size(limit, len(out))
            after = self._page(self._send(self._keys_call(prefix, after, page, consistency)),
                               out)
        return out

    def status(self) -> dict[str, Any]:
        """The status of whichever node answered."""
        result = self._send(_Call("GET", "/v1/status")).json()
        if not isinstance(result, dict):
            raise PnyxError("the node sent a status that is not an object")
        return result

    # -- membership --

    def members(self) -> dict[str, Any]:
        """The configuration as the node that answered knows it (`GET /v1/members`): its
        `version`, `members` (id, role, peer, http, applied: the leader's view of each
        one's progress, None elsewhere), `pending` changes, `leader`, `commit`."""
        return _members.as_view(self._send(_Call("GET", "/v1/members")).json())

    def add_member(self, node_id: int, peer: str, *, http: str | None = None,
                   learner: bool = False, incarnation: int | None = None,
                   base: int | None = None) -> dict[str, Any]:
        """Add node `node_id`, reached by its peers at `peer` (and by clients at `http`),
        as a learner; the leader makes it a voter once it has caught up, unless `learner`.
        Returns the new view. Raises `Conflict` (409: `base` is not the latest version,
        or the leader refused it for now), `BadRequest` (an id in use or used before)."""
        return _members.as_view(self._send(self._add_member_call(
            node_id, peer, http, learner, incarnation, base)).json())

    def promote_member(self, node_id: int, *, base: int | None = None) -> dict[str, Any]:
        """Make learner `node_id` a voter (refused with `Conflict` "refused" until it has
        caught up). A change is not sent again once it may have reached a node: if its
        answer is lost, `Unavailable(unknown=True)`; read `members()` before retrying."""
        return _members.as_view(self._send(self._promote_call(node_id, base)).json())

    def remove_member(self, node_id: int, *, base: int | None = None) -> dict[str, Any]:
        """Remove node `node_id` (voter or learner); refused (`BadRequest`) if no voter
        would be left, or (`Conflict` "refused") if no live quorum would."""
        return _members.as_view(self._send(self._remove_call(node_id, base)).json())

    def change_members(self, *, add: Iterable[Mapping[str, Any]] = (),
                       remove: Iterable[int] = (), promote: Iterable[int] = (),
                       move: Iterable[Mapping[str, Any]] = (),
                       base: int | None = None) -> dict[str, Any]:
        """One change of several members at once: `add` (mappings with `id`, `peer`, and
        optionally `http`, `learner`, `incarnation`), `remove` and `promote` ids, `move`
        (mappings with `id`, the new `peer` and optionally `http`)."""
        return _members.as_view(self._send(self._change_call(add, remove, promote,
                                                            base, move)).json())

    def move_member(self, node_id: int, peer: str, *, http: str | None = None,
                    base: int | None = None) -> dict[str, Any]:
        """Member `node_id` moved (with its data directory) to a new host: its peers
        reach it at `peer` (and clients at `http`) once the change is applied."""
        move = {"id": node_id, "peer": peer, **({"http": http} if http else {})}
        return self.change_members(move=(move,), base=base)

    def replace_member(self, old: int, new: int, peer: str, *, http: str | None = None,
                       timeout: float = _members.DEFAULT_REPLACE_TIMEOUT,
                       on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Replace node `old` by node `new` (at `peer`), safely: add `new` as a learner
        (unless it is one already: it joined by itself, or a replace is resumed), wait (up
        to `timeout` s) until the leader reports it caught up, then one change that
        promotes `new` and removes `old` (`pnyx.client.members.replace_plan`). `on_step`
        hears each step. Returns the final view."""
        steps = _members.ReplaceSteps(old, new, peer, on_step)
        plan = _members.replace_plan(old, new, peer, http, timeout, steps, time.monotonic)
        action = next(plan)
        while True:
            try:
                try:
                    result = self._replace_action(action)
                except PnyxError as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(result)
            except StopIteration as stop:
                return dict(stop.value)

    def _replace_action(self, action: _members.Action) -> Any:
        kind = action[0]
        if kind == "members":
            return self.members()
        if kind == "views":
            return self.member_views()
        if kind == "add":
            return self.add_member(**action[1])
        if kind == "change":
            return self.change_members(**action[1])
        time.sleep(action[1])
        return None

    def member_views(self) -> list[dict[str, Any]]:
        """The view of each endpoint that answers (one attempt each, in the order given):
        the leader's is the one with each member's progress (`applied`). If no endpoint
        leads, the leader the views name is asked too, at the HTTP address they give it
        (a member added since the endpoints were chosen may lead now)."""
        views = []
        with self._lock:
            for i in range(len(self.endpoints)):
                try:
                    response = self._attempt(i, _Call("GET", "/v1/members"))
                except Failed:
                    continue
                _members.add_view(views, response.status, response.json)
        elsewhere = _members.leader_elsewhere(views, self._endpoint_names())
        if elsewhere is not None:
            response = self._ask_once(elsewhere, _Call("GET", "/v1/members"))
            if response is not None:
                _members.add_view(views, response.status, response.json)
        return views

    def _ask_once(self, netloc: str, call: _Call) -> _Response | None:
        """One request to an address that is not an endpoint (None: no answer)."""
        try:
            host, port = parse_endpoints([netloc])[0]
        except ValueError:
            return None
        conn = (http.client.HTTPConnection(host, port, timeout=self.timeout)
                if self.ssl is None else
                http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self.ssl))
        try:
            conn.request(call.method, call.path, body=call.body or None, headers=call.headers)
            raw = conn.getresponse()
            return _Response(raw.status, {k.lower(): v for k, v in raw.getheaders()},
                             raw.read())
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

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
        conn = (http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
                if self.ssl is None else
                http.client.HTTPSConnection(host, port, timeout=self.connect_timeout,
                                            context=self.ssl))
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
        """One request to node `i`; raises `Failed` if no answer could be had."""
        sent = False
        for first_try in (True, False):
            try:
                conn, reused = self._connection(i)
            except ssl.SSLCertVerificationError as exc:
                raise untrusted(self._name(i), exc) from None
            except OSError as exc:
                raise Failed(describe(exc), sent) from exc
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
                raise Failed(describe(exc), sent) from exc
            headers = {k.lower(): v for k, v in raw.getheaders()}
            if raw.will_close:
                self._drop(i)
            return _Response(raw.status, headers, body)
        raise AssertionError("unreachable")

    def _send(self, call: _Call) -> _Response:
        with self._lock:
            return self._send_locked(call)

    def _send_locked(self, call: _Call) -> _Response:
        attempts = self._attempts(time.monotonic(), write=call.write,
                                  key=call.headers.get("Idempotency-Key"))
        for i in self._turns(attempts, time.monotonic):
            if i is None:
                # A whole round failed: wait a little before the next one.
                time.sleep(attempts.pause(time.monotonic()))
                continue
            try:
                response = self._attempt(i, call)
            except Failed as failed:
                if failed.sent and not call.resend:
                    raise _maybe_applied(self._name(i), failed.reason) from None
                attempts.failed(self._name(i), failed.reason, sent=failed.sent)
            else:
                if response.status < 300:
                    self._answered_by(i)
                    return response
                _answered_unavailable(attempts, self._name(i), response, call.resend)
        raise AssertionError("unreachable: _turns ends only by raising")


class AsyncClient(_Base):
    """The asyncio twin of `Client`, on `aiohttp`; use `async with` or `await close()`.

    Its HTTP session is made on first use, in the running event loop. TLS as `Client`'s.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
                 ssl_context: ssl.SSLContext | None = None, cacert: PathLike | None = None,
                 cert: PathLike | None = None, key: PathLike | None = None) -> None:
        super().__init__(endpoints, timeout=timeout, connect_timeout=connect_timeout,
                         retry_timeout=retry_timeout, ssl_context=ssl_context,
                         cacert=cacert, cert=cert, key=key)
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
        check_keys_args(limit, consistency)
        out: list[tuple[str, int]] = []
        after: str | None = ""
        while after is not None and (limit is None or len(out) < limit):
            page = page_size(limit, len(out))
            response = await self._send(self._keys_call(prefix, after, page, consistency))
            after = self._page(response, out)
        return out

    async def status(self) -> dict[str, Any]:
        """The status of whichever node answered."""
        result = (await self._send(_Call("GET", "/v1/status"))).json()
        if not isinstance(result, dict):
            raise PnyxError("the node sent a status that is not an object")
        return result

    # -- membership (as `Client`'s) --

    async def members(self) -> dict[str, Any]:
        """As `Client.members`."""
        return _members.as_view((await self._send(_Call("GET", "/v1/members"))).json())

    async def add_member(self, node_id: int, peer: str, *, http: str | None = None,
                         learner: bool = False, incarnation: int | None = None,
                         base: int | None = None) -> dict[str, Any]:
        """As `Client.add_member`."""
        return _members.as_view((await self._send(self._add_member_call(
            node_id, peer, http, learner, incarnation, base))).json())

    async def promote_member(self, node_id: int, *, base: int | None = None,
                             ) -> dict[str, Any]:
        """As `Client.promote_member`."""
        return _members.as_view((await self._send(self._promote_call(node_id, base))).json())

    async def remove_member(self, node_id: int, *, base: int | None = None,
                            ) -> dict[str, Any]:
        """As `Client.remove_member`."""
        return _members.as_view((await self._send(self._remove_call(node_id, base))).json())

    async def change_members(self, *, add: Iterable[Mapping[str, Any]] = (),
                             remove: Iterable[int] = (), promote: Iterable[int] = (),
                             move: Iterable[Mapping[str, Any]] = (),
                             base: int | None = None) -> dict[str, Any]:
        """As `Client.change_members`."""
        return _members.as_view((await self._send(self._change_call(
            add, remove, promote, base, move))).json())

    async def move_member(self, node_id: int, peer: str, *, http: str | None = None,
                          base: int | None = None) -> dict[str, Any]:
        """As `Client.move_member`."""
        move = {"id": node_id, "peer": peer, **({"http": http} if http else {})}
        return await self.change_members(move=(move,), base=base)

    async def replace_member(self, old: int, new: int, peer: str, *, http: str | None = None,
                             timeout: float = _members.DEFAULT_REPLACE_TIMEOUT,
                             on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
        """As `Client.replace_member`."""
        import asyncio

        steps = _members.ReplaceSteps(old, new, peer, on_step)
        plan = _members.replace_plan(old, new, peer, http, timeout, steps,
                                     asyncio.get_running_loop().time)
        action = next(plan)
        while True:
            try:
                try:
                    result = await self._replace_action(action)
                except PnyxError as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(result)
            except StopIteration as stop:
                return dict(stop.value)

    async def _replace_action(self, action: _members.Action) -> Any:
        import asyncio

        kind = action[0]
        if kind == "members":
            return await self.members()
        if kind == "views":
            return await self.member_views()
        if kind == "add":
            return await self.add_member(**action[1])
        if kind == "change":
            return await self.change_members(**action[1])
        await asyncio.sleep(action[1])
        return None

    async def member_views(self) -> list[dict[str, Any]]:
        """As `Client.member_views`."""
        views: list[dict[str, Any]] = []
        for i in range(len(self.endpoints)):
            try:
                response = await self._attempt(i, _Call("GET", "/v1/members"))
            except Failed:
                continue
            _members.add_view(views, response.status, response.json)
        elsewhere = _members.leader_elsewhere(views, self._endpoint_names())
        if elsewhere is not None:
            import aiohttp
            from yarl import URL

            scheme = "http" if self.ssl is None else "https"
            try:
                async with self._session_now().get(
                        URL(f"{scheme}://{elsewhere}/v1/members", encoded=True)) as raw:
                    response = _Response(raw.status, {}, await raw.read())
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return views
            _members.add_view(views, response.status, response.json)
        return views

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

    def _session_now(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout,
                                              sock_connect=self.connect_timeout),
                # The API needs no cookies; the session must not keep a node's.
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(ssl=self.ssl if self.ssl is not None else True),
            )
        return self._session

    async def _attempt(self, i: int, call: _Call) -> _Response:
        """One request to node `i`; raises `Failed` if no answer could be had."""
        import aiohttp
        from yarl import URL

        session = self._session_now()
        scheme = "http" if self.ssl is None else "https"
        netloc = self._name(i)
        # encoded=True: the path is already quoted; yarl must not
        # re-quote it (it would turn %2E back into ".").
        url = URL(f"{scheme}://{netloc}{call.path}", encoded=True)
        try:
            async with session.request(
                call.method, url, data=call.body if call.body else None,
                headers=call.headers,
            ) as raw:
                body = await raw.read()
                return _Response(raw.status, {k.lower(): v for k, v in raw.headers.items()},
                                 body)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise untrusted(netloc, exc.certificate_error) from None
        except aiohttp.ClientConnectorError as exc:
            # Could not connect: the request never left.
            raise Failed(str(exc), False) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Connected, so the request may have reached the node.
            raise Failed(describe(exc), True) from exc

    async def _send(self, call: _Call) -> _Response:
        import asyncio

        loop = asyncio.get_running_loop()
        attempts = self._attempts(loop.time(), write=call.write,
                                  key=call.headers.get("Idempotency-Key"))
        for i in self._turns(attempts, loop.time):
            if i is None:
                await asyncio.sleep(attempts.pause(loop.time()))
                continue
            netloc = self._name(i)
            try:
                response = await self._attempt(i, call)
            except Failed as failed:
                if failed.sent and not call.resend:
                    raise _maybe_applied(netloc, failed.reason) from None
                attempts.failed(netloc, failed.reason, sent=failed.sent)
            else:
                if response.status < 300:
                    self._answered_by(i)
                    return response
                _answered_unavailable(attempts, netloc, response, call.resend)
        raise AssertionError("unreachable: _turns ends only by raising")


def _answered_unavailable(attempts: Attempts, where: str, response: _Response,
                          resend: bool = True) -> None:
    """Note a node's error answer if it is worth another attempt; else raise it (a change
    that may have taken effect, `resend` False, among them)."""
    error = _error(response)
    if not isinstance(error, Unavailable) or (error.unknown and not resend):
        raise error
    attempts.failed(where, error.message, sent=error.unknown, status=error.status)


def _maybe_applied(where: str, reason: str) -> Unavailable:
    """A membership change whose answer was lost after it was sent: not sent again."""
    return Unavailable(f"{where}: {reason}; the change may still take effect: read the "
                       "members before trying again", unknown=True)
