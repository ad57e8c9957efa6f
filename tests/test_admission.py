"""Admission control (`ClientLimits.max_pending`, `pnyx.api.limits.Admission`): past the
bound a node answers at once, HTTP 503 `overloaded` with `Retry-After`, binary
`unavailable` with words starting `overloaded`; it admits again as requests finish; the
bound is the node's, over both ports; the Python clients back off and get through."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

import pnyx
from fake_node import FakeNode, ServerThread
from pnyx import wire
from pnyx.api.binary import close_server, serve_clients
from pnyx.api.http import SERVER_ENV, serve_http
from pnyx.api.limits import OVERLOADED, Admission, ClientLimits, admission_for
from pnyx.protocol.multipaxos import Outcome
from pnyx.statemachine import kv


class GatedNode(FakeNode):
    """Every request waits at the gate until the test opens it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def submit(self, command: bytes, *, timeout: float) -> Outcome:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().submit(command, timeout=timeout)


def test_admission_counts_places_and_refuses_past_its_limit() -> None:
    a = Admission(2)
    assert a.try_enter() and a.try_enter()
    assert not a.try_enter() and a.refused == 1
    a.leave()
    assert a.try_enter() and a.current == 2
    with pytest.raises(ValueError):
        Admission(0)
    with pytest.raises(ValueError):
        ClientLimits(max_pending=0)


def test_a_node_has_one_admission_for_all_its_ports() -> None:
    node, other = FakeNode(), FakeNode()
    assert admission_for(node, 5) is admission_for(node, 99)
    assert admission_for(node, 5).limit == 5
    assert admission_for(other, 7) is not admission_for(node, 5)


async def _http(port: int, method: str, path: str, body: bytes = b"",
                ) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + body)
    data = await reader.read()
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, payload


@pytest.mark.parametrize("server", ["h1", "aiohttp"])
def test_http_answers_503_overloaded_past_the_bound_and_admits_again_after(
        server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVER_ENV, server)

    async def go() -> None:
        node = GatedNode()
        served = await serve_http(node, "127.0.0.1", 0, request_timeout=5.0,
                                  limits=ClientLimits(max_pending=3))
        try:
            held = [asyncio.ensure_future(_http(served.port, "PUT", f"/v1/kv/k{i}", b"v"))
                    for i in range(3)]
            while node.waiting < 3:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            status, headers, body = await _http(served.port, "PUT", "/v1/kv/x", b"v")
            assert time.monotonic() - started < 0.5, "refused at once, not queued"
            assert status == 503 and headers["Retry-After"] == "1"
            error = json.loads(body)["error"]
            assert error["code"] == "overloaded" and error["unknown"] is False
            status, _, body = await _http(served.port, "GET", "/v1/kv/k0")
            assert (status, json.loads(body)["error"]["code"]) == (503, "overloaded")
            # Status and metrics do not wait at the node: never refused.
            assert (await _http(served.port, "GET", "/v1/status"))[0] == 200
            assert node.submitted == [], "nothing refused reached the node"
            node.gate.set()
            assert [r[0] for r in await asyncio.gather(*held)] == [200, 200, 200]
            assert (await _http(served.port, "PUT", "/v1/kv/x", b"v"))[0] == 200
            assert admission_for(node, 3).current == 0
        finally:
            await served.close()

    asyncio.run(go())


async def _binary(port: int, requests: list[wire.ClientRequest], count: int,
                  ) -> list[wire.ClientResponse]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(wire.frame(r) for r in requests))
    decoder = wire.FrameDecoder(wire.MAX_FRAME)
    out: list[wire.ClientResponse] = []
    while len(out) < count:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "closed"
        decoder.feed(data)
        out += [wire.response_decoder.decode(p) for p in decoder.frames()]
    writer.close()
    return out


def _put(rid: int, key: str) -> wire.ClientRequest:
    return wire.ClientRequest(rid, "submit", kv.encode_request(
        kv.IdempotentRequest(f"t{rid}-{key}", kv.Put(key, b"v"))))


def test_binary_refuses_at_once_past_the_bound_sharing_it_with_http() -> None:
    async def go() -> None:
        node = GatedNode()
        limits = ClientLimits(max_pending=4)
        clients = await serve_clients(node, "127.0.0.1", 0, limits=limits)
        served = await serve_http(node, "127.0.0.1", 0, request_timeout=5.0, limits=limits)
        port = clients.sockets[0].getsockname()[1]
        try:
            held_http = [asyncio.ensure_future(_http(served.port, "PUT", f"/v1/kv/h{i}", b"v"))
                         for i in range(2)]
            held = asyncio.ensure_future(_binary(port, [_put(1, "a"), _put(2, "b")], 2))
            while node.waiting < 4:
                await asyncio.sleep(0.01)
            # Both ports count against the node's one bound.
            (refused,) = await _binary(port, [_put(3, "c")], 1)
            assert not refused.ok and refused.code == wire.ErrorCode.UNAVAILABLE
            assert refused.error.startswith(OVERLOADED) and refused.unknown is False
            assert (await _http(served.port, "PUT", "/v1/kv/x", b"v"))[0] == 503
            node.gate.set()
            assert all(r.ok for r in await held)
            assert [r[0] for r in await asyncio.gather(*held_http)] == [200, 200]
            (again,) = await _binary(port, [_put(4, "d")], 1)
            assert again.ok
            assert admission_for(node, 4).current == 0
        finally:
            await close_server(clients)
            await served.close()

    asyncio.run(go())


@pytest.mark.parametrize("client_kind", ["http", "fast"])
def test_the_python_clients_back_off_past_overloaded_and_get_through(
        client_kind: str) -> None:
    node = GatedNode()
    limits = ClientLimits(max_pending=1)
    with ServerThread(node, serve_kwargs={"limits": limits, "request_timeout": 5.0}) as server:
        port: dict[str, Any] = {}

        async def start_binary() -> None:
            port["server"] = await serve_clients(node, "127.0.0.1", 0, limits=limits)

        server.call(start_binary())
        binary_port = port["server"].sockets[0].getsockname()[1]
        # One request holds the node's only place.
        blocker = threading.Thread(target=lambda: pnyx.Client(
            [server.address], retry_timeout=10).put("held", b"v"), daemon=True)
        blocker.start()
        deadline = time.monotonic() + 5
        while node.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert node.waiting == 1
        # Free the place a little later: the client is refused, backs off, and retries.
        threading.Timer(0.3, lambda: server.loop.call_soon_threadsafe(node.gate.set)).start()
        started = time.monotonic()
        if client_kind == "http":
            with pnyx.Client([server.address], retry_timeout=5) as client:
                client.put("k", b"v")
        else:
            with pnyx.FastClient([f"127.0.0.1:{binary_port}"], retry_timeout=5) as fast:
                fast.put("k", b"v")
        assert 0.25 < time.monotonic() - started < 4.5
        blocker.join(5)
        assert node.machine.read("k")[0] == b"v"
        server.call(close_server(port["server"]))
