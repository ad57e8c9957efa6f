"""Fuzz what the stores read back from disk: `storage.record.FileRecord` (the Synod's
one-file record) and `storage.log_store.SqliteLogStore` (a replica's log).

Flags (the first byte), bits 0-1:

- 0: the body is a record file's contents; bit 2 gives it the right magic number
  and CRC32, so that its payload reaches the decoder. `FileRecord.load` must
  return a `DurableState` or raise `CorruptRecord`.
- 1: rows written into a fresh log store, as a damaged or foreign writer might:
  the body is a list of (table, columns) with typed values (`_rows`); bit 2
  gives each row the CRC32 the store would compute, so that its values reach
  the decoders.
- 2: bytes of a fresh log store's file overwritten: the body is a list of
  (2-byte offset, byte) pairs.

Then `SqliteLogStore.open`, `check_members` and `load` must succeed, with what
they return well-formed (every ballot, slot and value as the wire types allow,
so the replica can use and send it), or raise the store's one error,
`StoreError`, whose message is one line. Anything else is a bug. Run: `python
fuzz/fuzz_store.py -max_total_time=120`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import tempfile
import zlib
from pathlib import Path

import msgspec
from _harness import main

from pnyx.protocol.ballot import MAX_ROUND, Ballot
from pnyx.protocol.multipaxos.messages import Batch, Command
from pnyx.protocol.multipaxos.records import ReplicaDurable
from pnyx.protocol.synod.node import DurableState
from pnyx.storage.log_store import SqliteLogStore, StoreError
from pnyx.storage.record import _HEADER, MAGIC, CorruptRecord, FileRecord
from pnyx.storage.rows import row_crc as _row_crc

# Where each input's files go: memory, when the machine has it.
_DIR = Path(tempfile.mkdtemp(prefix="pnyx-fuzz-store-",
                             dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
MEMBERS = {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}
_TABLES = [("promise", 4), ("last_round", 3), ("accepted", 5), ("chosen", 3), ("members", 3),
           ("compacted", 3), ("standing", 3)]
_TEMPLATE = _DIR / "template.db"
with SqliteLogStore.open(_TEMPLATE, node_id=1, cluster_id="pnyx", fsync=False) as _store:
    _store.check_members(MEMBERS)
    _value = msgspec.msgpack.encode(Batch((Command(2, 1, b"x"),)))
    from pnyx.protocol.multipaxos.messages import Entry
    from pnyx.protocol.multipaxos.records import AcceptRecord, ChosenRecord, PromiseRecord

    _store.append([PromiseRecord(Ballot(3, 2)),
                   AcceptRecord(Entry(1, Ballot(3, 2), Batch((Command(2, 1, b"x"),))))])
    _store.append([ChosenRecord(1, Batch((Command(2, 1, b"x"),)))])
_TEMPLATE_BYTES = _TEMPLATE.read_bytes()
_wire_durable = msgspec.msgpack.Decoder(DurableState)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def left(self) -> bool:
        return self.pos < len(self.data)

    def value(self) -> object:
        kind = self.take(1)
        k = kind[0] % 6 if kind else 5
        if k == 0:
            raw = self.take(8).ljust(8, b"\0")
            return struct.unpack(">q", raw)[0]
        if k == 1:
            n = (self.take(1) or b"\0")[0]
            return self.take(n)
        if k == 2:
            n = (self.take(1) or b"\0")[0]
            return self.take(n).decode("utf-8", "replace")
        if k == 3:
            return None
        if k == 4:
            return struct.unpack(">d", self.take(8).ljust(8, b"\0"))[0]
        return (self.take(1) or b"\0")[0]


def _rows(body: bytes, fix_crc: bool) -> list[tuple[str, tuple[object, ...]]]:
    """(table, row) pairs: a table byte, then each column a typed value (`_Reader`); with
    `fix_crc` the last column is replaced by the CRC the store computes."""
    r = _Reader(body)
    out = []
    while r.left() and len(out) < 16:
        table, width = _TABLES[r.take(1)[0] % len(_TABLES)]
        row = [r.value() for _ in range(width)]
        if fix_crc:
            ints = [v if isinstance(v, int) else 0 for v in row[:-1]]
            blob = next((v for v in row if isinstance(v, bytes)), b"")
            if table in ("promise", "last_round", "compacted", "standing"):
                ints[0] = 1  # the `only` column
                a, b = (ints[1], ints[2] if table == "promise" else 0)
                row[:-1] = [1, a, b][:width - 1]
                crc_of: tuple[int, int, int, bytes] = (a, b, 0, b"")
            elif table == "accepted":
                crc_of = (ints[0], ints[1], ints[2], blob)
                row[3] = blob
            elif table == "chosen":
                crc_of = (ints[0], 0, 0, blob)
                row[1] = blob
            else:
                crc_of = (ints[0], 0, 0, blob)
                row[1] = blob
            with contextlib.suppress(struct.error):  # an int SQLite cannot hold
                row[-1] = _row_crc(*crc_of)
        out.append((table, tuple(row)))
    return out


def _well_formed(d: ReplicaDurable) -> None:
    """What a store hands a replica must be what the wire allows (it is sent on)."""
    for ballot in [d.promised, *(e.ballot for e in d.accepted.values())]:
        assert isinstance(ballot, Ballot), ballot
        assert 0 <= ballot.round <= MAX_ROUND and 0 <= ballot.node_id < 2**64, ballot
    assert isinstance(d.last_round, int) and 0 <= d.last_round <= MAX_ROUND, d.last_round
    for slot, entry in d.accepted.items():
        assert isinstance(slot, int) and slot >= 1 and entry.slot == slot, (slot, entry)
        msgspec.msgpack.decode(msgspec.msgpack.encode(entry.value), type=Batch)
    for slot, value in d.chosen.items():
        assert isinstance(slot, int) and slot >= 1, slot
        msgspec.msgpack.decode(msgspec.msgpack.encode(value), type=Batch)


def _record(flags: int, body: bytes) -> None:
    path = _DIR / "record"
    if flags & 4:
        body = _HEADER.pack(MAGIC, zlib.crc32(body)) + body
    path.write_bytes(body)
    try:
        state = FileRecord(path).load()
    except CorruptRecord as exc:
        assert "\n" not in str(exc), str(exc)
        return
    assert state is not None
    _wire_durable.decode(msgspec.msgpack.encode(state))


def _store(flags: int, body: bytes) -> None:
    path = _DIR / "store.db"
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    if flags & 3 == 2:
        data = bytearray(_TEMPLATE_BYTES)
        for i in range(0, len(body) - 2, 3):
            (offset,) = struct.unpack_from(">H", body, i)
            data[offset % len(data)] = body[i + 2]
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(_TEMPLATE_BYTES)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for table, row in _rows(body, bool(flags & 4)):
                marks = ", ".join("?" * len(row))
                # SQLite's own constraints may refuse the row: then it is not an input.
                with contextlib.suppress(sqlite3.IntegrityError, OverflowError):
                    conn.execute(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", row)
        finally:
            conn.close()
    try:
        with SqliteLogStore.open(path, node_id=1, cluster_id="pnyx", fsync=False) as store:
            store.check_members(MEMBERS)
            durable = store.load()
    except StoreError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    _well_formed(durable)


def one_input(data: bytes) -> None:
    if not data:
        return
    flags, body = data[0], data[1:]
    if flags & 3 == 0:
        _record(flags, body)
    else:
        _store(flags, body)


def seeds() -> list[bytes]:
    ok = msgspec.msgpack.encode(DurableState(Ballot(2, 1), None, 2, b"v"))
    accepted_row = (b"\x02" + b"\x05\x07" + b"\x05\x03" + b"\x05\x02"
                    + b"\x01\x06" + _value[:6].ljust(6, b"\0") + b"\x05\x00")
    return [bytes([4]) + ok, bytes([0]) + _HEADER.pack(MAGIC, zlib.crc32(ok)) + ok,
            bytes([5]) + accepted_row, bytes([1]) + accepted_row,
            bytes([5]) + b"\x00\x05\x01\x00" + b"\x01" * 8 + b"\x05\x02\x05\x00",
            bytes([2]) + b"\x00\x10\x00\x01\x00\xff"]


if __name__ == "__main__":
    main(one_input, seeds())
