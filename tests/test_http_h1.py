"""The httptools server (`pnyx.api.http_h1`) over real sockets: pipelined requests answered
in order however they finish, keep-alive, bad requests answered in the JSON shape without
harm to the next connection, a body over the limit answered 413 and not reset."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fake_node import FakeNode
from pnyx.api.http import serve_http
from pnyx.api.limits import ClientLimits
from pnyx.protocol.multipaxos import Outcome, ReadMode
from pnyx.statemachine import kv


class SlowKeyNode(FakeNode):
    """Reads of the key `slow` wait until the gate opens; everything else answers at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def read(self, query: bytes, mode: ReadMode, *, timeout: float) -> Outcome:
        if query == kv.encode_query("slow"):
            await self.gate.wait()
        return await super().read(query, mode, timeout=timeout)


def _answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a stream of HTTP/1.1 answers (each with Content-Length)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        n = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        data = rest[n:]
    return out


async def _read_answers(reader: asyncio.StreamReader, count: int) -> list[Any]:
    data = b""
    while True:
        try:
            answers = _answers(data)
        except (ValueError, KeyError, IndexError):
            answers = []
        if len(answers) >= count and all(len(a[2]) == int(a[1]["content-length"])
                                         for a in answers):
            return answers
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, f"closed after {data!r}"
        data += chunk


def _put(key: str, value: bytes) -> bytes:
    return (f"PUT /v1/kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(value)}\r\n\r\n"
            .encode() + value)


def _get(key: str) -> bytes:
    return f"GET /v1/kv/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_pipelined_requests_are_answered_in_order_however_they_finish() -> None:
    async def go() -> None:
        node = SlowKeyNode()
        served = await serve_http(node, "127.0.0.1", 0, request_timeout=5.0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(_put("slow", b"s") + _put("fast", b"f"))
            assert [a[0] for a in await _read_answers(reader, 2)] == [200, 200]
            # The first request waits at the node; the three after it finish at once.
            writer.write(_get("slow") + _get("fast") + b"GET /nowhere HTTP/1.1\r\n\r\n"
                         + _get("missing"))
            await asyncio.sleep(0.2)
            assert not reader._buffer, "nothing answered before the first request"  # type: ignore[attr-defined]
            node.gate.set()
            answers = await _read_answers(reader, 4)
            assert [(a[0], a[2]) for a in answers[:2]] == [(200, b"s"), (200, b"f")]
            assert answers[2][0] == 404 and json.loads(answers[2][2])["error"]["code"] \
                == "no_route"
            assert answers[3][0] == 404 and json.loads(answers[3][2])["error"]["code"] \
                == "not_found"
            # Keep-alive: the same connection serves on.
            writer.write(_get("fast"))
            assert (await _read_answers(reader, 1))[0][2] == b"f"
            writer.close()
        finally:
            await served.close()

    asyncio.run(go())


def test_a_bad_request_is_answered_after_the_ones_before_it_then_the_connection_closes(
        ) -> None:
    async def go() -> None:
        served = await serve_http(FakeNode(), "127.0.0.1", 0, request_timeout=5.0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(_put("k", b"v") + b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: 1\r\n"
                         b"Content-Length: 2\r\n\r\nab" + _get("k"))
            data = await asyncio.wait_for(reader.read(), 5)  # until the server closes
            answers = _answers(data)
            assert [a[0] for a in answers] == [200, 400]
            error = json.loads(answers[1][2])["error"]
            assert error["code"] == "bad_request" and error["message"]
            assert answers[1][1]["connection"] == "close"
            # Garbage, then a new connection is served as ever.
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(b"\x00\x01\x02 nonsense\r\n\r\n")
            status = _answers(await asyncio.wait_for(reader.read(), 5))[0][0]
            assert 400 <= status < 502
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(_get("k"))
            assert (await _read_answers(reader, 1))[0][2] == b"v"
            writer.close()
        finally:
            await served.close()

    asyncio.run(go())


def test_a_body_over_the_limit_is_answered_413_and_the_answer_is_not_lost() -> None:
    async def go() -> None:
        node = FakeNode()
        served = await serve_http(node, "127.0.0.1", 0, request_timeout=5.0, max_value=1000,
                                  limits=ClientLimits(body_timeout=5.0))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            body = b"x" * 300_000  # sent whole, although the server will not read it
            writer.write(_put("big", body))
            data = await asyncio.wait_for(reader.read(), 5)
            (status, headers, payload), = _answers(data)
            assert status == 413 and json.loads(payload)["error"]["code"] == "value_too_large"
            assert headers["connection"] == "close"
            assert node.submitted == []
        finally:
            await served.close()

    asyncio.run(go())


def test_http_1_0_and_connection_close_are_answered_then_closed() -> None:
    async def go() -> None:
        served = await serve_http(FakeNode(), "127.0.0.1", 0, request_timeout=5.0)
        try:
            for request in (b"GET /v1/status HTTP/1.0\r\n\r\n",
                            b"GET /v1/status HTTP/1.1\r\nConnection: close\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
                writer.write(request)
                data = await asyncio.wait_for(reader.read(), 5)  # ends: the server closed
                (status, headers, payload), = _answers(data)
                assert status == 200 and json.loads(payload)["id"] == 1
                assert headers["connection"] == "close"
        finally:
            await served.close()

    asyncio.run(go())
