"""A SQLite log store's schema and metadata: its tables, identity, member list, upgrades.

This module owns the tables (`SCHEMA_VERSION`, `READABLE_VERSIONS`), the
`APPLICATION_ID` in the SQLite header, the connection settings, creating a
store so that a file at its path is always complete, the checks on open
(header, `PRAGMA quick_check`, identity, upgrading an older schema), and the
member list: reading, recording, and the rule that other member ids are
refused (`compare_members`, shared with the in-memory store).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from pnyx.protocol.multipaxos.records import Standing
from pnyx.storage.errors import CorruptStoreError, StoreError, StoreIdentityError, sql_error
from pnyx.storage.rows import crc_ok, node_from_sql, node_to_sql, row_crc

SCHEMA_VERSION = 3
# Older versions are upgraded on open: version 1 never holds SAME_AS_ACCEPTED, and
# versions 1 and 2 lack the `compacted` and `standing` tables (see `_upgrade`).
READABLE_VERSIONS = (1, 2, 3)
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

# Added in version 3; `_upgrade` makes them in an older store.
_V3_SCHEMA = """
CREATE TABLE IF NOT EXISTS compacted (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    upto INTEGER NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS standing (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    value INTEGER NOT NULL,
    crc INTEGER NOT NULL
);
"""


def _statements(script: str) -> list[str]:
    # Not executescript(): it would commit the open transaction first.
    return [s for s in script.split(";") if s.strip()]


# Made by `check_members` when missing: stores created before it have no member list,
# and an older pnyx ignores the table, so the schema version stays the same.
_MEMBERS_TABLE = """
CREATE TABLE IF NOT EXISTS members (
    node_id INTEGER PRIMARY KEY,
    address BLOB NOT NULL,
    crc INTEGER NOT NULL
)
"""


def pragmas(conn: sqlite3.Connection, fsync: bool) -> None:
    # The lock is taken at the first read and held until close: a second
    # node process started on the same data directory is refused instead
    # of interleaving its promises with ours. (It also keeps the WAL index
    # in process memory: no -shm file.)
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    # Detect a damaged page when it is read, not only in quick_check.
    conn.execute("PRAGMA cell_size_check = ON")
    # Builds of SQLite with SECURE_DELETE (Debian's, Python's own) zero every byte a
    # delete frees, which made compacting a snapshot's worth of full slots (~15 MB)
    # write 15 MB more: 43 ms against 5 ms (bench/results/2026-12-04-compaction). FAST
    # still clears freed cells on the b-tree pages a commit writes anyway, and leaves
    # the content of whole freed pages until they are reused. The values compacted are
    # in the snapshot files, so the log keeping stale copies adds no exposure.
    conn.execute("PRAGMA secure_delete = FAST")
    # FULL in WAL mode: every commit fsyncs the WAL before returning.
    conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'OFF'}")
    # On macOS plain fsync does not flush the drive's cache; F_FULLFSYNC
    # does. No effect elsewhere.
    conn.execute(f"PRAGMA fullfsync = {'ON' if fsync else 'OFF'}")


def create(path: Path, *, node_id: int, cluster_id: str, fsync: bool) -> None:
    # Build the database beside its final name and rename it into place, so
    # a file at `path` is always a complete store with its identity: a crash
    # during creation leaves nothing that could later pass for an empty log.
    tmp = path.with_name(path.name + ".init")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        pragmas(conn, fsync)
        conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the header
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("BEGIN")
        for statement in _statements(_SCHEMA + _V3_SCHEMA):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO identity VALUES (1, ?, ?, ?)",
            (SCHEMA_VERSION, node_to_sql(node_id), cluster_id),
        )
        conn.execute("INSERT INTO promise VALUES (1, 0, 0, ?)", (row_crc(0, 0, 0),))
        conn.execute("INSERT INTO last_round VALUES (1, 0, ?)", (row_crc(0, 0, 0),))
        _insert_v3_rows(conn, Standing.NEW)  # a new store has voted for nothing yet
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


def connect(path: Path, *, fsync: bool) -> sqlite3.Connection:
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
        pragmas(conn, fsync)
    except sqlite3.Error as exc:
        conn.close()
        raise sql_error(path, exc, "cannot open the log store") from None
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


def check(conn: sqlite3.Connection, path: Path, *, node_id: int, cluster_id: str) -> None:
    """Header, integrity, then identity (upgrading an older schema): that `conn` is
    the store of node `node_id` of cluster `cluster_id`, or the `StoreError` why not."""
    try:
        # The first read: takes the lock, recovers the WAL after a crash.
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    except sqlite3.Error as exc:
        raise sql_error(path, exc, "cannot read the database header") from None
    if app_id != APPLICATION_ID:
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                # SQLite reads an empty file as an empty database; ours never is.
                raise CorruptStoreError(path, "empty file (0 bytes), not a log store")
        raise CorruptStoreError(
            path, f"not a pnyx log store (SQLite application_id {app_id:#x}, "
            f"expected {APPLICATION_ID:#x})"
        )
    try:
        problems = [row[0].decode(errors="replace")
                    for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.Error as exc:
        raise sql_error(path, exc, "integrity check failed") from None
    if problems != ["ok"]:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise CorruptStoreError(path, f"damaged database: {problems[0]}{more}")
    try:
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        identity = conn.execute(
            "SELECT schema_version, node_id, cluster_id FROM identity WHERE only = 1"
        ).fetchone()
    except sqlite3.Error as exc:
        raise sql_error(path, exc, "cannot read the store identity") from None
    if mode != b"wal":
        raise StoreError(path, f"cannot use WAL mode (journal_mode is {mode!r})")
    if identity is None or not (
        type(identity[0]) is int and type(identity[1]) is int
        and type(identity[2]) is bytes
    ):
        raise CorruptStoreError(path, f"identity row missing or malformed: {identity!r}")
    version, stored_node, stored_cluster = identity
    try:
        stored_cluster = stored_cluster.decode()
    except UnicodeDecodeError:
        raise CorruptStoreError(path, f"cluster id is not UTF-8: {stored_cluster!r}"
                                ) from None
    stored_node = node_from_sql(stored_node)
    if version not in READABLE_VERSIONS:
        raise StoreIdentityError(
            path, f"log store schema version {version}; this pnyx reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    if (stored_node, stored_cluster) != (node_id, cluster_id):
        raise StoreIdentityError(
            path, f"this data belongs to node {stored_node} of cluster "
            f"{stored_cluster!r}, not to node {node_id} of cluster "
            f"{cluster_id!r}"
        )
    if version < SCHEMA_VERSION:
        _upgrade(conn, path)


def _insert_v3_rows(conn: sqlite3.Connection, standing: Standing) -> None:
    conn.execute("INSERT OR IGNORE INTO compacted VALUES (1, 0, ?)", (row_crc(0, 0, 0),))
    conn.execute("INSERT OR IGNORE INTO standing VALUES (1, ?, ?)",
                 (int(standing), row_crc(int(standing), 0, 0)))


def _upgrade(conn: sqlite3.Connection, path: Path) -> None:
    # Version 2 added a new kind of chosen row (SAME_AS_ACCEPTED): nothing to convert.
    # Version 3 added `compacted` (nothing compacted yet) and `standing`: a store
    # made before standings existed has voted, so it is a VOTER. One transaction:
    # a crash leaves the old version, upgraded again at the next open.
    try:
        conn.execute("BEGIN")
        for statement in _statements(_V3_SCHEMA):
            conn.execute(statement)
        _insert_v3_rows(conn, Standing.VOTER)
        conn.execute("UPDATE identity SET schema_version = ? WHERE only = 1",
                     (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise sql_error(path, exc, "cannot upgrade the store") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _members_text(members: Mapping[int, str]) -> str:
    return ",".join(f"{i}={members[i]}" for i in sorted(members))


def compare_members(path: Path | None, recorded: Mapping[int, str],
                    members: Mapping[int, str]) -> str | None:
    """The rule of `check_members`: `StoreIdentityError` if the ids differ, a line to
    warn with if only addresses do, None if nothing changed or nothing was recorded."""
    if not recorded or dict(recorded) == dict(members):
        return None
    if set(recorded) != set(members):
        raise StoreIdentityError(
            path, f"this data was created with members {_members_text(recorded)}, not "
            f"{_members_text(members)}; restart with the original list: --cluster is the "
            "cluster's first configuration, members added or removed since are in the log "
            "(`pnyx member`), and a restart cannot change them safely")
    moved = {i: members[i] for i in sorted(members) if members[i] != recorded[i]}
    was = {i: recorded[i] for i in moved}
    return (f"{path}: member addresses changed since the last start: was "
            f"{_members_text(was)}, now {_members_text(moved)} (recorded)")


def peek(path: Path) -> tuple[int, str, dict[int, str]]:
    """The node id, cluster id and recorded member list of the store at `path`, read
    without expecting an identity (as `pnyx serve --join` must, before it knows the
    cluster), and closed again. Raises `StoreError` if they cannot be read."""
    conn = connect(path, fsync=False)
    try:
        try:
            row = conn.execute(
                "SELECT node_id, cluster_id FROM identity WHERE only = 1").fetchone()
            listed = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                  "name = 'members'").fetchone()
        except sqlite3.Error as exc:
            raise sql_error(path, exc, "cannot read the store identity") from None
        if row is None or type(row[0]) is not int or type(row[1]) is not bytes:
            raise CorruptStoreError(path, f"identity row missing or malformed: {row!r}")
        members = read_members(conn, path) if listed else {}
        return node_from_sql(row[0]), row[1].decode(errors="replace"), members
    finally:
        conn.close()


def read_members(conn: sqlite3.Connection, path: Path) -> dict[int, str]:
    """The member list recorded with the store (empty if none yet), making its table."""
    try:
        conn.execute(_MEMBERS_TABLE)
        rows = conn.execute("SELECT node_id, address, crc FROM members").fetchall()
    except sqlite3.Error as exc:
        raise sql_error(path, exc, "cannot read the member list") from None
    recorded: dict[int, str] = {}
    for node, address, crc in rows:
        if not crc_ok(crc, node, 0, 0, address):
            raise CorruptStoreError(path, f"member row {node!r} damaged")
        recorded[node_from_sql(node)] = address.decode(errors="replace")
    return recorded


def write_members(conn: sqlite3.Connection, members: Mapping[int, str]) -> None:
    """Replace the recorded member list in one transaction; raises `sqlite3.Error`."""
    rows = []
    for node_id, address in members.items():
        node, value = node_to_sql(node_id), address.encode()
        rows.append((node, value, row_crc(node, 0, 0, value)))
    conn.execute("BEGIN")
    conn.execute("DELETE FROM members")
    conn.executemany("INSERT INTO members VALUES (?, ?, ?)", rows)
    conn.execute("COMMIT")
