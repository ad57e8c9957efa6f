"""The key-value machine: the state pnyx replicates when you run it as a store.

This package's public surface, re-exported here so callers write `kv.Put`,
`kv.KVMachine`: `messages` owns the command, query and result structs and
their encoding; `checks` the rules that refuse bad commands (`validate`,
shared with `apply` so both say the same thing); `machine` the `KVMachine`
that applies them; `snapshot` its snapshot format.

**Commands** (in the style of etcd's v2 API: conditions are optional fields)::

    Put(key, value, prev_value=None, prev_index=None, prev_exist=None)
    Get(key)
    Delete(key, prev_value=None, prev_index=None, prev_exist=None)

`prev_value` / `prev_index`: the key must exist with that value / with that
`mod_index` (compare-and-swap, compare-and-delete). `prev_exist=False`: the key
must not exist (create-only); `prev_exist=True`: it must exist. Conditions
combine with "and". A condition on a missing key answers `NotFound`.

**Every key carries `mod_index`**, the log index of the command that last wrote
it. A `Get` returns it; a later `Put(..., prev_index=mod_index)` succeeds only if
nobody wrote the key in between. That is optimistic concurrency with no locks.

**Results**: `Ok(index, value)`, `NotFound()`,
`PreconditionFailed(current_index, current_value)`, `Error(message, code)`.
`Ok.index` is the key's `mod_index` after the command: for `Put` and `Delete`
the index they were applied at, for `Get` the index the value was written at.
`Ok.value` is set by `Get` only.

**Requests**: the log holds `Request(client_id, seq, command)` or
`IdempotentRequest(idempotency_key, command)`, encoded as MessagePack. A
request that was already applied is answered with its original result (see
`pnyx.statemachine.dedup`). Anything that is not a well-formed request, or is
larger than the configured limit, is answered with `Error` and changes nothing:
the log is agreed on before anyone looks inside a command, so a bad one must
become a result like any other, the same on every replica.

**Queries** (answered by `KVMachine.query` from local state, never logged):
a `Get` (see `encode_query`) or a `Keys(prefix, after, limit)` listing (see
`encode_keys_query`), answered with `KeyList(items, more)`: up to `limit`
`(key, mod_index)` pairs of the keys that start with `prefix` and sort after
`after`, in key order, and whether more follow. Pass the last key of one page
as `after` to get the next.
"""

from pnyx.statemachine.kv.checks import validate, validate_query
from pnyx.statemachine.kv.machine import KVMachine
from pnyx.statemachine.kv.messages import (
    DEFAULT_COMMAND_LIMIT,
    DEFAULT_KEYS_LIMIT,
    DEFAULT_MAX_CLIENTS,
    MAX_ID_BYTES,
    MAX_KEY_BYTES,
    MAX_KEYS_LIMIT,
    AnyRequest,
    Command,
    CommandError,
    Delete,
    Error,
    ErrorCode,
    Get,
    IdempotentRequest,
    KeyList,
    Keys,
    MalformedResult,
    NotFound,
    Ok,
    PreconditionFailed,
    Put,
    Query,
    Request,
    Result,
    decode_result,
    encode_keys_query,
    encode_query,
    encode_request,
    encode_result,
)
from pnyx.statemachine.kv.messages import (
    _request_decoder as _request_decoder,  # what apply decodes with; tests decode with it too
)

__all__ = [
    "DEFAULT_COMMAND_LIMIT",
    "DEFAULT_KEYS_LIMIT",
    "DEFAULT_MAX_CLIENTS",
    "MAX_ID_BYTES",
    "MAX_KEYS_LIMIT",
    "MAX_KEY_BYTES",
    "AnyRequest",
    "Command",
    "CommandError",
    "Delete",
    "Error",
    "ErrorCode",
    "Get",
    "IdempotentRequest",
    "KVMachine",
    "KeyList",
    "Keys",
    "MalformedResult",
    "NotFound",
    "Ok",
    "PreconditionFailed",
    "Put",
    "Query",
    "Request",
    "Result",
    "decode_result",
    "encode_keys_query",
    "encode_query",
    "encode_request",
    "encode_result",
    "validate",
    "validate_query",
]
