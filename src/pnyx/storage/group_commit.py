"""One group commit of a SQLite log store: what a batch of records changes, as rows.

This module owns `Net`, the net change of a batch of records
(`ReplicaDurable.apply` folded over it), `encode`, which turns it into the
rows to write (before any transaction starts, so a record that cannot be
stored fails without touching the database), and `write`, the one
transaction that writes them and whose COMMIT is the fsync.
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
    LogRecord,
    PromiseRecord,
    RoundRecord,
)
from pnyx.storage.rows import SAME_AS_ACCEPTED, encoder, node_to_sql, row_crc


@dataclasses.dataclass(slots=True)
class Net:
    """What one group commit changes: `ReplicaDurable.apply` folded over its records."""

    promised: Ballot | None = None
    last_round: int | None = None
    accepted: dict[int, Entry] = dataclasses.field(default_factory=dict)
    chosen: dict[int, ChosenRecord] = dataclasses.field(default_factory=dict)

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
                net.accepted[record.entry.slot] = record.entry
                net._promise(record.entry.ballot)
            elif isinstance(record, ChosenRecord):
                net.chosen[record.slot] = record
            else:
                raise TypeError(f"not a log record: {record!r}")
        return net

    def _promise(self, ballot: Ballot) -> None:
        if self.promised is None or ballot > self.promised:
            self.promised = ballot


@dataclasses.dataclass(slots=True)
class Rows:
    """A group commit encoded: the promise and last round after it, and the rows to write."""

    promised: Ballot
    last_round: int
    promise_row: tuple[int, int, int] | None
    last_round_row: tuple[int, int] | None
    accepted_rows: list[tuple[int, int, int, bytes, int]]
    chosen_rows: list[tuple[int, bytes, int]]


def encode(net: Net, promised: Ballot, last_round: int) -> Rows:
    """The rows that take a store holding `promised` and `last_round` past `net`.

    Raises `struct.error` or `OverflowError` for a record that cannot be stored
    (an integer beyond 64 bits).
    """
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
    chosen_rows = []
    for slot, chosen in net.chosen.items():
        # The value once, not twice, when it is the accepted entry's.
        value = SAME_AS_ACCEPTED if chosen.accepted else encoder.encode(chosen.value)
        chosen_rows.append((slot, value, row_crc(slot, 0, 0, value)))
    return Rows(promised, last_round, promise_row, last_round_row, accepted_rows, chosen_rows)


def write(conn: sqlite3.Connection, rows: Rows) -> float:
    """Write `rows` in one transaction; the seconds its COMMIT took. Raises `sqlite3.Error`
    with the transaction still open (the caller rolls it back)."""
    conn.execute("BEGIN")
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
