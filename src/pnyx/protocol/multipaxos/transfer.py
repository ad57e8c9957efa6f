"""Snapshot transfer: a replica that needs slots the others compacted fetches a snapshot.

    laggard                                   source (any member with the snapshot)
      CatchUp(first) ------------------------>  first <= its compacted floor:
      <------------------------ SnapshotOffer(slot, index, size)
      BeginStaging(slot) -> staged(slot, n)      (n: what a transfer cut short left)
      SnapshotRequest(slot, n) -------------->  holds `slot` for snapshot_hold seconds
      <------ SnapshotChunk(slot, n, total, data, crc)   (read from its file)
      crc ok: StageChunk -> staged(slot, n')
      SnapshotRequest(slot, n') ------------->  ...
      staged == total: InstallSnapshot(slot) -> installed(slot, index)
      CatchUp(slot + 1) --------------------->  the log from there on

The receiver pulls, one chunk at a time: so the transfer is paced by the receiver
(a slow one never piles bytes up at the sender), and it resumes from what is
staged after a dropped message, a lost connection or a crash of either side —
the staged bytes are on the receiver's disk, and the sender keeps no state but a
hold. The sender reads each chunk from its snapshot file and never holds the
state in memory twice. A snapshot being fetched is held: not deleted, and the log
above it not compacted (`held_slots`, honoured by `Log.compact`) until
`snapshot_hold` seconds after its last request — so a sender that takes newer
snapshots meanwhile cannot invalidate a transfer in flight (the etcd snapshot
loop: a transfer that, once done, finds the log it must continue from gone).
A chunk that fails its CRC is asked for again; a snapshot that fails its
whole-file checksum at install is refused and fetched from the start.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pnyx.protocol.multipaxos.config import ReplicaConfig
from pnyx.protocol.multipaxos.effects import (
    BeginStaging,
    InstallSnapshot,
    KeepSnapshots,
    Outbox,
    SendChunk,
    StageChunk,
)
from pnyx.protocol.multipaxos.messages import (
    SnapshotChunk,
    SnapshotOffer,
    SnapshotRequest,
)

if TYPE_CHECKING:
    from pnyx.protocol.multipaxos.log import Log

RETRIES = 5  # requests unanswered before a fetch is given up (catch-up asks again)


@dataclass(slots=True)
class Fetch:
    """A snapshot this replica is fetching."""

    source: int
    slot: int
    index: int
    total: int  # bytes of the whole file (from the offer; each chunk repeats it)
    offset: int = -1  # bytes staged so far; -1 until the store said (BeginStaging)
    staging: bool = False  # a StageChunk or BeginStaging is with the store
    asked_at: float = 0.0  # when the last request went out
    retries: int = 0


class Transfer:
    log: Log

    def __init__(self, node_id: int, config: ReplicaConfig, out: Outbox) -> None:
        self.node_id = node_id
        self.config = config
        self.out = out
        self.fetch: Fetch | None = None
        # Sender: snapshot slot -> until when it is held for a peer fetching it.
        self.holds: dict[int, float] = {}
        self.sent = 0  # chunks read for peers (metrics)
        self.installs = 0  # snapshots installed (metrics)

    # -------------------------------------------------------------- sender

    def held_slots(self, now: float) -> tuple[int, ...]:
        """Snapshots a peer fetched within `snapshot_hold`: keep them, and the log above."""
        expired = [slot for slot, until in self.holds.items() if until <= now]
        for slot in expired:
            del self.holds[slot]
        return tuple(sorted(self.holds))

    def offer(self, dst: int) -> None:
        """Point `dst` at our newest snapshot (it needs slots we compacted)."""
        log = self.log
        if log.snapshot_slot:
            self.out.send(dst, SnapshotOffer(self.node_id, log.snapshot_slot,
                                             log.snapshot_index, log.snapshot_size))

    def on_request(self, m: SnapshotRequest, now: float) -> None:
        log = self.log
        if m.slot not in log.snapshots:
            self.offer(m.src)  # long gone: here is the one we have
            return
        if m.slot not in self.holds:
            self.holds[m.slot] = 0.0
            self.out.snapshot(KeepSnapshots(log.kept_snapshots(now)))
        self.holds[m.slot] = now + self.config.snapshot_hold
        self.sent += 1
        self.out.snapshot(SendChunk(m.src, m.slot, m.offset, self.config.snapshot_chunk))

    def gone(self, dst: int) -> None:
        """The file of a snapshot we offered is gone (the driver could not read it)."""
        self.offer(dst)

    # ------------------------------------------------------------ receiver

    def on_offer(self, m: SnapshotOffer, now: float) -> None:
        log = self.log
        if m.slot <= log.commit:
            return  # we have those slots already (the offer is late)
        fetch = self.fetch
        if fetch is not None and fetch.slot >= m.slot:
            if fetch.slot == m.slot and fetch.source != m.src:
                fetch.source = m.src  # the same snapshot, from whoever offers it now
            return
        self.fetch = Fetch(m.src, m.slot, m.index, m.size, staging=True, asked_at=now)
        self.out.snapshot(BeginStaging(m.slot))

    def staged(self, slot: int, size: int, now: float) -> None:
        """The store holds `size` bytes of snapshot `slot` (0 after it refused it)."""
        fetch = self.fetch
        if fetch is None or fetch.slot != slot:
            return
        fetch.staging = False
        fetch.offset = size
        if size and size >= fetch.total:
            fetch.staging = True  # installing
            self.out.snapshot(InstallSnapshot(slot))
        else:
            self._ask(fetch, now)

    def _ask(self, fetch: Fetch, now: float) -> None:
        fetch.asked_at = now
        self.out.send(fetch.source, SnapshotRequest(self.node_id, fetch.slot, fetch.offset))

    def on_chunk(self, m: SnapshotChunk, now: float) -> None:
        fetch = self.fetch
        if (fetch is None or fetch.staging or m.slot != fetch.slot
                or m.offset != fetch.offset):
            return  # late, duplicated, or not what we asked for
        fetch.retries = 0
        if (zlib.crc32(m.data) != m.crc or not m.data
                or m.offset + len(m.data) > m.total):
            self._ask(fetch, now)  # damaged on the way: again
            return
        fetch.total = m.total
        fetch.staging = True
        self.out.snapshot(StageChunk(m.slot, m.offset, m.data))

    def installed(self, slot: int) -> None:
        if self.fetch is not None and self.fetch.slot <= slot:
            self.fetch = None
        self.installs += 1

    def tick(self, now: float) -> None:
        fetch = self.fetch
        if fetch is None or fetch.staging:
            return
        # The very sum `next_deadline` woke us for (a difference may round below it).
        if now >= fetch.asked_at + self.config.election_timeout:
            fetch.retries += 1
            if fetch.retries > RETRIES:
                self.fetch = None  # the source is gone: catch-up finds another
                self.log.catch_up(now)
            else:
                self._ask(fetch, now)

    def next_deadline(self) -> float | None:
        fetch = self.fetch
        if fetch is None or fetch.staging:
            return None
        return fetch.asked_at + self.config.election_timeout

    def check_invariants(self) -> None:
        fetch = self.fetch
        if fetch is not None:
            assert fetch.slot > 0 and fetch.total >= 0, fetch
            assert fetch.staging or fetch.offset >= 0, fetch
