"""Durable storage: the records a process must not lose across a crash, and snapshots."""

from pnyx.storage.errors import (
    CorruptStoreError,
    StoreError,
    StoreIdentityError,
    StoreLockedError,
)
from pnyx.storage.log_store import LogStore, LogStoreStats, MemoryLogStore, SqliteLogStore
from pnyx.storage.record import CorruptRecord, FileRecord, MemoryRecord, Record
from pnyx.storage.snapshots import (
    MemorySnapshotStore,
    SnapshotGone,
    SnapshotInfo,
    SnapshotMeta,
    Snapshots,
    SnapshotStore,
)

__all__ = [
    "CorruptRecord",
    "CorruptStoreError",
    "FileRecord",
    "LogStore",
    "LogStoreStats",
    "MemoryLogStore",
    "MemoryRecord",
    "MemorySnapshotStore",
    "Record",
    "SnapshotGone",
    "SnapshotInfo",
    "SnapshotMeta",
    "SnapshotStore",
    "Snapshots",
    "SqliteLogStore",
    "StoreError",
    "StoreIdentityError",
    "StoreLockedError",
]
