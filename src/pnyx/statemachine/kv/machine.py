"""The key-value machine: what a KV command does to the replicated state.

This module owns `KVMachine`: the rules for each command (including
compare-and-swap preconditions), exactly-once handling of client requests
through the de-duplication table, local queries (`Get`, `Keys` listings with
their lazily kept sorted index), and taking and restoring snapshots, including
the copy-on-write that lets a snapshot be written while commands keep being
applied. `apply` has a fast path for the common request (a valid, new one),
held byte for byte to the general rules by tests/test_kv_apply_equivalence.py.
The bytes of commands and results are `pnyx.statemachine.kv.messages`', the
checks that refuse bad ones `pnyx.statemachine.kv.checks`', the snapshot format
and the sharding of keys `pnyx.statemachine.kv.snapshot`'s.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping
from itertools import chain
from zlib import crc32

import msgspec

from pnyx.statemachine.base import LogOrderError, SnapshotError
from pnyx.statemachine.dedup import SEQ, DedupTable, Kind, Verdict
from pnyx.statemachine.kv.checks import (
    _FAST_ID_CHARS,  # code points within the byte limits whatever they are (_utf8_over)
    _FAST_KEY_CHARS,
    _parse,
    _validated,
    checked_query,
)
from pnyx.statemachine.kv.messages import (
    DEFAULT_COMMAND_LIMIT,
    DEFAULT_MAX_CLIENTS,
    AnyRequest,
    Command,
    Delete,
    Error,
    ErrorCode,
    Get,
    KeyList,
    Keys,
    NotFound,
    Ok,
    PreconditionFailed,
    Put,
    Request,
    Result,
    _encoder,
    _request_decoder,
    encode_result,
)
from pnyx.statemachine.kv.snapshot import (
    SHARDS,
    Item,
    Shard,
    decode_snapshot,
    encode_chunks,
    shard_of,
)

_MASK = SHARDS - 1


def _digest(command: object) -> bytes:
    # Fingerprint of the decoded command, re-encoded: msgspec encodes a struct
    # the same way every time, so equal commands give equal digests on every
    # replica. 16 bytes keeps the table small; collisions are not a concern
    # for catching a client bug. Computed lazily (see `pnyx.statemachine.dedup`):
    # the table keeps the command itself as the token of its digest.
    return hashlib.blake2b(_encoder.encode(command), digest_size=16).digest()


# A command whose request is larger than this is digested at once rather than
# kept as its own token: the table holds `max_clients` tokens, and a token keeps
# the command's value alive after the map has dropped it; this bounds that to
# about max_clients * _LAZY_BYTES.
_LAZY_BYTES = 1024


class _DataView(Mapping[str, tuple[bytes, int]]):
    """The machine's whole map, read-only, across its shards (for tests and debugging)."""

    def __init__(self, machine: KVMachine) -> None:
        self._machine = machine

    def __getitem__(self, key: str) -> tuple[bytes, int]:
        item = self._machine.read(key)
        if item is None:
            raise KeyError(key)
        return item

    def __iter__(self) -> Iterator[str]:
        return chain.from_iterable(self._machine._shards)

    def __len__(self) -> int:
        return self._machine.key_count


class KVMachine:
    """A replicated key-value map with compare-and-swap and exactly-once requests.

    Implements `pnyx.statemachine.StateMachine`. `apply` never raises for any
    command bytes; it raises `LogOrderError` only if the driver breaks the log
    contract by giving an index that does not increase.

    Configuration (`max_clients`, `command_limit`) is part of the replicated
    behaviour: every replica of a group must use the same values, just as they
    must run the same version of pnyx.

    **Snapshots without stopping.** The map is kept in `SHARDS` dicts, a key in
    `shards[shard_of(key)]`, mapping it to an `Item` (a struct the garbage
    collector never tracks: see `pnyx.statemachine.kv.snapshot.Item`).
    `snapshot_chunks()` hands the current shards to the snapshot and marks them
    all frozen, in O(`SHARDS`); the first write to a frozen shard replaces it by
    a copy (about n/`SHARDS` keys), so the snapshot's dicts are never written
    again and may be encoded in another thread. The de-duplication table,
    bounded by `max_clients`, is captured by a C-level copy of its entries
    (`DedupTable.capture`).
    A shard stays frozen until its next write even once the snapshot is done:
    one extra copy per written shard per snapshot, in exchange for no
    coordination with the thread that writes the snapshot.
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
        self._shards: list[Shard] = [{} for _ in range(SHARDS)]
        self._frozen = [False] * SHARDS  # shards a snapshot holds: copy before writing
        self._count = 0  # keys in all shards
        self._dedup = DedupTable(max_clients, _digest)
        # Log indices start at 1; 0 means nothing has been applied.
        self._applied_index = 0
        # The sorted key index for `Keys`, built on the first listing and then
        # kept up lazily: writes only note which keys were created or removed
        # (`_moved`), and the next listing folds them in. Overwrites don't
        # touch it. So a store that never lists pays nothing, and one that
        # lists pays for the keys that changed, not a full sort each time.
        # It is derived from the shards and not part of the replicated state.
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
        item = self._shards[shard_of(key)].get(key)
        return None if item is None else (item.value, item.mod_index)

    @property
    def _data(self) -> Mapping[str, tuple[bytes, int]]:
        """The whole map, read-only (a view across the shards)."""
        return _DataView(self)

    def query(self, query: bytes) -> bytes:
        """Answer an encoded `Get` (as `apply` would) or `Keys` from local state, changing nothing.

        The replica calls this for reads outside the log (linearizable read-index,
        quorum and stale reads); which of those guarantees holds is the caller's.
        Never raises: a bad query is answered with `Error`.
        """
        decoded = checked_query(query)
        if isinstance(decoded, Error):
            return encode_result(decoded)
        if isinstance(decoded, Keys):
            return encode_result(self._list(decoded))
        item = self.read(decoded.key)
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
            item = self.read(key)
            assert item is not None  # the index holds exactly the stored keys
            items.append((key, item[1]))
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
                stored = self.read(key) is not None
                if stored and not present:
                    keys.insert(i, key)
                elif not stored and present:
                    del keys[i]
        else:
            # Many: one linear pass drops removed keys; the new ones are
            # sorted and merged (Timsort merges the two sorted runs in O(n)).
            # A key of the index that is no longer stored was removed, so it is
            # among the moved keys: the pass tests membership in that set.
            removed = {key for key in self._moved if self.read(key) is None}
            added = [
                key for key in self._moved
                if key not in removed
                and not ((i := bisect_left(keys, key)) < len(keys) and keys[i] == key)
            ]
            kept = [key for key in keys if key not in removed] if removed else keys[:]
            kept.extend(added)
            kept.sort()
            keys = self._sorted = kept
        self._moved.clear()
        return keys

    @property
    def key_count(self) -> int:
        """How many keys exist. (Not `__len__`: an empty machine should not be falsy.)"""
        return self._count

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
        # The fast path: a valid request of a client (or idempotency key) not
        # seen at this seq, with a command without `prev_index`/`prev_exist`,
        # and the real table. It is `_parse` and `_answer` below with what
        # such a request cannot reach left out, and must answer the same
        # bytes (tests/test_kv_apply_equivalence.py holds it to the code it
        # replaced). Anything else, or any doubt, goes the general way.
        if len(command) <= self.command_limit:
            # The leader validated these very bytes moments ago: the memo of
            # `checks.validate` holds them decoded (see `checks._validated`).
            request = (_validated.pop(command, None)
                       if _validated and type(command) is bytes else None)
            if request is None:
                try:
                    request = _request_decoder.decode(command)
                except (msgspec.MsgspecError, ValueError):
                    return self._apply_parsed(
                        _parse(command, self.command_limit), index, len(command))
            dedup = self._dedup
            if type(request) is Request:
                ident = request.client_id
                seq = request.seq
                slot: object = ident
                kind: Kind = "client"
            else:
                ident = request.idempotency_key
                seq = 0
                slot = ("key", ident)
                kind = "key"
            cmd = request.command
            key = cmd.key
            if (
                ident and len(ident) <= _FAST_ID_CHARS and seq >= 0
                and key and len(key) <= _FAST_KEY_CHARS
                and (type(cmd) is Get or (cmd.prev_index is None and cmd.prev_exist is None))
                and type(dedup) is DedupTable and dedup.digest_of is _digest
            ):
                entries = dedup._entries
                record = entries.get(slot)
                if record is not None and seq <= record[SEQ]:
                    # A retry, a stale or a reused seq: compared the general way.
                    return self._answer(request, index, len(command))
                if type(cmd) is Put and cmd.prev_value is None:
                    # `_execute` of a plain Put, inlined.
                    # `shard_of(key)`, inlined: a key decoded from MessagePack
                    # is valid UTF-8, so encode() cannot fail.
                    shard = crc32(key.encode()) & _MASK
                    data = self._shards[shard]
                    if self._frozen[shard]:
                        data = self._thaw(shard)
                    if key not in data:
                        self._count += 1
                        self._key_moved(key)
                    data[key] = Item(cmd.value, index)
                    # `encode_result(Ok(index))`: an array-like struct is encoded
                    # as the array of its tag and fields, and a tuple is cheaper
                    # to make than an `Ok` (tested equal over every int width).
                    result = _encoder.encode(("ok", index, None))
                else:
                    result = _encoder.encode(self._execute(cmd, index))
                # `DedupTable.record`, inlined; the command is its digest's token.
                entries[slot] = (index, seq, cmd if len(command) <= _LAZY_BYTES
                                 else _digest(cmd), result, kind, ident)
                if record is not None:
                    entries.move_to_end(slot)
                elif len(entries) > dedup.max_entries:
                    entries.popitem(last=False)
                return result
            return self._apply_parsed(_parse(command, self.command_limit), index, len(command))
        return self._apply_parsed(_parse(command, self.command_limit), index, len(command))

    def _apply_parsed(self, parsed: AnyRequest | Error, index: int, size: int) -> bytes:
        """The general way: `parsed` is `_parse` of the entry at `index` (`size` bytes)."""
        if isinstance(parsed, Error):
            # Not remembered in the de-duplication table: it changed nothing,
            # and a retry gets the same answer anyway.
            return encode_result(parsed)
        return self._answer(parsed, index, size)

    def _answer(self, parsed: AnyRequest, index: int, size: int) -> bytes:
        """Apply a valid request (of an entry of `size` bytes) through the de-duplication
        table: the general way."""
        kind: Kind
        if isinstance(parsed, Request):
            kind, ident, seq = "client", parsed.client_id, parsed.seq
        else:
            kind, ident, seq = "key", parsed.idempotency_key, 0
        # The command is the token of its digest; a large one is digested now
        # (see `_LAZY_BYTES`), and so is every one for a table that cannot
        # digest tokens (one set in place of the machine's own: the simulator's
        # mutants).
        token: object = parsed.command
        if size > _LAZY_BYTES or getattr(self._dedup, "digest_of", None) is not _digest:
            token = _digest(token)
        verdict, entry = self._dedup.check(kind, ident, seq, token, index)
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
        self._dedup.record(kind, ident, seq, token, result, index)
        return result

    def _execute(self, command: Command, index: int) -> Result:
        key = command.key
        # `shard_of(key)`, inlined on the hot path: a key in a command was
        # decoded from MessagePack, so it is valid UTF-8 and encode() cannot fail.
        shard = crc32(key.encode()) & _MASK
        data = self._shards[shard]
        item = data.get(key)
        if isinstance(command, Get):
            return NotFound() if item is None else Ok(item.mod_index, item.value)
        if command.prev_exist is not None or command.prev_value is not None \
                or command.prev_index is not None:  # (a plain write skips the call)
            failed = _precondition(command, item)
            if failed is not None:
                return failed
        if isinstance(command, Put):
            if self._frozen[shard]:
                data = self._thaw(shard)
            if item is None:
                self._count += 1
                self._key_moved(key)
            data[key] = Item(command.value, index)
            return Ok(index)
        if item is None:
            return NotFound()
        if self._frozen[shard]:
            data = self._thaw(shard)
        del data[key]
        self._count -= 1
        self._key_moved(key)
        return Ok(index)

    def _thaw(self, shard: int) -> Shard:
        """The first write to a shard since a snapshot: the snapshot keeps the old dict."""
        copy = self._shards[shard] = self._shards[shard].copy()
        self._frozen[shard] = False
        return copy

    def snapshot(self) -> bytes:
        """Data, de-duplication table and applied index; equal states give equal bytes.

        Exactly `b"".join(self.snapshot_chunks())`, serialized on the caller's thread.
        """
        return b"".join(self.snapshot_chunks())

    def snapshot_chunks(self) -> Iterator[bytes]:
        """The state at this call, as chunks of `snapshot()`'s bytes, to be written later.

        The call hands the shards over, frozen (O(`SHARDS`)), copies the
        de-duplication table's entries (`DedupTable.capture`: a C-level copy,
        O(`max_clients`)) and encodes nothing. The
        iterator may then run in another thread while `apply` goes on in this
        one; each step sorts one shard (in runs of at most 4096 keys) and
        encodes about 64 KiB. See the class docstring.
        """
        shards: list[Shard | None] = list(self._shards)
        self._frozen = [True] * SHARDS
        # A stand-in table (the simulator's mutants) may have only `entries()`.
        sessions = (self._dedup.capture() if isinstance(self._dedup, DedupTable)
                    else self._dedup.entries())
        return encode_chunks(self._applied_index, sessions, shards)

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot; raises `SnapshotError` (state unchanged) if bad."""
        # Build the new state completely before touching the old one, so a
        # refused snapshot leaves the machine as it was.
        applied_index, shards, sessions = decode_snapshot(data)
        try:
            # More entries than this replica's max_clients (a misconfigured
            # group) are cut down the same way eviction would have.
            new_dedup = DedupTable.from_entries(self.max_clients, sessions, _digest)
        except ValueError as exc:
            raise SnapshotError(str(exc)) from None
        # The old shards are not written again: a snapshot still being written
        # from them is unaffected.
        self._shards = shards
        self._frozen = [False] * SHARDS
        self._count = sum(map(len, shards))
        self._dedup = new_dedup
        self._applied_index = applied_index
        self._sorted = None
        self._moved.clear()


def _precondition(command: Put | Delete, item: Item | None) -> Result | None:
    """The answer if a condition of `command` fails against `item`, else None."""
    if item is None:
        needs_key = (
            command.prev_exist is True
            or command.prev_value is not None
            or command.prev_index is not None
        )
        return NotFound() if needs_key else None
    value, mod_index = item.value, item.mod_index
    if (
        command.prev_exist is False
        or (command.prev_value is not None and command.prev_value != value)
        or (command.prev_index is not None and command.prev_index != mod_index)
    ):
        return PreconditionFailed(mod_index, value)
    return None
