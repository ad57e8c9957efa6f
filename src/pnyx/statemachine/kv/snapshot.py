"""The KV machine's snapshot format: its bytes, and the checks a snapshot must pass.

This module owns the sharding of the key space (`SHARDS`, `shard_of`: which
part of the map a key lives in, the same in every process), the snapshot
format, `encode_chunks`, which writes one as a stream of chunks, and
`decode_snapshot`, which refuses anything corrupt or inconsistent with
`SnapshotError` before the machine touches its state.

**Version 2** (what `encode_chunks` writes) is a sequence of frames, each a
4-byte big-endian length and a MessagePack array::

    ["pnyx.kv", 2, applied_index, SHARDS, n_sessions]      header, first
    ["sessions", [DedupEntry, ...]]                         de-dup table, LRU first
    ["records", shard, [[key, [value, mod_index]], ...]]    shards in increasing order,
                                                            keys sorted within a shard
    ["end", n_records, blake2b-128 of every byte before this frame]

Records are ordered by (`shard_of(key)`, key), so the stream can be written one
shard at a time with no global sort, and equal states give equal bytes in every
process (the shard comes from crc32, never from Python's per-process `hash`).
Frames hold at most `_FRAME_RECORDS` entries and close once past
`_FRAME_BYTES`, so the frame boundaries are a function of the state too.

**Version 1** (still read, no longer written) is one MessagePack envelope
`["pnyx.kv", 1, checksum, body]` with every key sorted in one list.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
import zlib
from collections.abc import Iterable, Iterator, Sized
from typing import Final, Protocol

import msgspec

from pnyx.statemachine.base import SnapshotError
from pnyx.statemachine.dedup import DedupEntry

_encoder = msgspec.msgpack.Encoder()

_SNAPSHOT_FORMAT: Final = "pnyx.kv"
_SNAPSHOT_VERSION: Final = 2

SHARDS: Final = 256
"""Parts the key space is split into; fixed by the format (records are in shard order).

Few enough that the shards' own objects stay in the CPU caches on the path of
every command; a shard larger than `_SORT_RUN` keys is sorted in runs (see
`_sorted_items`), so no step of the encoder grows with the shard's size.
"""

_MASK: Final = SHARDS - 1


class Item(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What the map holds for a key: its value and `mod_index`.

    Not a tuple: a tuple is tracked by the garbage collector, and so is a dict
    holding one, and a collection walks every entry of every tracked dict of
    its generation (~50 ms at 1M keys; the shards copied after a snapshot are
    young, so even the frequent young collections would walk them). A struct
    with `gc=False` is never tracked, nor is a dict of them: no collection
    ever walks the map, however large.
    """

    value: bytes
    mod_index: int


Shard = dict[str, Item]
"""One shard of the map: the keys `shard_of` puts there."""


def shard_of(key: str) -> int:
    """The shard `key` lives in: crc32 of its UTF-8 bytes, the same in every process."""
    # surrogatepass: a str made in Python may hold a lone surrogate; it can never
    # be a stored key (MessagePack strings are valid UTF-8) but must not raise.
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) & _MASK


# --- version 2: a stream of frames ---------------------------------------------

_LENGTH = struct.Struct(">I")

# Per frame: at most this many entries, and the frame closes once its keys,
# values and results pass _FRAME_BYTES. Both bound the work of one step of the
# encoder; being functions of the state, they keep the bytes canonical.
_FRAME_RECORDS: Final = 1024
_FRAME_BYTES: Final = 1 << 16

# The encoder yields a chunk once it holds this many bytes of frames.
_CHUNK_BYTES: Final = 1 << 16

# The most keys sorted in one call (one call holds the interpreter throughout).
_SORT_RUN: Final = 4096


class _Frame(msgspec.Struct, frozen=True, array_like=True, tag_field="frame"):
    pass


class _Header(_Frame, tag=_SNAPSHOT_FORMAT):
    version: int
    applied_index: int
    shards: int
    sessions: int  # how many de-duplication entries the sessions frames hold


class _Sessions(_Frame, tag="sessions"):
    entries: list[DedupEntry]  # least recently used first, continued by the next frame


class _Records(_Frame, tag="records"):
    shard: int
    records: list[tuple[str, Item]]  # sorted by key


class _End(_Frame, tag="end"):
    # A checksum over everything before this frame: MessagePack decoding catches
    # a truncated or mangled structure, but a flipped bit inside a value would
    # decode fine and silently fork this replica's state from the others.
    records: int
    checksum: bytes


_frame_decoder = msgspec.msgpack.Decoder(_Header | _Sessions | _Records | _End)


class Sessions(Sized, Iterable[DedupEntry], Protocol):
    """De-duplication entries, least recently used first, with their count known up front."""


class _Writer:
    """Frames messages, checksums them, and hands them out in chunks of about `_CHUNK_BYTES`."""

    def __init__(self) -> None:
        self.checksum = hashlib.blake2b(digest_size=16)
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, frame: _Frame) -> bytes | None:
        """Add a frame; returns a chunk once enough is pending."""
        payload = _encoder.encode(frame)
        framed = _LENGTH.pack(len(payload)) + payload
        self.checksum.update(framed)
        self.parts.append(framed)
        self.size += len(framed)
        return self.take() if self.size >= _CHUNK_BYTES else None

    def take(self) -> bytes:
        chunk = b"".join(self.parts)
        self.parts, self.size = [], 0
        return chunk


def _sorted_items(shard: Shard) -> Iterable[tuple[str, Item]]:
    """A shard's items by key, never sorting more than `_SORT_RUN` in one call."""
    # Keys are unique, so sorting the pairs never compares two items.
    if len(shard) <= _SORT_RUN:
        return sorted(shard.items())
    items = list(shard.items())
    runs = [sorted(items[i:i + _SORT_RUN]) for i in range(0, len(items), _SORT_RUN)]
    return heapq.merge(*runs)


def encode_chunks(
    applied_index: int, sessions: Sessions, shards: list[Shard | None]
) -> Iterator[bytes]:
    """The bytes of a version-2 snapshot, in chunks; equal states give equal bytes.

    `shards` (indexed by `shard_of`) and `sessions` must not change while the
    iterator runs: the machine hands over dicts it will never write again. Each
    shard is dropped from `shards` once written, so its memory can go early.
    Each step encodes about `_CHUNK_BYTES` (and sorts the next shard, in runs
    of at most `_SORT_RUN` keys).
    """
    out = _Writer()
    if (chunk := out.add(_Header(_SNAPSHOT_VERSION, applied_index, SHARDS, len(sessions)))):
        yield chunk
    batch: list[DedupEntry] = []
    size = 0
    for entry in sessions:
        batch.append(entry)
        size += len(entry.ident) + len(entry.result) + 32
        if len(batch) >= _FRAME_RECORDS or size >= _FRAME_BYTES:
            if (chunk := out.add(_Sessions(batch))):
                yield chunk
            batch, size = [], 0
    if batch and (chunk := out.add(_Sessions(batch))):
        yield chunk
    records = 0
    for shard in range(SHARDS):
        data = shards[shard]
        shards[shard] = None
        if not data:
            continue
        part: list[tuple[str, Item]] = []
        size = 0
        for pair in _sorted_items(data):
            part.append(pair)
            size += len(pair[0]) + len(pair[1].value)
            if len(part) < _FRAME_RECORDS and size < _FRAME_BYTES:
                continue
            records += len(part)
            if (chunk := out.add(_Records(shard, part))):
                yield chunk
            part, size = [], 0
        if part:
            records += len(part)
            if (chunk := out.add(_Records(shard, part))):
                yield chunk
    digest = out.checksum.digest()
    out.add(_End(records, digest))
    yield out.take()


def _decode_v2(data: bytes) -> tuple[int, list[Shard], list[DedupEntry]]:
    view = memoryview(data)
    frames: list[tuple[int, memoryview]] = []  # (offset of the frame, its payload)
    pos, total = 0, len(data)
    while pos < total:
        if total - pos < _LENGTH.size:
            raise SnapshotError("truncated KV snapshot: a frame length is cut short")
        (size,) = _LENGTH.unpack_from(data, pos)
        if size > total - pos - _LENGTH.size:
            raise SnapshotError(
                f"truncated KV snapshot: a frame of {size} bytes has "
                f"{total - pos - _LENGTH.size} left"
            )
        frames.append((pos, view[pos + _LENGTH.size: pos + _LENGTH.size + size]))
        pos += _LENGTH.size + size
    if len(frames) < 2:
        raise SnapshotError("not a KV snapshot: no header and end frame")
    try:
        header = _frame_decoder.decode(frames[0][1])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"not a KV snapshot: {exc}") from None
    if not isinstance(header, _Header):
        raise SnapshotError("not a KV snapshot: the first frame is not a header")
    if header.version != _SNAPSHOT_VERSION or header.shards != SHARDS:
        raise SnapshotError(
            f"snapshot is {_SNAPSHOT_FORMAT!r} version {header.version} with "
            f"{header.shards} shards, expected version {_SNAPSHOT_VERSION} with {SHARDS}"
        )
    end_offset, end_payload = frames[-1]
    try:
        end = _frame_decoder.decode(end_payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"corrupt KV snapshot end frame: {exc}") from None
    if not isinstance(end, _End):
        raise SnapshotError("truncated KV snapshot: the last frame is not the end frame")
    if hashlib.blake2b(view[:end_offset], digest_size=16).digest() != end.checksum:
        raise SnapshotError("snapshot checksum mismatch: the bytes are corrupt")
    applied_index = header.applied_index
    if applied_index < 0:
        raise SnapshotError(f"negative applied index {applied_index}")

    sessions: list[DedupEntry] = []
    shards: list[Shard] = [{} for _ in range(SHARDS)]
    count = 0
    shard = -1  # the shard of the last records frame
    last: str | None = None  # the last key of that shard so far
    for _, payload in frames[1:-1]:
        try:
            frame = _frame_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            # ValueError: a str that is not UTF-8.
            raise SnapshotError(f"corrupt KV snapshot frame: {exc}") from None
        if isinstance(frame, _Sessions):
            if shard >= 0:
                raise SnapshotError("de-duplication entries after the records")
            if not frame.entries:
                raise SnapshotError("an empty sessions frame")
            sessions.extend(frame.entries)
            continue
        if not isinstance(frame, _Records):
            raise SnapshotError(f"a {type(frame).__name__.strip('_').lower()} frame "
                                "in the middle of the snapshot")
        if not frame.records:
            raise SnapshotError("an empty records frame")
        if not shard <= frame.shard < SHARDS:
            raise SnapshotError(f"records of shard {frame.shard} after shard {shard}")
        if frame.shard != shard:
            shard, last = frame.shard, None
        for key, item in frame.records:
            if last is not None and key <= last:
                raise SnapshotError(f"key {key!r} out of order or twice in shard {shard}")
            if zlib.crc32(key.encode()) & _MASK != shard:
                raise SnapshotError(f"key {key!r} is not in shard {shard}")
            if not 1 <= item.mod_index <= applied_index:
                raise SnapshotError(
                    f"key {key!r} has mod_index {item.mod_index} outside 1..{applied_index}"
                )
            last = key
        shards[shard].update(frame.records)
        count += len(frame.records)
    if count != end.records:
        raise SnapshotError(f"snapshot holds {count} records, its end frame says {end.records}")
    if len(sessions) != header.sessions:
        raise SnapshotError(
            f"snapshot holds {len(sessions)} de-duplication entries, "
            f"its header says {header.sessions}"
        )
    return applied_index, shards, sessions


# --- version 1: one envelope ---------------------------------------------------

_V1: Final = 1


class _KeyRecord(msgspec.Struct, frozen=True, array_like=True):
    key: str
    value: bytes
    mod_index: int


class _SnapshotBody(msgspec.Struct, frozen=True, array_like=True):
    applied_index: int
    data: list[_KeyRecord]  # sorted by key
    sessions: list[DedupEntry]  # least recently used first


class _SnapshotEnvelope(msgspec.Struct, frozen=True, array_like=True):
    format: str
    version: int
    checksum: bytes
    body: bytes


_envelope_decoder = msgspec.msgpack.Decoder(_SnapshotEnvelope)
_body_decoder = msgspec.msgpack.Decoder(_SnapshotBody)


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def _decode_v1(data: bytes) -> tuple[int, list[Shard], list[DedupEntry]]:
    try:
        envelope = _envelope_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"not a KV snapshot: {exc}") from None
    if envelope.format != _SNAPSHOT_FORMAT or envelope.version != _V1:
        raise SnapshotError(
            f"snapshot envelope is {envelope.format!r} version {envelope.version}, "
            f"expected {_SNAPSHOT_FORMAT!r} version {_V1}"
        )
    if _checksum(envelope.body) != envelope.checksum:
        raise SnapshotError("snapshot checksum mismatch: the bytes are corrupt")
    try:
        body = _body_decoder.decode(envelope.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"corrupt KV snapshot body: {exc}") from None
    if body.applied_index < 0:
        raise SnapshotError(f"negative applied index {body.applied_index}")
    shards: list[Shard] = [{} for _ in range(SHARDS)]
    for record in body.data:
        shard = shards[shard_of(record.key)]
        if record.key in shard:
            raise SnapshotError(f"key {record.key!r} appears twice")
        if not 1 <= record.mod_index <= body.applied_index:
            raise SnapshotError(
                f"key {record.key!r} has mod_index {record.mod_index} "
                f"outside 1..{body.applied_index}"
            )
        shard[record.key] = Item(record.value, record.mod_index)
    return body.applied_index, shards, body.sessions


def decode_snapshot(data: bytes) -> tuple[int, list[Shard], list[DedupEntry]]:
    """`(applied_index, shards, sessions)` of a snapshot of version 2 or 1.

    `shards` is `SHARDS` fresh `Shard`s, each key in `shards[shard_of(key)]`.
    Raises `SnapshotError` if the bytes are not a whole, intact, well-ordered
    snapshot.
    """
    # A version-1 snapshot is a MessagePack array of 4 (0x94); a version-2 one
    # starts with a frame length, whose first byte is 0 for any header.
    if data[:1] == b"\x94":
        return _decode_v1(data)
    return _decode_v2(data)
