"""Durable storage for a Multi-Paxos replica: its promise, its last round, its log.

This module owns the on-disk form of the records a `Replica` asks to make
durable (`PromiseRecord`, `RoundRecord`, `AcceptRecord`, `ChosenRecord`) and
the way back from disk to the `ReplicaDurable` they add up to. Their meaning
is `ReplicaDurable.apply`; both stores here implement exactly that meaning.

`SqliteLogStore` keeps everything in one SQLite database in WAL mode:

- `append(records)` is one transaction and returns once the commit is durable
  (`synchronous=FULL`: the WAL is fsynced at every commit). It is the unit of
  group commit: the node runtime hands over every record produced while the
  previous commit was in flight, so one fsync covers them all.
- `load()` rebuilds the `ReplicaDurable` after a restart.
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

Schema (version 2; version 1 is read too); `slot INTEGER PRIMARY KEY` makes the
slot the rowid, so a table is one b-tree in slot order and `load()` is a
sequential scan:

    identity   (one row)  schema_version, node_id, cluster_id
    promise    (one row)  round, node_id, crc          -- the highest promise
    last_round (one row)  round, crc                   -- highest ballot round used
    accepted   slot PK, round, node_id, value, crc     -- value: MessagePack `Batch`
    chosen     slot PK, value, crc                    -- value: MessagePack `Batch`, or
                                                      --   b"": the accepted row's value
    members    node_id PK, address, crc               -- address: b"host:port"; made by
                                                      --   the first check_members (a
                                                      --   version 2 store may lack it)
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import msgspec

from pnyx.protocol.ballot import MAX_ROUND, ZERO, Ballot
from pnyx.protocol.multipaxos.messages import Batch, Entry
from pnyx.protocol.multipaxos.records import (
    AcceptRecord,
    ChosenRecord,
    LogRecord,
    PromiseRecord,
    ReplicaDurable,
    RoundRecord,
)

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 never holds SAME_AS_ACCEPTED: it is upgraded on open
# A chosen row's value when it is the value of the accepted row of the same slot. An
# encoded `Batch` is never empty, so the two cannot be confused.
SAME_AS_ACCEPTED = b""
# Written into the SQLite header, so a pnyx log store is recognisable as one
# (and any other SQLite database as not one) before a table is read.
APPLICATION_ID = 0x504E5958  # "PNYX"

_SCHEMA = """
CREATE TABLE identity (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    schema_version INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    cluster_id TEXT NOT NULL
);
CREATE TABLE promise (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    round INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE last_round (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    round INTEGER NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE accepted (
    slot INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    value BLOB NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE chosen (
    slot INTEGER PRIMARY KEY,
    value BLOB NOT NULL,
    crc INTEGER NOT NULL
);
"""

# Made by `check_members` when missing: stores created before it have no member list,
# and an older pnyx ignores the table, so the schema version stays the same.
_MEMBERS_TABLE = """
CREATE TABLE IF NOT EXISTS members (
    node_id INTEGER PRIMARY KEY,
    address BLOB NOT NULL,
    crc INTEGER NOT NULL
)
"""

_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(Batch)
_INTS = struct.Struct(">qqq")

# SQLite integers are signed 64-bit, but a node id may be any unsigned 64-bit
# integer MessagePack can carry (a peer's ballot is promised and persisted as
# received). Stored as the same 64 bits read as signed; rounds are bounded by
# MAX_ROUND = 2**62 and slots are positive, so they fit as they are.
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1


def _node_to_sql(node_id: int) -> int:
    if not 0 <= node_id < _U64:
        # Caught by append(): the record is refused rather than read back altered.
        raise OverflowError(f"node id {node_id} is not an unsigned 64-bit integer")
    return node_id - _U64 if node_id > _I64_MAX else node_id


def _node_from_sql(value: int) -> int:
    return value + _U64 if value < 0 else value


def _row_crc(a: int, b: int, c: int, value: bytes = b"") -> int:
    """CRC32 of a row's integers (as stored) and blob: what `load()` checks it against."""
    return zlib.crc32(value, zlib.crc32(_INTS.pack(a, b, c)))


# ------------------------------------------------------------------ errors


class StoreError(Exception):
    """A log store that cannot be used; the message is one line naming the file."""

    def __init__(self, path: Path | None, reason: str) -> None:
        # One line, whatever the reason quotes (SQLite and msgspec messages may not be).
        reason = " ".join(reason.split())
        super().__init__(f"{path}: {reason}" if path is not None else reason)
        self.path = path


class CorruptStoreError(StoreError):
    """The file is not a readable pnyx log store: not SQLite, truncated, damaged, undecodable."""


class StoreIdentityError(StoreError):
    """A sound pnyx log store, but of another node, cluster or schema version."""


class StoreLockedError(StoreError):
    """Another process has the store open (two nodes must never share one log)."""


def _members_text(members: Mapping[int, str]) -> str:
    return ",".join(f"{i}={members[i]}" for i in sorted(members))


def _compare_members(path: Path | None, recorded: Mapping[int, str],
                     members: Mapping[int, str]) -> str | None:
    """The rule of `check_members`: `StoreIdentityError` if the ids differ, a line to
    warn with if only addresses do, None if nothing changed or nothing was recorded."""
    if not recorded or dict(recorded) == dict(members):
        return None
    if set(recorded) != set(members):
        raise StoreIdentityError(
            path, f"this data was created with members {_members_text(recorded)}, not "
            f"{_members_text(members)}; restart with the original list (changing the "
            "members of a cluster is not supported yet, and a restart cannot do it safely)")
    moved = {i: members[i] for i in sorted(members) if members[i] != recorded[i]}
    was = {i: recorded[i] for i in moved}
    return (f"{path}: member addresses changed since the last start: was "
            f"{_members_text(was)}, now {_members_text(moved)} (recorded)")


# ------------------------------------------------------------------ interface


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

    @property
    def stats(self) -> LogStoreStats: ...
    def append(self, records: Sequence[LogRecord]) -> None: ...
    def load(self) -> ReplicaDurable: ...
    def check_members(self, members: Mapping[int, str]) -> str | None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...


@dataclasses.dataclass(slots=True)
class _Net:
    """What one group commit changes: `ReplicaDurable.apply` folded over its records."""

    promised: Ballot | None = None
    last_round: int | None = None
    accepted: dict[int, Entry] = dataclasses.field(default_factory=dict)
    chosen: dict[int, ChosenRecord] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, records: Sequence[LogRecord]) -> _Net:
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


# ------------------------------------------------------------------ memory


class MemoryLogStore:
    """The in-memory twin: the same interface, "durable" for the life of the object."""

    def __init__(self, *, node_id: int = 0, cluster_id: str = "") -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._state = ReplicaDurable()
        self._stats = LogStoreStats()
        self._closed = False
        self._members: dict[int, str] = {}

    @classmethod
    def open(cls, *, node_id: int = 0, cluster_id: str = "") -> MemoryLogStore:
        return cls(node_id=node_id, cluster_id=cluster_id)

    @property
    def stats(self) -> LogStoreStats:
        return dataclasses.replace(self._stats)

    def append(self, records: Sequence[LogRecord]) -> None:
        if self._closed:
            raise StoreError(None, "memory log store is closed")
        if not records:
            return
        _Net.of(records)  # refuse a non-record before applying any (all or nothing)
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
        warning = _compare_members(None, self._members, members)
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


# ------------------------------------------------------------------ sqlite


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


def _is_corruption(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR_SHORT_READ"))


def _sql_error(path: Path, exc: sqlite3.Error, doing: str) -> StoreError:
    """The one-line `StoreError` for an sqlite3 error, by what it means for the store."""
    name = getattr(exc, "sqlite_errorname", "")
    if _is_corruption(exc):
        return CorruptStoreError(path, f"{doing}: {exc}")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreLockedError(path, f"in use by another process ({exc})")
    if isinstance(exc, sqlite3.OperationalError) and "no such" in str(exc):
        # A missing table or column in a file that claims to be a pnyx store.
        return CorruptStoreError(path, f"{doing}: {exc}")
    return StoreError(path, f"{doing}: {exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SqliteLogStore:
    """A replica's durable state in one SQLite database. Open with `SqliteLogStore.open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, node_id: int,
                 cluster_id: str, fsync: bool) -> None:
        self.path = path
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.fsync = fsync
        self._conn: sqlite3.Connection | None = conn
        # append() runs in a worker thread (asyncio.to_thread); the lock keeps a
        # close() or load() from another thread out of an open transaction.
        self._lock = threading.Lock()
        self._stats = LogStoreStats()
        self._failed: str | None = None
        # Mirrors of the two single-row values, so an append can write their
        # new maximum (and its CRC) without reading them first. Safe because
        # the connection holds an exclusive lock: nobody else writes.
        self._promised = ZERO
        self._last_round = 0

    # -------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, node_id: int, cluster_id: str,
             fsync: bool = True) -> SqliteLogStore:
        """Open the store at `path`, creating it (and its directory) on first use.

        `fsync=False` (`synchronous=OFF`) is unsafe, for benchmarks only: an
        append returns before its records are on disk, so a power loss can
        break a promise the node already reported.

        Raises `StoreIdentityError` if the store belongs to another node id,
        cluster or schema version, `CorruptStoreError` if it cannot be read as
        a pnyx log store, `StoreLockedError` if another process has it open.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                cls._create(path, node_id=node_id, cluster_id=cluster_id, fsync=fsync)
        except sqlite3.Error as exc:
            raise StoreError(path, f"cannot create the log store: {exc}") from None
        except OSError as exc:
            raise StoreError(path, f"cannot create the log store: {exc.strerror or exc}") from None
        conn = cls._connect(path, fsync=fsync)
        store = cls(path, conn, node_id=node_id, cluster_id=cluster_id, fsync=fsync)
        try:
            store._check()
        except BaseException:
            conn.close()
            raise
        return store

    @staticmethod
    def _pragmas(conn: sqlite3.Connection, fsync: bool) -> None:
        # The lock is taken at the first read and held until close: a second
        # node process started on the same data directory is refused instead
        # of interleaving its promises with ours. (It also keeps the WAL index
        # in process memory: no -shm file.)
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        # Detect a damaged page when it is read, not only in quick_check.
        conn.execute("PRAGMA cell_size_check = ON")
        # FULL in WAL mode: every commit fsyncs the WAL before returning.
        conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'OFF'}")
        # On macOS plain fsync does not flush the drive's cache; F_FULLFSYNC
        # does. No effect elsewhere.
        conn.execute(f"PRAGMA fullfsync = {'ON' if fsync else 'OFF'}")

    @classmethod
    def _create(cls, path: Path, *, node_id: int, cluster_id: str, fsync: bool) -> None:
        # Build the database beside its final name and rename it into place, so
        # a file at `path` is always a complete store with its identity: a crash
        # during creation leaves nothing that could later pass for an empty log.
        tmp = path.with_name(path.name + ".init")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            cls._pragmas(conn, fsync)
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the header
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("BEGIN")
            # Not executescript(): it would commit the open transaction first.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO identity VALUES (1, ?, ?, ?)",
                (SCHEMA_VERSION, _node_to_sql(node_id), cluster_id),
            )
            conn.execute("INSERT INTO promise VALUES (1, 0, 0, ?)", (_row_crc(0, 0, 0),))
            conn.execute("INSERT INTO last_round VALUES (1, 0, ?)", (_row_crc(0, 0, 0),))
            conn.execute("COMMIT")
        finally:
            conn.close()  # checkpoints the WAL into the file (and fsyncs it, when FULL)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)

    @classmethod
    def _connect(cls, path: Path, *, fsync: bool) -> sqlite3.Connection:
        try:
            # timeout=0: a store locked by another process is refused at once.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=0)
        except sqlite3.Error as exc:
            raise StoreError(path, f"cannot open the log store: {exc}") from None
        # TEXT comes back as bytes: a damaged type byte can turn a value blob
        # into TEXT that is not UTF-8, which sqlite3 would fail to decode.
        conn.text_factory = bytes
        try:
            cls._pragmas(conn, fsync)
        except sqlite3.Error as exc:
            conn.close()
            raise _sql_error(path, exc, "cannot open the log store") from None
        except UnicodeDecodeError:
            # SQLite's error quotes the damaged schema, which sqlite3 decodes as UTF-8
            # (found by fuzz/fuzz_store.py).
            conn.close()
            raise CorruptStoreError(path, "cannot open the log store: damaged database "
                                    "schema") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _check(self) -> None:
        """Header, integrity, then identity; fill the mirrors of promise and last round."""
        conn = self._live()
        try:
            # The first read: takes the lock, recovers the WAL after a crash.
            (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        except sqlite3.Error as exc:
            raise _sql_error(self.path, exc, "cannot read the database header") from None
        if app_id != APPLICATION_ID:
            with contextlib.suppress(OSError):
                if self.path.stat().st_size == 0:
                    # SQLite reads an empty file as an empty database; ours never is.
                    raise CorruptStoreError(self.path, "empty file (0 bytes), not a log store")
            raise CorruptStoreError(
                self.path, f"not a pnyx log store (SQLite application_id {app_id:#x}, "
                f"expected {APPLICATION_ID:#x})"
            )
        try:
            problems = [row[0].decode(errors="replace")
                        for row in conn.execute("PRAGMA quick_check")]
        except sqlite3.Error as exc:
            raise _sql_error(self.path, exc, "integrity check failed") from None
        if problems != ["ok"]:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise CorruptStoreError(self.path, f"damaged database: {problems[0]}{more}")
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            identity = conn.execute(
                "SELECT schema_version, node_id, cluster_id FROM identity WHERE only = 1"
            ).fetchone()
        except sqlite3.Error as exc:
            raise _sql_error(self.path, exc, "cannot read the store identity") from None
        if mode != b"wal":
            raise StoreError(self.path, f"cannot use WAL mode (journal_mode is {mode!r})")
        if identity is None or not (
            type(identity[0]) is int and type(identity[1]) is int
            and type(identity[2]) is bytes
        ):
            raise CorruptStoreError(self.path, f"identity row missing or malformed: {identity!r}")
        version, stored_node, stored_cluster = identity
        try:
            stored_cluster = stored_cluster.decode()
        except UnicodeDecodeError:
            raise CorruptStoreError(self.path, f"cluster id is not UTF-8: {stored_cluster!r}"
                                    ) from None
        stored_node = _node_from_sql(stored_node)
        if version not in READABLE_VERSIONS:
            raise StoreIdentityError(
                self.path, f"log store schema version {version}; this pnyx reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        if (stored_node, stored_cluster) != (self.node_id, self.cluster_id):
            raise StoreIdentityError(
                self.path, f"this data belongs to node {stored_node} of cluster "
                f"{stored_cluster!r}, not to node {self.node_id} of cluster "
                f"{self.cluster_id!r}"
            )
        if version < SCHEMA_VERSION:
            try:  # the only difference is a new kind of chosen row; mark the file as one
                conn.execute("UPDATE identity SET schema_version = ? WHERE only = 1",
                             (SCHEMA_VERSION,))
            except sqlite3.Error as exc:
                raise _sql_error(self.path, exc, "cannot upgrade the store") from None
        self._promised, self._last_round = self._read_singletons()

    # -------------------------------------------------------------- interface

    @property
    def stats(self) -> LogStoreStats:
        return dataclasses.replace(self._stats)

    def append(self, records: Sequence[LogRecord]) -> None:
        """Write `records` in one transaction; return when it is durable.

        Raises `StoreError` if the write fails; the store then refuses every
        later append, since after a failed fsync nobody knows what is on disk.
        """
        if not records:
            return
        net = _Net.of(records)
        with self._lock:
            conn = self._live()
            if self._failed is not None:
                raise StoreError(self.path, f"an earlier append failed: {self._failed}")
            promised = self._promised
            if net.promised is not None and net.promised > promised:
                promised = net.promised
            last_round = self._last_round
            if net.last_round is not None and net.last_round > last_round:
                last_round = net.last_round
            # Encode before BEGIN: a record that cannot be stored (an integer
            # beyond 64 bits) fails the append without touching the database.
            try:
                promise_row = last_round_row = None
                if promised != self._promised:
                    node = _node_to_sql(promised.node_id)
                    promise_row = (promised.round, node, _row_crc(promised.round, node, 0))
                if last_round != self._last_round:
                    last_round_row = (last_round, _row_crc(last_round, 0, 0))
                accepted_rows = []
                for slot, entry in net.accepted.items():
                    node = _node_to_sql(entry.ballot.node_id)
                    value = _encoder.encode(entry.value)
                    crc = _row_crc(slot, entry.ballot.round, node, value)
                    accepted_rows.append((slot, entry.ballot.round, node, value, crc))
                chosen_rows = []
                for slot, chosen in net.chosen.items():
                    # The value once, not twice, when it is the accepted entry's.
                    value = SAME_AS_ACCEPTED if chosen.accepted else _encoder.encode(chosen.value)
                    chosen_rows.append((slot, value, _row_crc(slot, 0, 0, value)))
            except (struct.error, OverflowError) as exc:
                raise ValueError(f"{self.path}: record not storable: {exc}") from None
            try:
                conn.execute("BEGIN")
                if promise_row is not None:
                    conn.execute(
                        "UPDATE promise SET round = ?, node_id = ?, crc = ? WHERE only = 1",
                        promise_row,
                    )
                if last_round_row is not None:
                    conn.execute(
                        "UPDATE last_round SET round = ?, crc = ? WHERE only = 1",
                        last_round_row,
                    )
                if accepted_rows:
                    # An upsert updates the row in place (INSERT OR REPLACE
                    # would delete and reinsert it).
                    conn.executemany(
                        "INSERT INTO accepted VALUES (?, ?, ?, ?, ?) ON CONFLICT (slot) DO "
                        "UPDATE SET round = excluded.round, node_id = excluded.node_id, "
                        "value = excluded.value, crc = excluded.crc",
                        accepted_rows,
                    )
                if chosen_rows:
                    conn.executemany(
                        "INSERT INTO chosen VALUES (?, ?, ?) ON CONFLICT (slot) DO "
                        "UPDATE SET value = excluded.value, crc = excluded.crc",
                        chosen_rows,
                    )
                started = time.perf_counter()
                conn.execute("COMMIT")
                elapsed = time.perf_counter() - started
            except sqlite3.Error as exc:
                self._rollback(conn)
                self._failed = str(exc)
                raise StoreError(self.path, f"append failed: {exc}") from exc
            except BaseException:
                self._rollback(conn)
                raise
            self._promised, self._last_round = promised, last_round
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
            try:
                conn.execute(_MEMBERS_TABLE)
                rows = conn.execute("SELECT node_id, address, crc FROM members").fetchall()
            except sqlite3.Error as exc:
                raise _sql_error(self.path, exc, "cannot read the member list") from None
            recorded: dict[int, str] = {}
            for node, address, crc in rows:
                if not self._crc_ok(crc, node, 0, 0, address):
                    raise CorruptStoreError(self.path, f"member row {node!r} damaged")
                recorded[_node_from_sql(node)] = address.decode(errors="replace")
            warning = _compare_members(self.path, recorded, members)
            if recorded == dict(members):
                return None
            rows = []
            for node_id, address in members.items():
                node, value = _node_to_sql(node_id), address.encode()
                rows.append((node, value, _row_crc(node, 0, 0, value)))
            try:
                conn.execute("BEGIN")
                conn.execute("DELETE FROM members")
                conn.executemany("INSERT INTO members VALUES (?, ?, ?)", rows)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise _sql_error(self.path, exc, "cannot record the member list") from None
            return warning

    def load(self) -> ReplicaDurable:
        """The state the durable records add up to; `CorruptStoreError` if any row is damaged."""
        with self._lock, _gc_paused():
            conn = self._live()
            try:
                promised, last_round = self._read_singletons()
                accepted = self._load_accepted(conn)
                chosen = self._load_chosen(conn, accepted)
            except sqlite3.Error as exc:
                raise _sql_error(self.path, exc, "cannot read the log") from None
            return ReplicaDurable(promised, last_round, accepted, chosen)

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

    # -------------------------------------------------------------- reading

    def _read_singletons(self) -> tuple[Ballot, int]:
        conn = self._live()
        try:
            promise = conn.execute("SELECT round, node_id, crc FROM promise WHERE only = 1"
                                   ).fetchone()
            last = conn.execute("SELECT round, crc FROM last_round WHERE only = 1").fetchone()
        except sqlite3.Error as exc:
            raise _sql_error(self.path, exc, "cannot read the promise") from None
        if promise is None or not self._crc_ok(promise[2], promise[0], promise[1], 0):
            raise CorruptStoreError(self.path, f"promise row missing or damaged: {promise!r}")
        if last is None or not self._crc_ok(last[1], last[0], 0, 0):
            raise CorruptStoreError(self.path, f"last_round row missing or damaged: {last!r}")
        # Rows with a right CRC and a round no pnyx writes (found by fuzz/fuzz_store.py):
        # a replica could not send a ballot made from it.
        if not (0 <= promise[0] <= MAX_ROUND and 0 <= last[0] <= MAX_ROUND):
            raise CorruptStoreError(self.path, f"round out of range: promise {promise[0]}, "
                                    f"last_round {last[0]}")
        return Ballot(promise[0], _node_from_sql(promise[1])), last[0]

    @staticmethod
    def _crc_ok(crc: object, a: object, b: object, c: object, value: object = b"") -> bool:
        # A damaged row may hold any SQLite type in any column; anything but the
        # types written fails the check instead of raising from struct or zlib.
        if not (type(a) is int and type(b) is int and type(c) is int and type(value) is bytes):
            return False
        try:
            return _row_crc(a, b, c, value) == crc
        except struct.error:
            return False

    def _load_accepted(self, conn: sqlite3.Connection) -> dict[int, Entry]:
        accepted: dict[int, Entry] = {}
        ballots: dict[tuple[int, int], Ballot] = {}  # share one Ballot per ballot
        decode = _batch_decoder.decode
        row_crc = _row_crc
        for slot, rnd, node, value, crc in conn.execute(
            "SELECT slot, round, node_id, value, crc FROM accepted ORDER BY slot"
        ):
            try:
                ok = row_crc(slot, rnd, node, value) == crc
            except (TypeError, struct.error):
                ok = False
            if not ok:
                raise CorruptStoreError(self.path, f"accepted slot {slot}: checksum mismatch")
            if slot < 1 or not 0 <= rnd <= MAX_ROUND:
                raise CorruptStoreError(self.path, f"accepted slot {slot}: round {rnd} or "
                                        "slot out of range")
            ballot = ballots.get((rnd, node))
            if ballot is None:
                ballot = ballots[(rnd, node)] = Ballot(rnd, _node_from_sql(node))
            try:
                accepted[slot] = Entry(slot, ballot, decode(value))
            except (msgspec.MsgspecError, ValueError) as exc:
                raise CorruptStoreError(
                    self.path, f"accepted slot {slot}: value does not decode: {exc}"
                ) from None
        return accepted

    def _load_chosen(self, conn: sqlite3.Connection,
                     accepted: dict[int, Entry]) -> dict[int, Batch]:
        chosen: dict[int, Batch] = {}
        decode = _batch_decoder.decode
        row_crc = _row_crc
        for slot, value, crc in conn.execute("SELECT slot, value, crc FROM chosen ORDER BY slot"):
            try:
                ok = row_crc(slot, 0, 0, value) == crc
            except (TypeError, struct.error):
                ok = False
            if not ok:
                raise CorruptStoreError(self.path, f"chosen slot {slot}: checksum mismatch")
            if slot < 1:
                raise CorruptStoreError(self.path, f"chosen slot {slot}: out of range")
            if value == SAME_AS_ACCEPTED:
                entry = accepted.get(slot)
                if entry is None:
                    raise CorruptStoreError(
                        self.path, f"chosen slot {slot}: its value is the accepted entry's, "
                        "and there is no accepted entry for the slot")
                chosen[slot] = entry.value
                continue
            try:
                chosen[slot] = decode(value)
            except (msgspec.MsgspecError, ValueError) as exc:
                raise CorruptStoreError(
                    self.path, f"chosen slot {slot}: value does not decode: {exc}"
                ) from None
        return chosen

    # -------------------------------------------------------------- helpers

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(self.path, "log store is closed")
        return self._conn

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
