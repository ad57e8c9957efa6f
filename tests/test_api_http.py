"""Specs of the HTTP API (`pnyx.api.http`) against a fake in-process node.

Every spec runs against both servers of the API: the httptools one `serve_http`
runs (`pnyx.api.http_h1`, "h1") and the aiohttp application of `make_app`
("aiohttp"): one contract, two implementations.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from fake_node import FakeNode, ServerThread
from pnyx.api import NodeAPI, make_app
from pnyx.api import http as api_http
from pnyx.api.limits import ClientLimits
from pnyx.protocol.multipaxos import Code, Outcome
from pnyx.statemachine import MAX_KEY_BYTES, IdempotentRequest, Put, decode_result, kv

# --- harness ------------------------------------------------------------------


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


SERVERS = ("h1", "aiohttp")
_server = {"kind": "h1"}


@pytest.fixture(autouse=True, params=SERVERS)
def server_kind(request: pytest.FixtureRequest) -> str:
    """Which server `serve` starts: every spec here runs against each."""
    _server["kind"] = request.param
    return str(request.param)


class H1TestServer(BaseTestServer):  # type: ignore[misc]
    """`serve_http` (the httptools server) for aiohttp's `TestClient`."""

    def __init__(self, node: FakeNode, **kwargs: Any) -> None:
        super().__init__(host="127.0.0.1")
        self.node = node
        self.kwargs = kwargs
        self.served: Any = None

    async def _make_runner(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.served is not None:
            return
        limits = {}
        if "body_timeout" in self.kwargs:
            limits["body_timeout"] = self.kwargs.pop("body_timeout")
        self.served = await api_http.serve_http(self.node, "127.0.0.1", 0,
                                                limits=ClientLimits(**limits), **self.kwargs)
        self.port = self.served.port
        self.scheme = "http"
        self._root = URL(f"http://127.0.0.1:{self.port}")

    async def close(self) -> None:
        if self.served is not None:
            await self.served.close()
            self.served = None


@asynccontextmanager
async def serve(node: FakeNode | None = None, **kwargs: Any,
                ) -> AsyncIterator[tuple[TestClient, FakeNode]]:
    node = node if node is not None else FakeNode()
    kwargs.setdefault("request_timeout", 0.2)
    server: BaseTestServer = (H1TestServer(node, **kwargs) if _server["kind"] == "h1"
                              else TestServer(make_app(node, **kwargs)))
    async with TestClient(server) as client:
        yield client, node


def raw(path: str) -> URL:
    """A path sent exactly as written, with no re-quoting or normalizing by the client."""
    return URL(path, encoded=True)


async def error_of(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status == status, (response.status, await response.text())
    body = await response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# --- the contract -------------------------------------------------------------


def test_fake_node_implements_the_protocol() -> None:
    assert isinstance(FakeNode(), NodeAPI)


def test_make_app_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        make_app(FakeNode(), max_value=-1)
    with pytest.raises(ValueError):
        make_app(FakeNode(), request_timeout=0)


# --- put / get / delete -------------------------------------------------------


@aio
async def test_put_then_get() -> None:
    async with serve() as (c, node):
        r = await c.put("/v1/kv/greeting", data=b"hello")
        assert r.status == 200
        index = (await r.json())["index"]
        assert index == node.index and r.headers["X-Pnyx-Index"] == str(index)
        r = await c.get("/v1/kv/greeting")
        assert r.status == 200
        assert await r.read() == b"hello"
        assert r.headers["X-Pnyx-Index"] == str(index)
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert "X-Pnyx-Applied-Index" not in r.headers


@aio
async def test_a_key_with_a_newline_or_control_characters_is_a_key_like_any_other() -> None:
    async with serve() as (c, _):
        for key, quoted in (("a\nb", "a%0Ab"), ("x\r\ny", "x%0D%0Ay"), ("t\tz", "t%09z")):
            r = await c.put(raw(f"/v1/kv/{quoted}"), data=b"v")
            assert r.status == 200, (key, await r.text())
            r = await c.get(raw(f"/v1/kv/{quoted}"))
            assert (r.status, await r.read()) == (200, b"v")
        r = await c.get("/v1/kv/?prefix=")
        assert {item["key"] for item in (await r.json())["keys"]} == {
            "a\nb", "x\r\ny", "t\tz"}


@aio
async def test_binary_and_empty_values() -> None:
    async with serve() as (c, _):
        value = bytes(range(256))
        assert (await c.put("/v1/kv/bin", data=value)).status == 200
        assert await (await c.get("/v1/kv/bin")).read() == value
        assert (await c.put("/v1/kv/empty", data=b"")).status == 200
        r = await c.get("/v1/kv/empty")
        assert r.status == 200 and await r.read() == b""


@aio
async def test_get_missing_key_is_404() -> None:
    async with serve() as (c, _):
        await error_of(await c.get("/v1/kv/nope"), 404, "not_found")


@aio
async def test_delete() -> None:
    async with serve() as (c, _):
        await c.put("/v1/kv/k", data=b"v")
        r = await c.delete("/v1/kv/k")
        assert r.status == 200
        assert (await r.json())["index"] == int(r.headers["X-Pnyx-Index"])
        await error_of(await c.get("/v1/kv/k"), 404, "not_found")
        await error_of(await c.delete("/v1/kv/k"), 404, "not_found")


@aio
async def test_consistency_modes_reach_the_node() -> None:
    async with serve() as (c, node):
        await c.put("/v1/kv/k", data=b"v")
        for mode in ["linearizable", "quorum", "stale"]:
            r = await c.get(f"/v1/kv/k?consistency={mode}")
            assert r.status == 200 and await r.read() == b"v"
            assert node.reads[-1][1] == mode
        assert node.reads[0][0] == kv.encode_query("k")
        r = await c.get("/v1/kv/k")
        assert node.reads[-1][1] == "linearizable"


@aio
async def test_stale_reads_carry_the_applied_index() -> None:
    async with serve() as (c, node):
        await c.put("/v1/kv/k", data=b"v")
        await c.put("/v1/kv/other", data=b"w")
        r = await c.get("/v1/kv/k?consistency=stale")
        assert r.headers["X-Pnyx-Applied-Index"] == str(node.machine.applied_index) == "2"
        assert r.headers["X-Pnyx-Index"] == "1"
        r = await c.get("/v1/kv/missing?consistency=stale")
        assert r.status == 404 and r.headers["X-Pnyx-Applied-Index"] == "2"


@aio
async def test_unknown_consistency_is_400() -> None:
    async with serve() as (c, node):
        for bad in ["strong", "", "STALE", "%FF"]:
            await error_of(await c.get(raw(f"/v1/kv/k?consistency={bad}")), 400, "bad_param")
        assert node.reads == []


# --- keys in paths ------------------------------------------------------------


@aio
async def test_keys_are_percent_decoded_utf8() -> None:
    async with serve() as (c, node):
        assert (await c.put(raw("/v1/kv/a%2Fb"), data=b"1")).status == 200
        # "a/b" and "a%2Fb" name the same key.
        assert await (await c.get(raw("/v1/kv/a/b"))).read() == b"1"
        assert (await c.put(raw("/v1/kv/%E6%97%A5%20x+y"), data=b"2")).status == 200
        assert node.machine.read("日 x+y") is not None
        # Dot segments sent encoded stay part of the key.
        assert (await c.put(raw("/v1/kv/%2E%2E"), data=b"3")).status == 200
        assert node.machine.read("..") is not None
        assert (await c.put(raw("/v1/kv//lead"), data=b"4")).status == 200
        assert node.machine.read("/lead") is not None


@aio
async def test_bad_keys_are_400() -> None:
    async with serve() as (c, node):
        for path in ["/v1/kv/%FF", "/v1/kv/a%C3", "/v1/kv/%ED%A0%80"]:
            await error_of(await c.put(raw(path), data=b"v"), 400, "bad_key")
            await error_of(await c.get(raw(path)), 400, "bad_key")
            await error_of(await c.delete(raw(path)), 400, "bad_key")
        await error_of(await c.put("/v1/kv/", data=b"v"), 400, "bad_key")
        await error_of(await c.delete("/v1/kv/"), 400, "bad_key")
        longest = "k" * MAX_KEY_BYTES
        assert (await c.put(f"/v1/kv/{longest}", data=b"v")).status == 200
        await error_of(await c.put(f"/v1/kv/{longest}k", data=b"v"), 400, "bad_key")
        await error_of(await c.get(f"/v1/kv/{'é' * (MAX_KEY_BYTES // 2 + 1)}"), 400, "bad_key")
        assert node.index == 1


# --- preconditions ------------------------------------------------------------


@aio
async def test_create_only() -> None:
    async with serve() as (c, _):
        r = await c.put("/v1/kv/k?prev_exist=false", data=b"first")
        assert r.status == 200
        first = (await r.json())["index"]
        err = await error_of(await c.put("/v1/kv/k?prev_exist=false", data=b"second"),
                             412, "precondition_failed")
        assert err["index"] == first
        assert await (await c.get("/v1/kv/k")).read() == b"first"


@aio
async def test_compare_and_swap_by_value() -> None:
    async with serve() as (c, _):
        first = (await (await c.put("/v1/kv/k", data=b"old")).json())["index"]
        err = await error_of(await c.put("/v1/kv/k?prev_value=wrong", data=b"new"), 412)
        assert err["index"] == first
        r = await c.put("/v1/kv/k?prev_value=old", data=b"new")
        assert r.status == 200
        assert await (await c.get("/v1/kv/k")).read() == b"new"
        # prev_value is raw bytes, percent-encoded; "+" is a space.
        await c.put("/v1/kv/b", data=b"\xff\x00 x")
        assert (await c.put(raw("/v1/kv/b?prev_value=%FF%00+x"), data=b"y")).status == 200
        # An empty prev_value compares with the empty value.
        await c.put("/v1/kv/e", data=b"")
        assert (await c.put("/v1/kv/e?prev_value=", data=b"z")).status == 200


@aio
async def test_compare_and_swap_by_index() -> None:
    async with serve() as (c, _):
        first = (await (await c.put("/v1/kv/k", data=b"a")).json())["index"]
        second = (await (await c.put(f"/v1/kv/k?prev_index={first}", data=b"b")).json())["index"]
        err = await error_of(await c.put(f"/v1/kv/k?prev_index={first}", data=b"c"), 412)
        assert err["index"] == second
        r = await c.put(f"/v1/kv/k?prev_index={first}", data=b"c")
        assert r.headers["X-Pnyx-Index"] == str(second)


@aio
async def test_compare_and_delete() -> None:
    async with serve() as (c, _):
        first = (await (await c.put("/v1/kv/k", data=b"a")).json())["index"]
        await error_of(await c.delete("/v1/kv/k?prev_value=b"), 412, "precondition_failed")
        await error_of(await c.delete(f"/v1/kv/k?prev_index={first + 5}"), 412)
        assert (await c.delete(f"/v1/kv/k?prev_index={first}&prev_value=a")).status == 200


@aio
async def test_condition_on_a_missing_key_is_404() -> None:
    async with serve() as (c, _):
        await error_of(await c.put("/v1/kv/k?prev_value=x", data=b"v"), 404, "not_found")
        await error_of(await c.put("/v1/kv/k?prev_exist=true", data=b"v"), 404, "not_found")
        await error_of(await c.put("/v1/kv/k?prev_index=1", data=b"v"), 404)


@aio
async def test_bad_conditions_are_400_and_never_proposed() -> None:
    async with serve() as (c, node):
        await c.put("/v1/kv/k", data=b"v")
        proposed = len(node.submitted)
        for query in ["prev_index=abc", "prev_index=-1", "prev_index=1.5", "prev_index=",
                      "prev_index=%2B1", "prev_index=99999999999999999999",
                      f"prev_index={2**63}", "prev_exist=maybe", "prev_exist=",
                      "prev_exist=false&prev_value=v", "prev_exist=false&prev_index=1",
                      "nope=1", "prev_index=1&prev_index=1", "consistency=stale",
                      "prefix=x"]:
            await error_of(await c.put(raw(f"/v1/kv/k?{query}"), data=b"x"), 400)
        # Delete with prev_exist=false can never succeed: refused before the log.
        await error_of(await c.delete("/v1/kv/k?prev_exist=false"), 400, "invalid")
        assert len(node.submitted) == proposed
        # The largest index that fits is accepted (and simply does not match).
        await error_of(await c.put(f"/v1/kv/k?prev_index={2**63 - 1}", data=b"x"), 412)


# --- sizes --------------------------------------------------------------------


@aio
async def test_value_too_large_is_413() -> None:
    async with serve(max_value=1000) as (c, node):
        assert (await c.put("/v1/kv/k", data=b"x" * 1000)).status == 200
        await error_of(await c.put("/v1/kv/k", data=b"x" * 1001), 413, "value_too_large")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"y" * 100

        # Chunked, so no Content-Length to check up front.
        await error_of(await c.put("/v1/kv/k", data=chunks()), 413, "value_too_large")
        assert node.index == 1


@aio
async def test_the_nodes_own_size_limit_is_413() -> None:
    node = FakeNode()
    node.refuse = Outcome.failed(Code.TOO_LARGE,
                                 "command too large: 2000000 bytes, limit 1048576")
    async with serve(node) as (c, _):
        await error_of(await c.put("/v1/kv/k", data=b"v"), 413, "value_too_large")


# --- listing ------------------------------------------------------------------


@aio
async def test_list_keys_with_pagination() -> None:
    async with serve() as (c, _):
        for i in range(5):
            await c.put(f"/v1/kv/app/{i}", data=b"v")
        await c.put("/v1/kv/other", data=b"v")
        r = await c.get("/v1/kv/?prefix=app/&limit=2")
        assert r.status == 200
        page = await r.json()
        assert page == {"keys": [{"key": "app/0", "index": 1}, {"key": "app/1", "index": 2}],
                        "more": True, "next": "app/1"}
        page = await (await c.get("/v1/kv/?prefix=app/&limit=2&after=app/1")).json()
        assert [k["key"] for k in page["keys"]] == ["app/2", "app/3"]
        page = await (await c.get("/v1/kv/?prefix=app/&limit=2&after=app/3")).json()
        assert page == {"keys": [{"key": "app/4", "index": 5}], "more": False, "next": None}
        everything = await (await c.get("/v1/kv/")).json()
        assert len(everything["keys"]) == 6 and not everything["more"]
        assert await (await c.get("/v1/kv")).json() == everything
        nothing = await (await c.get("/v1/kv/?prefix=zzz")).json()
        assert nothing == {"keys": [], "more": False, "next": None}


@aio
async def test_list_limit_defaults_and_bounds() -> None:
    async with serve() as (c, node):
        for i in range(120):
            await c.put(f"/v1/kv/k{i:03d}", data=b"v")
        page = await (await c.get("/v1/kv/")).json()
        assert len(page["keys"]) == 100 and page["more"] and page["next"] == "k099"
        page = await (await c.get("/v1/kv/?limit=1000")).json()
        assert len(page["keys"]) == 120
        for bad in ["0", "1001", "-1", "abc", "", "1e3"]:
            await error_of(await c.get(f"/v1/kv/?limit={bad}"), 400, "bad_param")
        await error_of(await c.get("/v1/kv/?prefix=" + "p" * (MAX_KEY_BYTES + 1)), 400)
        await error_of(await c.get(raw("/v1/kv/?after=%FF")), 400, "bad_param")
        await error_of(await c.get("/v1/kv/?consistency=eventual"), 400, "bad_param")
        await error_of(await c.get("/v1/kv/?prev_index=1"), 400, "bad_param")
        r = await c.get("/v1/kv/?consistency=stale")
        assert r.headers["X-Pnyx-Applied-Index"] == str(node.machine.applied_index)


# --- exactly once -------------------------------------------------------------


def _idempotency_keys(node: FakeNode) -> list[str]:
    decoder = kv._request_decoder  # what the machine itself decodes
    return [decoder.decode(c).idempotency_key for c in node.submitted]


@aio
async def test_idempotency_key_retry_is_not_applied_twice() -> None:
    async with serve() as (c, node):
        headers = {"Idempotency-Key": "req-1"}
        first = await (await c.put("/v1/kv/k", data=b"v1", headers=headers)).json()
        # Someone else writes the key in between.
        await c.put("/v1/kv/k", data=b"v2")
        # The retry of req-1 is answered with its first result and changes nothing.
        again = await c.put("/v1/kv/k", data=b"v1", headers=headers)
        assert again.status == 200 and await again.json() == first
        assert await (await c.get("/v1/kv/k")).read() == b"v2"
        assert node.machine.read("k") == (b"v2", 2)
        # Deletes too.
        h = {"Idempotency-Key": "del-1"}
        d1 = await (await c.delete("/v1/kv/k", headers=h)).json()
        await c.put("/v1/kv/k", data=b"v3")
        assert await (await c.delete("/v1/kv/k", headers=h)).json() == d1
        assert node.machine.read("k") is not None


@aio
async def test_idempotency_key_reused_for_another_command_is_409() -> None:
    async with serve() as (c, _):
        h = {"Idempotency-Key": "same"}
        assert (await c.put("/v1/kv/k", data=b"a", headers=h)).status == 200
        await error_of(await c.put("/v1/kv/k", data=b"b", headers=h), 409,
                       "idempotency_key_reused")


@aio
async def test_bad_idempotency_keys_are_400() -> None:
    async with serve() as (c, node):
        for bad in ["", "x" * (api_http.MAX_IDEMPOTENCY_KEY + 1), "tab\there"]:
            await error_of(await c.put("/v1/kv/k", data=b"v", headers={"Idempotency-Key": bad}),
                           400, "bad_header")
        r = await c.put("/v1/kv/k", data=b"v",
                        headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
        await error_of(r, 400, "bad_header")
        longest = "x" * api_http.MAX_IDEMPOTENCY_KEY
        assert (await c.put("/v1/kv/k", data=b"v",
                            headers={"Idempotency-Key": longest})).status == 200
        assert len(node.submitted) == 1


@aio
async def test_generated_key_is_fresh_per_request_and_kept_across_internal_retries() -> None:
    async with serve(request_timeout=2.0) as (c, node):
        await c.put("/v1/kv/a", data=b"1")
        await c.put("/v1/kv/a", data=b"1")
        keys = _idempotency_keys(node)
        assert len(set(keys)) == 2, "two requests without a header are two writes"
        # The node applies the command but reports the outcome unknown twice:
        # the HTTP layer resubmits the very same bytes, and the machine answers
        # the resubmissions from its de-duplication table.
        node.lose_replies = 2
        node.submitted.clear()
        r = await c.put("/v1/kv/b", data=b"once")
        assert r.status == 200
        assert len(node.submitted) == 3 and len(set(node.submitted)) == 1
        first_apply = node.index - 2
        assert (await r.json())["index"] == first_apply
        assert node.machine.read("b") == (b"once", first_apply)


@aio
async def test_client_key_is_kept_across_internal_retries() -> None:
    async with serve(request_timeout=2.0) as (c, node):
        node.lose_replies = 1
        r = await c.delete("/v1/kv/nothing", headers={"Idempotency-Key": "d"})
        await error_of(r, 404)
        assert _idempotency_keys(node) == ["h:d", "h:d"]


# --- unavailability -----------------------------------------------------------


@aio
async def test_no_quorum_is_503_with_retry_after() -> None:
    async with serve(request_timeout=0.05) as (c, node):
        node.unavailable = True
        r = await c.put("/v1/kv/k", data=b"v")
        err = await error_of(r, 503, "unavailable")
        assert r.headers["Retry-After"] == "1" and err["unknown"] is True
        for path in ["/v1/kv/k", "/v1/kv/k?consistency=quorum", "/v1/kv/"]:
            r = await c.get(path)
            await error_of(r, 503, "unavailable")
            assert r.headers["Retry-After"] == "1"
        node.unavailable = False
        assert (await c.put("/v1/kv/k", data=b"v")).status == 200


@aio
async def test_refused_command_is_503_and_not_retried() -> None:
    async with serve(request_timeout=1.0) as (c, node):
        node.refuse = Outcome.failed(Code.SHUTTING_DOWN, "this node is shutting down")
        err = await error_of(await c.put("/v1/kv/k", data=b"v"), 503, "unavailable")
        assert err["unknown"] is False and "shutting down" in err["message"]
        assert len(node.submitted) == 1


def test_every_outcome_code_has_one_http_answer() -> None:
    assert set(api_http.HTTP_FAILURES) == set(Code)
    for code, failure in api_http.HTTP_FAILURES.items():
        # Retry-After exactly where another attempt may succeed: the 503s.
        assert failure.retry_after == (failure.status == 503), code
        assert (failure.status == 503) == (code.retryable and code is not Code.INTERNAL), code


@pytest.mark.parametrize(("code", "status", "error"), [
    (Code.TOO_LARGE, 413, "value_too_large"),
    (Code.BAD_REQUEST, 400, "invalid"),
    (Code.INTERNAL, 500, "internal"),
    (Code.NO_LEADER, 503, "unavailable"),
])
@aio
async def test_a_node_refusal_is_answered_by_its_code_not_its_words(
        code: Code, status: int, error: str) -> None:
    async with serve(request_timeout=1.0) as (c, node):
        # Words that would mislead anyone reading them for the cause.
        node.refuse = Outcome.failed(code, "too large, not the leader, shutting down")
        r = await c.put("/v1/kv/k", data=b"v")
        await error_of(r, status, error)
        assert ("Retry-After" in r.headers) == (status == 503)
        assert len(node.submitted) == 1  # a definite refusal is not resubmitted


@aio
async def test_a_read_refused_for_itself_is_not_retried() -> None:
    async with serve(request_timeout=1.0) as (c, node):
        node.refuse_reads = Outcome.failed(Code.BAD_REQUEST, "unknown read mode")
        await error_of(await c.get("/v1/kv/k"), 400, "invalid")
        assert len(node.reads) == 1


@aio
async def test_a_hanging_node_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_http, "_NODE_GRACE", 0.05)
    async with serve(request_timeout=0.05) as (c, node):
        node.hang = True
        await error_of(await c.put("/v1/kv/k", data=b"v"), 503, "unavailable")
        await error_of(await c.get("/v1/kv/k"), 503, "unavailable")


@aio
async def test_failed_reads_are_retried_within_the_timeout() -> None:
    async with serve(request_timeout=2.0) as (c, node):
        await c.put("/v1/kv/k", data=b"v")
        node.fail_reads = 3
        r = await c.get("/v1/kv/k")
        assert r.status == 200 and await r.read() == b"v"
        assert len(node.reads) == 4


# --- status, metrics, methods, routes ----------------------------------------


@aio
async def test_status() -> None:
    async with serve() as (c, node):
        await c.put("/v1/kv/k", data=b"v")
        r = await c.get("/v1/status")
        assert r.status == 200
        body = await r.json()
        assert body == node.status()
        assert {"id", "role", "leader", "ballot", "commit_index", "applied_index",
                "members"} <= set(body)
        await error_of(await c.get("/v1/status?x=1"), 400, "bad_param")


@aio
async def test_metrics() -> None:
    async with serve() as (c, _):
        await c.put("/v1/kv/k", data=b"v")
        await c.get("/v1/kv/missing")
        await c.post("/v1/kv/k")
        r = await c.get("/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
        assert 'pnyx_http_requests_total{method="PUT",route="/v1/kv/{key}",status="200"} 1.0' \
            in text
        assert 'status="404"' in text and 'status="405"' in text
        assert "pnyx_chosen_slots_total 1.0" in text
        for name in ["pnyx_proposals_total", "pnyx_chosen_commands_total",
                     "pnyx_elections_total", "pnyx_leader_changes_total",
                     "pnyx_commit_latency_seconds_bucket", "pnyx_fsync_seconds_bucket",
                     "pnyx_fsync_records_bucket", "pnyx_batch_size_bucket",
                     'pnyx_role{role="follower"} 1.0', "pnyx_http_request_seconds_bucket"]:
            assert name in text, name


@aio
async def test_wrong_method_is_405_json() -> None:
    async with serve() as (c, node):
        for method, path in [("POST", "/v1/kv/k"), ("PATCH", "/v1/kv/k"),
                             ("PUT", "/v1/status"), ("DELETE", "/metrics"),
                             ("PUT", "/v1/kv"), ("HEAD", "/v1/kv/k")]:
            r = await c.request(method, path)
            assert r.status == 405, (method, path)
            if method != "HEAD":
                await error_of(r, 405, "method_not_allowed")
            assert "Allow" in r.headers
        assert node.submitted == []


@aio
async def test_unknown_route_is_404_json() -> None:
    async with serve() as (c, _):
        for path in ["/", "/v1", "/v2/kv/k", "/v1/kvx", "/metrics/x"]:
            await error_of(await c.get(path), 404, "no_route")


@aio
async def test_a_node_bug_is_a_500_json_not_a_crash() -> None:
    class Broken(FakeNode):
        def status(self) -> dict[str, Any]:
            raise RuntimeError("boom")

    async with serve(Broken()) as (c, _):
        await error_of(await c.get("/v1/status"), 500, "internal")
        assert (await c.put("/v1/kv/k", data=b"v")).status == 200


# --- fuzzing: no input is a 500 ----------------------------------------------


@pytest.fixture(scope="module", params=SERVERS)
def fuzz_server(request: pytest.FixtureRequest) -> Any:
    if request.param == "h1":
        server = ServerThread(serve_kwargs={"request_timeout": 0.2, "max_value": 1000})
    else:
        server = ServerThread(request_timeout=0.2, max_value=1000)
    with server:
        yield server


def _raw_request(port: int, method: bytes, target: bytes, headers: list[bytes],
                 body: bytes) -> int:
    """Send bytes as they are over a socket; the status the server answered, or 0 for none."""
    head = b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" % (method, target)
    head += b"".join(h + b"\r\n" for h in headers)
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


_segment = st.one_of(
    st.sampled_from([b"v1", b"kv", b"status", b"metrics", b"", b"..", b".", b"%2E%2E",
                     b"%FF", b"%", b"%2", b"%2F", b"%00", b"k", b"\xc3\xa9", b"\xff", b"+",
                     b"a?b", b"#"]),
    st.binary(max_size=8).map(lambda b: b.replace(b" ", b"").replace(b"\r", b"")
                              .replace(b"\n", b"")),
)
_param_name = st.sampled_from([b"prev_value", b"prev_index", b"prev_exist", b"consistency",
                               b"prefix", b"after", b"limit", b"x", b"", b"%FF", b"prev_index"])
_param_value = st.one_of(
    st.sampled_from([b"", b"0", b"-1", b"1001", b"true", b"false", b"stale", b"quorum",
                     b"99999999999999999999999", b"%FF", b"%", b"+", b"1e3", b"\xff"]),
    st.binary(max_size=6).map(lambda b: b.replace(b" ", b"").replace(b"\r", b"")
                              .replace(b"\n", b"").replace(b"#", b"")),
)


@st.composite
def _targets(draw: st.DrawFn) -> bytes:
    base = draw(st.sampled_from([b"/v1/kv/", b"/v1/kv", b"/v1/status", b"/metrics", b"/",
                                 b"/v1/kv/k"]))
    path = base + b"/".join(draw(st.lists(_segment, max_size=3)))
    params = draw(st.lists(st.tuples(_param_name, _param_value), max_size=4))
    if params or draw(st.booleans()):
        path += b"?" + b"&".join(n + b"=" + v for n, v in params)
    return path


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from([b"GET", b"PUT", b"DELETE", b"POST", b"HEAD", b"OPTIONS", b"BREW"]),
    target=_targets(),
    idem=st.one_of(st.none(), st.binary(max_size=300).map(
        lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
    body=st.one_of(st.binary(max_size=64), st.just(b"x" * 2000)),
)
def test_fuzz_no_request_is_a_500(fuzz_server: ServerThread, method: bytes, target: bytes,
                                  idem: bytes | None, body: bytes) -> None:
    headers = [] if idem is None else [b"Idempotency-Key: " + idem]
    status = _raw_request(fuzz_server.port, method, target, headers, body)
    assert status != 0, "the server answered nothing"
    # 501 is the documented answer to a method HTTP does not know (`serve_http`; see
    # test_limits), not a failure of the server.
    assert status < 500 or (status, method) == (501, b"BREW"), (method, target, idem, status)


def test_fuzz_errors_are_json(fuzz_server: ServerThread) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", fuzz_server.port, timeout=5)
    for method, target in [("GET", "/v1/kv/%FF"), ("PUT", "/v1/kv/?limit=x"),
                           ("GET", "/v1/kv/?limit=%FF%FE"), ("OPTIONS", "/v1/kv/k"),
                           ("GET", "/nowhere"), ("DELETE", "/v1/kv/k?prev_exist=0")]:
        conn.request(method, target)
        r = conn.getresponse()
        body = json.loads(r.read())
        assert 400 <= r.status < 500 and "code" in body["error"], (method, target)
    conn.close()
    # And the server still works after all that.
    assert _raw_request(fuzz_server.port, b"PUT", b"/v1/kv/after-fuzz", [], b"ok") == 200


def test_each_node_has_its_own_metrics_registry() -> None:
    a, b = FakeNode(1), FakeNode(2)
    make_app(a)
    make_app(b)
    a.metrics.chosen(3, 3)
    assert b"pnyx_chosen_slots_total 0.0" in b.metrics.render()
    assert b"pnyx_chosen_slots_total 3.0" in a.metrics.render()
    with pytest.raises(ValueError):
        a.metrics.set_role("king")


def test_requests_decode_to_idempotent_puts() -> None:
    # The command the HTTP layer proposes is exactly kv's IdempotentRequest(Put).
    node = FakeNode()

    async def go() -> None:
        async with serve(node) as (c, _):
            await c.put("/v1/kv/k?prev_index=0", data=b"v", headers={"Idempotency-Key": "i"})

    asyncio.run(go())
    decoded = kv._request_decoder.decode(node.submitted[0])
    assert decoded == IdempotentRequest("h:i", Put("k", b"v", prev_index=0))
    assert decode_result(node.machine.query(kv.encode_query("k"))) == kv.NotFound()


@aio
async def test_the_recent_log_of_a_node_without_one_is_a_404_in_the_error_shape() -> None:
    async with serve() as (c, _):  # the fake node, like a node without consensus, has no log
        r = await c.get("/v1/log?recent=5")
        error = await error_of(r, 404, "no_log")
        assert "without consensus" in error["message"]
