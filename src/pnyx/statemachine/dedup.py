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

`capture` takes the table as it is for a snapshot written later, possibly in
another thread, while requests keep being applied. Walking an `OrderedDict`
in LRU order costs 100-300 ns an entry (it hashes each key again): 10-20 ms
on the event loop for a table of 65536 clients. So each entry also carries
the stamp of its last use (the log index of the request, given by the
caller), a capture copies the entries in the dict's storage order (a C-level
copy of the values, hashing nothing), and iterating the capture, later and
elsewhere, puts them back in LRU order by stamp.

The table is pure bookkeeping: it knows nothing about what commands mean or
how results are encoded.
"""

from __future__ import annotations

import enum
import heapq
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Final, Literal

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


# An entry with the stamp of its last use.
_Stamped = tuple[int, DedupEntry]

# Iterating a capture sorts runs of this many entries (one short C call each,
# so the thread doing it never holds the interpreter for long) and merges them.
_RUN: Final = 1024


class DedupCapture:
    """The table as it was when `DedupTable.capture` was called; iterate it from any thread.

    Yields the entries least recently used first, as `entries()` did at the capture.
    """

    def __init__(self, stamped: list[_Stamped]) -> None:
        self._stamped = stamped  # in no particular order; never changed

    def __len__(self) -> int:
        return len(self._stamped)

    def __iter__(self) -> Iterator[DedupEntry]:
        stamped = self._stamped
        # Stamps are unique, so sorting never compares two entries.
        runs = [sorted(stamped[i:i + _RUN]) for i in range(0, len(stamped), _RUN)]
        for _, entry in heapq.merge(*runs):
            yield entry


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
        # Each entry is kept with the stamp of its last use (see `capture`).
        self._entries: OrderedDict[tuple[Kind, str], _Stamped] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def check(
        self, kind: Kind, ident: str, seq: int, digest: bytes, stamp: int
    ) -> tuple[Verdict, DedupEntry | None]:
        """Classify a request; a `DUPLICATE` counts as a use and refreshes its entry.

        `stamp` orders the uses of the table: larger than every stamp given to
        it before, by `check` or `record` (the machine gives the log index,
        which increases and is used once).
        """
        key = (kind, ident)
        stamped = self._entries.get(key)
        if stamped is None:
            return Verdict.NEW, None
        entry = stamped[1]
        if seq > entry.seq:
            return Verdict.NEW, entry
        if seq < entry.seq:
            return Verdict.STALE, entry
        if digest != entry.digest:
            return Verdict.REUSED, entry
        self._entries[key] = (stamp, entry)
        self._entries.move_to_end(key)
        return Verdict.DUPLICATE, entry

    def record(
        self, kind: Kind, ident: str, seq: int, digest: bytes, result: bytes, stamp: int
    ) -> None:
        """Remember the result of a NEW request, evicting the least recently used if full.

        `stamp`: as for `check`.
        """
        key = (kind, ident)
        self._entries[key] = (stamp, DedupEntry(kind, ident, seq, digest, result))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def entries(self) -> list[DedupEntry]:
        """Every entry, least recently used first (the order the snapshot keeps)."""
        return [entry for _, entry in self._entries.values()]

    def capture(self) -> DedupCapture:
        """The table as it is now, for a snapshot: iterate it later, from any thread.

        A C-level copy of the values (`dict.values` walks the storage, not the
        LRU links, and hashes nothing): ~20 µs for 4096 entries, ~1 ms for 65536.
        """
        return DedupCapture(list(dict.values(self._entries)))

    @classmethod
    def from_entries(cls, max_entries: int, entries: Iterable[DedupEntry]) -> DedupTable:
        """Rebuild a table from `entries()` order; raises ValueError on a duplicate or bad entry.

        If there are more entries than `max_entries`, the oldest are dropped,
        exactly as `record` would have dropped them. The entries get stamps
        below 1, so any log index stamps a later use.
        """
        table = cls(max_entries)
        entries = list(entries)
        for stamp, entry in enumerate(entries, start=1 - len(entries)):
            key = (entry.kind, entry.ident)
            if key in table._entries:
                raise ValueError(f"duplicate de-duplication entry for {entry.kind} {entry.ident!r}")
            if entry.seq < 0:
                raise ValueError(f"negative seq {entry.seq} for {entry.kind} {entry.ident!r}")
            table._entries[key] = (stamp, entry)
        while len(table._entries) > max_entries:
            table._entries.popitem(last=False)
        return table
