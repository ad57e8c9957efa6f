"""Durable storage: the records a process must not lose across a crash."""

from pnyx.storage.errors import (
    CorruptStoreError,
    StoreError,
    StoreIdentityError,
    StoreLockedError,
)
from pnyx.storage.log_store import LogStore, LogStoreStats, MemoryLogStore, SqliteLogStore
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
