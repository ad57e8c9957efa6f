"""The de-duplication table that makes client requests take effect exactly once.

A client that times out cannot tell whether its command was lost or was chosen
and applied; the only safe move is to send it again, so the log can hold the
same command twice. This table, kept *inside* the replicated state, remembers
per client the last sequence number it applied and the result it gave, so the
second copy is answered from the table instead of being applied again (the
Raft thesis, §6.3, calls these "client sessions").

Two ways to name a request:

- a **session**: `(client_id, seq)`, with seq increasing per client. Only the
  latest result per client is kept, so a client has one request in flight per
  client id (a client that pipelines uses several ids);
- an **idempotency key**: any unique string, for callers without a session;
  each key is its own entry.

The table is bounded: past `max_entries` it forgets the least-recently-used
entry. Which entry that is depends only on the sequence of applied commands, so
every replica forgets the same one. A retry whose entry was forgotten is applied
again, so size the table above the number of clients active at once. The table
is part of the machine's snapshot, in recency order, so a restored replica
forgets the same entries as one that never restarted.

The table is pure bookkeeping: it knows nothing about what commands mean or
how results are encoded.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable
from typing import Literal

import msgspec

Kind = Literal["client", "key"]


class DedupEntry(msgspec.Struct, frozen=True, array_like=True):
    """What is remembered for one client (or one idempotency key); also its snapshot record.

    `digest` fingerprints the command that was applied, so a *different*
    command sent under the same seq or key is refused, not answered with the
    result of the first one. For idempotency keys `seq` is always 0.
    """

    kind: Kind
    ident: str
    seq: int
    digest: bytes
    result: bytes


class Verdict(enum.Enum):
    NEW = "new"  # not seen: apply it, then `record` the result
    DUPLICATE = "duplicate"  # a retry of the remembered request: answer `entry.result`
    STALE = "stale"  # seq below the client's last: its result is gone
    REUSED = "reused"  # same seq or key as the remembered request, different command


class DedupTable:
    """A bounded, deterministic LRU map from client (or idempotency key) to its last result."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        # Oldest first. Recency is "last named by an applied request", a
        # function of the log alone (never of wall-clock time), so eviction is
        # the same on every replica.
        self._entries: OrderedDict[tuple[Kind, str], DedupEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def check(
        self, kind: Kind, ident: str, seq: int, digest: bytes
    ) -> tuple[Verdict, DedupEntry | None]:
        """Classify a request; a `DUPLICATE` counts as a use and refreshes its entry."""
        entry = self._entries.get((kind, ident))
        if entry is None or seq > entry.seq:
            return Verdict.NEW, entry
        if seq < entry.seq:
            return Verdict.STALE, entry
        if digest != entry.digest:
            return Verdict.REUSED, entry
        self._entries.move_to_end((kind, ident))
        return Verdict.DUPLICATE, entry

    def record(self, kind: Kind, ident: str, seq: int, digest: bytes, result: bytes) -> None:
        """Remember the result of a NEW request, evicting the least recently used if full."""
        key = (kind, ident)
        self._entries[key] = DedupEntry(kind, ident, seq, digest, result)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def entries(self) -> list[DedupEntry]:
        """Every entry, least recently used first (the order the snapshot keeps)."""
        return list(self._entries.values())

    @classmethod
    def from_entries(cls, max_entries: int, entries: Iterable[DedupEntry]) -> DedupTable:
        """Rebuild a table from `entries()` order; raises ValueError on a duplicate or bad entry.

        If there are more entries than `max_entries`, the oldest are dropped,
        exactly as `record` would have dropped them.
        """
        table = cls(max_entries)
        for entry in entries:
            key = (entry.kind, entry.ident)
            if key in table._entries:
                raise ValueError(f"duplicate de-duplication entry for {entry.kind} {entry.ident!r}")
            if entry.seq < 0:
                raise ValueError(f"negative seq {entry.seq} for {entry.kind} {entry.ident!r}")
            table._entries[key] = entry
        while len(table._entries) > max_entries:
            table._entries.popitem(last=False)
        return table
