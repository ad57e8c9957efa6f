"""The settings of a Multi-Paxos replica: one `ReplicaConfig`, with its defaults.

The members are every replica of the log, and every member is an acceptor of
every slot; `quorums` says which sets of them are enough for phase 1 and for
phase 2 (majorities, or Flexible Paxos sizes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pnyx.protocol.quorum import QuorumSystem


def check_read_lease(read_lease: float, election_timeout: float) -> None:
    """The lease rule, for `ReplicaConfig` and for a node's flags alike: a lease ends
    before any member that acked it may promise another ballot. Raises ValueError."""
    if not 0 <= read_lease < election_timeout:
        raise ValueError(
            f"the read lease (read_lease, {read_lease * 1000:g} ms) must be 0 (off) or more "
            f"and less than the election timeout ({election_timeout * 1000:g} ms): a member "
            "that acked the leader may promise another ballot after that")


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    members: tuple[int, ...]
    quorums: QuorumSystem
    heartbeat_interval: float = 0.02
    election_timeout: float = 0.1  # each wait is drawn from [this, 2 x this)
    prevote: bool = True
    window: int = 32  # slots in flight
    max_batch: int = 256  # commands per slot; 1 turns batching off
    max_batch_bytes: int = 1 << 20
    max_command: int = 1 << 20
    catchup_chunk: int = 64
    catchup_bytes: int = 4 << 20
    promise_bytes: int = 4 << 20  # entries per Promise message; more go in more parts
    read_timeout: float = 0.5
    # Leader leases for linearizable reads (`pnyx.protocol.multipaxos.election`), in
    # seconds; 0: off. With it, a member that acks a heartbeat promises no other ballot
    # for an election timeout after it last heard the leader, and the leader, once a
    # quorum of such members acked a round, answers reads at once for `read_lease` from
    # when that round went out. Safe while members' clocks run at rates that differ by
    # less than the margin: (election_timeout - read_lease) / election_timeout.
    read_lease: float = 0.0
    quorum_read_attempts: int = 20
    # Snapshots (`pnyx.protocol.multipaxos.log`): one is taken once this many commands,
    # or this many bytes of them, were applied since the last (0: never on that count);
    # The slots holding the last `snapshot_tail` commands below it are kept for
    # followers a little behind.
    snapshot_every: int = 0
    snapshot_bytes: int = 0
    snapshot_tail: int = 5000
    # The first snapshot after a start comes this share of a threshold late (0 <= it
    # < 1). Members apply the same commands, so with equal thresholds they would all
    # snapshot, and compact, at the same slot; a node gives each member its own phase,
    # so that a compaction's writes never stall a quorum at once.
    snapshot_phase: float = 0.0
    snapshot_chunk: int = 1 << 20  # bytes of a snapshot per SnapshotChunk message
    # How long a snapshot a peer is fetching is kept (and the log above it not
    # compacted) after its last request for a chunk.
    snapshot_hold: float = 10.0

    @classmethod
    def majority(cls, members: Iterable[int], **kwargs: object) -> ReplicaConfig:
        ids = tuple(sorted(members))
        return cls(ids, QuorumSystem.majority(ids), **kwargs)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if set(self.quorums.acceptors) != set(self.members):
            raise ValueError("every member is an acceptor: quorums must be over the members")
        if self.window < 1 or self.max_batch < 1 or self.max_command < 1:
            raise ValueError("window, max_batch and max_command must be at least 1")
        if min(self.snapshot_every, self.snapshot_bytes, self.snapshot_tail) < 0 \
                or self.snapshot_chunk < 1:
            raise ValueError("snapshot thresholds and tail must be >= 0, the chunk >= 1")
        if not 0 <= self.snapshot_phase < 1:
            raise ValueError(f"snapshot_phase must be in [0, 1), not {self.snapshot_phase!r}")
        if not 0 < self.heartbeat_interval < self.election_timeout:
            raise ValueError("need 0 < heartbeat_interval < election_timeout")
        check_read_lease(self.read_lease, self.election_timeout)

    @property
    def read_quorum(self) -> int:
        """Replies a quorum read needs: enough to meet every phase-2 quorum."""
        return len(self.members) - self.quorums.phase2 + 1
