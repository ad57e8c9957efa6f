"""The key-value machine: the state pnyx replicates when you run it as a store.

This module owns the KV command and result structs and their wire encoding, the
rules for each command (including compare-and-swap preconditions), exactly-once
handling of client requests, the checks that refuse bad commands (`validate`,
shared with `apply` so both say the same thing), and the snapshot format.

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

from __future__ import annotations

import enum
import hashlib
from bisect import bisect_left, bisect_right
from typing import Final

import msgspec

from pnyx.statemachine.base import LogOrderError, SnapshotError
from pnyx.statemachine.dedup import DedupEntry, DedupTable, Kind, Verdict

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
    return _command_encoder.encode(Get(key))


def encode_keys_query(prefix: str = "", after: str = "", limit: int = DEFAULT_KEYS_LIMIT) -> bytes:
    """The bytes `KVMachine.query` answers with a `KeyList`: a `Keys` query."""
    return _command_encoder.encode(Keys(prefix, after, limit))


def _check_keys(query: Keys) -> str | None:
    """The reason a `Keys` query breaks a rule, or None."""
    if not 1 <= query.limit <= MAX_KEYS_LIMIT:
        return f"limit must be between 1 and {MAX_KEYS_LIMIT}, not {query.limit}"
    for what, text in (("prefix", query.prefix), ("after", query.after)):
        if _utf8_len(text) > MAX_KEY_BYTES:
            return f"{what} is longer than {MAX_KEY_BYTES} bytes"
    return None


# --- checking ---------------------------------------------------------------


_command_encoder = msgspec.msgpack.Encoder()


def _utf8_len(text: str) -> int:
    # surrogatepass: a str built in Python (not decoded from the wire) may hold
    # lone surrogates; count them rather than raise.
    return len(text.encode("utf-8", "surrogatepass"))


def _check_id(what: str, ident: str) -> str | None:
    if not ident:
        return f"{what} must not be empty"
    if _utf8_len(ident) > MAX_ID_BYTES:
        return f"{what} is longer than {MAX_ID_BYTES} bytes"
    return None


def _check_command(command: Command) -> str | None:
    """The reason `command` breaks a rule, or None; the rules are the same for every replica."""
    if not command.key:
        return "key must not be empty"
    if _utf8_len(command.key) > MAX_KEY_BYTES:
        return f"key is {_utf8_len(command.key)} bytes, longer than {MAX_KEY_BYTES}"
    if isinstance(command, Get):
        return None
    if command.prev_index is not None and command.prev_index < 0:
        return f"prev_index must be >= 0, not {command.prev_index}"
    if command.prev_exist is False:
        if isinstance(command, Delete):
            return "Delete with prev_exist=False can never succeed"
        if command.prev_value is not None or command.prev_index is not None:
            return "prev_exist=False contradicts prev_value/prev_index (they need the key)"
    return None


def _parse(data: bytes, limit: int) -> AnyRequest | Error:
    """Decode and check one log entry: the request, or the `Error` that answers it.

    The single source of truth for `validate` (before the log) and `apply`
    (after it), so a command refused by one is refused by the other, with the
    same message.
    """
    if len(data) > limit:
        return Error(
            f"command is {len(data)} bytes, over the limit of {limit}", ErrorCode.TOO_LARGE
        )
    try:
        request = _request_decoder.decode(data)
    except (msgspec.MsgspecError, ValueError) as exc:
        # ValueError: msgspec raises UnicodeDecodeError for a str that is not UTF-8.
        # msgspec's message names the offending field; it depends only on the
        # bytes (and the msgspec version, which every replica must share anyway
        # since it defines the encoding).
        return Error(f"malformed command: {exc}", ErrorCode.MALFORMED)
    if isinstance(request, Request):
        reason = _check_id("client_id", request.client_id)
        if reason is None and request.seq < 0:
            reason = f"seq must be >= 0, not {request.seq}"
    else:
        reason = _check_id("idempotency_key", request.idempotency_key)
    if reason is None:
        reason = _check_command(request.command)
    if reason is not None:
        return Error(reason, ErrorCode.INVALID)
    return request


def validate(command: bytes, limit: int = DEFAULT_COMMAND_LIMIT) -> AnyRequest:
    """Check a command *before* proposing it; return the decoded request or raise `CommandError`.

    A node calls this when a client submits a command, so that a command that
    could only ever be answered with an error never takes a slot in the log.
    `apply` makes the same checks (a command may reach the log by another
    path), so passing `validate` is not required for safety, only for tidiness.
    """
    parsed = _parse(command, limit)
    if isinstance(parsed, Error):
        raise CommandError(ErrorCode(parsed.code), parsed.message)
    return parsed


def _parse_query(data: bytes, limit: int | None) -> Query | Error:
    """Decode and check one query: the query, or the `Error` that answers it.

    The single source of truth for `validate_query` (before a read is started)
    and `KVMachine.query` (which answers it), as `_parse` is for commands.
    """
    if limit is not None and len(data) > limit:
        return Error(f"query is {len(data)} bytes, over the limit of {limit}",
                     ErrorCode.TOO_LARGE)
    try:
        query = _query_decoder.decode(data)
    except (msgspec.MsgspecError, ValueError) as exc:
        return Error(f"malformed query: {exc}", ErrorCode.MALFORMED)
    reason = _check_keys(query) if isinstance(query, Keys) else _check_command(query)
    if reason is not None:
        return Error(reason, ErrorCode.INVALID)
    return query


def validate_query(query: bytes, limit: int | None = None) -> Query:
    """Check a query *before* reading; return it decoded or raise `CommandError`.

    The rules `KVMachine.query` answers by, so a read that could only be
    answered with an error is refused before it costs a read-index round.
    `limit` bounds the encoded query (`ErrorCode.TOO_LARGE`); None: no bound.
    """
    parsed = _parse_query(query, limit)
    if isinstance(parsed, Error):
        raise CommandError(ErrorCode(parsed.code), parsed.message)
    return parsed


def _digest(command: Command) -> bytes:
    # Fingerprint of the decoded command, re-encoded: msgspec encodes a struct
    # the same way every time, so equal commands give equal digests on every
    # replica. 16 bytes keeps the table small; collisions are not a concern
    # for catching a client bug.
    return hashlib.blake2b(_encoder.encode(command), digest_size=16).digest()


# --- snapshot format --------------------------------------------------------

_SNAPSHOT_FORMAT: Final = "pnyx.kv"
_SNAPSHOT_VERSION: Final = 1


class _KeyRecord(msgspec.Struct, frozen=True, array_like=True):
    key: str
    value: bytes
    mod_index: int


class _SnapshotBody(msgspec.Struct, frozen=True, array_like=True):
    applied_index: int
    data: list[_KeyRecord]  # sorted by key
    sessions: list[DedupEntry]  # least recently used first


class _SnapshotEnvelope(msgspec.Struct, frozen=True, array_like=True):
    # A checksum over the body: MessagePack decoding catches a truncated or
    # mangled structure, but a flipped bit inside a value would decode fine
    # and silently fork this replica's state from the others.
    format: str
    version: int
    checksum: bytes
    body: bytes


_envelope_decoder = msgspec.msgpack.Decoder(_SnapshotEnvelope)
_body_decoder = msgspec.msgpack.Decoder(_SnapshotBody)


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


# --- the machine ------------------------------------------------------------


class KVMachine:
    """A replicated key-value map with compare-and-swap and exactly-once requests.

    Implements `pnyx.statemachine.StateMachine`. `apply` never raises for any
    command bytes; it raises `LogOrderError` only if the driver breaks the log
    contract by giving an index that does not increase.

    Configuration (`max_clients`, `command_limit`) is part of the replicated
    behaviour: every replica of a group must use the same values, just as they
    must run the same version of pnyx.
    """

    def __init__(
        self,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        command_limit: int = DEFAULT_COMMAND_LIMIT,
    ) -> None:
        if command_limit < 1:
            raise ValueError(f"command_limit must be at least 1, not {command_limit}")
        self.max_clients = max_clients
        self.command_limit = command_limit
        self._data: dict[str, tuple[bytes, int]] = {}
        self._dedup = DedupTable(max_clients)
        # Log indices start at 1; 0 means nothing has been applied.
        self._applied_index = 0
        # The sorted key index for `Keys`, built on the first listing and then
        # kept up lazily: writes only note which keys were created or removed
        # (`_moved`), and the next listing folds them in. Overwrites don't
        # touch it. So a store that never lists pays nothing, and one that
        # lists pays for the keys that changed, not a full sort each time.
        # It is derived from `_data` and not part of the replicated state.
        self._sorted: list[str] | None = None
        self._moved: set[str] = set()

    # -- reads that do not go through the log --

    @property
    def applied_index(self) -> int:
        """The index of the last command applied (0 before the first)."""
        return self._applied_index

    def read(self, key: str) -> tuple[bytes, int] | None:
        """`(value, mod_index)` of `key` in this replica's state, or None.

        A local read: as fresh as this replica, not necessarily linearizable.
        Compare `applied_index` with the log's commit index to know how stale;
        for a linearizable read, send a `Get` through the log.
        """
        return self._data.get(key)

    def query(self, query: bytes) -> bytes:
        """Answer an encoded `Get` (as `apply` would) or `Keys` from local state, changing nothing.

        The replica calls this for reads outside the log (linearizable read-index,
        quorum and stale reads); which of those guarantees holds is the caller's.
        Never raises: a bad query is answered with `Error`.
        """
        decoded = _parse_query(query, None)
        if isinstance(decoded, Error):
            return encode_result(decoded)
        if isinstance(decoded, Keys):
            return encode_result(self._list(decoded))
        item = self._data.get(decoded.key)
        return encode_result(NotFound() if item is None else Ok(item[1], item[0]))

    def _list(self, query: Keys) -> KeyList:
        keys = self._sorted_keys()
        start = bisect_left(keys, query.prefix)
        if query.after:
            start = max(start, bisect_right(keys, query.after))
        stop = min(len(keys), start + query.limit)
        items: list[tuple[str, int]] = []
        for i in range(start, stop):
            key = keys[i]
            if not key.startswith(query.prefix):
                # Keys with the prefix are contiguous in sorted order: past
                # the first that lacks it, none has it.
                return KeyList(items, more=False)
            items.append((key, self._data[key][1]))
        more = stop < len(keys) and keys[stop].startswith(query.prefix)
        return KeyList(items, more)

    def _key_moved(self, key: str) -> None:
        """Note that `key` was created or removed, for the sorted index."""
        if self._sorted is None:
            return
        self._moved.add(key)
        # Many changes and no listing: forget the index rather than let the
        # notes grow without bound; the next listing sorts from scratch.
        if len(self._moved) > max(1024, len(self._sorted)):
            self._sorted = None
            self._moved.clear()

    def _sorted_keys(self) -> list[str]:
        keys = self._sorted
        if keys is None:
            keys = self._sorted = sorted(self._data)
        elif len(self._moved) <= 16:
            # A few changes: insert or delete in place (a memmove each).
            for key in self._moved:
                i = bisect_left(keys, key)
                present = i < len(keys) and keys[i] == key
                if key in self._data and not present:
                    keys.insert(i, key)
                elif key not in self._data and present:
                    del keys[i]
        else:
            # Many: one linear pass drops removed keys; the new ones are
            # sorted and merged (Timsort merges the two sorted runs in O(n)).
            added = [
                key for key in self._moved
                if key in self._data
                and not ((i := bisect_left(keys, key)) < len(keys) and keys[i] == key)
            ]
            kept = [key for key in keys if key in self._data]
            kept.extend(added)
            kept.sort()
            keys = self._sorted = kept
        self._moved.clear()
        return keys

    @property
    def key_count(self) -> int:
        """How many keys exist. (Not `__len__`: an empty machine should not be falsy.)"""
        return len(self._data)

    @property
    def dedup_size(self) -> int:
        """How many clients and idempotency keys the de-duplication table remembers."""
        return len(self._dedup)

    # -- the StateMachine interface --

    def apply(self, command: bytes, index: int) -> bytes:
        """Apply the log entry at `index`; returns an encoded `Result`."""
        if index <= self._applied_index:
            raise LogOrderError(
                f"log index {index} applied after {self._applied_index}: indices must increase"
            )
        # Every entry consumes its index, even one answered with an error.
        self._applied_index = index
        parsed = _parse(command, self.command_limit)
        if isinstance(parsed, Error):
            # Not remembered in the de-duplication table: it changed nothing,
            # and a retry gets the same answer anyway.
            return encode_result(parsed)
        kind: Kind
        if isinstance(parsed, Request):
            kind, ident, seq = "client", parsed.client_id, parsed.seq
        else:
            kind, ident, seq = "key", parsed.idempotency_key, 0
        digest = _digest(parsed.command)
        verdict, entry = self._dedup.check(kind, ident, seq, digest)
        if verdict is Verdict.DUPLICATE:
            assert entry is not None
            return entry.result  # the very bytes the first copy got
        if verdict is Verdict.STALE:
            assert entry is not None
            return encode_result(Error(
                f"stale request: client {ident!r} is at seq {entry.seq}; "
                f"the result of seq {seq} is no longer kept",
                ErrorCode.STALE,
            ))
        if verdict is Verdict.REUSED:
            what = f"seq {seq} of client {ident!r}" if kind == "client" else f"key {ident!r}"
            return encode_result(Error(
                f"{what} was already used for a different command", ErrorCode.REUSED
            ))
        result = encode_result(self._execute(parsed.command, index))
        self._dedup.record(kind, ident, seq, digest, result)
        return result

    def _execute(self, command: Command, index: int) -> Result:
        item = self._data.get(command.key)
        if isinstance(command, Get):
            return NotFound() if item is None else Ok(item[1], item[0])
        failed = _precondition(command, item)
        if failed is not None:
            return failed
        if isinstance(command, Put):
            if item is None:
                self._key_moved(command.key)
            self._data[command.key] = (command.value, index)
            return Ok(index)
        if item is None:
            return NotFound()
        del self._data[command.key]
        self._key_moved(command.key)
        return Ok(index)

    def snapshot(self) -> bytes:
        """Data, de-duplication table and applied index; equal states give equal bytes."""
        body = _encoder.encode(_SnapshotBody(
            applied_index=self._applied_index,
            data=[
                _KeyRecord(key, value, mod_index)
                for key, (value, mod_index) in sorted(self._data.items())
            ],
            sessions=self._dedup.entries(),
        ))
        return _encoder.encode(
            _SnapshotEnvelope(_SNAPSHOT_FORMAT, _SNAPSHOT_VERSION, _checksum(body), body)
        )

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot; raises `SnapshotError` (state unchanged) if bad."""
        try:
            envelope = _envelope_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SnapshotError(f"not a KV snapshot: {exc}") from None
        if envelope.format != _SNAPSHOT_FORMAT or envelope.version != _SNAPSHOT_VERSION:
            raise SnapshotError(
                f"snapshot is {envelope.format!r} version {envelope.version}, "
                f"expected {_SNAPSHOT_FORMAT!r} version {_SNAPSHOT_VERSION}"
            )
        if _checksum(envelope.body) != envelope.checksum:
            raise SnapshotError("snapshot checksum mismatch: the bytes are corrupt")
        try:
            body = _body_decoder.decode(envelope.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SnapshotError(f"corrupt KV snapshot body: {exc}") from None
        # Build the new state completely before touching the old one, so a
        # refused snapshot leaves the machine as it was.
        if body.applied_index < 0:
            raise SnapshotError(f"negative applied index {body.applied_index}")
        new_data: dict[str, tuple[bytes, int]] = {}
        for record in body.data:
            if record.key in new_data:
                raise SnapshotError(f"key {record.key!r} appears twice")
            if not 1 <= record.mod_index <= body.applied_index:
                raise SnapshotError(
                    f"key {record.key!r} has mod_index {record.mod_index} "
                    f"outside 1..{body.applied_index}"
                )
            new_data[record.key] = (record.value, record.mod_index)
        try:
            # More entries than this replica's max_clients (a misconfigured
            # group) are cut down the same way eviction would have.
            new_dedup = DedupTable.from_entries(self.max_clients, body.sessions)
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None
        self._data = new_data
        self._dedup = new_dedup
        self._applied_index = body.applied_index
        self._sorted = None
        self._moved.clear()


def _precondition(command: Put | Delete, item: tuple[bytes, int] | None) -> Result | None:
    """The answer if a condition of `command` fails against `item`, else None."""
    if item is None:
        needs_key = (
            command.prev_exist is True
            or command.prev_value is not None
            or command.prev_index is not None
        )
        return NotFound() if needs_key else None
    value, mod_index = item
    if (
        command.prev_exist is False
        or (command.prev_value is not None and command.prev_value != value)
        or (command.prev_index is not None and command.prev_index != mod_index)
    ):
        return PreconditionFailed(mod_index, value)
    return None
