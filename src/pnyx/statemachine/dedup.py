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

The digest of a request's command is kept lazily: the caller may hand the
table a *token* instead (anything from which `digest_of`, given at
construction, computes the digest; the KV machine gives the decoded command),
and the digest is computed only when it is needed: to compare a retry (same
seq or key) with the remembered request, or to list the entries for a
snapshot. Most requests are never retried, so most digests are never computed.
A token that is `bytes` is a digest already (as after `from_entries`).

The table is pure bookkeeping: it knows nothing about what commands mean or
how results are encoded.
"""

from __future__ import annotations

import enum
import heapq
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
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


# What the table keeps for an entry: (stamp of its last use, seq, token of its
# digest, result, kind, ident). A tuple, not a `DedupEntry`: cheaper to make on
# every applied request, and its token need not be a digest yet. The stamp
# comes first so that a list of records sorts by stamp (stamps are unique).
# `KVMachine.apply`'s fast path reads and writes records and `_entries` itself:
# this layout and `slot` are the contract between the two.
Record = tuple[int, int, object, bytes, Kind, str]
STAMP: Final = 0
SEQ: Final = 1
TOKEN: Final = 2
RESULT: Final = 3


def slot(kind: Kind, ident: str) -> Hashable:
    """The key of `_entries` for a client or an idempotency key.

    A client's id is its own key (no tuple to build and hash on the hot path);
    an idempotency key is paired with its kind, and a str never equals a tuple,
    so the two kinds never collide.
    """
    return ident if kind == "client" else (kind, ident)


def _no_digest(token: object) -> bytes:
    raise TypeError(f"a token that is not a digest ({type(token).__name__}) needs digest_of")


# Iterating a capture sorts runs of this many entries (one short C call each,
# so the thread doing it never holds the interpreter for long) and merges them.
_RUN: Final = 1024


class DedupCapture:
    """The table as it was when `DedupTable.capture` was called; iterate it from any thread.

    Yields the entries least recently used first, as `entries()` did at the capture.
    Digests not yet computed are computed here, in the iterating thread; a token
    never changes (the KV machine's is a frozen struct), so the digest is the one
    the entry had at the capture.
    """

    def __init__(self, records: list[Record], digest_of: Callable[[object], bytes]) -> None:
        self._records = records  # in no particular order; never changed
        self._digest_of = digest_of

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[DedupEntry]:
        records = self._records
        digest_of = self._digest_of
        # Stamps are unique, so sorting never compares past the stamp.
        runs = [sorted(records[i:i + _RUN]) for i in range(0, len(records), _RUN)]
        for record in heapq.merge(*runs):
            yield _entry(record, digest_of)


def _entry(record: Record, digest_of: Callable[[object], bytes]) -> DedupEntry:
    _, seq, token, result, kind, ident = record
    return DedupEntry(kind, ident, seq, digest_of(token), result)


class Verdict(enum.Enum):
    NEW = "new"  # not seen: apply it, then `record` the result
    DUPLICATE = "duplicate"  # a retry of the remembered request: answer `entry.result`
    STALE = "stale"  # seq below the client's last: its result is gone
    REUSED = "reused"  # same seq or key as the remembered request, different command


class DedupTable:
    """A bounded, deterministic LRU map from client (or idempotency key) to its last result.

    `digest_of` turns a token given to `check` or `record` into its digest
    (see the module docstring); without it, tokens must be digests (`bytes`).
    """

    def __init__(
        self, max_entries: int, digest_of: Callable[[object], bytes] = _no_digest
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self.digest_of = digest_of
        # Oldest first. Recency is "last named by an applied request", a
        # function of the log alone (never of wall-clock time), so eviction is
        # the same on every replica.
        # Each record carries the stamp of its last use (see `capture`).
        self._entries: OrderedDict[Hashable, Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _digest(self, token: object) -> bytes:
        if isinstance(token, bytes):
            return token
        return self.digest_of(token)

    def check(
        self, kind: Kind, ident: str, seq: int, digest: object, stamp: int
    ) -> tuple[Verdict, DedupEntry | None]:
        """Classify a request; a `DUPLICATE` counts as a use and refreshes its entry.

        With `DUPLICATE`, `STALE` and `REUSED` comes the entry remembered; with
        `NEW`, None (an older entry of the client is about to be replaced).
        `digest`: the digest of the request's command, or a token of it.
        `stamp` orders the uses of the table: larger than every stamp given to
        it before, by `check` or `record` (the machine gives the log index,
        which increases and is used once).
        """
        key = slot(kind, ident)
        record = self._entries.get(key)
        if record is None:
            return Verdict.NEW, None
        entry_seq = record[SEQ]
        if seq > entry_seq:
            return Verdict.NEW, None
        if seq < entry_seq:
            return Verdict.STALE, _entry(record, self._digest)
        # Same seq (or key): only now is a digest needed, the new one and the kept one.
        kept = self._digest(record[TOKEN])
        if self._digest(digest) != kept:
            return Verdict.REUSED, DedupEntry(kind, ident, seq, kept, record[RESULT])
        self._entries[key] = (stamp, *record[1:])  # type: ignore[assignment]
        self._entries.move_to_end(key)
        return Verdict.DUPLICATE, DedupEntry(kind, ident, seq, kept, record[RESULT])

    def record(
        self, kind: Kind, ident: str, seq: int, digest: object, result: bytes, stamp: int
    ) -> None:
        """Remember the result of a NEW request, evicting the least recently used if full.

        `digest`, `stamp`: as for `check`.
        """
        key = slot(kind, ident)
        entries = self._entries
        entries[key] = (stamp, seq, digest, result, kind, ident)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def entries(self) -> list[DedupEntry]:
        """Every entry, least recently used first (the order the snapshot keeps)."""
        digest = self._digest
        return [_entry(record, digest) for record in self._entries.values()]

    def capture(self) -> DedupCapture:
        """The table as it is now, for a snapshot: iterate it later, from any thread.

        A C-level copy of the values (`dict.values` walks the storage, not the
        LRU links, and hashes nothing): ~20 µs for 4096 entries, ~1 ms for 65536.
        """
        return DedupCapture(list(dict.values(self._entries)), self._digest)

    @classmethod
    def from_entries(
        cls,
        max_entries: int,
        entries: Iterable[DedupEntry],
        digest_of: Callable[[object], bytes] = _no_digest,
    ) -> DedupTable:
        """Rebuild a table from `entries()` order; raises ValueError on a duplicate or bad entry.

        If there are more entries than `max_entries`, the oldest are dropped,
        exactly as `record` would have dropped them. The entries get stamps
        below 1, so any log index stamps a later use.
        """
        table = cls(max_entries, digest_of)
        entries = list(entries)
        for stamp, entry in enumerate(entries, start=1 - len(entries)):
            key = slot(entry.kind, entry.ident)
            if key in table._entries:
                raise ValueError(f"duplicate de-duplication entry for {entry.kind} {entry.ident!r}")
            if entry.seq < 0:
                raise ValueError(f"negative seq {entry.seq} for {entry.kind} {entry.ident!r}")
            table._entries[key] = (
                stamp, entry.seq, entry.digest, entry.result, entry.kind, entry.ident)
        while len(table._entries) > max_entries:
            table._entries.popitem(last=False)
        return table
