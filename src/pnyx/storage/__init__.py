"""Durable storage: the records a process must not lose across a crash."""

from pnyx.storage.record import CorruptRecord, FileRecord, MemoryRecord, Record

__all__ = ["CorruptRecord", "FileRecord", "MemoryRecord", "Record"]
