"""The binary client protocol: the fast path to a node, without HTTP.

HTTP alone caps a node near 20 k requests/s on these machines, so clients that
want more (the benchmark's load generator, embedded users, `pnyx.FastClient`)
speak this instead. A connection carries frames both ways: a 4-byte
big-endian length, then a MessagePack `ClientRequest` or `ClientResponse`.
Requests are pipelined — many may be in flight on one connection — and each
response names the request it answers by `id`, in whatever order they finish.

- `op="submit"`: `payload` is an encoded key-value request
  (`pnyx.statemachine.kv.encode_request`); the response's `result` is the
  encoded result once the command is chosen and applied.
- `op="read"`: `payload` is a query (`kv.encode_query`, `kv.encode_keys_query`)
  answered in `mode` (`linearizable`, `quorum` or `stale`).
- `op="status"`: `result` is the node's status as JSON.

A response with `ok=False` says why in `error`; `unknown=True` means a write
may still take effect (retry it with the same request identity).
"""

from __future__ import annotations

import struct
from typing import Annotated, Literal

import msgspec

MAX_FRAME = 8 << 20
LENGTH = struct.Struct(">I")

Id = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class ClientRequest(msgspec.Struct, frozen=True, array_like=True):
    id: Id
    op: Literal["submit", "read", "status"]
    payload: bytes = b""
    mode: Literal["linearizable", "quorum", "stale"] = "linearizable"
    timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0


class ClientResponse(msgspec.Struct, frozen=True, array_like=True):
    id: Id
    ok: bool
    result: bytes = b""
    index: int = 0
    error: str = ""
    unknown: bool = False


request_decoder = msgspec.msgpack.Decoder(ClientRequest)
response_decoder = msgspec.msgpack.Decoder(ClientResponse)
encoder = msgspec.msgpack.Encoder()


def frame(message: ClientRequest | ClientResponse) -> bytes:
    payload = encoder.encode(message)
    return LENGTH.pack(len(payload)) + payload
