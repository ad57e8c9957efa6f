"""Fuzz the HTTP API's request parsing: raw bytes into the server a node runs.

`api.http.serve_http` (the httptools server of `api.http_h1`: llhttp, our answers
to what it refuses, the routes: paths, query parameters, headers, bodies) serves a
`DirectNode` (a real key-value machine, no consensus). Each input is one
connection, made in memory: the server's own protocol factory
(`server.runner.server`) makes the connection's protocol, which is handed the
bytes over a fake transport and run until it has nothing left to do; what it
wrote is the answer. (A socket cannot carry this: a client that shuts its
sending side makes asyncio close the whole connection before an answer.)

Allowed outcomes: HTTP answers, none a 500, every error (4xx, and 501 for
a method the parser does not know) in the documented JSON shape
`{"error": {"code": ..., "message": ...}}`; or no answer yet (a request cut
short, waiting for the rest). An error the server logs, or anything raised on
the loop, is a bug; a parser that never returns is caught by libFuzzer's
`-timeout`.

Flags (the first byte): bit 0 clear sends the body as it is (the parser's own
input); set builds one request from it: the method and route from the next
byte, then path suffix, query, header lines and request body, split at NUL
bytes (so the fuzzer's bytes reach the routes' checks); bits 2-4 the chunk size.
With PNYX_HTTP_SERVER=aiohttp it fuzzes aiohttp's server instead (and with
AIOHTTP_NO_EXTENSIONS=1 its Python parser, whose branches atheris sees). Run:
`python fuzz/fuzz_http.py -max_total_time=120`.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import logging
import re
from typing import Any

from _harness import FakeTransport, main, split

from pnyx.api.http import HttpServer, serve_http
from pnyx.api.limits import ClientLimits
from pnyx.node.direct import DirectNode

METHODS = [b"GET", b"PUT", b"DELETE", b"POST", b"HEAD", b"OPTIONS", b"PATCH", b"BREW"]
ROUTES = [b"/v1/kv/", b"/v1/kv", b"/v1/status", b"/metrics", b"/", b"/v1/kv/a%2Fb"]
SPINS = 40  # loop iterations an input gets to be answered (DirectNode answers at once)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_errors = _Errors()
for _name in ("pnyx", "aiohttp", "asyncio"):
    logging.getLogger(_name).addHandler(_errors)
_loop = asyncio.new_event_loop()
_loop_errors: list[dict[str, Any]] = []
_loop.set_exception_handler(lambda loop, context: _loop_errors.append(context))
_server: HttpServer = _loop.run_until_complete(serve_http(
    DirectNode(), "127.0.0.1", 0, request_timeout=1.0,
    limits=ClientLimits(body_timeout=1.0, idle_timeout=1.0)))


def request_of(body: bytes) -> bytes:
    """One request built from `body` (flags bit 0): see the module docstring."""
    pick = body[0] if body else 0
    parts = (body[1:].split(b"\0") + [b""] * 4)[:4]
    suffix, query, headers, content = parts
    lines = [METHODS[pick % len(METHODS)] + b" " + ROUTES[(pick >> 3) % len(ROUTES)]
             + suffix.replace(b" ", b"%20") + (b"?" + query if query else b"") + b" HTTP/1.1",
             b"Host: fuzz"]
    lines += [h for h in headers.split(b"\n") if h]
    lines += [b"Content-Length: %d" % len(content), b"Connection: close", b"", content]
    return b"\r\n".join(lines)


async def _connection(flags: int, data: bytes) -> bytes:
    factory = _server.runner.server
    assert factory is not None
    protocol: Any = factory()
    transport = FakeTransport()
    protocol.connection_made(transport)
    for chunk in split(flags, data):
        protocol.data_received(chunk)
        await asyncio.sleep(0)
    quiet = 0
    written = len(transport.out)
    for _ in range(SPINS):
        await asyncio.sleep(0)
        quiet = quiet + 1 if len(transport.out) == written else 0
        written = len(transport.out)
        if transport.closed or quiet > 8:
            break
    protocol.connection_lost(None)
    for _ in range(3):
        await asyncio.sleep(0)
    # What this connection left running (a handler waiting for a body that will never
    # come) ends with it, as it would when its timeout fired on a live server.
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    return bytes(transport.out)


class _Bytes(io.BytesIO):
    """The answers read back, for `http.client` to parse one after another."""

    def makefile(self, *args: object, **kwargs: object) -> _Bytes:
        return self

    def close(self) -> None:  # HTTPResponse closes its file after a whole answer
        pass


def _check_answers(answer: bytes, head: bool) -> None:
    """Every answer in `answer`; with `head` (a HEAD anywhere in the input) only the
    first one's status: whether an answer has a body then depends on which request it
    answers, and a request the parser refused has one."""
    stream = _Bytes(answer)
    while (start := stream.tell()) < len(answer):
        response = http.client.HTTPResponse(stream, method="HEAD" if head else "GET")
        try:
            response.begin()
        except http.client.UnknownProtocol:
            # aiohttp answers in the version the request named, whatever it is (HTTP/2.1,
            # HTTP/0.9: both of its parsers take them), which http.client does not read.
            match = re.match(rb"HTTP/\d\.\d (\d{3}) ", answer[start:])
            assert match is not None, answer[:200]
            status = int(match.group(1))
            assert status != 500 and (status < 500 or status in (501, 503)), answer[:200]
            break
        except http.client.HTTPException as exc:
            raise AssertionError(f"not an HTTP answer: {exc!r} in {answer[:200]!r}") from None
        body = response.read()
        status = response.status
        assert status != 500, body
        assert status < 500 or status in (501, 503), (status, body)
        if status >= 400 and not head:
            error = json.loads(body)["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str), body
        if head or response.getheader("Connection", "").lower() == "close":
            break


def one_input(data: bytes) -> None:
    if not data:
        return
    flags, body = data[0], data[1:]
    request = request_of(body) if flags & 1 else body
    _errors.records.clear()  # only this input's
    try:
        answer = _loop.run_until_complete(_connection(flags, request))
    finally:
        for handle in list(_loop._scheduled):  # type: ignore[attr-defined]
            handle.cancel()  # this connection's timers (keep-alive, body) end with it
    _check_answers(answer, head=b"HEAD" in request)
    if _errors.records:
        record = _errors.records.pop()
        _errors.records.clear()
        raise AssertionError(f"the server logged an error: {record.getMessage()}")
    if _loop_errors:
        context = _loop_errors.pop()
        _loop_errors.clear()
        raise AssertionError(f"raised on the loop: {context.get('message')}: "
                             f"{context.get('exception')!r}")


def seeds() -> list[bytes]:
    return [
        b"\0GET /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\0PUT /v1/kv/a?prev_exist=false HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv",
        b"\0DELETE /v1/kv/a?prev_index=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\0GET /v1/kv?prefix=a&limit=2&consistency=stale HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\0GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\0PUT /v1/kv/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nx\r\n0\r\n\r\n",
        b"\1\x09a\0prev_value=x&prev_index=3\0Idempotency-Key: k\0value",
        b"\1\x00a\0consistency=quorum\0\0",
    ]


if __name__ == "__main__":
    main(one_input, seeds(), quiet=False)  # an error logged is a finding
