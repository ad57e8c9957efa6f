"""The KV machine's vocabulary: commands, requests, queries and results, and their bytes.

This module owns the structs a client, a node and the machine exchange
(`Put`, `Get`, `Delete`, `Request`, `IdempotentRequest`, `Keys`, `Ok`,
`NotFound`, `PreconditionFailed`, `Error`, `KeyList`), the error codes, the
size limits, and their MessagePack encoding. What the commands mean is
`pnyx.statemachine.kv.machine`'s; which are acceptable is
`pnyx.statemachine.kv.checks`'.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

MAX_KEY_BYTES: Final = 1024
"""Longest key, in UTF-8 bytes."""

MAX_ID_BYTES: Final = 256
"""Longest client id or idempotency key, in UTF-8 bytes."""

DEFAULT_COMMAND_LIMIT: Final = 1 << 20
"""Largest encoded request `apply` accepts by default (1 MiB)."""

DEFAULT_MAX_CLIENTS: Final = 4096
"""Default size of the de-duplication table (clients plus idempotency keys)."""

MAX_KEYS_LIMIT: Final = 1000
"""Most keys one `Keys` query may ask for: a listing is a read, and must stay cheap."""

DEFAULT_KEYS_LIMIT: Final = 100
"""Keys per `Keys` query when the caller does not say."""


# --- commands ---------------------------------------------------------------


class _Command(msgspec.Struct, frozen=True, array_like=True, tag_field="t"):
    key: str


class Put(_Command, tag="put"):
    """Set `key` to `value`, if the optional preconditions hold."""

    value: bytes
    prev_value: bytes | None = None
    prev_index: int | None = None
    prev_exist: bool | None = None


class Get(_Command, tag="get"):
    """Read `key` through the log (linearizable: it sees every write chosen before it)."""


class Delete(_Command, tag="delete"):
    """Remove `key`, if it exists and the optional preconditions hold."""

    prev_value: bytes | None = None
    prev_index: int | None = None
    prev_exist: bool | None = None


Command = Put | Get | Delete


class _Envelope(msgspec.Struct, frozen=True, array_like=True, tag_field="t"):
    pass


class Request(_Envelope, tag="req"):
    """A command in a client session: `seq` increases with each new command of `client_id`."""

    client_id: str
    seq: int
    command: Command


class IdempotentRequest(_Envelope, tag="idem"):
    """A command named by a unique `idempotency_key`, for callers without a session."""

    idempotency_key: str
    command: Command


AnyRequest = Request | IdempotentRequest


# --- results ----------------------------------------------------------------


class _Result(msgspec.Struct, frozen=True, array_like=True, tag_field="t"):
    pass


class Ok(_Result, tag="ok"):
    """Success; `index` is the key's `mod_index` now, `value` is what a `Get` read."""

    index: int
    value: bytes | None = None


class NotFound(_Result, tag="not_found"):
    """The key does not exist (for `Get`, `Delete`, or a condition that needs it)."""


class PreconditionFailed(_Result, tag="precondition_failed"):
    """A condition did not hold; here is the key as it is, so the caller can retry."""

    current_index: int
    current_value: bytes


class Error(_Result, tag="error"):
    """The request was refused; nothing changed. `code` is one of `ErrorCode`."""

    message: str
    code: str = "error"


class KeyList(_Result, tag="keys"):
    """The answer to `Keys`: `(key, mod_index)` pairs in key order; `more` if others follow."""

    items: list[tuple[str, int]]
    more: bool


Result = Ok | NotFound | PreconditionFailed | Error | KeyList


class ErrorCode(enum.StrEnum):
    TOO_LARGE = "too_large"  # encoded request over the size limit
    MALFORMED = "malformed"  # not a MessagePack request of the right shape
    INVALID = "invalid"  # well-formed, but breaks a rule (empty key, contradictory conditions)
    STALE = "stale"  # seq below the client's last one, whose result is no longer kept
    REUSED = "reused"  # seq or idempotency key already used for a different command


class CommandError(ValueError):
    """Raised by `validate`: the command would only be answered with an error; don't log it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MalformedResult(ValueError):
    """Bytes that are not an encoded KV result."""


# --- encoding ---------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(AnyRequest)
_result_decoder = msgspec.msgpack.Decoder(Result)


def encode_request(request: AnyRequest) -> bytes:
    """The bytes to propose to the log for `request`."""
    return _encoder.encode(request)


def encode_result(result: Result) -> bytes:
    return _encoder.encode(result)


def decode_result(data: bytes) -> Result:
    """Decode what `KVMachine.apply` returned; raises `MalformedResult` for anything else."""
    try:
        return _result_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedResult(str(exc)) from None


# --- queries ----------------------------------------------------------------


class Keys(msgspec.Struct, frozen=True, array_like=True, tag_field="t", tag="keys"):
    """List keys starting with `prefix` that sort after `after` (code point order), at most
    `limit` (1..`MAX_KEYS_LIMIT`). A query only: it is never a command in the log."""

    prefix: str = ""
    after: str = ""
    limit: int = DEFAULT_KEYS_LIMIT


Query = Get | Keys

_query_decoder = msgspec.msgpack.Decoder(Query)


def encode_query(key: str) -> bytes:
    """The bytes `KVMachine.query` answers: a `Get` of `key`."""
    return _encoder.encode(Get(key))


def encode_keys_query(prefix: str = "", after: str = "", limit: int = DEFAULT_KEYS_LIMIT) -> bytes:
    """The bytes `KVMachine.query` answers with a `KeyList`: a `Keys` query."""
    return _encoder.encode(Keys(prefix, after, limit))

