"""The KV machine's snapshot format: its bytes, and the checks a snapshot must pass.

This module owns the envelope (format name, version, checksum over the body),
the body (applied index, every key with its value and `mod_index`, the
de-duplication table), `encode_snapshot`, and `decode_snapshot`, which refuses
anything corrupt or inconsistent with `SnapshotError` before the machine
touches its state.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

from pnyx.statemachine.base import SnapshotError
from pnyx.statemachine.dedup import DedupEntry

_encoder = msgspec.msgpack.Encoder()

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


def encode_snapshot(
    applied_index: int, data: dict[str, tuple[bytes, int]], sessions: list[DedupEntry]
) -> bytes:
    """The bytes of a snapshot; equal states give equal bytes (keys are sorted)."""
    body = _encoder.encode(_SnapshotBody(
        applied_index=applied_index,
        data=[
            _KeyRecord(key, value, mod_index)
            for key, (value, mod_index) in sorted(data.items())
        ],
        sessions=sessions,
    ))
    return _encoder.encode(
        _SnapshotEnvelope(_SNAPSHOT_FORMAT, _SNAPSHOT_VERSION, _checksum(body), body)
    )


def decode_snapshot(
    data: bytes,
) -> tuple[int, dict[str, tuple[bytes, int]], list[DedupEntry]]:
    """`(applied_index, data, sessions)` of a snapshot; raises `SnapshotError` if it is bad."""
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
    return body.applied_index, new_data, body.sessions
