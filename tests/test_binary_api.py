"""Specs of the binary client protocol: `pnyx.api.binary.serve_clients` and `pnyx.AsyncFastClient`.

Everything runs against `fake_node.FakeNode` on 127.0.0.1 ephemeral ports,
each test on an event loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import random
import socket
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pytest

import pnyx
from fake_node import FakeNode, dead_address
from pnyx import wire
from pnyx.api import binary
from pnyx.api.binary import close_server, serve_clients
from pnyx.protocol.multipaxos import Code, Outcome, ReadMode
from pnyx.statemachine import kv

ROOT = Path(__file__).resolve().parent.parent


def async_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 20))

    return wrapper


@contextlib.asynccontextmanager
async def serving(node: Any, **kwargs: Any) -> AsyncIterator[tuple[asyncio.Server, str]]:
    server = await serve_clients(node, "127.0.0.1", 0, **kwargs)
    port = server.sockets[0].getsockname()[1]
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await close_server(server)


def client(*endpoints: str, **kwargs: Any) -> pnyx.AsyncFastClient:
    kwargs.setdefault("timeout", 2.0)
    kwargs.setdefault("retry_timeout", 2.0)
    return pnyx.AsyncFastClient(list(endpoints), **kwargs)


class RawConnection:
    """A bare socket connection for sending frames (good or bad) by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, address: str) -> RawConnection:
        host, port = address.rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> wire.ClientResponse:
        (length,) = wire.LENGTH.unpack(await self.reader.readexactly(4))
        return wire.response_decoder.decode(await self.reader.readexactly(length))

    async def closed_by_server(self) -> bool:
        """True once the server closes the connection (reads to EOF)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), 2.0):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.writer.close()


def submit_frame(rid: int, request: kv.AnyRequest, timeout: float = 5.0) -> bytes:
    return wire.frame(wire.ClientRequest(rid, "submit", kv.encode_request(request),
                                         timeout=timeout))


def read_frame(rid: int, key: str, mode: ReadMode = "linearizable") -> bytes:
    return wire.frame(wire.ClientRequest(rid, "read", kv.encode_query(key), mode))


class SlowNode(FakeNode):
    """Answers each call after a random pause, so that answers come back out of order."""

    async def submit(self, command: bytes, *, timeout: float) -> Outcome:
        await asyncio.sleep(random.random() * 0.05)
        return await super().submit(command, timeout=timeout)

    async def read(self, query: bytes, mode: ReadMode, *, timeout: float) -> Outcome:
        await asyncio.sleep(random.random() * 0.05)
        return await super().read(query, mode, timeout=timeout)


class GatedNode(FakeNode):
    """Holds every submit until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def submit(self, command: bytes, *, timeout: float) -> Outcome:
        self.submitted.append(command)
        await self.gate.wait()
        self.index += 1
        return Outcome(True, self.machine.apply(command, self.index), self.index)


class ApplyThenHangNode(FakeNode):
    """Applies a command, then never answers: a node that dies after the write took effect."""

    async def submit(self, command: bytes, *, timeout: float) -> Outcome:
        outcome = await super().submit(command, timeout=timeout)
        assert outcome.ok
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class BrokenNode(FakeNode):
    async def submit(self, command: bytes, *, timeout: float) -> Outcome:
        raise RuntimeError("a bug in the node")

    def status(self) -> dict[str, Any]:
        raise RuntimeError("a bug in the node")


# --- every operation ------------------------------------------------------------


def test_exports() -> None:
    assert pnyx.AsyncFastClient is not None and pnyx.FastClient is not None
    with pytest.raises(ValueError):
        pnyx.AsyncFastClient(["a:1"], timeout=0)
    with pytest.raises(ValueError):
        pnyx.AsyncFastClient([])


@async_test
async def test_every_op() -> None:
    node = FakeNode()
    async with serving(node) as (_, address), client(address) as c:
        assert await c.put("k", b"v1") == 1
        assert await c.get("k") == (b"v1", 1)
        assert await c.put("k", "text") == 2
        assert await c.get("k", consistency="quorum") == (b"text", 2)
        assert await c.get("k", consistency="stale") == (b"text", 2)
        assert [mode for _, mode in node.reads] == ["linearizable", "quorum", "stale"]
        assert await c.cas("k", "text", b"v3") == 3
        assert await c.put("k", b"v4", prev_index=3) == 4
        assert await c.put("new", b"x", prev_exist=False) == 5
        assert await c.put("k", b"v5", prev_exist=True) == 6
        assert await c.delete("new", prev_value=b"x") == 7
        assert await c.put("k", b"", prev_value="v5") == 8
        assert await c.get("k") == (b"", 8)
        assert await c.delete("k") == 9
        with pytest.raises(pnyx.NotFound):
            await c.get("k")
        status = await c.status()
        assert status["role"] == "leader" and status["commit_index"] == 9
        # Each write went as an IdempotentRequest in the HTTP API's namespace.
        sent = kv._request_decoder.decode(node.submitted[0])
        assert isinstance(sent, kv.IdempotentRequest)
        assert sent.idempotency_key.startswith("h:")
        assert sent.command == kv.Put("k", b"v1")
        await c.put("a", b"1", idempotency_key="my-key")
        assert kv._request_decoder.decode(node.submitted[-1]).idempotency_key == "h:my-key"


@async_test
async def test_keys_pages_and_limits() -> None:
    node = FakeNode()
    async with serving(node) as (_, address), client(address) as c:
        await asyncio.gather(*(c.put(f"k{i:04}", b"v") for i in range(1005)),
                             c.put("other", b"v"))
        everything = await c.keys("k", None)
        assert [k for k, _ in everything] == [f"k{i:04}" for i in range(1005)]
        assert len(node.reads) == 2  # two pages: 1000 and 5
        assert await c.keys("k", 2) == everything[:2]
        assert await c.keys("zzz") == []
        assert [k for k, _ in await c.keys(limit=None, consistency="stale")][-1] == "other"
        with pytest.raises(ValueError):
            await c.keys(limit=0)
        with pytest.raises(ValueError):
            await c.get("k", consistency="eventual")


@async_test
async def test_raw_calls() -> None:
    node = FakeNode()
    async with serving(node) as (_, address), client(address) as c:
        request = kv.Request("session-1", 1, kv.Put("k", b"v"))
        response = await c.submit_raw(kv.encode_request(request))
        assert response.ok and response.index == 1
        assert kv.decode_result(response.result) == kv.Ok(1)
        # The same (client_id, seq) again is a retry: answered, not applied.
        again = await c.submit_raw(kv.encode_request(request))
        assert again.ok and kv.decode_result(again.result) == kv.Ok(1)
        assert node.machine.read("k") == (b"v", 1)
        read = await c.read_raw(kv.encode_query("k"), "stale")
        assert kv.decode_result(read.result) == kv.Ok(1, b"v")
        # Refused before the node: answered, not raised, by the raw calls.
        bad = await c.submit_raw(b"\x93garbage")
        assert not bad.ok and bad.code == wire.ErrorCode.INVALID and "malformed" in bad.error
        assert len(node.submitted) == 2


@async_test
async def test_sync_fast_client() -> None:
    node = FakeNode()
    async with serving(node) as (_, address):
        def blocking() -> None:
            with pnyx.FastClient([address], timeout=2.0, retry_timeout=2.0) as c:
                results: list[int] = []
                threads = [threading.Thread(target=lambda i=i: results.append(
                    c.put(f"t{i}", b"v"))) for i in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert sorted(results) == list(range(1, 9))
                assert c.get("t3")[0] == b"v"
                assert len(c.keys("t")) == 8
                assert c.status()["id"] == 1
                with pytest.raises(pnyx.NotFound):
                    c.delete("nope")
            with pytest.raises(pnyx.PnyxError):
                c.get("t1")

        await asyncio.to_thread(blocking)


# --- pipelining ------------------------------------------------------------------


@async_test
async def test_1000_pipelined_requests_on_one_connection_out_of_order() -> None:
    node = SlowNode()
    async with serving(node) as (server, address), client(address) as c:
        indexes = await asyncio.gather(*(c.put(f"k{i}", f"v{i}") for i in range(1000)))
        assert sorted(indexes) == list(range(1, 1001))
        values = await asyncio.gather(*(c.get(f"k{i}") for i in range(1000)))
        assert [v for v, _ in values] == [f"v{i}".encode() for i in range(1000)]
        # Each answer matched its own request: the index read is the index written.
        assert [index for _, index in values] == indexes
        assert len(c._conns) == 1
        assert len(binary._connections[server].members) == 1


@async_test
async def test_raw_pipelining_answers_out_of_order_by_id() -> None:
    node = SlowNode()
    for i in range(100):
        node.machine.apply(kv.encode_request(kv.IdempotentRequest(f"i{i}", kv.Put(
            f"k{i}", f"v{i}".encode()))), i + 1)
    async with serving(node) as (_, address):
        raw = await RawConnection.open(address)
        ids = random.sample(range(1, 10**9), 1000)
        # All 1,000 frames in one write.
        await raw.send(b"".join(read_frame(rid, f"k{n % 100}") for n, rid in enumerate(ids)))
        answers = [await raw.response() for _ in ids]
        order = [a.id for a in answers]
        assert sorted(order) == sorted(ids)
        assert order != ids  # they finished in another order than they were sent
        expected = {rid: f"v{n % 100}".encode() for n, rid in enumerate(ids)}
        for a in answers:
            result = kv.decode_result(a.result)
            assert isinstance(result, kv.Ok) and result.value == expected[a.id]
        raw.close()


@async_test
async def test_frames_split_anywhere_are_reassembled() -> None:
    node = FakeNode()
    async with serving(node) as (_, address):
        raw = await RawConnection.open(address)
        big = kv.IdempotentRequest("big", kv.Put("k", b"x" * 300_000))
        data = submit_frame(1, big) + read_frame(2, "k") + submit_frame(
            3, kv.IdempotentRequest("small", kv.Put("s", b"y")))
        for start in range(0, 10):  # byte by byte through the first length prefix
            await raw.send(data[start:start + 1])
            await asyncio.sleep(0)
        for start in range(10, len(data), 65_000):
            await raw.send(data[start:start + 65_000])
        answers = {(a := await raw.response()).id: a for _ in range(3)}
        assert answers[1].ok and answers[1].index == 1
        assert kv.decode_result(answers[2].result) == kv.Ok(1, b"x" * 300_000)
        assert answers[3].index == 2
        raw.close()


@async_test
async def test_backpressure_bounds_requests_in_flight() -> None:
    node = GatedNode()
    async with serving(node, max_inflight=8) as (_, address):
        raw = await RawConnection.open(address)
        frames = [submit_frame(i, kv.IdempotentRequest(f"r{i}", kv.Put(f"k{i}", b"v")))
                  for i in range(1, 101)]
        await raw.send(b"".join(frames))
        await asyncio.sleep(0.2)
        assert len(node.submitted) == 8  # the rest wait, unread, in the socket
        node.gate.set()
        answers = [await raw.response() for _ in frames]
        assert sorted(a.id for a in answers) == list(range(1, 101))
        assert all(a.ok for a in answers)
        assert node.machine.applied_index == 100
        raw.close()


@async_test
async def test_a_client_that_does_not_read_its_answers_is_not_read_either() -> None:
    node = FakeNode()
    node.machine.apply(kv.encode_request(kv.IdempotentRequest("i", kv.Put(
        "big", b"x" * (256 << 10)))), 1)
    async with serving(node) as (_, address):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.connect(("127.0.0.1", int(address.rsplit(":", 1)[1])))
        sock.setblocking(False)
        raw = RawConnection(*await asyncio.open_connection(sock=sock))
        raw.writer.write(b"".join(read_frame(i, "big", "stale") for i in range(200)))
        await asyncio.sleep(0.3)
        # 50 MB of answers were asked for; the server stopped after a few MB.
        assert 0 < len(node.reads) < 100
        for _ in range(200):
            assert (await raw.response()).ok
        assert len(node.reads) == 200
        raw.close()


# --- bad input closes only that connection ------------------------------------------


BAD_INPUT = {
    "not msgpack": wire.LENGTH.pack(3) + b"\xc1\xc1\xc1",
    "empty frame": wire.LENGTH.pack(0),
    "wrong shape": wire.LENGTH.pack(4) + msgspec.msgpack.encode([1, 2, 3])[:4],
    "unknown op": wire.LENGTH.pack(len(m := msgspec.msgpack.encode([1, "launch", b""])))
    + m,
    "negative id": wire.LENGTH.pack(len(m := msgspec.msgpack.encode([-1, "status"]))) + m,
    "timeout too long": wire.LENGTH.pack(len(
        m := msgspec.msgpack.encode([1, "status", b"", "stale", 1000.0]))) + m,
    "oversized frame": wire.LENGTH.pack(wire.MAX_FRAME + 1) + b"x" * 100,
    "HTTP": b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("bad", BAD_INPUT.values(), ids=list(BAD_INPUT))
@async_test
async def test_bad_input_closes_only_that_connection(bad: bytes,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    node = FakeNode()
    async with serving(node) as (_, address), client(address) as c:
        await c.put("before", b"1")
        raw = await RawConnection.open(address)
        # A good request ahead of the bad bytes is still answered.
        await raw.send(read_frame(7, "before") + bad)
        assert (await raw.response()).id == 7
        assert await raw.closed_by_server()
        raw.close()
        # The other connection, and new ones, are served as before.
        assert await c.put("after", b"2") == 2
        async with client(address) as c2:
            assert await c2.get("after") == (b"2", 2)
    assert any("closing its connection" in r.getMessage() for r in caplog.records)


@async_test
async def test_max_frame_is_configurable() -> None:
    node = FakeNode()
    async with serving(node, max_frame=1000) as (_, address), client(address) as c:
        raw = await RawConnection.open(address)
        await raw.send(submit_frame(1, kv.IdempotentRequest("x", kv.Put("k", b"v" * 2000))))
        assert await raw.closed_by_server()
        raw.close()
        assert await c.put("k", b"v") == 1


@async_test
async def test_duplicate_id_in_flight_is_refused() -> None:
    node = GatedNode()
    async with serving(node) as (_, address):
        raw = await RawConnection.open(address)
        await raw.send(submit_frame(5, kv.IdempotentRequest("a", kv.Put("a", b"1")))
                       + submit_frame(5, kv.IdempotentRequest("b", kv.Put("b", b"1"))))
        refused = await raw.response()
        assert refused.id == 5 and not refused.ok and refused.code == wire.ErrorCode.BAD_REQUEST
        node.gate.set()
        assert (await raw.response()).ok
        raw.close()


# --- failover and retries -------------------------------------------------------------


@async_test
async def test_failover_from_dead_endpoint() -> None:
    node = FakeNode()
    async with serving(node) as (_, address):
        c = client(dead_address(), address)
        c._current = 0
        async with c:
            assert await asyncio.gather(*(c.put(f"k{i}", b"v") for i in range(50))) != []
            assert c._current == 1
            assert node.machine.applied_index == 50


@async_test
async def test_failover_when_the_connection_is_lost() -> None:
    node = FakeNode()
    async with serving(node) as (_, b_address):
        server_a = await serve_clients(node, "127.0.0.1", 0)
        a_address = f"127.0.0.1:{server_a.sockets[0].getsockname()[1]}"
        c = client(a_address, b_address)
        c._current = 0
        async with c:
            assert await c.put("k", b"1") == 1
            await close_server(server_a)
            assert await c.put("k", b"2") == 2
            assert c._current == 1


@async_test
async def test_failover_on_unavailable_node() -> None:
    sick, well = FakeNode(1), FakeNode(2)
    sick.unavailable = True
    async with serving(sick) as (_, a), serving(well) as (_, b):
        c = client(a, b, request_timeout=0.05)
        c._current = 0
        async with c:
            assert await c.put("k", b"v") == 1
            assert await c.get("k") == (b"v", 1)
            assert c._current == 1
            assert len(sick.submitted) == 1 and well.machine.applied_index == 1


@async_test
async def test_retry_after_lost_reply_does_not_apply_twice() -> None:
    node = FakeNode()
    node.lose_replies = 1  # applied, but answered "unknown"
    async with serving(node) as (_, address), client(address) as c:
        assert await c.put("k", b"v") == 1
        assert len(node.submitted) == 2 and node.submitted[0] == node.submitted[1]
        # The second copy took a slot but was answered as a duplicate: the key
        # still carries the first copy's index.
        assert node.machine.read("k") == (b"v", 1)


@async_test
async def test_retry_on_another_node_after_connection_loss_does_not_apply_twice() -> None:
    # Two "nodes" over one machine: a write reaches A and takes effect, A dies
    # before answering, and the retry to B must be answered with A's result.
    a_node = ApplyThenHangNode()
    b_node = FakeNode(2)
    b_node.machine = a_node.machine
    async with serving(b_node) as (_, b_address):
        server_a = await serve_clients(a_node, "127.0.0.1", 0)
        a_address = f"127.0.0.1:{server_a.sockets[0].getsockname()[1]}"
        c = client(a_address, b_address)
        c._current = 0
        async with c:
            put = asyncio.create_task(c.put("k", b"v", idempotency_key="once"))
            while not a_node.submitted:
                await asyncio.sleep(0.01)
            await close_server(server_a)
            b_node.index = a_node.index
            assert await put == 1
        assert b_node.submitted == a_node.submitted  # the same bytes, resent
        assert a_node.machine.applied_index == 2  # the retry took a slot...
        assert a_node.machine.read("k") == (b"v", 1)  # ...but changed nothing


@async_test
async def test_unavailable_after_retry_timeout_names_the_key() -> None:
    node = FakeNode()
    node.unavailable = True
    async with serving(node) as (_, address):
        async with client(address, retry_timeout=0.3, request_timeout=0.05) as c:
            with pytest.raises(pnyx.Unavailable) as caught:
                await c.put("k", b"v", idempotency_key="retry-me")
            assert caught.value.unknown and caught.value.idempotency_key == "retry-me"
            assert caught.value.status == 503 and caught.value.code == "unavailable"
            with pytest.raises(pnyx.Unavailable) as read_failed:
                await c.get("k")
            assert not read_failed.value.unknown
        node.unavailable = False
        async with client(address) as c:
            assert await c.put("k", b"v", idempotency_key="retry-me") == 1
            assert await c.put("k", b"v", idempotency_key="retry-me") == 1  # applied once


@async_test
async def test_a_node_that_hangs_is_answered_by_the_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binary, "NODE_GRACE", 0.05)
    node = FakeNode()
    node.hang = True
    async with (serving(node) as (_, address),
                client(address, request_timeout=0.05, retry_timeout=0.5) as c):
        with pytest.raises(pnyx.Unavailable) as caught:
            await c.put("k", b"v")
        assert caught.value.unknown
        assert "did not answer in time" in caught.value.message


@async_test
async def test_a_server_that_never_answers_times_out() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with client(address, timeout=0.1, retry_timeout=0.4) as c:
        with pytest.raises(pnyx.Unavailable) as caught:
            await c.put("k", b"v")
        assert caught.value.unknown and "no answer in time" in caught.value.message
        with pytest.raises(pnyx.Unavailable) as caught:
            await c.status()
        assert not caught.value.unknown
    server.close()
    await server.wait_closed()


@async_test
async def test_no_node_reachable() -> None:
    async with client(dead_address(), dead_address(), retry_timeout=0.2) as c:
        with pytest.raises(pnyx.Unavailable) as caught:
            await c.put("k", b"v")
        assert not caught.value.unknown and caught.value.status is None
        assert "cannot connect" in caught.value.message


# --- typed errors --------------------------------------------------------------------------


@async_test
async def test_typed_errors() -> None:
    node = FakeNode()
    async with serving(node, max_command=200) as (_, address), client(address) as c:
        with pytest.raises(pnyx.NotFound) as not_found:
            await c.get("missing")
        assert not_found.value.status == 404 and not_found.value.code == "not_found"
        with pytest.raises(pnyx.NotFound):
            await c.delete("missing")
        with pytest.raises(pnyx.NotFound):
            await c.cas("missing", b"a", b"b")
        index = await c.put("k", b"a")
        with pytest.raises(pnyx.PreconditionFailed) as failed:
            await c.cas("k", b"not a", b"b")
        assert failed.value.index == index and failed.value.status == 412
        with pytest.raises(pnyx.PreconditionFailed):
            await c.put("k", b"b", prev_exist=False)
        submitted = len(node.submitted)
        with pytest.raises(pnyx.ValueTooLarge) as too_large:
            await c.put("k", b"x" * 300)
        assert too_large.value.status == 413 and too_large.value.code == "value_too_large"
        with pytest.raises(pnyx.BadRequest) as bad:
            await c.put("", b"v")
        assert bad.value.status == 400 and "key must not be empty" in bad.value.message
        with pytest.raises(pnyx.BadRequest):
            await c.get("")
        with pytest.raises(pnyx.BadRequest):
            await c.get("x" * 2000)
        with pytest.raises(pnyx.BadRequest):
            await c.delete("k", prev_exist=False)
        for bad_key in ["", "é", "a\nb", "x" * 300]:
            with pytest.raises(pnyx.BadRequest):
                await c.put("k", b"v", idempotency_key=bad_key)
        # None of the refused commands reached the node.
        assert len(node.submitted) == submitted
        await c.put("k", b"v", idempotency_key="mine")
        with pytest.raises(pnyx.PnyxError) as reused:
            await c.put("k", b"other", idempotency_key="mine")
        assert reused.value.status == 409 and reused.value.code == "idempotency_key_reused"
        with pytest.raises(TypeError):
            await c.put(b"k", b"v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await c.put("k", 5)  # type: ignore[arg-type]


@async_test
async def test_refusals_by_the_node() -> None:
    node = FakeNode()
    async with serving(node) as (_, address), client(address, retry_timeout=0.2) as c:
        node.refuse = Outcome.failed(Code.TOO_LARGE,
                                     "command is 5000 bytes, too large for this node")
        with pytest.raises(pnyx.ValueTooLarge):
            await c.put("k", b"v")
        node.refuse = Outcome.failed(Code.SHUTTING_DOWN, "not today")
        with pytest.raises(pnyx.Unavailable) as caught:
            await c.put("k", b"v")
        assert not caught.value.unknown and "not today" in caught.value.message
        # By the code, whatever the words say.
        node.refuse = Outcome.failed(Code.BAD_REQUEST, "too large, shutting down")
        with pytest.raises(pnyx.BadRequest) as bad:
            await c.put("k", b"v")
        assert bad.value.status == 400 and bad.value.code == "invalid"
        node.refuse = Outcome.failed(Code.INTERNAL, "not the leader")
        with pytest.raises(pnyx.PnyxError) as internal:
            await c.put("k", b"v")
        assert internal.value.status == 500 and internal.value.code == "internal"
        node.refuse = None
        node.fail_reads = 2  # reads are retried
        await c.put("k", b"v")
        assert await c.get("k") == (b"v", 1)


@async_test
async def test_a_bug_in_the_node_is_an_internal_error_not_a_crash() -> None:
    node = BrokenNode()
    async with serving(node) as (_, address), client(address) as c:
        with pytest.raises(pnyx.PnyxError) as caught:
            await c.put("k", b"v")
        assert caught.value.status == 500 and caught.value.code == "internal"
        with pytest.raises(pnyx.PnyxError):
            await c.status()
        with pytest.raises(pnyx.NotFound):  # reads still work
            await c.get("k")
    async with serving(FakeNode()) as (_, address), client(address) as c:
        assert await c.put("k", b"v") == 1


# --- the trivial server ----------------------------------------------------------------


@async_test
async def test_trivial_server_answers_ok() -> None:
    spec = importlib.util.spec_from_file_location("trivial_server",
                                                  ROOT / "bench" / "trivial_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = await module.serve("127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with client(address) as c:
        answers = await asyncio.gather(*(c.submit_raw(b"anything") for _ in range(100)))
        assert all(a.ok for a in answers)
        assert len({a.id for a in answers}) == 100
        assert (await c.status())["role"] == "trivial"
    server.close()


def test_every_outcome_code_has_one_wire_code() -> None:
    assert set(binary.WIRE_CODES) == set(Code)
    # Refusals for the request itself are never retried by a client; the rest may be.
    for code, wire_code in binary.WIRE_CODES.items():
        retried = wire_code is wire.ErrorCode.UNAVAILABLE
        assert retried == (code.retryable and code is not Code.INTERNAL), code


def test_sockets_are_released() -> None:
    # A closed server frees its port at once (no listener left behind).
    async def go() -> int:
        async with serving(FakeNode()) as (_, address):
            return int(address.rsplit(":", 1)[1])

    port = asyncio.run(go())
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))



@async_test
async def test_closing_the_client_ends_its_calls() -> None:
    node = GatedNode()
    async with serving(node) as (_, address):
        c = client(address, retry_timeout=10.0)
        put = asyncio.create_task(c.put("k", b"v", idempotency_key="k1"))
        while not node.submitted:
            await asyncio.sleep(0.01)
        await c.close()
        with pytest.raises(pnyx.Unavailable) as caught:
            await asyncio.wait_for(put, 1.0)
        assert caught.value.unknown and caught.value.idempotency_key == "k1"
        with pytest.raises(pnyx.PnyxError):
            await c.get("k")
        node.gate.set()


@async_test
async def test_a_request_over_the_frame_limit_is_refused_by_the_client() -> None:
    node = FakeNode()
    async with serving(node) as (_, address), client(address) as c:
        assert await c.put("small", b"v") == 1
        with pytest.raises(pnyx.ValueTooLarge):
            await c.submit_raw(b"x" * wire.MAX_FRAME)
        assert await c.get("small") == (b"v", 1)
        assert len(node.submitted) == 1


class RefusingNowaitNode(FakeNode):
    """A node with the callback API that refuses to start requests (as one not started yet)."""

    def submit_nowait(self, command: bytes, done: Callable[[Outcome], None], *,
                      timeout: float) -> Any:
        raise RuntimeError("the node has not started")

    def read_nowait(self, query: bytes, mode: ReadMode, done: Callable[[Outcome], None], *,
                    timeout: float) -> Any:
        raise RuntimeError("the node has not started")


@async_test
async def test_a_request_the_node_refuses_to_start_is_answered_and_not_left_in_flight() -> None:
    node = RefusingNowaitNode()
    async with serving(node, max_inflight=2) as (server, address):
        raw = await RawConnection.open(address)
        for _ in range(3):  # more than max_inflight: each refusal frees its place
            await raw.send(submit_frame(1, kv.IdempotentRequest("a", kv.Put("a", b"1")))
                           + read_frame(2, "a"))
            answers = {(a := await raw.response()).id: a for _ in range(2)}
            assert not answers[1].ok and not answers[2].ok
            assert answers[1].code == "internal" and answers[2].code == "internal"
        assert all(not conn.inflight for conn in binary._connections[server].members)
        raw.close()
