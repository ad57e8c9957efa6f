"""Durable storage: the records a process must not lose across a crash."""

from pnyx.storage.log_store import (
    CorruptStoreError,
    LogStore,
    LogStoreStats,
    MemoryLogStore,
    SqliteLogStore,
    StoreError,
    StoreIdentityError,
    StoreLockedError,
)
from pnyx.storage.record import CorruptRecord, FileRecord, MemoryRecord, Record

__all__ = [
    "CorruptRecord",
    "CorruptStoreError",
    "FileRecord",
    "LogStore",
    "LogStoreStats",
    "MemoryLogStore",
    "MemoryRecord",
    "Record",
    "SqliteLogStore",
    "StoreError",
    "StoreIdentityError",
    "StoreLockedError",
]
