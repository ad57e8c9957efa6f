"""Specs of the limits on client connections (`pnyx.api.limits`) on both client ports,
of the HTTP parser's refusals in the JSON error shape, and of the answers the README
documents (404 vs 412, 409, sizes).

Real TCP on 127.0.0.1: raw sockets play the slow, stalled or greedy clients; the HTTP
server runs as `pnyx serve` runs it (`serve_http`), the binary one through
`serve_clients(limits=...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import pnyx
from fake_node import FakeNode, ServerThread
from pnyx import wire
from pnyx.api import http as http_api
from pnyx.api.binary import close_server, serve_clients
from pnyx.api.limits import ClientLimits
from pnyx.node.config import Address, NodeConfig
from pnyx.protocol.multipaxos import Outcome
from pnyx.statemachine import kv

README = Path(__file__).resolve().parent.parent / "README.md"


# --- helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def http_server(node: FakeNode | None = None, **limits: Any) -> Iterator[ServerThread]:
    kwargs: dict[str, Any] = {"limits": ClientLimits(**limits), "request_timeout": 1.0}
    with ServerThread(node or FakeNode(), serve_kwargs=kwargs) as s:
        yield s


def raw(server: ServerThread) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return s


def read_until_closed(s: socket.socket, limit: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    s.settimeout(limit)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started


def json_error(answer: bytes) -> tuple[int, dict[str, Any]]:
    """The status and the `error` object of a raw HTTP answer in the documented shape."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert re.search(rb"(?i)content-type: application/json", head), head
    error = json.loads(body)["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    return status, error


def is_closed(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# --- HTTP: time -------------------------------------------------------------------------


def test_a_body_that_never_arrives_is_answered_408_and_the_connection_closed() -> None:
    with http_server(body_timeout=0.3) as server:
        s = raw(server)
        s.sendall(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        answer, took = read_until_closed(s)
        status, error = json_error(answer)
        assert (status, error["code"]) == (408, "body_timeout")
        assert 0.25 < took < 2.5
        assert server.node.submitted == []


def test_a_body_that_never_arrives_does_not_delay_a_graceful_shutdown() -> None:
    server = ServerThread(FakeNode(), serve_kwargs={
        "limits": ClientLimits(body_timeout=60.0), "request_timeout": 1.0})
    with server:
        s = raw(server)
        s.sendall(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        time.sleep(0.2)
        started = time.monotonic()
        assert server._runner is not None
        server.call(server._runner.cleanup())
        assert time.monotonic() - started < 2.0
        answer, _ = read_until_closed(s)
        status, error = json_error(answer)
        assert (status, error["code"]) == (503, "unavailable")
        server._runner = None


def test_an_idle_http_connection_is_closed_after_the_idle_timeout() -> None:
    with http_server(idle_timeout=0.3) as server:
        silent = raw(server)
        half_headers = raw(server)
        half_headers.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        kept_alive = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        kept_alive.request("GET", "/v1/status")
        assert kept_alive.getresponse().read()
        for s in (silent, half_headers):
            data, took = read_until_closed(s)
            assert data == b"" and took < 2.0
        assert kept_alive.sock is not None and is_closed(kept_alive.sock, 2.0)


def test_an_http_connection_in_use_is_not_idle() -> None:
    with http_server(idle_timeout=0.4) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        for _ in range(6):  # 1.2 s of requests 0.2 s apart: never 0.4 s without one
            conn.request("GET", "/v1/status")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
            time.sleep(0.2)


# --- HTTP: number -----------------------------------------------------------------------


def test_http_connections_over_the_cap_are_refused_at_once_while_the_rest_are_served(
        ) -> None:
    with http_server(max_connections=4) as server:
        held = [raw(server) for _ in range(3)]
        served = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        served.connect()
        time.sleep(0.2)
        extra = raw(server)
        extra.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, took = read_until_closed(extra)
        status, error = json_error(answer)
        assert (status, error["code"]) == (503, "too_many_connections")
        assert b"Retry-After: 1" in answer
        assert took < 1.5
        # The node serves the connections it has.
        served.request("PUT", "/v1/kv/probe", body=b"v")
        assert served.getresponse().status == 200
        # One goes; a new one is taken.
        held.pop().close()
        time.sleep(0.2)
        with pnyx.Client([server.address], retry_timeout=2) as client:
            assert client.get("probe") == (b"v", 1)
        for s in held:
            s.close()


# --- HTTP: what the parser refuses is answered in the JSON shape -------------------------


PARSER_REFUSALS = {
    "unknown method": (b"BREW /v1/status HTTP/1.1\r\nHost: x\r\n\r\n", 501, "unknown_method"),
    "control character in the method": (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 501,
                                        "unknown_method"),
    "URL too long": (b"GET /v1/kv/" + b"a" * (http_api.MAX_URL_BYTES + 10)
                     + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "url_too_long"),
    "header too long": (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: "
                        + b"a" * (http_api.MAX_HEADER_BYTES + 10) + b"\r\n\r\n",
                        431, "header_too_large"),
    "too many headers": (b"GET /v1/status HTTP/1.1\r\n" + b"".join(
        b"X-%d: y\r\n" % i for i in range(http_api.MAX_HEADERS + 5)) + b"\r\n",
        431, "header_too_large"),
    "conflicting Content-Length": (b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                   b"Content-Length: 2\r\n\r\nab", 400, "bad_request"),
    "Content-Length and chunked": (b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\nab", 400,
                                   "bad_request"),
    "not a number": (b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", 400,
                     "bad_request"),
}


@pytest.mark.parametrize("request_bytes,status,code", PARSER_REFUSALS.values(),
                         ids=list(PARSER_REFUSALS))
def test_what_the_http_parser_refuses_is_answered_in_the_json_error_shape(
        request_bytes: bytes, status: int, code: str) -> None:
    with http_server() as server:
        s = raw(server)
        s.sendall(request_bytes)
        answer, _ = read_until_closed(s)
        assert json_error(answer)[0] == status
        assert json_error(answer)[1]["code"] == code
        assert server.node.submitted == []


def test_the_parser_limits_allow_what_they_document() -> None:
    with http_server() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        key = "k" * kv.MAX_KEY_BYTES  # the longest key fits the URL limit
        conn.request("PUT", f"/v1/kv/{key}", body=b"v",
                     headers={"X-Padding": "p" * (http_api.MAX_HEADER_BYTES - 20)})
        assert conn.getresponse().status == 200


# --- the binary port ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def binary(node: FakeNode | None = None, **limits: Any,
                 ) -> AsyncIterator[tuple[FakeNode, int]]:
    node = node or FakeNode()
    server = await serve_clients(node, "127.0.0.1", 0, limits=ClientLimits(**limits))
    try:
        yield node, server.sockets[0].getsockname()[1]
    finally:
        await close_server(server)


async def until_closed(reader: asyncio.StreamReader, limit: float = 5.0,
                       ) -> tuple[bytes, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), limit):
            data += chunk
    return data, loop.time() - started


def status_frame(rid: int) -> bytes:
    return wire.frame(wire.ClientRequest(rid, "status"))


def test_a_half_sent_frame_is_dropped_after_the_frame_timeout() -> None:
    async def go() -> None:
        async with binary(body_timeout=0.3) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            frame = status_frame(1)
            writer.write(frame + frame[:3])  # one whole frame, then the start of another
            data, took = await until_closed(reader)
            assert wire.response_decoder.decode(data[4:]).ok  # the whole one was answered
            assert 0.25 < took < 2.0

    asyncio.run(go())


def test_a_frame_trickled_in_a_byte_at_a_time_is_dropped_after_the_frame_timeout() -> None:
    async def go() -> None:
        async with binary(body_timeout=0.4) as (node, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            frame = wire.frame(wire.ClientRequest(1, "submit", kv.encode_request(
                kv.IdempotentRequest("i", kv.Put("k", b"v" * 100)))))
            for byte in frame[:-1]:
                if writer.is_closing() or reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.02)  # 20 ms apart: never idle, never finished
            data, _ = await until_closed(reader)
            assert data == b"" and node.submitted == []

    asyncio.run(go())


def test_a_frame_completed_in_time_is_served_however_it_is_split() -> None:
    async def go() -> None:
        async with binary(body_timeout=0.5) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for rid in range(1, 6):  # each frame split, finished 0.2 s after it starts
                frame = status_frame(rid)
                writer.write(frame[:2])
                await asyncio.sleep(0.2)
                writer.write(frame[2:])
                (length,) = wire.LENGTH.unpack(await reader.readexactly(4))
                assert wire.response_decoder.decode(await reader.readexactly(length)).id == rid
            writer.close()

    asyncio.run(go())


def test_an_idle_binary_connection_is_closed_but_not_one_with_a_request_in_flight() -> None:
    class Gated(FakeNode):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def submit(self, command: bytes, *, timeout: float) -> Outcome:
            await self.gate.wait()
            return await super().submit(command, timeout=timeout)

    async def go() -> None:
        node = Gated()
        async with binary(node, idle_timeout=0.3) as (_, port):
            idle_reader, _ = await asyncio.open_connection("127.0.0.1", port)
            busy_reader, busy = await asyncio.open_connection("127.0.0.1", port)
            busy.write(wire.frame(wire.ClientRequest(1, "submit", kv.encode_request(
                kv.IdempotentRequest("i", kv.Put("k", b"v"))), timeout=10)))
            data, took = await until_closed(idle_reader)
            assert data == b"" and took < 2.0
            await asyncio.sleep(0.5)  # well past the idle timeout, the request still waits
            node.gate.set()
            (length,) = wire.LENGTH.unpack(await busy_reader.readexactly(4))
            assert wire.response_decoder.decode(await busy_reader.readexactly(length)).ok

    asyncio.run(go())


def test_binary_connections_over_the_cap_are_refused_at_once_while_the_rest_are_served(
        ) -> None:
    async def go() -> None:
        async with binary(max_connections=3) as (_, port), \
                binary() as (other_node, other_port):
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            await asyncio.sleep(0.1)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(status_frame(7))
            data, took = await until_closed(reader)
            refusal = wire.response_decoder.decode(data[4:])
            assert (refusal.id, refusal.ok, refusal.code) == (0, False,
                                                              wire.ErrorCode.UNAVAILABLE)
            assert "too many connections" in refusal.error and took < 1.5
            # The connections it has are served.
            held_reader, held_writer = held[0]
            held_writer.write(status_frame(1))
            (length,) = wire.LENGTH.unpack(await held_reader.readexactly(4))
            assert wire.response_decoder.decode(await held_reader.readexactly(length)).ok
            # A fast client sent to the full node goes on to the next, its write not
            # counted as possibly applied.
            async with pnyx.AsyncFastClient([f"127.0.0.1:{port}", f"127.0.0.1:{other_port}"],
                                            retry_timeout=3) as client:
                client._current = 0
                assert await client.put("k", b"v") == 1
            assert other_node.index == 1
            for _, w in held:
                w.close()

    asyncio.run(go())


def test_connections_over_the_cap_are_refused_under_uvloop_too() -> None:
    uvloop = pytest.importorskip("uvloop")  # what `pnyx serve` runs on when installed

    async def go() -> None:
        node = FakeNode()
        http = await http_api.serve_http(node, "127.0.0.1", 0,
                                         limits=ClientLimits(max_connections=1))
        async with binary(max_connections=1) as (_, port):
            for target in (http.port, port):
                held = await asyncio.open_connection("127.0.0.1", target)
                await asyncio.sleep(0.1)
                reader, writer = await asyncio.open_connection("127.0.0.1", target)
                data, took = await until_closed(reader)
                assert (b"too_many_connections" in data or b"too many connections" in data)
                assert took < 1.5
                held[1].close()
                writer.close()
        await http.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(go())


def test_the_in_flight_cap_stops_reading_a_connection_until_requests_finish() -> None:
    class Gated(FakeNode):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()
            self.started = 0

        async def submit(self, command: bytes, *, timeout: float) -> Outcome:
            self.started += 1
            await self.gate.wait()
            return await super().submit(command, timeout=timeout)

    async def go() -> None:
        node = Gated()
        async with binary(node, max_inflight=5) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"".join(wire.frame(wire.ClientRequest(i, "submit", kv.encode_request(
                kv.IdempotentRequest(f"i{i}", kv.Put(f"k{i}", b"v"))))) for i in range(1, 51)))
            await asyncio.sleep(0.3)
            assert node.started == 5  # the other 45 wait unread
            node.gate.set()
            answers = []
            for _ in range(50):
                (length,) = wire.LENGTH.unpack(await reader.readexactly(4))
                answers.append(wire.response_decoder.decode(await reader.readexactly(length)))
            assert sorted(a.id for a in answers) == list(range(1, 51))
            assert all(a.ok for a in answers)

    asyncio.run(go())


def test_limits_refuse_values_that_cannot_work() -> None:
    for bad in ({"body_timeout": 0}, {"idle_timeout": -1}, {"max_connections": 0},
                {"max_inflight": 0}):
        with pytest.raises(ValueError):
            ClientLimits(**bad)


# --- what the README documents ----------------------------------------------------------


def test_a_precondition_on_a_missing_key_is_404_and_on_an_existing_key_412() -> None:
    with http_server() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)

        def put(query: str) -> tuple[int, dict[str, Any]]:
            conn.request("PUT", f"/v1/kv/k{query}", body=b"v")
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")

        for query in ("?prev_value=x", "?prev_index=1", "?prev_exist=true"):
            status, body = put(query)
            assert (status, body["error"]["code"]) == (404, "not_found"), query
        conn.request("DELETE", "/v1/kv/k?prev_index=1")
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["error"]["code"]) == (
            404, "not_found")
        status, created = put("?prev_exist=false")  # create-only, on a missing key
        assert status == 200
        status, body = put("?prev_exist=false")
        assert (status, body["error"]["code"], body["error"]["index"]) == (
            412, "precondition_failed", created["index"])
        status, body = put("?prev_value=x")
        assert (status, body["error"]["code"]) == (412, "precondition_failed")
        with pnyx.Client([server.address]) as client:
            with pytest.raises(pnyx.NotFound):
                client.put("missing", b"v", prev_value=b"x")
            with pytest.raises(pnyx.PreconditionFailed):
                client.cas("k", b"x", b"y")


def test_a_reused_idempotency_key_is_409_naming_the_key_as_the_client_gave_it() -> None:
    with http_server() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        for value, expected in ((b"a", 200), (b"b", 409)):
            conn.request("PUT", "/v1/kv/k", body=value, headers={"Idempotency-Key": "op-1"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == expected
        error = json.loads(body)["error"]
        assert error["code"] == "idempotency_key_reused"
        assert "'op-1'" in error["message"] and "h:" not in error["message"]

    async def fast() -> None:
        async with binary() as (_, port), pnyx.AsyncFastClient([f"127.0.0.1:{port}"]) as c:
            await c.put("k", b"a", idempotency_key="op-1")
            with pytest.raises(pnyx.PnyxError) as reused:
                await c.put("k", b"b", idempotency_key="op-1")
            assert reused.value.status == 409
            assert "'op-1'" in reused.value.message and "h:" not in reused.value.message

    asyncio.run(fast())


def test_the_readme_states_the_size_limits_the_code_enforces() -> None:
    text = README.read_text()
    section = text[text.index("### Limits"):]
    section = section[:section.index("\n## ")]
    for name, value in {
        "key": kv.MAX_KEY_BYTES,
        "request line": http_api.MAX_URL_BYTES,
        "header": http_api.MAX_HEADER_BYTES,
        "headers": http_api.MAX_HEADERS,
        "Idempotency-Key": http_api.MAX_IDEMPOTENCY_KEY,
        "binary frame": wire.MAX_FRAME,
        "value": NodeConfig(1, {1: Address("127.0.0.1", 7001)}, Path("d")).max_value,
    }.items():
        row = next((line for line in section.splitlines()
                    if line.startswith(f"| {name} |")), None)
        assert row is not None, f"README's limits table has no row for {name}"
        shown = re.search(r"\| ([\d,]+) ", row)
        assert shown is not None and int(shown.group(1).replace(",", "")) == value, row


def test_the_documented_size_limits_hold() -> None:
    with http_server() as server, pnyx.Client([server.address]) as client:
        client.put("k" * kv.MAX_KEY_BYTES, b"v")
        with pytest.raises(pnyx.BadRequest):
            client.put("k" * (kv.MAX_KEY_BYTES + 1), b"v")
        client.put("k", b"v", idempotency_key="i" * http_api.MAX_IDEMPOTENCY_KEY)
        with pytest.raises(pnyx.BadRequest):
            client.put("k", b"v", idempotency_key="i" * (http_api.MAX_IDEMPOTENCY_KEY + 1))


def test_pnyx_serve_and_client_limits_have_the_same_defaults() -> None:
    config = NodeConfig(1, {1: Address("127.0.0.1", 7001)}, Path("d"))
    defaults = ClientLimits()
    for name in ("body_timeout", "idle_timeout", "max_connections", "max_inflight",
                 "max_pending"):
        assert getattr(config, name) == getattr(defaults, name), name
