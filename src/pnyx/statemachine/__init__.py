"""The state-machine layer: what the replicated log means.

`base` holds the `StateMachine` interface library users implement (and
`SafeApply`, which turns an exception in `apply` into a deterministic result);
`kv` holds the key-value machine pnyx runs as a store, with compare-and-swap
and exactly-once requests; `dedup` holds the bounded de-duplication table that
makes exactly-once work. Everything here is pure: no I/O, no clock, no
randomness, so every replica computes the same thing.
"""

from pnyx.statemachine.base import (
    ERROR_PREFIX,
    LogOrderError,
    SafeApply,
    SnapshotError,
    StateMachine,
    error_result,
)
from pnyx.statemachine.dedup import DedupEntry, DedupTable, Verdict
from pnyx.statemachine.kv import (
    DEFAULT_COMMAND_LIMIT,
    DEFAULT_MAX_CLIENTS,
    MAX_ID_BYTES,
    MAX_KEY_BYTES,
    AnyRequest,
    Command,
    CommandError,
    Delete,
    Error,
    ErrorCode,
    Get,
    IdempotentRequest,
    KVMachine,
    MalformedResult,
    NotFound,
    Ok,
    PreconditionFailed,
    Put,
    Request,
    Result,
    decode_result,
    encode_query,
    encode_request,
    encode_result,
    validate,
)

__all__ = [
    "DEFAULT_COMMAND_LIMIT",
    "DEFAULT_MAX_CLIENTS",
    "ERROR_PREFIX",
    "MAX_ID_BYTES",
    "MAX_KEY_BYTES",
    "AnyRequest",
    "Command",
    "CommandError",
    "DedupEntry",
    "DedupTable",
    "Delete",
    "Error",
    "ErrorCode",
    "Get",
    "IdempotentRequest",
    "KVMachine",
    "LogOrderError",
    "MalformedResult",
    "NotFound",
    "Ok",
    "PreconditionFailed",
    "Put",
    "Request",
    "Result",
    "SafeApply",
    "SnapshotError",
    "StateMachine",
    "Verdict",
    "decode_result",
    "encode_query",
    "encode_request",
    "encode_result",
    "error_result",
    "validate",
]
