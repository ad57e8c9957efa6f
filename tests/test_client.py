"""Specs of `pnyx.Client` and `pnyx.AsyncClient` against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

import pnyx
from fake_node import FakeNode, ServerThread, dead_address
from pnyx.client import parse_endpoints
from pnyx.statemachine import kv


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(request_timeout=0.3, max_value=1000) as s:
        yield s


@pytest.fixture
def fresh(server: ServerThread) -> Iterator[ServerThread]:
    """The module's server with a clean, well-behaved node."""
    node = server.node
    node.machine = kv.KVMachine()
    node.index = 0
    node.unavailable = node.hang = False
    node.lose_replies = node.fail_reads = 0
    node.refuse = None
    node.submitted.clear()
    node.reads.clear()
    yield server


def _keys_sent(node: FakeNode) -> list[str]:
    return [kv._request_decoder.decode(c).idempotency_key for c in node.submitted]


# --- endpoints ----------------------------------------------------------------


def test_parse_endpoints() -> None:
    assert parse_endpoints(["127.0.0.1:8001", "http://h:2/", " [::1]:9 "]) == [
        ("127.0.0.1", 8001), ("h", 2), ("::1", 9)]
    assert parse_endpoints("a:1,b:2,") == [("a", 1), ("b", 2)]
    for bad in [[], [""], ["host"], ["host:"], ["host:0"], ["host:65536"], ["host:x"],
                [":80"], ["::1:80"], ["a/b:1"], "", [80]]:
        with pytest.raises(ValueError):
            parse_endpoints(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pnyx.Client(["a:1"], timeout=0)


def test_exports() -> None:
    for name in ["Client", "AsyncClient", "PnyxError", "NotFound", "PreconditionFailed",
                 "Unavailable", "BadRequest", "ValueTooLarge"]:
        assert hasattr(pnyx, name)
    assert issubclass(pnyx.NotFound, pnyx.PnyxError)


# --- the sync client ----------------------------------------------------------


def test_sync_put_get_delete(fresh: ServerThread) -> None:
    with pnyx.Client([fresh.address]) as c:
        i1 = c.put("greeting", b"hello")
        assert c.get("greeting") == (b"hello", i1)
        i2 = c.put("greeting", "héllo")  # str values are UTF-8
        assert c.get("greeting", consistency="stale") == ("héllo".encode(), i2)
        assert c.get("greeting", consistency="quorum")[1] == i2
        assert c.delete("greeting") > i2
        with pytest.raises(pnyx.NotFound) as exc:
            c.get("greeting")
        assert exc.value.status == 404 and exc.value.code == "not_found"
        with pytest.raises(pnyx.NotFound):
            c.delete("greeting")


def test_sync_awkward_keys(fresh: ServerThread) -> None:
    with pnyx.Client([fresh.address]) as c:
        for key in ["a/b", "..", ".", "sp ace", "q?x=1&y", "#frag", "100%", "日本", "+"]:
            index = c.put(key, key)
            assert c.get(key) == (key.encode(), index), key
        assert fresh.node.machine.read("..") is not None


def test_sync_conditions_and_cas(fresh: ServerThread) -> None:
    with pnyx.Client([fresh.address]) as c:
        first = c.put("k", b"a", prev_exist=False)
        with pytest.raises(pnyx.PreconditionFailed) as exc:
            c.put("k", b"b", prev_exist=False)
        assert exc.value.index == first and exc.value.status == 412
        second = c.cas("k", b"a", b"b")
        with pytest.raises(pnyx.PreconditionFailed) as exc:
            c.cas("k", b"a", b"c")
        assert exc.value.index == second
        third = c.put("k", b"c", prev_index=second)
        with pytest.raises(pnyx.PreconditionFailed):
            c.delete("k", prev_index=second)
        with pytest.raises(pnyx.PreconditionFailed):
            c.delete("k", prev_value=b"zzz")
        assert c.delete("k", prev_value="c", prev_index=third) > third
        with pytest.raises(pnyx.NotFound):
            c.cas("k", b"c", b"d")


def test_sync_typed_errors(fresh: ServerThread) -> None:
    with pnyx.Client([fresh.address]) as c:
        with pytest.raises(pnyx.BadRequest) as exc:
            c.put("", b"v")
        assert exc.value.code == "bad_key"
        with pytest.raises(pnyx.BadRequest):
            c.put("k", b"v", prev_exist=False, prev_index=3)
        with pytest.raises(pnyx.BadRequest):
            c.get("k" * 2000)
        with pytest.raises(pnyx.ValueTooLarge) as too_large:
            c.put("k", b"x" * 1001)
        assert too_large.value.status == 413
        # Far larger than the limit: the node answers 413 before reading it all.
        with pytest.raises(pnyx.ValueTooLarge):
            c.put("k", b"x" * (2 << 20))
        with pytest.raises(ValueError):
            c.get("k", consistency="strong")
        with pytest.raises(TypeError):
            c.put(b"bytes key", b"v")  # type: ignore[arg-type]
        # The connection is still good after all that.
        assert c.put("k", b"ok") > 0


def test_sync_keys_follow_pagination(fresh: ServerThread) -> None:
    for i in range(1205):
        fresh.node.index += 1
        fresh.node.machine.apply(kv.encode_request(
            kv.IdempotentRequest(f"seed{i}", kv.Put(f"k/{i:05d}", b"v"))), fresh.node.index)
    with pnyx.Client([fresh.address]) as c:
        assert len(c.keys()) == 100
        everything = c.keys("k/", limit=None)
        assert [k for k, _ in everything] == [f"k/{i:05d}" for i in range(1205)]
        assert everything[7] == ("k/00007", 8)
        assert len(c.keys("k/", limit=1100)) == 1100
        assert c.keys("k/0120") == [(f"k/0120{i}", 1201 + i) for i in range(5)]
        assert c.keys("nothing") == []
        with pytest.raises(ValueError):
            c.keys(limit=0)


def test_sync_status(fresh: ServerThread) -> None:
    with pnyx.Client([fresh.address]) as c:
        status = c.status()
    assert status["id"] == 1 and status["role"] == "leader"


def test_sync_fails_over_from_a_dead_endpoint(fresh: ServerThread) -> None:
    dead = dead_address()
    with pnyx.Client([dead, dead_address(), fresh.address], retry_timeout=5) as c:
        c._current = 0
        assert c.put("k", b"v") > 0
        assert c.endpoints[c._current][1] == fresh.port  # it sticks to the live one
        assert c.get("k")[0] == b"v"


def test_sync_fails_over_on_503_with_the_same_idempotency_key() -> None:
    down = FakeNode(1)
    down.unavailable = True
    with ServerThread(down, request_timeout=0.05) as a, ServerThread(FakeNode(2)) as b:
        with pnyx.Client([a.address, b.address], retry_timeout=5) as c:
            c._current = 0
            assert c.put("k", b"v") == 1
        assert _keys_sent(down) == _keys_sent(b.node)
        assert len(_keys_sent(b.node)) == 1


def test_sync_retries_a_write_whose_reply_was_lost_with_the_same_key() -> None:
    stuck = FakeNode(1)
    stuck.hang = True
    with ServerThread(stuck, request_timeout=5) as a, ServerThread(FakeNode(2)) as b:
        with pnyx.Client([a.address, b.address], timeout=0.2, retry_timeout=5) as c:
            c._current = 0
            c.put("k", b"v")
        assert _keys_sent(stuck) == _keys_sent(b.node) and len(_keys_sent(stuck)) == 1


def test_sync_unavailable_when_nothing_answers() -> None:
    with pnyx.Client([dead_address(), dead_address()], retry_timeout=0.3) as c:
        started = time.monotonic()
        with pytest.raises(pnyx.Unavailable) as exc:
            c.put("k", b"v")
        assert time.monotonic() - started < 2
        # Refused connections: the write never left, so it did not happen.
        assert exc.value.unknown is False and exc.value.idempotency_key
        with pytest.raises(pnyx.Unavailable):
            c.get("k")


def test_sync_unavailable_write_may_have_happened_and_can_be_retried() -> None:
    node = FakeNode()
    node.unavailable = True
    with (ServerThread(node, request_timeout=0.05) as s,
          pnyx.Client([s.address], retry_timeout=0.3) as c):
        with pytest.raises(pnyx.Unavailable) as exc:
            c.put("k", b"v")
        assert exc.value.unknown is True and exc.value.status == 503
        key = exc.value.idempotency_key
        assert key is not None and _keys_sent(node)[0] == "h:" + key
        # The caller retries the same write under the same key.
        node.unavailable = False
        first = c.put("k", b"v", idempotency_key=key)
        assert c.put("k", b"v", idempotency_key=key) == first
        assert node.machine.read("k") == (b"v", first)


def test_sync_client_reconnects_when_its_kept_alive_connection_is_gone(
        fresh: ServerThread) -> None:
    with pnyx.Client([fresh.address], retry_timeout=5) as c:
        c.put("k", b"1")
        # Close the kept-alive connection's socket under the client.
        c._conns[0].sock.close()  # type: ignore[union-attr]
        assert c.put("k", b"2") == 2
    assert len(fresh.node.submitted) == 2


# --- the async client ---------------------------------------------------------


def test_async_roundtrip_and_errors(fresh: ServerThread) -> None:
    async def go() -> None:
        async with pnyx.AsyncClient([fresh.address]) as c:
            i1 = await c.put("a/b", b"hello")
            assert await c.get("a/b") == (b"hello", i1)
            i2 = await c.cas("a/b", b"hello", b"bye")
            with pytest.raises(pnyx.PreconditionFailed) as exc:
                await c.cas("a/b", b"hello", b"again")
            assert exc.value.index == i2
            await c.put("..", b"dots")
            assert (await c.get(".."))[0] == b"dots"
            assert [k for k, _ in await c.keys()] == ["..", "a/b"]
            assert await c.keys("a", limit=None) == [("a/b", i2)]
            assert await c.delete("a/b") > i2
            with pytest.raises(pnyx.NotFound):
                await c.get("a/b")
            with pytest.raises(pnyx.BadRequest):
                await c.put("k", b"v", prev_exist=False, prev_value=b"x")
            with pytest.raises(pnyx.ValueTooLarge):
                await c.put("k", b"x" * 5000)
            assert (await c.status())["id"] == 1
            assert await c.put("empty", b"") > 0
            assert (await c.get("empty"))[0] == b""

    asyncio.run(go())


def test_async_failover_and_unavailable(fresh: ServerThread) -> None:
    async def go() -> None:
        async with pnyx.AsyncClient([dead_address(), fresh.address], retry_timeout=5) as c:
            c._current = 0
            assert await c.put("k", b"v") > 0
            assert c.endpoints[c._current][1] == fresh.port
        async with pnyx.AsyncClient([dead_address()], retry_timeout=0.2) as c:
            with pytest.raises(pnyx.Unavailable) as exc:
                await c.put("k", b"v")
            assert exc.value.unknown is False

    asyncio.run(go())


def test_async_fails_over_on_503_with_the_same_idempotency_key() -> None:
    down = FakeNode(1)
    down.unavailable = True
    with ServerThread(down, request_timeout=0.05) as a, ServerThread(FakeNode(2)) as b:
        async def go() -> Any:
            async with pnyx.AsyncClient([a.address, b.address], retry_timeout=5) as c:
                c._current = 0
                return await c.put("k", b"v")

        assert asyncio.run(go()) == 1
        assert _keys_sent(down) == _keys_sent(b.node) and len(_keys_sent(down)) == 1
