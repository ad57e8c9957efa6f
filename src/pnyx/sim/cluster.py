"""A replicated key-value store in the simulator: Multi-Paxos replicas, clients, checks.

Each process is the node's own `Driver` (`pnyx.node.driver`) running a
`Replica` that applies chosen commands to a `KVMachine`, over virtual time
(`SimClock`), a simulated disk that loses what was not yet durable when its
node crashes (`SimDisk`, one fsync at a time) and the seeded network. So the
code that serves real clients runs here: `submit_nowait`/`read_nowait`, the
deadline buckets, read retries, gathering and group commit. Simulated clients
issue put, get, compare-and-set and delete on a few keys, each through a
random node, one operation at a time; a client whose request fails, is
aborted or times out retries it (same request identity, so the store's
de-duplication keeps it exactly-once) through another node. Faults: message
loss, duplication and reordering, partitions and crashes, both of which
favour the leader. `DRIVER_MUTANTS` are broken drivers, caught by D1.

This module owns the run (`ClusterSim`, `simulate_cluster`), its clients, the
checks below and `ClusterResult`. What a run is asked to do (`ClusterConfig`,
`sweep`) is `pnyx.sim.cluster_config`'s; the clock, disk and network the
drivers run on are `pnyx.sim.ports`'.

Every run is checked for:

- L1 log agreement: no two replicas apply different values in the same slot;
- L2 applied in order: each replica applies slots 1, 2, 3 ... each once;
- L3 no acknowledged write lost: the log holds every acknowledged write at the
  index the client was told, and every replica has applied it by the end;
- L4 linearizability of the clients' history (`pnyx.check`);
- A2 an acceptor's promise survives a crash;
- D1 a promise or acceptance leaves a node only once its disk holds the record
  behind it, and a Prepare only once its disk holds the ballot's round (checked
  against the simulated disk, not the replica's own gate);
- I1 every unit of every replica keeps the invariants its fields state
  (`Replica.check_invariants`, after each event; `ClusterConfig.check_invariants`);
- S1 a machine restored from a snapshot (installed from a peer, or at a restart)
  holds exactly the state of the agreed log up to the snapshot's slot (replayed
  into a fresh, correct `KVMachine`);
- S2 a replica restarts from what its disk holds: its log is never compacted
  beyond its newest durable snapshot;
- the wire rules of `LogObserver` (A1, A3, A4, B1, H1, R1);
- with configuration changes (`ClusterConfig.changes`: an operator adds, removes
  and replaces nodes through the driver's own request path, `pnyx.sim.changes`;
  the processes, disks and network grow by id), the membership rules M1-M5 of
  `pnyx.sim.configs`, which count every quorum in the configuration governing its
  slot as the agreed log makes it; the clients ask any node not removed, and L3
  and the end of a run wait for the members only (not a removed node, nor one whose
  addition never took).

Adversarial schedules: messages held back and delivered late
(`NetworkConfig.late`), and reboots aimed at the leader that wait for its next
Prepare or Accept and strike before the records behind it are durable
(`FaultConfig.reboots`, `ClusterConfig.reboot_on_send`). `sweep(seed)` is the
default sweep, mixing them with plain runs of 3 and 5 nodes: every Multi-Paxos
mutant is caught within a bounded number of its seeds, and the correct protocol
passes them all.
"""

from __future__ import annotations

import functools
import random
import traceback
from dataclasses import dataclass, field, replace
from typing import IO, Any

import msgspec

from pnyx import check
from pnyx.node.config import snapshot_phase
from pnyx.node.driver import Driver
from pnyx.node.requests import DEADLINE_TICK, Request
from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.multipaxos import LogReady, Outcome, ReadMode, Replica
from pnyx.protocol.multipaxos.messages import (
    Accepted,
    Batch,
    Prepare,
    Promise,
    Rejected,
)
from pnyx.protocol.multipaxos.records import AcceptRecord, ReplicaDurable, Standing
from pnyx.sim.changes import Operator
from pnyx.sim.cluster_config import DRIVER_MUTANTS, ClusterConfig
from pnyx.sim.configs import M4, MEMBERSHIP_RULES, Configurations
from pnyx.sim.engine import ANY, CALL, Engine
from pnyx.sim.faults import Fault
from pnyx.sim.invariants import A2, LOG_RULES, LogObserver, Violation
from pnyx.sim.mutants import CLUSTER_MUTANTS, MEMBERSHIP_MUTANTS
from pnyx.sim.ports import SimClock, SimDisk, SimNetwork, SimSnapshotFile, SimSnapshots
from pnyx.statemachine import kv

L1 = "L1 replicas agree on every slot"
L2 = "L2 each replica applies slots in order, each once"
L3 = "L3 no acknowledged write is lost"
L4 = "L4 the clients' history is linearizable"
K1 = "K1 the store answers well-formed requests without errors"
D1 = "D1 a promise or acceptance leaves a node only once its record is durable"
I1 = "I1 every replica's units keep their stated invariants"
S1 = "S1 a snapshot restores exactly the agreed log's state at its slot"
S2 = "S2 a restart finds a durable snapshot at or above its compacted log"
CLUSTER_RULES = (L1, L2, L3, L4, K1, A2, D1, I1, S1, S2, *LOG_RULES, *MEMBERSHIP_RULES)


@dataclass(slots=True)
class ClusterResult:
    config: ClusterConfig
    violations: list[Violation]
    verdict: str  # of the linearizability check: ok, violation, unknown
    completed: int  # operations that completed
    unknown: int  # writes whose outcome the client never learned
    failed_reads: int
    retries: int
    slots: int  # slots chosen
    commands: int  # client commands chosen
    leader_changes: int
    failovers: list[float]  # leader crash -> next chosen slot, seconds
    end_time: float
    workload_end: float | None
    sent: int
    delivered: int
    lost: int
    faults: list[Fault]
    history: check.History | None = None
    snapshots: int = 0  # snapshots made durable, over every replica
    installs: int = 0  # snapshots installed from a peer
    learners: tuple[int, ...] = ()  # replicas that lost their disk and do not vote
    # Configuration changes (`ClusterConfig.changes`): what their clients heard (ok,
    # conflict, refused, aborted ...), the operations done, and the log's count of
    # changes that took, were refused in their slot, and promotions.
    changes: dict[str, int] = field(default_factory=dict)
    voters: tuple[int, ...] = ()  # the final configuration's voters
    removed: tuple[int, ...] = ()  # replicas removed (they kept running)

    @property
    def safe(self) -> bool:
        return not self.violations


@dataclass(slots=True)
class _Op:
    handle: int
    call: check.Call
    payload: bytes  # an encoded request, or for reads a query
    read: ReadMode | None
    attempts: int = 0
    request_id: int = 0  # this attempt's, in the simulation (0: none running)
    replica: int = 0
    pending: Request | None = None  # the attempt at its node


@dataclass(slots=True)
class _Client:
    name: str
    seq: int = 0
    left: int = 0
    op: _Op | None = None
    seen: dict[str, str | None] = field(default_factory=dict)


class ClusterSim(Engine[Driver, ReplicaDurable]):  # type: ignore[type-var]
    def __init__(self, config: ClusterConfig, trace_sink: IO[bytes] | None = None,
                 trace: bool = False) -> None:
        mutant = {**CLUSTER_MUTANTS, **MEMBERSHIP_MUTANTS}.get(config.mutant) \
            if config.mutant else None
        self.replica_class, self.machine_class = mutant or (Replica, kv.KVMachine)
        # What the records on a disk add up to after a restart (a mutant may replay
        # them wrongly); needed before the engine makes the empty disks.
        self.durable_class: type[ReplicaDurable] = getattr(
            self.replica_class, "durable_class", ReplicaDurable)
        self.driver_class = DRIVER_MUTANTS.get(config.mutant or "", Driver)
        # Each node's snapshot files and staged transfer: on its disk, so they outlive a
        # crash (not a wipe).
        self.snapshot_files: dict[int, dict[int, SimSnapshotFile]] = {
            i: {} for i in range(1, config.nodes + 1)}
        self.staged: dict[int, tuple[int, bytearray] | None] = dict.fromkeys(
            range(1, config.nodes + 1))
        self._snapshot_rng = random.Random(f"{config.seed}/snapshot-writes")
        self.installs = 0
        self.snapshots_taken = 0
        self.violations: list[Violation] = []
        super().__init__(config.seed, config.nodes, config.network, config.faults,
                         config.fsync, config.max_time, trace_sink, trace,
                         reboot_on_send=config.reboot_on_send)
        self.config = config
        self.rc = config.replica_config()
        if config.check_invariants:
            self.after_event = self._check_invariants
        self.wire = LogObserver(self.violations)  # the acceptor and ballot rules, on the wire
        self.log: dict[int, Batch] = {}
        # The configurations the agreed log makes, and the membership rules (M1-M5).
        # Checked in runs with changes: a run without keeps the rules (and so the first
        # violation of a broken variant) it always had.
        self.configs = Configurations(tuple(self.ids), self._violate,
                                      check=config.changes > 0)
        self._applied_upto = dict.fromkeys(self.ids, 0)
        self._promised: dict[int, Ballot] = {}
        self.recorder = check.Recorder()
        self.rng = random.Random(f"{config.seed}/clients")
        self._crash_rng = random.Random(f"{config.seed}/leader-crashes")
        self._request_ids = 0
        self.acked: dict[tuple[str, int], int] = {}  # (client, seq) -> index it was told
        self.completed = self.unknown = self.failed_reads = self.retries = 0
        self.leader_changes = 0
        self._leader: tuple[int, Ballot] | None = None
        self._crashed_leader_at: float | None = None
        self.failovers: list[float] = []
        self.workload_end: float | None = None
        self.clients = [_Client(f"c{k}") for k in range(1, config.clients + 1)]
        for k, client in enumerate(self.clients):
            client.left = config.ops // config.clients + (k < config.ops % config.clients)
        self.pending_restart: list[int] = []
        self._reboot_faults = 0
        self.start()
        for client in self.clients:
            self.push(self.rng.uniform(0, config.think), CALL, 0, ("next", client))
        self.operator = Operator(self, config.changes, max(config.faults.until, 0.5)) \
            if config.changes else None

    # ------------------------------------------------------------- processes

    def empty_disk(self) -> ReplicaDurable:
        # Every disk starts empty, as a new node's store does: its replica asks the
        # others before it votes (`pnyx.protocol.multipaxos.standing`).
        return self.durable_class(standing=Standing.NEW)

    def wipe(self, i: int) -> None:
        if self.nodes[i] is None:
            return  # down already: its restart is someone else's
        super().wipe(i)
        self.pending_restart.append(i)
        self.snapshot_files[i] = {}
        self.staged[i] = None
        # Its promises are gone with its disk (A2 holds for crashes, not for this): it
        # must not vote again, which the wire rules see if it does.
        self._promised.pop(i, None)

    def add_node(self, i: int) -> Driver:
        """Start a process with a new id and an empty disk, to be added to the cluster:
        it never voted under that id, so its standing is VOTER from the start."""
        self.snapshot_files[i] = {}
        self.staged[i] = None
        node = self.add_process(i, self.durable_class(standing=Standing.VOTER))
        node.begin()
        return node

    def on_durable(self, i: int, records: Any) -> None:
        """Records of node `i` became durable: its acceptances count from now."""
        configs = self.configs
        for record in records:
            if isinstance(record, AcceptRecord):
                e = record.entry
                configs.accepted(i, e.slot, e.ballot, e.value)

    def snapshot_write_fails(self) -> bool:
        return self._snapshot_rng.random() < self.config.snapshot_failures

    def write(self, disk: ReplicaDurable, records: Any) -> ReplicaDurable:
        disk = disk.copy()
        for record in records:
            disk.apply(record)
        return disk

    def make_process(self, i: int, rng: random.Random) -> Driver:
        self._applied_upto[i] = 0
        machine = self.machine_class()
        files = self.snapshot_files[i]
        snapshot = files[max(files)] if files else None
        disk = self.disks[i]
        if snapshot is not None:
            machine.restore(snapshot.body)
            self._applied_upto[i] = snapshot.slot
            self._check_restored(i, snapshot.slot, machine)
        if disk.compacted > (snapshot.slot if snapshot else 0):
            self._violate(S2, f"node {i} restarts with its log compacted up to slot "
                              f"{disk.compacted}, its newest snapshot is of "
                              f"{snapshot.slot if snapshot else 'no'} slot")
            disk = disk.copy()
            disk.compacted = snapshot.slot if snapshot else 0  # to end the run cleanly
        rc = self.rc
        if self.config.snapshot_phases:
            rc = replace(rc, snapshot_phase=snapshot_phase(i))
        driver = self.driver_class(i, rc, machine,
                                   request_timeout=self.config.op_timeout,
                                   replica_class=self.replica_class)
        driver.observe = functools.partial(self.after, i)
        first_request_id = rng.getrandbits(62)
        driver.open(SimClock(self, i), SimDisk(self, i), SimNetwork(self, i), disk,
                    rng, first_request_id, SimSnapshots(self, i), snapshot)
        return driver

    def _check_restored(self, i: int, slot: int, machine: Any) -> None:
        """S1: `machine`, restored from a snapshot of `slot`, against the agreed log."""
        reference = kv.KVMachine()
        index = 0
        for s in range(1, slot + 1):
            value = self.log.get(s)
            if value is None:
                self._violate(S1, f"node {i} holds a snapshot of slot {slot}, but slot "
                                  f"{s} was never applied anywhere")
                return
            for command in value.commands:
                index += 1
                reference.apply(command.payload, index)
        if machine.snapshot() != reference.snapshot():
            self._violate(S1, f"node {i}'s machine restored from the snapshot of slot "
                              f"{slot} differs from the agreed log's state there")

    def start(self) -> None:
        super().start()
        for node in self.nodes.values():
            assert node is not None
            node.begin()

    def receive(self, i: int, node: Driver, message: Any) -> None:
        node.deliver(message)

    def on_restart(self, i: int) -> None:
        self.wire.on_restart(i, self.now)
        node = self.nodes[i]
        assert node is not None and node.replica is not None
        reported = self._promised.get(i, ZERO)
        if node.replica.promised < reported:
            self._violate(A2, f"node {i} restarted promising {node.replica.promised}, "
                              f"had promised {reported}")
        node.begin()

    def leader(self) -> int | None:
        """The leader a leader-aimed reboot hits: the latest one seen, if it is up."""
        if self._leader is not None and self.nodes[self._leader[0]] is not None:
            return self._leader[0]
        return None

    def reboot(self, i: int) -> None:
        """Every other armed reboot waits for the next Prepare from anyone: a candidate
        restarted mid-election, before its round is durable. The rest aim at the leader
        (`Engine.reboot`)."""
        self._reboot_faults += 1
        if self.reboot_on_send and self._reboot_faults % 2 == 0:
            self.armed, self.armed_for = ANY, frozenset({"Prepare"})
        else:
            super().reboot(i)

    def partition(self, minority: set[int]) -> None:
        if self._leader is not None and self._crash_rng.random() < self.config.leader_partitions:
            minority = {self._leader[0]}
        super().partition(minority)

    def crash(self, i: int) -> None:
        leader = self._leader[0] if self._leader else None
        if leader is not None and self._crash_rng.random() < self.config.leader_crashes:
            i = leader
        if self.nodes[i] is None:
            return
        if i == leader:
            self._crashed_leader_at = self.now
        super().crash(i)
        self.pending_restart.append(i)

    def restart(self, i: int) -> None:
        # A crash may have been moved to the leader: bring back whoever is down longest.
        if self.pending_restart:
            i = self.pending_restart.pop(0)
        super().restart(i)

    def on_send(self, src: int, message: Any) -> None:
        self.wire.on_send(src, message, self.now)
        self._check_durable(src, message)
        if isinstance(message, Promise | Accepted):
            ballot = message.ballot
        elif isinstance(message, Rejected):
            ballot = message.promised
        else:
            return
        if ballot > self._promised.get(src, ZERO):
            self._promised[src] = ballot

    def _check_durable(self, src: int, message: Any) -> None:
        """D1, from the disk's side: what the message reports is on the disk already."""
        disk = self.disks[src]
        if isinstance(message, Prepare):
            if disk.last_round < message.ballot.round:
                self._violate(D1, f"node {src} sent Prepare({message.ballot}) with round "
                                  f"{disk.last_round} durable")
        elif isinstance(message, Promise):
            if disk.promised < message.ballot:
                self._violate(D1, f"node {src} sent a promise of {message.ballot} with "
                                  f"only {disk.promised} durable")
            for entry in message.entries:
                held = disk.accepted.get(entry.slot)
                if held is None and entry.slot <= disk.compacted:
                    # A slot its durable snapshot holds, so chosen: the promise reports
                    # what the acceptor held when it was made; the disk compacted since.
                    continue
                if held is None or held.ballot < entry.ballot:
                    self._violate(D1, f"node {src} reported slot {entry.slot} accepted in "
                                      f"{entry.ballot}, its disk holds {held}")
        elif isinstance(message, Accepted):
            held = disk.accepted.get(message.slot)
            if held is None and message.slot <= disk.compacted \
                    and disk.promised >= message.ballot:
                return  # a slot its durable snapshot holds: acknowledged, not recorded
            if held is None or held.ballot < message.ballot or disk.promised < message.ballot:
                self._violate(D1, f"node {src} sent Accepted({message.ballot}, slot "
                                  f"{message.slot}) with {held} durable")

    def after(self, i: int, ready: LogReady) -> None:
        configs = self.configs
        if ready.installed:
            self.installs += 1
            self._applied_upto[i] = ready.installed
            configs.progress(i, ready.installed)
        changed = bool(ready.installed)
        for slot, value in ready.applied:
            self._check_applied(i, slot, value)
            changed |= value.change is not None
        if ready.applied:
            configs.progress(i, ready.applied[-1][0])
        if changed:
            node = self.nodes[i]
            if node is not None and node.replica is not None:
                configs.agrees(i, node.replica.applied, node.replica.membership.latest)
        if ready.installed:
            # The machine now: restored, then the slots applied after it in this event.
            node = self.nodes[i]
            if node is not None and node.replica is not None:
                self._check_restored(i, node.replica.applied, node.machine.machine)  # type: ignore[attr-defined]
        node = self.nodes[i]
        replica = node.replica if node is not None else None
        if replica is not None and replica.is_leader and (
            self._leader is None or self._leader != (i, replica.ballot)
        ):
            self._leader = (i, replica.ballot)
            self.leader_changes += 1

    def _check_applied(self, i: int, slot: int, value: Batch) -> None:
        if slot != self._applied_upto[i] + 1:
            self._violate(L2, f"node {i} applied slot {slot} after {self._applied_upto[i]}")
        self._applied_upto[i] = slot
        known = self.log.get(slot)
        if known is None:
            self.log[slot] = value
            configs = self.configs
            while configs.upto + 1 in self.log:
                configs.chosen(configs.upto + 1, self.log[configs.upto + 1])
            if self._crashed_leader_at is not None:
                self.failovers.append(self.now - self._crashed_leader_at)
                self._crashed_leader_at = None
        elif known != value:
            self._violate(L1, f"node {i} applied {_show(value)} in slot {slot}, "
                              f"others applied {_show(known)}")

    def _check_invariants(self, i: int) -> None:
        """I1 for the process an event concerned (every live one when it concerned none)."""
        for j in (i,) if i else self.ids:
            node = self.nodes[j]
            replica = node.replica if node is not None else None
            if replica is None:
                continue
            try:
                replica.check_invariants()
            except AssertionError as e:
                where = traceback.extract_tb(e.__traceback__)[-1]
                self._violate(I1, f"node {j}: {where.name}: {where.line} {e}")

    def _violate(self, rule: str, detail: str) -> None:
        self.violations.append(Violation(rule, self.now, detail))

    # --------------------------------------------------------------- clients

    def call(self, node: int, payload: object) -> None:
        what, client, *rest = payload  # type: ignore[misc]
        if what == "member-op":
            client()  # the operator's next step (`pnyx.sim.changes`)
        elif what == "next":
            self._next_op(client)
        elif what == "retry":
            self._attempt(client)
        elif what == "timeout":
            # The node crashed with the request (a live one answers by the deadline).
            (request_id,) = rest
            if client.op is not None and client.op.request_id == request_id:
                if client.op.pending is not None:
                    client.op.pending.cancel()
                self._retry(client)

    def _next_op(self, client: _Client) -> None:
        if client.left == 0:
            client.op = None
            if all(c.left == 0 and c.op is None for c in self.clients):
                self.workload_end = self.now
            return
        client.left -= 1
        key = f"k{self.rng.randrange(self.config.keys)}"
        roll = self.rng.random()
        client.seq += 1
        value = f"{client.name}.{client.seq}"
        command: kv.Command
        call: check.Call
        read: ReadMode | None = None
        if roll < 0.3:
            command, call = kv.Put(key, value.encode()), check.Put(key, value)
        elif roll < 0.5:
            expected = client.seen.get(key)
            if expected is None or self.rng.random() < 0.2:
                command = kv.Put(key, value.encode(), prev_exist=False)
                expected = None
            else:
                command = kv.Put(key, value.encode(), prev_value=expected.encode())
            call = check.Cas(key, expected, value)
        elif roll < 0.6:
            command, call = kv.Delete(key), check.Delete(key)
        else:
            command, call = kv.Get(key), check.Get(key)
            read = self.rng.choice(self.config.reads)
        if read is None:
            payload = kv.encode_request(kv.Request(client.name, client.seq, command))
        else:
            payload = kv.encode_query(key)
        handle = self.recorder.invoke(client.name, call)
        client.op = _Op(handle, call, payload, read)
        self._attempt(client)

    def _attempt(self, client: _Client) -> None:
        op = client.op
        assert op is not None
        op.attempts += 1
        self._request_ids += 1
        op.request_id = self._request_ids
        op.replica = self.rng.choice(self._serving())
        op.pending = None
        node = self.nodes[op.replica]
        # The node answers by the deadline (a tick late at most) unless it crashes.
        self.push(self.now + self.config.op_timeout + 2 * DEADLINE_TICK, CALL, 0,
                  ("timeout", client, op.request_id))
        if node is None:
            return  # the node is down: the attempt times out
        done = functools.partial(self._on_outcome, client, op.request_id)
        if op.read is None:
            pending = node.submit_nowait(op.payload, done, timeout=self.config.op_timeout)
        else:
            pending = node.read_nowait(op.payload, op.read, done,
                                       timeout=self.config.op_timeout)
        if client.op is op and op.request_id == done.args[1]:  # not answered at once
            op.pending = pending

    def _serving(self) -> list[int]:
        """The nodes a client may ask: all but those that stopped, removed."""
        if self.operator is None:
            return self.ids
        return [i for i in self.ids if (n := self.nodes[i]) is None or not n.removed]

    def _retry(self, client: _Client) -> None:
        op = client.op
        assert op is not None
        if op.attempts >= self.config.attempts:
            if op.read is None:
                self.recorder.timeout(op.handle)  # it may yet take effect
                self.unknown += 1
            else:
                self.recorder.fail(op.handle)  # a read that never answered changed nothing
                self.failed_reads += 1
            self._finish(client)
            return
        self.retries += 1
        op.request_id = 0  # this attempt is over: its late outcome or timeout means nothing
        self.push(self.now + self.rng.uniform(0.002, 0.02), CALL, 0, ("retry", client))

    def _on_outcome(self, client: _Client, request_id: int, outcome: Outcome) -> None:
        op = client.op
        if op is None or op.request_id != request_id:
            return
        op.pending = None
        if not outcome.ok:
            self._retry(client)
            return
        result = kv.decode_result(outcome.result)
        key = op.call.key
        answer: Any = None
        if isinstance(result, kv.Error):
            self._violate(K1, f"{client.name} {op.call}: {result.message}")
            self._retry(client)
            return
        if isinstance(op.call, check.Get):
            answer = result.value.decode() if isinstance(result, kv.Ok) and result.value else None
            client.seen[key] = answer
        elif isinstance(op.call, check.Cas | check.Delete):
            answer = isinstance(result, kv.Ok)
        if isinstance(op.call, check.Put | check.Cas) and isinstance(result, kv.Ok):
            client.seen[key] = op.call.value if isinstance(op.call, check.Put) else op.call.new
        if op.read is None:
            self.acked[(client.name, client.seq)] = outcome.index
        self.recorder.complete(op.handle, answer)
        self.completed += 1
        self._finish(client)

    def _finish(self, client: _Client) -> None:
        client.op = None
        self.push(self.now + self.rng.uniform(0, self.config.think), CALL, 0, ("next", client))

    # ------------------------------------------------------------------- end

    def done(self) -> bool:
        if self.violations:
            return True
        if self.workload_end is None or self.now < self.config.faults.until:
            return False
        if self.operator is not None and not self.operator.finished:
            return False
        members = self._members()
        live = [n.replica for i, n in self.nodes.items()
                if i in members and n is not None and n.replica]
        if len(live) < len(members):
            return False
        target = max(n.commit for n in live)
        if not all(n.applied >= target for n in live):
            return False
        # A removed replica still running must have heard that it was (M4).
        return all(n is None or n.removed for i, n in self.nodes.items()
                   if self.configs.removed(i))

    def _members(self) -> set[int]:
        """The nodes that are members still: in a configuration that governs a slot after
        the agreed log, or the latest (every node, without changes). Not one removed,
        nor one whose addition never took."""
        if self.operator is None:
            return set(self.ids)
        configs = self.configs
        return {i for i in self.ids if i in configs.ever and not configs.removed(i)}

    def finish(self) -> ClusterResult:
        history = self.recorder.history()
        verdict = "skipped"
        if not self.violations:
            self._check_acked()
            for i, n in self.nodes.items():
                if self.configs.removed(i) and n is not None and not n.removed:
                    self._violate(M4, f"node {i} was removed and runs, not knowing it")
            result = check.check(history, budget_seconds=self.config.check_budget)
            verdict = str(result.verdict)
            if result.verdict == check.Verdict.VIOLATION:
                self._violate(L4, result.explanation)
        return ClusterResult(
            config=self.config,
            violations=list(self.violations),
            verdict=verdict,
            completed=self.completed,
            unknown=self.unknown,
            failed_reads=self.failed_reads,
            retries=self.retries,
            slots=len(self.log),
            commands=sum(len(b.commands) for b in self.log.values()),
            leader_changes=self.leader_changes,
            failovers=self.failovers,
            end_time=self.now,
            workload_end=self.workload_end,
            sent=self.sent,
            delivered=self.delivered,
            lost=self.lost,
            faults=self.faults,
            history=history,
            snapshots=self.snapshots_taken,
            installs=self.installs,
            learners=tuple(i for i, n in self.nodes.items() if n is not None
                           and n.replica is not None
                           and n.replica.standing is Standing.LEARNER),
            changes=self._change_counts(),
            voters=tuple(sorted(self.configs.latest.voters)),
            removed=tuple(sorted(self.configs.retired)),
        )

    def _change_counts(self) -> dict[str, int]:
        if self.operator is None:
            return {}
        op, configs = self.operator, self.configs
        return {**{f"heard {k}": v for k, v in sorted(op.outcomes.items())},
                **{f"done {k}": v for k, v in sorted(op.done_ops.items())},
                "given up": op.given_up, "took": configs.changes_taken,
                "refused in the log": configs.changes_refused,
                "promotions": configs.promotions, "nodes": len(self.ids)}

    def _check_acked(self) -> None:
        by_index: dict[int, bytes] = {}
        index = 0
        for slot in sorted(self.log):
            for command in self.log[slot].commands:
                index += 1
                by_index[index] = command.payload
        members = self._members()
        furthest = max((upto for i, upto in self._applied_upto.items() if i in members),
                       default=0)
        for (name, seq), at in sorted(self.acked.items()):
            payload = by_index.get(at)
            request = _decode_request(payload) if payload is not None else None
            if not isinstance(request, kv.Request) or (request.client_id, request.seq) != (
                name, seq
            ):
                self._violate(L3, f"write {name}#{seq} acknowledged at index {at}, "
                                  f"but the log holds {request} there")
        if self.workload_end is not None:
            for i, upto in self._applied_upto.items():
                if self.nodes[i] is not None and upto < furthest and i in members:
                    self._violate(L3, f"node {i} applied only up to slot {upto} of {furthest}")


_request_decoder = msgspec.msgpack.Decoder(kv.AnyRequest)


def _decode_request(payload: bytes) -> kv.AnyRequest | None:
    try:
        return _request_decoder.decode(payload)
    except (msgspec.MsgspecError, ValueError):
        return None


def _show(value: Batch) -> str:
    return f"[{', '.join(f'{c.origin}:{c.id}' for c in value.commands) or 'no-op'}]"


def simulate_cluster(config: ClusterConfig, trace_sink: IO[bytes] | None = None,
                     trace: bool = False) -> ClusterResult:
    sim = ClusterSim(config, trace_sink, trace)
    sim.run()
    return sim.finish()

