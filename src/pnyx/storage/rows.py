"""How the values of a log store's rows are stored: integers, node ids, values, CRCs.

This module owns the row encoding every table shares: a node id (unsigned 64
bits) as a signed SQLite integer and back, a `Batch` value as MessagePack, the
`SAME_AS_ACCEPTED` marker of a chosen row, and the CRC32 each row carries
because SQLite keeps no checksums of its own (`row_crc`, and `crc_ok`, which
checks a row read back whatever types a damaged file put in it).
"""

from __future__ import annotations

import struct
import zlib

import msgspec

from pnyx.protocol.multipaxos.messages import Batch

# A chosen row's value when it is the value of the accepted row of the same slot. An
# encoded `Batch` is never empty, so the two cannot be confused.
SAME_AS_ACCEPTED = b""

encoder = msgspec.msgpack.Encoder()
batch_decoder = msgspec.msgpack.Decoder(Batch)
_INTS = struct.Struct(">qqq")

# SQLite integers are signed 64-bit, but a node id may be any unsigned 64-bit
# integer MessagePack can carry (a peer's ballot is promised and persisted as
# received). Stored as the same 64 bits read as signed; rounds are bounded by
# MAX_ROUND = 2**62 and slots are positive, so they fit as they are.
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1


def node_to_sql(node_id: int) -> int:
    if not 0 <= node_id < _U64:
        # Caught by append(): the record is refused rather than read back altered.
        raise OverflowError(f"node id {node_id} is not an unsigned 64-bit integer")
    return node_id - _U64 if node_id > _I64_MAX else node_id


def node_from_sql(value: int) -> int:
    return value + _U64 if value < 0 else value


def row_crc(a: int, b: int, c: int, value: bytes = b"") -> int:
    """CRC32 of a row's integers (as stored) and blob: what `load()` checks it against."""
    return zlib.crc32(value, zlib.crc32(_INTS.pack(a, b, c)))


def crc_ok(crc: object, a: object, b: object, c: object, value: object = b"") -> bool:
    # A damaged row may hold any SQLite type in any column; anything but the
    # types written fails the check instead of raising from struct or zlib.
    if not (type(a) is int and type(b) is int and type(c) is int and type(value) is bytes):
        return False
    try:
        return row_crc(a, b, c, value) == crc
    except struct.error:
        return False
