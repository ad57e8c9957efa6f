"""What can go wrong with a log store, and how an sqlite3 error maps onto it.

This module owns the `StoreError` family (one line naming the file; corrupt,
of another identity, locked by another process) and `sql_error`, which turns
an `sqlite3.Error` into the one of them it means for the store.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


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


def _is_corruption(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR_SHORT_READ"))


def sql_error(path: Path, exc: sqlite3.Error, doing: str) -> StoreError:
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
