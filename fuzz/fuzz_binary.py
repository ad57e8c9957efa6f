"""Fuzz the binary client protocol's reading path, as a node reads a client's connection.

Bytes → `api.binary._ClientConnection` (a `FramedProtocol`: the `FrameDecoder`
within `wire.MAX_FRAME`, `wire.request_decoder`, the checks of `kv.validate` and
`kv.validate_query`) → a `DirectNode` (a real key-value machine, no consensus),
by its callback API (flags bit 0 clear) or its coroutines (set).

Allowed outcomes: answers, each a well-formed `ClientResponse` frame that is
not `internal`; or the connection closed for a malformed request or a frame
over the limit (`protocol_error`). Anything raised, from `data_received` or
from a callback or task on the loop, is a bug.

Flags as in `_harness`: bit 1 frames the body's 2-byte-length payloads, bits 2-4
the chunk size. Run: `python fuzz/fuzz_binary.py -max_total_time=120`.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from _harness import FakeTransport, frames_of, main, split

from pnyx import wire
from pnyx.api.binary import _ClientConnection
from pnyx.node.direct import DirectNode
from pnyx.protocol.multipaxos import Outcome, ReadMode
from pnyx.statemachine import kv
from pnyx.wire.framing import FrameDecoder, encode_frame

_loop = asyncio.new_event_loop()
_errors: list[dict[str, Any]] = []
_loop.set_exception_handler(lambda loop, context: _errors.append(context))


class CoroutineNode:
    """The same node, through the `NodeAPI` coroutines only (a task per request)."""

    def __init__(self) -> None:
        self.direct = DirectNode()
        self.node_id = 1
        self.metrics = self.direct.metrics

    async def submit(self, command: bytes, *, timeout: float) -> Outcome:
        return await self.direct.submit(command, timeout=timeout)

    async def read(self, query: bytes, mode: ReadMode, *, timeout: float) -> Outcome:
        return await self.direct.read(query, mode, timeout=timeout)

    def status(self) -> dict[str, Any]:
        return self.direct.status()


async def _serve(flags: int, body: bytes) -> None:
    node = DirectNode() if not flags & 1 else CoroutineNode()
    conn = _ClientConnection(node, set(), wire.MAX_FRAME, 1 << 20, 64)  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.connection_made(transport)
    stream = b"".join(encode_frame(p) for p in frames_of(body)) if flags & 2 else body
    for chunk in split(flags, stream):
        conn.data_received(chunk)
        if transport.closed:
            break
        await asyncio.sleep(0)
    for _ in range(3):  # the tasks of the coroutine path, then the flush
        await asyncio.sleep(0)
    conn.flush()
    conn.connection_lost(None)
    answers = FrameDecoder(wire.MAX_FRAME)
    answers.feed(bytes(transport.out))
    for view in answers.frames():
        response = wire.response_decoder.decode(view)
        assert response.code != wire.ErrorCode.INTERNAL, response
    assert answers.buffered() == 0, "half an answer was written"


def one_input(data: bytes) -> None:
    if not data:
        return
    try:
        _loop.run_until_complete(_serve(data[0], data[1:]))
    finally:
        for handle in list(_loop._scheduled):  # type: ignore[attr-defined]
            handle.cancel()  # close and sweep timers of this connection: not the next one's
        _loop.run_until_complete(asyncio.sleep(0))
    if _errors:
        context = _errors.pop()
        _errors.clear()
        raise AssertionError(f"raised on the loop: {context.get('message')}: "
                             f"{context.get('exception')!r}")


def seeds() -> list[bytes]:
    """Inputs that are one valid request each, framed (flags 2) and raw (flags 0)."""
    put = kv.Put("k", b"v", prev_exist=False)
    requests = [
        wire.ClientRequest(1, "submit", kv.encode_request(kv.Request("c", 1, put))),
        wire.ClientRequest(2, "submit", kv.encode_request(
            kv.IdempotentRequest("i", kv.Delete("k", prev_index=1)))),
        wire.ClientRequest(3, "read", kv.encode_query("k"), "quorum"),
        wire.ClientRequest(4, "read", kv.encode_keys_query("a", "b", 5), "stale"),
        wire.ClientRequest(5, "status"),
    ]
    out = []
    for r in requests:
        payload = wire.encoder.encode(r)
        out.append(bytes([2]) + struct.pack(">H", len(payload)) + payload)
        out.append(bytes([1]) + wire.frame(r))
    return out


if __name__ == "__main__":
    main(one_input, seeds())
