"""One group commit of a SQLite log store: what a batch of records changes, as rows.

This module owns `Net`, the net change of a batch of records
(`ReplicaDurable.apply` folded over it), `encode`, which turns it into the
rows to write (before any transaction starts, so a record that cannot be
stored fails without touching the database), and `write`, the one
transaction that writes them and whose COMMIT is the fsync.

Compaction (`CompactRecord(upto)`) is part of the same transaction: the
accepted and chosen rows of slots 1..upto are deleted before any row of the
batch is written, and the `compacted` row rises to `upto` (it never falls).
Applied in order, a compaction forgets what the batch accepted or chose in
those slots before it, and a `ChosenRecord` at or below the compacted slot is
ignored, as `ReplicaDurable.apply` ignores it. An `AcceptRecord` at or below
it is refused (`ValueError`, before anything is written): `apply` would keep
it, but a row there could never be told apart from one compaction failed to
delete, and the replica never asks for one (a compacted slot is chosen).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Sequence

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos.messages import Entry
from pnyx.protocol.multipaxos.records import (
    AcceptRecord,
    ChosenRecord,
    CompactRecord,
    LogRecord,
    PromiseRecord,
    RoundRecord,
    Standing,
    StandingRecord,
)
from pnyx.storage.rows import SAME_AS_ACCEPTED, encoder, node_to_sql, row_crc


@dataclasses.dataclass(slots=True)
class Net:
    """What one group commit changes: `ReplicaDurable.apply` folded over its records."""

    promised: Ballot | None = None
    last_round: int | None = None
    accepted: dict[int, Entry] = dataclasses.field(default_factory=dict)
    chosen: dict[int, ChosenRecord] = dataclasses.field(default_factory=dict)
    compact: int | None = None  # the highest CompactRecord.upto in the batch
    standing: Standing | None = None  # the last StandingRecord's
    lowest_accept: int | None = None  # the lowest slot of an AcceptRecord in the batch

    @classmethod
    def of(cls, records: Sequence[LogRecord]) -> Net:
        # Promise and round only rise, so within a batch only their maximum
        # matters; a slot's entry is replaced, so only its last one does.
        net = cls()
        for record in records:
            if isinstance(record, PromiseRecord):
                net._promise(record.ballot)
            elif isinstance(record, RoundRecord):
                if net.last_round is None or record.round > net.last_round:
                    net.last_round = record.round
            elif isinstance(record, AcceptRecord):
                slot = record.entry.slot
                if net.compact is not None and slot <= net.compact:
                    raise ValueError(f"accept for slot {slot}, which an earlier record of "
                                     f"the batch compacted (upto {net.compact})")
                if net.lowest_accept is None or slot < net.lowest_accept:
                    net.lowest_accept = slot
                net.accepted[slot] = record.entry
                net._promise(record.entry.ballot)
            elif isinstance(record, ChosenRecord):
                if net.compact is None or record.slot > net.compact:
                    net.chosen[record.slot] = record
            elif isinstance(record, CompactRecord):
                net._compact(record.upto)
            elif isinstance(record, StandingRecord):
                # Refuses an int that is no Standing (ValueError), before any write.
                net.standing = Standing(record.standing)
            else:
                raise TypeError(f"not a log record: {record!r}")
        return net

    def _promise(self, ballot: Ballot) -> None:
        if self.promised is None or ballot > self.promised:
            self.promised = ballot

    def _compact(self, upto: int) -> None:
        if type(upto) is not int:
            raise ValueError(f"compact upto {upto!r} is not an integer")
        if self.compact is not None and upto <= self.compact:
            return
        self.compact = upto
        # What the batch accepted or chose at or below `upto` before this record is
        # forgotten, as `ReplicaDurable.compact` forgets it.
        for table in (self.accepted, self.chosen):
            for slot in [s for s in table if s <= upto]:
                del table[slot]


@dataclasses.dataclass(slots=True)
class Rows:
    """A group commit encoded: the promise and last round after it, and the rows to write."""

    promised: Ballot
    last_round: int
    promise_row: tuple[int, int, int] | None
    last_round_row: tuple[int, int] | None
    accepted_rows: list[tuple[int, int, int, bytes, int]]
    chosen_rows: list[tuple[int, bytes, int]]
    compacted: int = 0
    standing: Standing = Standing.VOTER
    compacted_row: tuple[int, int] | None = None  # also: delete the slots up to it
    standing_row: tuple[int, int] | None = None


def encode(net: Net, promised: Ballot, last_round: int, compacted: int = 0,
           standing: Standing = Standing.VOTER) -> Rows:
    """The rows that take a store holding `promised`, `last_round`, `compacted` and
    `standing` past `net`.

    Raises `struct.error` or `OverflowError` for a record that cannot be stored
    (an integer beyond 64 bits), `ValueError` for an accept at or below `compacted`.
    """
    if net.lowest_accept is not None and net.lowest_accept <= compacted:
        raise ValueError(f"accept for slot {net.lowest_accept}, at or below the compacted "
                         f"slot {compacted}")
    old_promised, old_last_round = promised, last_round
    if net.promised is not None and net.promised > promised:
        promised = net.promised
    if net.last_round is not None and net.last_round > last_round:
        last_round = net.last_round
    promise_row = last_round_row = None
    if promised != old_promised:
        node = node_to_sql(promised.node_id)
        promise_row = (promised.round, node, row_crc(promised.round, node, 0))
    if last_round != old_last_round:
        last_round_row = (last_round, row_crc(last_round, 0, 0))
    accepted_rows = []
    for slot, entry in net.accepted.items():
        node = node_to_sql(entry.ballot.node_id)
        value = encoder.encode(entry.value)
        crc = row_crc(slot, entry.ballot.round, node, value)
        accepted_rows.append((slot, entry.ballot.round, node, value, crc))
    compacted_row = standing_row = None
    if net.compact is not None and net.compact > compacted:
        compacted = net.compact
        compacted_row = (compacted, row_crc(compacted, 0, 0))
    if net.standing is not None and net.standing != standing:
        standing = net.standing
        standing_row = (int(standing), row_crc(int(standing), 0, 0))
    chosen_rows = []
    for slot, chosen in net.chosen.items():
        if slot <= compacted:
            continue  # ignored, as `ReplicaDurable.apply` ignores it
        # The value once, not twice, when it is the accepted entry's.
        value = SAME_AS_ACCEPTED if chosen.accepted else encoder.encode(chosen.value)
        chosen_rows.append((slot, value, row_crc(slot, 0, 0, value)))
    return Rows(promised, last_round, promise_row, last_round_row, accepted_rows, chosen_rows,
                compacted, standing, compacted_row, standing_row)


def write(conn: sqlite3.Connection, rows: Rows) -> float:
    """Write `rows` in one transaction; the seconds its COMMIT took. Raises `sqlite3.Error`
    with the transaction still open (the caller rolls it back)."""
    conn.execute("BEGIN")
    if rows.compacted_row is not None:
        # Before the batch's own rows, which are all above the compacted slot.
        upto = rows.compacted_row[0]
        conn.execute("DELETE FROM accepted WHERE slot <= ?", (upto,))
        conn.execute("DELETE FROM chosen WHERE slot <= ?", (upto,))
        conn.execute("UPDATE compacted SET upto = ?, crc = ? WHERE only = 1",
                     rows.compacted_row)
    if rows.standing_row is not None:
        conn.execute("UPDATE standing SET value = ?, crc = ? WHERE only = 1",
                     rows.standing_row)
    if rows.promise_row is not None:
        conn.execute(
            "UPDATE promise SET round = ?, node_id = ?, crc = ? WHERE only = 1",
            rows.promise_row,
        )
    if rows.last_round_row is not None:
        conn.execute(
            "UPDATE last_round SET round = ?, crc = ? WHERE only = 1",
            rows.last_round_row,
        )
    if rows.accepted_rows:
        # An upsert updates the row in place (INSERT OR REPLACE
        # would delete and reinsert it).
        conn.executemany(
            "INSERT INTO accepted VALUES (?, ?, ?, ?, ?) ON CONFLICT (slot) DO "
            "UPDATE SET round = excluded.round, node_id = excluded.node_id, "
            "value = excluded.value, crc = excluded.crc",
            rows.accepted_rows,
        )
    if rows.chosen_rows:
        conn.executemany(
            "INSERT INTO chosen VALUES (?, ?, ?) ON CONFLICT (slot) DO "
            "UPDATE SET value = excluded.value, crc = excluded.crc",
            rows.chosen_rows,
        )
    started = time.perf_counter()
    conn.execute("COMMIT")
    return time.perf_counter() - started
