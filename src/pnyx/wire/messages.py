"""The binary client protocol's messages: the fast path to a node, without HTTP.

HTTP alone caps a node near 20 k requests/s on these machines, so clients that
want more (the benchmark's load generator, embedded users, `pnyx.FastClient`)
speak this instead. A connection carries frames both ways (`pnyx.wire.framing`:
a 4-byte big-endian length), each a MessagePack `ClientRequest` or
`ClientResponse`. Requests are pipelined — many may be in flight on one
connection — and each response names the request it answers by `id`, in
whatever order they finish.

- `op="submit"`: `payload` is an encoded key-value request
  (`pnyx.statemachine.kv.encode_request`); the response's `result` is the
  encoded result once the command is chosen and applied.
- `op="read"`: `payload` is a query (`kv.encode_query`, `kv.encode_keys_query`)
  answered in `mode` (`linearizable`, `quorum` or `stale`).
- `op="status"`: `result` is the node's status as JSON.

A response with `ok=False` says why: `code` (an `ErrorCode`) for programs,
`error` in words for people; `unknown=True` means a write may still take
effect (retry it with the same request identity). The codes:

- `invalid`: the command or query breaks a rule (empty key, contradictory
  conditions, not a KV request at all). Never retry.
- `too_large`: the command is over the size limit. Never retry.
- `unavailable`: no quorum or no leader in time (or the node is stopping).
  Retry, here or at another node; with `unknown=True` retry the same bytes,
  which de-duplication makes safe.
- `bad_request`: a request `id` already in flight on this connection.
- `internal`: a bug in pnyx; see the node's log.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final, Literal

import msgspec

from pnyx.wire.framing import LENGTH

MAX_FRAME: Final = 8 << 20  # the client protocol's limit on a frame, both ways

Id = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class ErrorCode(enum.StrEnum):
    """Why a `ClientResponse` is not ok (see the module docstring for what to do)."""

    NONE = ""
    INVALID = "invalid"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    BAD_REQUEST = "bad_request"
    INTERNAL = "internal"


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
    error: str = ""  # in words, for people
    unknown: bool = False
    # Last, so that a response without it still decodes; a code this client does
    # not know is a protocol error, not a guess.
    code: ErrorCode = ErrorCode.NONE


request_decoder: Final = msgspec.msgpack.Decoder(ClientRequest)
response_decoder: Final = msgspec.msgpack.Decoder(ClientResponse)
encoder: Final = msgspec.msgpack.Encoder()


def frame(message: ClientRequest | ClientResponse) -> bytes:
    """`message` as one frame, ready to write."""
    payload = encoder.encode(message)
    return LENGTH.pack(len(payload)) + payload
