"""Reading a SQLite log store back: every row verified, then the `ReplicaDurable` they make.

This module owns `load`: the promise, last round, compacted slot and
standing, the accepted and chosen rows in slot order, each checked against
its CRC and its range and decoded, and a chosen row that stands for its
slot's accepted value resolved. A row at or below the compacted slot is
damage too (compaction deletes them in the transaction that raises it). Any
damage is `CorruptStoreError`, never a state with less in it than was written.
"""

from __future__ import annotations

import contextlib
import gc
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import msgspec

from pnyx.protocol.ballot import MAX_ROUND, Ballot
from pnyx.protocol.multipaxos.messages import Batch, Entry
from pnyx.protocol.multipaxos.records import ReplicaDurable, Standing
from pnyx.storage.errors import CorruptStoreError, sql_error
from pnyx.storage.rows import SAME_AS_ACCEPTED, batch_decoder, crc_ok, node_from_sql, row_crc


def load(conn: sqlite3.Connection, path: Path) -> ReplicaDurable:
    """The state the durable records add up to; `CorruptStoreError` if any row is damaged."""
    with _gc_paused():
        try:
            single = read_singletons(conn, path)
            accepted = _load_accepted(conn, path, single.compacted)
            chosen = _load_chosen(conn, path, accepted, single.compacted)
        except sqlite3.Error as exc:
            raise sql_error(path, exc, "cannot read the log") from None
        return ReplicaDurable(single.promised, single.last_round, accepted, chosen,
                              single.compacted, single.standing)


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


class Singletons(NamedTuple):
    """The store's one-row tables, checked."""

    promised: Ballot
    last_round: int
    compacted: int
    standing: Standing


def read_singletons(conn: sqlite3.Connection, path: Path) -> Singletons:
    """The promise, the last round, the compacted slot and the standing, checked."""
    try:
        promise = conn.execute("SELECT round, node_id, crc FROM promise WHERE only = 1"
                               ).fetchone()
        last = conn.execute("SELECT round, crc FROM last_round WHERE only = 1").fetchone()
        compacted = conn.execute("SELECT upto, crc FROM compacted WHERE only = 1"
                                 ).fetchone()
        standing = conn.execute("SELECT value, crc FROM standing WHERE only = 1").fetchone()
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
    if compacted is None or not crc_ok(compacted[1], compacted[0], 0, 0):
        raise CorruptStoreError(path, f"compacted row missing or damaged: {compacted!r}")
    if compacted[0] < 0:
        raise CorruptStoreError(path, f"compacted slot {compacted[0]} out of range")
    if standing is None or not crc_ok(standing[1], standing[0], 0, 0):
        raise CorruptStoreError(path, f"standing row missing or damaged: {standing!r}")
    try:
        standing_value = Standing(standing[0])
    except ValueError:
        raise CorruptStoreError(path, f"standing {standing[0]} is none this pnyx knows"
                                ) from None
    return Singletons(Ballot(promise[0], node_from_sql(promise[1])), last[0], compacted[0],
                      standing_value)


def _load_accepted(conn: sqlite3.Connection, path: Path, compacted: int) -> dict[int, Entry]:
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
        if slot <= compacted:
            raise CorruptStoreError(path, f"accepted slot {slot}: at or below the "
                                    f"compacted slot {compacted}")
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


def _load_chosen(conn: sqlite3.Connection, path: Path, accepted: dict[int, Entry],
                 compacted: int) -> dict[int, Batch]:
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
        if slot <= compacted:
            raise CorruptStoreError(path, f"chosen slot {slot}: at or below the "
                                    f"compacted slot {compacted}")
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
