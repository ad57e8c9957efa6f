"""What a simulated-cluster run is asked to do: its configuration and the default sweep.

This module owns `ClusterConfig` (nodes, workload, faults, timing, which
checks run, which mutant), `sweep(seed)`, which picks seed `seed` of the
default sweep, the sweep's network and fault settings, and `DRIVER_MUTANTS`,
the broken drivers a config may name. The run itself is `pnyx.sim.cluster`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from pnyx.node.driver import Driver
from pnyx.protocol.multipaxos import ReadMode, ReplicaConfig
from pnyx.protocol.multipaxos.records import LogRecord
from pnyx.protocol.quorum import QuorumSystem
from pnyx.sim.faults import FaultConfig
from pnyx.sim.mutants import CLUSTER_MUTANTS, MEMBERSHIP_MUTANTS
from pnyx.sim.network import NetworkConfig

# One set of protocol defaults: the simulator's timing is the replica's.
_REPLICA_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(ReplicaConfig)}


class DriverSendsBeforeDurable(Driver):
    """Tells the replica its records are durable as soon as they are queued for the
    disk, so the promises and acceptances they stand for leave before the write."""

    def _persist(self, records: list[LogRecord], seq: int) -> None:
        super()._persist(records, seq)
        self._handle(self._replica().persisted(seq))


DRIVER_MUTANTS: dict[str, type[Driver]] = {
    "driver-sends-before-durable": DriverSendsBeforeDurable,
}
"""Broken drivers, run by `ClusterConfig(mutant=...)` like the protocol's mutants."""


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    seed: int = 0
    nodes: int = 3
    clients: int = 4
    ops: int = 200  # operations in all, shared among the clients
    keys: int = 3
    network: NetworkConfig = field(default_factory=NetworkConfig)
    faults: FaultConfig = field(
        default_factory=lambda: FaultConfig(
            until=1.0, partition_rate=2.0, crash_rate=3.0, max_outage=0.3
        )
    )
    leader_crashes: float = 0.5  # share of crashes that hit the current leader
    leader_partitions: float = 0.5  # share of partitions that cut the leader off alone
    fsync: float = 0.0005
    heartbeat: float = _REPLICA_DEFAULTS["heartbeat_interval"]
    election_timeout: float = _REPLICA_DEFAULTS["election_timeout"]
    prevote: bool = _REPLICA_DEFAULTS["prevote"]
    read_lease: float = _REPLICA_DEFAULTS["read_lease"]  # leader leases for reads; 0: off
    window: int = _REPLICA_DEFAULTS["window"]
    max_batch: int = _REPLICA_DEFAULTS["max_batch"]
    promise_bytes: int = _REPLICA_DEFAULTS["promise_bytes"]  # 1: a promise in many parts
    # A reboot (FaultConfig.reboots) waits for the leader's next Prepare or Accept.
    reboot_on_send: bool = True
    # Assert every replica's unit invariants after each event (about +25 % CPU).
    check_invariants: bool = True
    reads: tuple[ReadMode, ...] = ("linearizable", "quorum")
    op_timeout: float = 0.4  # a client gives up on one attempt after this
    attempts: int = 12  # attempts per operation before the client gives up
    think: float = 0.004  # a client waits up to this long between operations
    max_time: float = 60.0
    check_budget: float = 10.0  # seconds for the linearizability checker
    mutant: str | None = None
    # Snapshots: every this many commands applied (0: never), keeping a tail of slots,
    # sent to laggards in chunks of this many bytes; a share of snapshot writes fail
    # (a full disk).
    snapshot_every: int = 0
    snapshot_tail: int = 2
    snapshot_chunk: int = 256
    snapshot_failures: float = 0.0
    # Each node the snapshot phase `pnyx serve` gives its id (`snapshot_phase`), so
    # that members snapshot and compact at different slots; off: all at the same.
    snapshot_phases: bool = False
    # Membership operations made while the clients write and the faults strike (add,
    # remove, replace, two at once: `pnyx.sim.changes`); 0: the members never change.
    changes: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 15:
            raise ValueError(f"nodes must be in 1..15, got {self.nodes}")
        if self.changes < 0:
            raise ValueError(f"changes must be >= 0, got {self.changes}")
        if self.clients < 1 or self.ops < 0 or self.keys < 1:
            raise ValueError("need at least one client and one key, and ops >= 0")
        known = {**CLUSTER_MUTANTS, **MEMBERSHIP_MUTANTS, **DRIVER_MUTANTS}
        if self.mutant is not None and self.mutant not in known:
            raise ValueError(f"unknown mutant {self.mutant!r}; known: {', '.join(known)}")
        for mode in self.reads:
            if mode not in ("linearizable", "quorum"):
                raise ValueError(f"checked reads are linearizable or quorum, not {mode!r}")

    def replica_config(self) -> ReplicaConfig:
        ids = tuple(range(1, self.nodes + 1))
        return ReplicaConfig(
            ids, QuorumSystem.majority(ids),
            heartbeat_interval=self.heartbeat, election_timeout=self.election_timeout,
            prevote=self.prevote, read_lease=self.read_lease, window=self.window,
            max_batch=self.max_batch,
            promise_bytes=self.promise_bytes, snapshot_every=self.snapshot_every,
            snapshot_tail=self.snapshot_tail, snapshot_chunk=self.snapshot_chunk,
        )


# The default sweep's faults: partitions and crashes (most hitting the leader) for the
# first 3 s of virtual time; and its network: loss and duplication.
SWEEP_FAULTS = FaultConfig(partitions=True, crashes=True, until=3.0, partition_rate=2.0,
                           crash_rate=3.0, max_outage=0.3)
SWEEP_NETWORK = NetworkConfig(drop=0.1, duplicate=0.05)
# Half its seeds add 3 % of messages held back 0.1-0.5 s (stale Prepares, Accepts and
# heartbeats landing after newer ballots) and 5 reboots a second aimed at the leader,
# striking right after its next Prepare or Accept, before the record behind it is
# durable. Only half: a rebooted leader is no longer a deposed leader that still
# believes it leads, which is what a read answered from local state needs to show.
SWEEP_LATE = NetworkConfig(drop=0.1, duplicate=0.05, late=0.03, late_min=0.1, late_max=0.5)
SWEEP_REBOOTS = FaultConfig(partitions=True, crashes=True, reboots=True, reboot_rate=5.0,
                            until=3.0, partition_rate=2.0, crash_rate=3.0, max_outage=0.3)


def sweep(seed: int, mutant: str | None = None, **kwargs: Any) -> ClusterConfig:
    """Seed `seed` of the default sweep: odd seeds run 5 nodes, even seeds 3; seeds
    2 and 3 (mod 4) are adversarial (late messages, aimed reboots), and half of those
    (6 and 7 mod 8) elect without pre-vote, so a candidate restarted mid-election
    starts its next phase 1 before anyone tells it of a higher ballot. Every seed takes
    snapshots every 8 commands (one write in ten fails, as on a full disk) and compacts
    the log; every third seed has a replica lose its disk and rejoin empty. `kwargs`
    override."""
    adversarial = seed % 4 >= 2
    settings: dict[str, Any] = dict(
        seed=seed, nodes=5 if seed % 2 else 3, mutant=mutant,
        network=SWEEP_LATE if adversarial else SWEEP_NETWORK,
        faults=SWEEP_REBOOTS if adversarial else SWEEP_FAULTS,
        prevote=seed % 8 < 6,
        snapshot_every=8, snapshot_failures=0.1,
    )
    if seed % 3 == 0:
        faults = settings["faults"]
        settings["faults"] = FaultConfig(**{**{f.name: getattr(faults, f.name)
                                               for f in fields(faults)}, "wipes": 1})
    settings.update(kwargs)
    return ClusterConfig(**settings)


def change_sweep(seed: int, mutant: str | None = None, **kwargs: Any) -> ClusterConfig:
    """Seed `seed` of the sweep with configuration changes: the default sweep's
    `sweep(seed)` (every fault it has) plus 2 to 5 membership operations
    (`pnyx.sim.changes`). `kwargs` override."""
    return sweep(seed, mutant, **{"changes": 2 + seed % 4, **kwargs})
