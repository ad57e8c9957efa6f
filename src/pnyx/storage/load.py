"""Reading a SQLite log store back: every row verified, then the `ReplicaDurable` they make.

This module owns `load`: the promise and last round, the accepted and chosen
rows in slot order, each checked against its CRC and its range and decoded,
and a chosen row that stands for its slot's accepted value resolved. Any
damage is `CorruptStoreError`, never a state with less in it than was written.
"""

from __future__ import annotations

import contextlib
import gc
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import msgspec

from pnyx.protocol.ballot import MAX_ROUND, Ballot
from pnyx.protocol.multipaxos.messages import Batch, Entry
from pnyx.protocol.multipaxos.records import ReplicaDurable
from pnyx.storage.errors import CorruptStoreError, sql_error
from pnyx.storage.rows import SAME_AS_ACCEPTED, batch_decoder, crc_ok, node_from_sql, row_crc


def load(conn: sqlite3.Connection, path: Path) -> ReplicaDurable:
    """The state the durable records add up to; `CorruptStoreError` if any row is damaged."""
    with _gc_paused():
        try:
            promised, last_round = read_singletons(conn, path)
            accepted = _load_accepted(conn, path)
            chosen = _load_chosen(conn, path, accepted)
        except sqlite3.Error as exc:
            raise sql_error(path, exc, "cannot read the log") from None
        return ReplicaDurable(promised, last_round, accepted, chosen)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # load() creates a few objects per slot, all of them kept; with the cyclic
    # collector running it rescans the growing heap again and again (about 2x
    # the time of a 100k-slot load) and finds nothing to free.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_singletons(conn: sqlite3.Connection, path: Path) -> tuple[Ballot, int]:
    """The promise and the last round, checked."""
    try:
        promise = conn.execute("SELECT round, node_id, crc FROM promise WHERE only = 1"
                               ).fetchone()
        last = conn.execute("SELECT round, crc FROM last_round WHERE only = 1").fetchone()
    except sqlite3.Error as exc:
        raise sql_error(path, exc, "cannot read the promise") from None
    if promise is None or not crc_ok(promise[2], promise[0], promise[1], 0):
        raise CorruptStoreError(path, f"promise row missing or damaged: {promise!r}")
    if last is None or not crc_ok(last[1], last[0], 0, 0):
        raise CorruptStoreError(path, f"last_round row missing or damaged: {last!r}")
    # Rows with a right CRC and a round no pnyx writes (found by fuzz/fuzz_store.py):
    # a replica could not send a ballot made from it.
    if not (0 <= promise[0] <= MAX_ROUND and 0 <= last[0] <= MAX_ROUND):
        raise CorruptStoreError(path, f"round out of range: promise {promise[0]}, "
                                f"last_round {last[0]}")
    return Ballot(promise[0], node_from_sql(promise[1])), last[0]


def _load_accepted(conn: sqlite3.Connection, path: Path) -> dict[int, Entry]:
    accepted: dict[int, Entry] = {}
    ballots: dict[tuple[int, int], Ballot] = {}  # share one Ballot per ballot
    decode = batch_decoder.decode
    crc_of = row_crc  # a local name: cheaper than a global lookup on every row
    for slot, rnd, node, value, crc in conn.execute(
        "SELECT slot, round, node_id, value, crc FROM accepted ORDER BY slot"
    ):
        try:
            ok = crc_of(slot, rnd, node, value) == crc
        except (TypeError, struct.error):
            ok = False
        if not ok:
            raise CorruptStoreError(path, f"accepted slot {slot}: checksum mismatch")
        if slot < 1 or not 0 <= rnd <= MAX_ROUND:
            raise CorruptStoreError(path, f"accepted slot {slot}: round {rnd} or "
                                    "slot out of range")
        ballot = ballots.get((rnd, node))
        if ballot is None:
            ballot = ballots[(rnd, node)] = Ballot(rnd, node_from_sql(node))
        try:
            accepted[slot] = Entry(slot, ballot, decode(value))
        except (msgspec.MsgspecError, ValueError) as exc:
            raise CorruptStoreError(
                path, f"accepted slot {slot}: value does not decode: {exc}"
            ) from None
    return accepted


def _load_chosen(conn: sqlite3.Connection, path: Path,
                 accepted: dict[int, Entry]) -> dict[int, Batch]:
    chosen: dict[int, Batch] = {}
    decode = batch_decoder.decode
    crc_of = row_crc  # a local name: cheaper than a global lookup on every row
    for slot, value, crc in conn.execute("SELECT slot, value, crc FROM chosen ORDER BY slot"):
        try:
            ok = crc_of(slot, 0, 0, value) == crc
        except (TypeError, struct.error):
            ok = False
        if not ok:
            raise CorruptStoreError(path, f"chosen slot {slot}: checksum mismatch")
        if slot < 1:
            raise CorruptStoreError(path, f"chosen slot {slot}: out of range")
        if value == SAME_AS_ACCEPTED:
            entry = accepted.get(slot)
            if entry is None:
                raise CorruptStoreError(
                    path, f"chosen slot {slot}: its value is the accepted entry's, "
                    "and there is no accepted entry for the slot")
            chosen[slot] = entry.value
            continue
        try:
            chosen[slot] = decode(value)
        except (msgspec.MsgspecError, ValueError) as exc:
            raise CorruptStoreError(
                path, f"chosen slot {slot}: value does not decode: {exc}"
            ) from None
    return chosen
