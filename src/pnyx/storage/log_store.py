"""Durable storage for a Multi-Paxos replica: its promise, its last round, its log.

This module owns the `LogStore` interface and its two stores: where the
records a `Replica` asks to make durable (`PromiseRecord`, `RoundRecord`,
`AcceptRecord`, `ChosenRecord`, `CompactRecord`, `StandingRecord`) go, and
the way back to the `ReplicaDurable` they add up to. Their meaning is
`ReplicaDurable.apply`; both stores here implement exactly that meaning.
The SQLite store's parts are modules of their own: `schema` (tables,
identity, member list, upgrades), `group_commit` (`append`), `load` (reading
back, verified), `rows` (row encoding and CRCs), `errors` (the `StoreError`
family). Snapshot files are `snapshots`.

`SqliteLogStore` keeps everything in one SQLite database in WAL mode:

- `append(records)` is one transaction and returns once the commit is durable
  (`synchronous=FULL`: the WAL is fsynced at every commit). It is the unit of
  group commit: the node runtime hands over every record produced while the
  previous commit was in flight, so one fsync covers them all.
- `load()` rebuilds the `ReplicaDurable` after a restart.
- `CompactRecord(upto)` deletes the accepted and chosen rows of slots 1..upto
  in the same transaction (SQLite reuses the freed pages: the file stays the
  size of the live log). An `AcceptRecord` at or below the compacted slot is
  refused with `ValueError` before anything is written (see `group_commit`).
- A store created by `open` starts with standing NEW (`created` is True); an
  existing store keeps its own, and one from before standings is a VOTER.
- The database records the cluster identity (node id, cluster id, schema
  version) when it is created; a data directory of another node or cluster is
  refused with `StoreIdentityError`, never reused or reset.
- It records the member list too, at the first `check_members`: a start with
  other member ids is refused (`StoreIdentityError` naming both lists), because
  quorums of two different member sets need not intersect — changing members
  is a protocol of its own, not a restart. A start where only addresses
  changed is told so, and the new addresses are recorded.
- Damage is refused with `CorruptStoreError`, never read as an empty (and so
  promise-breaking) state: `PRAGMA quick_check` on open catches a damaged
  b-tree, and because SQLite keeps no checksums of its own, every row carries a
  CRC32 of its contents, checked by `load()`.

`MemoryLogStore` is the in-memory twin for tests and the simulator.

Schema (version 3; versions 1 and 2 are upgraded on open); `slot INTEGER PRIMARY KEY` makes the
slot the rowid, so a table is one b-tree in slot order and `load()` is a
sequential scan:

    identity   (one row)  schema_version, node_id, cluster_id
    promise    (one row)  round, node_id, crc          -- the highest promise
    last_round (one row)  round, crc                   -- highest ballot round used
    accepted   slot PK, round, node_id, value, crc     -- value: MessagePack `Batch`
    chosen     slot PK, value, crc                    -- value: MessagePack `Batch`, or
                                                      --   b"": the accepted row's value
    compacted  (one row)  upto, crc                    -- slots 1..upto are forgotten
    standing   (one row)  value, crc                   -- a `Standing` (0 voter, 1 new,
                                                      --   2 learner)
    members    node_id PK, address, crc               -- address: b"host:port"; made by
                                                      --   the first check_members (a
                                                      --   version 2 store may lack it)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import struct
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from pnyx.protocol.ballot import ZERO
from pnyx.protocol.multipaxos.records import LogRecord, ReplicaDurable, Standing
from pnyx.storage import group_commit, schema
from pnyx.storage.errors import StoreError, sql_error
from pnyx.storage.group_commit import Net
from pnyx.storage.load import load, read_singletons
from pnyx.storage.schema import compare_members


@dataclasses.dataclass(slots=True)
class LogStoreStats:
    """Counters for metrics: commits, records per commit, time in commit (the fsync)."""

    appends: int = 0  # transactions committed
    records: int = 0  # records in them
    commit_seconds: float = 0.0  # cumulative wall time in COMMIT
    last_commit_seconds: float = 0.0


class LogStore(Protocol):
    node_id: int
    cluster_id: str
    created: bool  # this store was made empty when opened (no earlier life to recover)

    @property
    def stats(self) -> LogStoreStats: ...
    def append(self, records: Sequence[LogRecord]) -> None: ...
    def load(self) -> ReplicaDurable: ...
    def check_members(self, members: Mapping[int, str]) -> str | None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...


class MemoryLogStore:
    """The in-memory twin: the same interface, "durable" for the life of the object."""

    def __init__(self, *, node_id: int = 0, cluster_id: str = "",
                 standing: Standing = Standing.VOTER, created: bool = True) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        # A new object holds nothing; `created=False` lets a test stand it for a
        # reopened store. Its standing stays `ReplicaDurable`'s default (VOTER)
        # unless given: the simulator's and tests' replicas vote from the start.
        self.created = created
        self._state = ReplicaDurable(standing=Standing(standing))
        self._stats = LogStoreStats()
        self._closed = False
        self._members: dict[int, str] = {}

    @classmethod
    def open(cls, *, node_id: int = 0, cluster_id: str = "",
             standing: Standing = Standing.VOTER) -> MemoryLogStore:
        return cls(node_id=node_id, cluster_id=cluster_id, standing=standing)

    @property
    def stats(self) -> LogStoreStats:
        return dataclasses.replace(self._stats)

    def append(self, records: Sequence[LogRecord]) -> None:
        if self._closed:
            raise StoreError(None, "memory log store is closed")
        if not records:
            return
        # Refuse a non-record, or an accept in a compacted slot, before applying any
        # (all or nothing), as the SQLite store does.
        net = Net.of(records)
        if net.lowest_accept is not None and net.lowest_accept <= self._state.compacted:
            raise ValueError(f"accept for slot {net.lowest_accept}, at or below the "
                             f"compacted slot {self._state.compacted}")
        for record in records:
            self._state.apply(record)
        self._stats.appends += 1
        self._stats.records += len(records)

    def load(self) -> ReplicaDurable:
        if self._closed:
            raise StoreError(None, "memory log store is closed")
        return self._state.copy()

    def check_members(self, members: Mapping[int, str]) -> str | None:
        """As `SqliteLogStore.check_members`."""
        warning = compare_members(None, self._members, members)
        self._members = dict(members)
        return warning

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SqliteLogStore:
    """A replica's durable state in one SQLite database. Open with `SqliteLogStore.open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, node_id: int,
                 cluster_id: str, fsync: bool, created: bool = False) -> None:
        self.path = path
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.fsync = fsync
        self.created = created  # `open` made the file (it did not exist)
        self._conn: sqlite3.Connection | None = conn
        # append() runs in a worker thread (asyncio.to_thread); the lock keeps a
        # close() or load() from another thread out of an open transaction.
        self._lock = threading.Lock()
        self._stats = LogStoreStats()
        self._failed: str | None = None
        # Mirrors of the single-row values, so an append can write their new
        # value (and its CRC) without reading them first. Safe because the
        # connection holds an exclusive lock: nobody else writes.
        self._promised = ZERO
        self._last_round = 0
        self._compacted = 0
        self._standing = Standing.VOTER

    # -------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, node_id: int, cluster_id: str,
             fsync: bool = True) -> SqliteLogStore:
        """Open the store at `path`, creating it (and its directory) on first use.

        `fsync=False` (`synchronous=OFF`) is unsafe, for benchmarks only: an
        append returns before its records are on disk, so a power loss can
        break a promise the node already reported.

        A store made here starts with standing NEW and `created` True.

        Raises `StoreIdentityError` if the store belongs to another node id,
        cluster or schema version, `CorruptStoreError` if it cannot be read as
        a pnyx log store, `StoreLockedError` if another process has it open.
        """
        path = Path(path)
        created = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                schema.create(path, node_id=node_id, cluster_id=cluster_id, fsync=fsync)
                created = True
        except sqlite3.Error as exc:
            raise StoreError(path, f"cannot create the log store: {exc}") from None
        except OSError as exc:
            raise StoreError(path, f"cannot create the log store: {exc.strerror or exc}") from None
        conn = schema.connect(path, fsync=fsync)
        store = cls(path, conn, node_id=node_id, cluster_id=cluster_id, fsync=fsync,
                    created=created)
        try:
            schema.check(conn, path, node_id=node_id, cluster_id=cluster_id)
            single = read_singletons(conn, path)
            store._promised, store._last_round = single.promised, single.last_round
            store._compacted, store._standing = single.compacted, single.standing
        except BaseException:
            conn.close()
            raise
        return store

    @staticmethod
    def peek(path: str | os.PathLike[str]) -> tuple[int, str, dict[int, str]]:
        """The node id, cluster id and member list recorded in the store at `path`
        (closed again at once): what a node started with `--join` reads to find out
        which cluster its data belongs to. Raises `StoreError` if they cannot be read."""
        return schema.peek(Path(path))

    # -------------------------------------------------------------- interface

    @property
    def stats(self) -> LogStoreStats:
        return dataclasses.replace(self._stats)

    def append(self, records: Sequence[LogRecord]) -> None:
        """Write `records` in one transaction; return when it is durable.

        Raises `StoreError` if the write fails; the store then refuses every
        later append, since after a failed fsync nobody knows what is on disk.
        Raises `ValueError`, writing nothing, for a record that cannot be stored
        (an integer beyond 64 bits) or an accept at or below the compacted slot.
        """
        if not records:
            return
        net = Net.of(records)
        with self._lock:
            conn = self._live()
            if self._failed is not None:
                raise StoreError(self.path, f"an earlier append failed: {self._failed}")
            try:
                rows = group_commit.encode(net, self._promised, self._last_round,
                                           self._compacted, self._standing)
            except (struct.error, OverflowError, ValueError) as exc:
                raise ValueError(f"{self.path}: record not storable: {exc}") from None
            try:
                elapsed = group_commit.write(conn, rows)
            except sqlite3.Error as exc:
                self._rollback(conn)
                self._failed = str(exc)
                raise StoreError(self.path, f"append failed: {exc}") from exc
            except BaseException:
                self._rollback(conn)
                raise
            self._promised, self._last_round = rows.promised, rows.last_round
            self._compacted, self._standing = rows.compacted, rows.standing
            self._stats.appends += 1
            self._stats.records += len(records)
            self._stats.commit_seconds += elapsed
            self._stats.last_commit_seconds = elapsed

    def check_members(self, members: Mapping[int, str]) -> str | None:
        """Hold `members` (node id -> "host:port") against the member list recorded
        with this store, recording it on first use. Raises `StoreIdentityError`, naming
        both lists, if the member ids differ; if only addresses differ, records the new
        ones and returns a line saying so (for the node to log); otherwise None."""
        with self._lock:
            conn = self._live()
            recorded = schema.read_members(conn, self.path)
            warning = compare_members(self.path, recorded, members)
            if recorded == dict(members):
                return None
            try:
                schema.write_members(conn, members)
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise sql_error(self.path, exc, "cannot record the member list") from None
            return warning

    def load(self) -> ReplicaDurable:
        """The state the durable records add up to; `CorruptStoreError` if any row is damaged."""
        with self._lock:
            return load(self._live(), self.path)

    def close(self) -> None:
        """Close the database (checkpointing the WAL into it). Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            # Closing checkpoints the WAL into the database; on a full or failed disk
            # that may fail, and loses nothing: the WAL keeps every commit, and the
            # next open recovers it. A node stopping for a fault must still stop.
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SqliteLogStore({str(self.path)!r}, node_id={self.node_id}, "
                f"cluster_id={self.cluster_id!r}, fsync={self.fsync})")

    # -------------------------------------------------------------- helpers

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(self.path, "log store is closed")
        return self._conn

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
