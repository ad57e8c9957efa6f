"""The driver: runs a pure `Replica` by obeying every `LogReady` against three ports.

One class for the node and the simulator. `pnyx.node.runtime.Node` is this
driver over asyncio, TCP and SQLite; `pnyx.sim.cluster` runs the same class
over virtual time, a simulated network and simulated disks. It owns:

- **persist, then durable, then persisted**: records go to the `Disk` by
  **group commit**: while one write is in flight, the records the replica
  produces meanwhile wait, and go together in the next. Only when a write
  returns does the replica hear `persisted(seq)` — and only then may the
  promises and acceptances that depend on it leave (the replica holds them
  until then; the simulator checks, independently, that none leaves early);
- **messages**: to peers through the `Network`, to ourselves on the next turn
  of the `Clock`;
- **wake-ups**: one timer, at the earliest moment the replica asked to wake;
- **requests**: `submit_nowait` and `read_nowait` call back with their outcome,
  with no task, future or timer of their own: deadlines are kept in buckets,
  one timer for all; the commands that arrive in one turn of the clock are
  gathered and submitted together (one slot, one Accept round, one group
  commit), and so are its linearizable and quorum reads (one call to the
  replica; at a follower, one read-index request). A read that fails is
  retried until the deadline; a command whose outcome is unknown (its leader
  lost its ballot) is reported as such, for the caller to retry under its own
  request identity — only the caller's de-duplication makes that safe;
- **the state machine's contract**: the machine is wrapped in `SafeApply`, so
  a command whose `apply` raises gets a deterministic error result on every
  replica, instead of stopping one mid-slot (where a retry would apply the
  slot's earlier commands twice);
- **snapshots**: each `SnapshotOp` the replica asks for goes to the
  `SnapshotPort`, and its answer back to the replica. A snapshot is captured
  from the machine by the replica the moment it asks (`snapshot_chunks`: the
  machine's copy-on-write view) and serialized and written off the event
  loop by the port; a snapshot that cannot be written (a full disk) is not a
  broken promise, so it is logged and the log kept whole, not fail-stop. A
  fetched snapshot restores the machine before the replica hears `installed`;
- **metrics**, when given one: slots and commands learned chosen since start
  (not the log replayed from disk), roles, leaders, group commits;
- **fail-stop on storage faults**, the one rule for every durable write: a
  disk that cannot keep a promise stops the node (`disk_failed`). Nothing that
  depended on the failed write has left (persist-before-send), so stopping
  breaks no promise; carrying on, or retrying a write whose fate on disk is
  unknown, could. The driver closes and reports the fault to `on_fault`; the
  node then releases its ports and the process exits for a supervisor to
  restart it.

Request ids come from the caller (`first_request_id`), never from a global
random source: the node draws a random start so ids never repeat across
restarts, and the simulator draws it from the run's seed.
"""

from __future__ import annotations

import logging
import math
import random
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pnyx.node.ports import Clock, Disk, Network, SnapshotPort, Timer
from pnyx.node.requests import DEADLINE_TICK, RETRY_PAUSE, SHUTTING_DOWN, Request
from pnyx.protocol.multipaxos import (
    LogReady,
    Machine,
    Outcome,
    ReadMode,
    Replica,
    ReplicaConfig,
    Role,
)
from pnyx.protocol.multipaxos.effects import (
    BeginStaging,
    InstallSnapshot,
    KeepSnapshots,
    SendChunk,
    SnapshotOp,
    StageChunk,
    TakeSnapshot,
)
from pnyx.protocol.multipaxos.log import SnapshotBase
from pnyx.protocol.multipaxos.messages import LogMessage, Member, SnapshotChunk
from pnyx.protocol.multipaxos.records import LogRecord, ReplicaDurable
from pnyx.statemachine.base import SafeApply, SnapshotError

if TYPE_CHECKING:
    from pnyx.node.metrics import Metrics

log = logging.getLogger("pnyx.node")


def fault_line(error: BaseException) -> str:
    """What a storage fault says, in one line: the log store's own message names the
    file and what SQLite or the OS said (disk full, I/O error, read-only)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return f"its disk failed a durable write ({text}); a disk that cannot keep its " \
        "promises stops the node"


def safe_machine(machine: Machine) -> Machine:
    """`machine` as every replica must apply it: an exception in `apply` is a result."""
    return machine if isinstance(machine, SafeApply) else SafeApply(machine)  # type: ignore[arg-type,return-value]


class Driver:
    """A `Replica` and the client requests waiting on it, driven through ports.

    Build it, then `open` it with the ports and what the disk holds; `close` it
    to stop (every request still held hears that the node is shutting down).
    """

    def __init__(self, node_id: int, replica_config: ReplicaConfig, machine: Machine, *,
                 request_timeout: float, metrics: Metrics | None = None,
                 replica_class: type[Replica] = Replica) -> None:
        self.node_id = node_id
        self.replica_config = replica_config
        self.machine = safe_machine(machine)
        self.request_timeout = request_timeout
        self.metrics = metrics
        self.replica_class = replica_class
        self.replica: Replica | None = None
        self.clock: Clock | None = None
        self.disk: Disk | None = None
        self.network: Network | None = None
        self.snapshots: SnapshotPort | None = None
        self.snapshot_failures = 0  # snapshots that could not be written
        self.last_snapshot_seconds = 0.0  # how long the last one took to write
        # Called with every LogReady the replica returns, before the driver obeys it
        # (the simulator's checks); None on the node.
        self.observe: Callable[[LogReady], None] | None = None
        self._timer: Timer | None = None
        self._timer_at: float | None = None
        self._records: list[LogRecord] = []  # waiting for the next group commit
        self._records_seq = 0
        self._writing = False  # a write is in flight: new records wait for it
        self._flush_soon = False
        self._waiters: dict[int, Request] = {}  # by the id of their current attempt
        # Every request not finished, by the DEADLINE_TICK its deadline falls in. Dicts
        # used as ordered sets: a set of objects iterates in the order of their memory
        # addresses, and the simulator must replay a seed exactly.
        self._deadlines: dict[int, dict[Request, None]] = {}
        self._deadline_timer: Timer | None = None
        self._deadline_at = 0
        self._next_id = 0
        self._replayed = 0  # slots applied from the disk at open: not news to count
        self._last_leader: tuple[int | None, Any] = (None, None)
        self._last_role: Role | None = None
        self._gathered: list[tuple[int, bytes]] = []
        self._gathered_reads: list[tuple[int, bytes, ReadMode]] = []
        self._gathered_stale = False  # a request was forgotten while commands were gathered
        self.closed = False
        # The storage fault that stopped the driver (see `disk_failed`), and who hears of it.
        self.fault: BaseException | None = None
        self.on_fault: Callable[[BaseException], None] | None = None
        # Called when the configurations changed (members, their roles or addresses:
        # `replica.configs`), and once when the replica finds it was removed from the
        # cluster (it decides nothing any more: the node stops). None: nobody listens.
        self.on_members_changed: Callable[[], None] | None = None
        self.on_removed: Callable[[], None] | None = None
        self.removed = False

    # ------------------------------------------------------------ lifecycle

    def open(self, clock: Clock, disk: Disk, network: Network, durable: ReplicaDurable,
             rng: random.Random, first_request_id: int,
             snapshots: SnapshotPort | None = None,
             snapshot: SnapshotBase | None = None) -> Replica:
        """Build the replica from `durable` (what the disk holds) and `snapshot` (the
        durable snapshot the machine was restored from, if any); nothing runs until
        `begin`. Request ids count up from `first_request_id`: they must never repeat
        across restarts, or an old command still applied could complete a new request.
        Without `snapshots`, snapshots are never taken nor fetched."""
        self.clock, self.disk, self.network = clock, disk, network
        self.snapshots = snapshots
        self._next_id = first_request_id
        self.replica = self.replica_class(self.node_id, self.replica_config, rng, self.machine,
                                          durable, now=clock.time(), snapshot=snapshot)
        self._replayed = self.replica.applied
        return self.replica

    def begin(self) -> None:
        """Let the replica act (start its timers, send what it must)."""
        assert self.clock is not None
        self._handle(self._replica().tick(self.clock.time()))

    def disk_failed(self, error: BaseException) -> None:
        """A durable write failed (full disk, I/O error, read-only file system, failed
        fsync): stop for good. The rule for every storage fault, in this one place —
        a disk that cannot keep promises stops the node. Never retried: after a failed
        fsync nobody knows what the disk holds, and a replica that went on could
        answer from a promise or acceptance the disk does not have."""
        if self.fault is not None:
            return
        self.fault = error
        self.close()
        if self.on_fault is not None:
            self.on_fault(error)
        else:  # nobody to tell but the log
            log.error("node %s stopped: %s", self.node_id, fault_line(error))

    def close(self) -> None:
        """Stop: no more events reach the replica; every request held hears it."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        gathered = {rid for rid, _ in self._gathered}
        self._gathered = []
        self._gathered_reads = []
        requests = [r for members in self._deadlines.values() for r in members]
        self._deadlines.clear()
        for request in requests:
            handed = request.rid is not None and request.rid not in gathered
            self._forget(request)
            request.finish(request.shut_down(handed))

    # ------------------------------------------------------------- requests

    def submit_nowait(self, command: bytes, done: Callable[[Outcome], None], *,
                      timeout: float | None = None) -> Request:
        """Start getting `command` chosen and applied; `done(outcome)` is called once,
        with its result or why not within `timeout`. No task or future per request:
        the fast path of the client protocols. Cancel with the returned handle."""
        if self.metrics is not None:
            self.metrics.proposed(1)
        # A command whose outcome is unknown is NOT resubmitted here: it may still be
        # chosen, and a second copy would apply twice on a machine without
        # de-duplication. The caller retries with its own request identity (the HTTP
        # and binary APIs do, with the key-value machine's idempotency keys).
        return self._start(None, done, timeout, retry_unknown=False, timed=True,
                           command=command)

    def read_nowait(self, query: bytes, mode: ReadMode, done: Callable[[Outcome], None], *,
                    timeout: float | None = None) -> Request:
        """Like `submit_nowait`, for a read with `mode`'s guarantee."""
        return self._start(None, done, timeout, retry_unknown=True, timed=False,
                           command=query, mode=mode)

    def change_members_nowait(self, done: Callable[[Outcome], None], *,
                              add: tuple[Member, ...] = (), remove: tuple[int, ...] = (),
                              promote: tuple[int, ...] = (), move: tuple[Member, ...] = (),
                              base: int | None = None,
                              timeout: float | None = None) -> Request:
        """Start a membership change (`pnyx.protocol.multipaxos.membership`): `add`
        members (learners unless `voter`; a learner with `promote` is made a voter by
        the leader once it has caught up), `remove` or `promote` ids, `move` members to
        new addresses (their `peer` and `http`). Made against
        configuration version `base` (None: the latest this member knows): if another
        change got in first, it fails with `Code.CONFLICT`. `done(outcome)` once it was
        applied (ok), refused (CONFLICT, BAD_REQUEST, REFUSED) or not within `timeout`.
        An aborted change (outcome unknown) is not retried: it may still be chosen."""
        def attempt(rid: int) -> LogReady:
            replica = self._replica()
            version = replica.membership.latest.version if base is None else base
            return replica.change_members(rid, version, add=add, remove=remove,
                                          promote=promote, move=move, now=self._now())
        return self._start(attempt, done, timeout, retry_unknown=False, timed=False)

    # The request machinery: attempts, the retry pause between them, one deadline.

    def _start(self, attempt: Callable[[int], LogReady | None] | None,
               done: Callable[[Outcome], None], timeout: float | None, *,
               retry_unknown: bool, timed: bool, command: bytes | None = None,
               mode: ReadMode | None = None) -> Request:
        clock = self.clock
        if clock is None:
            raise RuntimeError("the node has not started")
        request = Request(self, attempt, done, clock.time()
                          + (timeout or self.request_timeout), retry_unknown, command, mode)
        if self.closed:
            request.finish(SHUTTING_DOWN)
            return request
        if timed and self.metrics is not None:
            # Wall time, for the latency histogram only (the simulator has no metrics).
            request.started = time.perf_counter()
        # Deadlines are kept in buckets of DEADLINE_TICK: adding and removing a request
        # is O(1), and one timer serves them all (a request gives up at most a tick late).
        request.bucket = bucket = math.ceil(request.deadline / DEADLINE_TICK)
        members = self._deadlines.get(bucket)
        if members is None:
            members = self._deadlines[bucket] = {}
            if self._deadline_timer is None or bucket < self._deadline_at:
                self._arm_deadlines(bucket)
        members[request] = None
        self._attempt(request)
        return request

    def _attempt(self, request: Request) -> None:
        if request.finished:
            return
        if self.closed:
            request.finish(SHUTTING_DOWN)
            return
        request.retry_handle = None
        self._next_id += 1
        request.rid = rid = self._next_id
        self._waiters[rid] = request
        if request.attempt is None:
            mode = request.mode
            if mode is None:
                # A command is held until the end of this turn of the clock, and
                # everything gathered by then is submitted at once (`_submit_gathered`):
                # commands that arrive together share a slot, one Accept round and one
                # group commit.
                gathered = self._gathered
                gathered.append((rid, request.command))  # type: ignore[arg-type]
                if len(gathered) == 1 and not self._gathered_reads:
                    self.clock.call_soon(self._submit_gathered)  # type: ignore[union-attr]
                return
            if mode != "stale":
                # Reads are gathered like commands: the replica takes those of one turn
                # in one call, so it runs its bookkeeping once for them all, and a
                # follower asks the leader for one read index for them all.
                reads = self._gathered_reads
                reads.append((rid, request.command, mode))  # type: ignore[arg-type]
                if len(reads) == 1 and not self._gathered:
                    self.clock.call_soon(self._submit_gathered)  # type: ignore[union-attr]
                return
            # Answered at once, from local state: nothing to share.
            ready = self._replica().read(rid, request.command,  # type: ignore[arg-type]
                                         mode, self._now())
            self._handle(ready)
            return
        ready = request.attempt(rid)
        if ready is not None:
            self._handle(ready)

    def _attempt_done(self, request: Request, outcome: Outcome) -> None:
        """An attempt's outcome: the request's, or another attempt after a pause."""
        request.rid = None
        if outcome.ok or not outcome.code.retryable:
            if outcome.ok and request.started and self.metrics is not None:
                self.metrics.observe_commit_latency(time.perf_counter() - request.started)
            request.finish(outcome)
            return
        if outcome.unknown and not request.retry_unknown:
            request.finish(outcome)
            return
        request.last = outcome
        clock = self._clock()
        remaining = request.deadline - clock.time()
        if remaining <= 0:
            request.finish(request.gave_up())
        else:
            request.retry_handle = clock.call_later(min(RETRY_PAUSE, remaining),
                                                    self._attempt, request)

    def _forget(self, request: Request) -> None:
        """Stop `request` at the replica (a command may still be applied)."""
        if request.rid is not None:
            self._waiters.pop(request.rid, None)
            if self._gathered or self._gathered_reads:  # may not be at the replica yet
                self._gathered_stale = True
            if self.replica is not None:
                self.replica.cancel(request.rid)
            request.rid = None
        if request.retry_handle is not None:
            request.retry_handle.cancel()
            request.retry_handle = None

    def _drop_deadline(self, request: Request) -> None:
        """`request` is finished: it no longer has a deadline to keep."""
        members = self._deadlines.get(request.bucket)
        if members is not None:
            members.pop(request, None)

    def _arm_deadlines(self, bucket: int) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = bucket
        self._deadline_timer = self._clock().call_at(bucket * DEADLINE_TICK, self._expire)

    def _expire(self) -> None:
        """Give up on the requests whose deadline passed; re-arm for the next ones."""
        self._deadline_timer = None
        # When the timer of a bucket fires, the loop's clock may read a hair before
        # `bucket * DEADLINE_TICK` (floating point: uvloop's clock reads whole
        # milliseconds, 2.05 where the bucket's time is 2.0500000000000003). Without the
        # microsecond of slack the bucket was kept and its timer re-armed for a moment
        # already past: the loop spun until the clock moved on.
        now = self._clock().time() + 1e-6
        for bucket in [b for b in self._deadlines if b * DEADLINE_TICK <= now]:
            for request in self._deadlines.pop(bucket):
                self._forget(request)
                request.finish(request.gave_up())
        if self._deadlines:
            self._arm_deadlines(min(self._deadlines))

    def _submit_gathered(self) -> None:
        gathered, self._gathered = self._gathered, []
        reads, self._gathered_reads = self._gathered_reads, []
        if self._gathered_stale:  # not handed over yet, and no longer wanted: need never be
            self._gathered_stale = False
            gathered = [g for g in gathered if g[0] in self._waiters]
            reads = [r for r in reads if r[0] in self._waiters]
        if gathered and not self.closed:
            self._handle(self._replica().submit_many(gathered, self._now()))
        if reads and not self.closed:
            self._handle(self._replica().read_many(reads, self._now()))

    # ------------------------------------------------------------- events in

    def deliver(self, message: LogMessage) -> None:
        """A message from a peer (already checked to come from who it says)."""
        if not self.closed:
            self._handle(self._replica().step(message, self._now()))

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self.closed:
            self._handle(self._replica().tick(self._now()))

    # ----------------------------------------------------------- effects out

    def _handle(self, ready: LogReady) -> None:
        if self.closed:
            return
        if self.observe is not None:
            self.observe(ready)
        if ready.persist:
            self._persist(ready.persist, ready.persist_seq)
        if ready.send:
            self._send(ready.send)
        if ready.snapshots:
            for op in ready.snapshots:
                self._snapshot_op(op)
        for request_id, outcome in ready.outcomes:
            request = self._waiters.pop(request_id, None)
            if request is not None:
                self._attempt_done(request, outcome)
        if ready.members_changed and self.on_members_changed is not None:
            self.on_members_changed()
        if ready.removed and not self.removed:
            self.removed = True
            if self.on_removed is not None:
                self.on_removed()
        if self.metrics is not None:
            self._count(ready)
        if ready.wake_at is not None:
            self._wake_at(ready.wake_at)

    def _persist(self, records: list[LogRecord], seq: int) -> None:
        """Queue `records` for the next group commit (see `_flush`)."""
        self._records.extend(records)
        self._records_seq = seq
        if not self._writing and not self._flush_soon:
            # Not at once: the records of the rest of this turn go in the same write.
            self._flush_soon = True
            self._clock().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        if self._writing or not self._records or self.closed:
            return
        records, seq = self._records, self._records_seq
        self._records = []
        self._writing = True
        started = time.perf_counter() if self.metrics is not None else 0.0
        assert self.disk is not None
        self.disk.write(records, lambda error: self._written(error, seq, len(records), started))

    def _written(self, error: BaseException | None, seq: int, count: int,
                 started: float) -> None:
        self._writing = False
        if self.closed:
            return  # stopping (or stopped by an earlier failure): nothing more is sent
        if error is not None:
            self.disk_failed(error)
            return
        if self.metrics is not None:
            self.metrics.observe_commit(time.perf_counter() - started, count)
        self._handle(self._replica().persisted(seq))
        if self._records:
            self._flush()

    # ------------------------------------------------------------ snapshots

    def _snapshot_op(self, op: SnapshotOp) -> None:
        port = self.snapshots
        if port is None:
            if isinstance(op, TakeSnapshot):  # nowhere to write it: the log stays whole
                self._clock().call_soon(self._snapshotted, op.slot, op.index, 0.0, 0, None)
            return
        match op:
            case TakeSnapshot(slot=slot, index=index, chunks=chunks, membership=membership):
                started = time.perf_counter()
                port.save(slot, index, chunks, lambda size, error: self._snapshotted(
                    slot, index, started, size, error), membership)
            case SendChunk(dst=dst, slot=slot, offset=offset, size=size):
                port.read(slot, offset, size,
                          lambda data, total: self._chunk_read(dst, slot, offset, data, total))
            case BeginStaging(slot=slot):
                port.begin_staging(slot, lambda size: self._staged(slot, size))
            case StageChunk(slot=slot, offset=offset, data=data):
                port.stage(slot, offset, data, lambda size: self._staged(slot, size))
            case InstallSnapshot(slot=slot):
                port.install(slot, lambda info, body, error: self._install(slot, info, body,
                                                                           error))
            case KeepSnapshots(slots=slots):
                port.keep(slots)

    def _snapshotted(self, slot: int, index: int, started: float, size: int,
                     error: BaseException | None) -> None:
        if self.closed:
            return
        if error is not None:
            self.snapshot_failures += 1
            log.warning("node %s: snapshot of slot %s not written (%s); the log is kept "
                        "whole and the next snapshot tries again", self.node_id, slot,
                        " ".join(str(error).split()) or type(error).__name__)
            size = 0
        elif started:
            self.last_snapshot_seconds = time.perf_counter() - started
        self._handle(self._replica().snapshotted(slot, index, size, self._now()))

    def _chunk_read(self, dst: int, slot: int, offset: int, data: bytes | None,
                    total: int) -> None:
        if self.closed:
            return
        if data is None:
            self._handle(self._replica().snapshot_gone(dst))
            return
        assert self.network is not None
        self.network.send(dst, SnapshotChunk(self.node_id, slot, offset, total, data,
                                             zlib.crc32(data)))

    def _staged(self, slot: int, size: int) -> None:
        if not self.closed:
            self._handle(self._replica().staged(slot, size, self._now()))

    def _install(self, slot: int, info: SnapshotBase | None, body: bytes | None,
                 error: BaseException | None) -> None:
        if self.closed:
            return
        replica = self._replica()
        if error is not None or info is None or body is None:
            log.warning("node %s: snapshot of slot %s from a peer refused (%s); fetching "
                        "it again", self.node_id, slot, error)
            self._handle(replica.staged(slot, 0, self._now()))
            return
        if info.slot > replica.applied:  # else we applied past it meanwhile: ours is newer
            try:
                self.machine.restore(body)  # type: ignore[attr-defined]
            except SnapshotError as exc:
                # It passed the file's checksum, so the machine and the file disagree on
                # the format: another version of the machine. Nothing safe to go on with.
                self.disk_failed(exc)
                return
        self._handle(replica.installed(info.slot, info.index, info.size, self._now(),
                                       getattr(info, "membership", b"")))

    def _send(self, send: list[tuple[int, LogMessage]]) -> None:
        network = self.network
        assert network is not None
        me = self.node_id
        for dst, message in send:
            if dst == me:
                self._clock().call_soon(self.deliver, message)
            else:
                network.send(dst, message)

    def _wake_at(self, when: float) -> None:
        if self._timer_at is not None and self._timer_at <= when and self._timer is not None:
            return  # an earlier wake-up is already set; the replica re-asks after it
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._clock().call_at(when, self._tick)

    def _count(self, ready: LogReady) -> None:
        metrics = self.metrics
        assert metrics is not None
        applied = ready.applied
        if applied:
            if applied[0][0] <= self._replayed:  # the log replayed at open is not news
                applied = [(slot, value) for slot, value in applied if slot > self._replayed]
            if applied:
                metrics.chosen(len(applied), sum(len(v.commands) for _, v in applied))
                for _, value in applied:
                    metrics.observe_batch(len(value.commands))
        r = self._replica()
        role = r.role
        if role is not self._last_role:
            self._last_role = role
            metrics.set_role(role.value)
            if role is Role.CANDIDATE:
                metrics.election_started()
        leader = r.leader
        if leader is not None:
            current = (leader, r.ballot if role is Role.LEADER else r.leader_ballot)
            if current != self._last_leader:
                self._last_leader = current
                metrics.leader_changed()

    # ------------------------------------------------------------- queries

    def commit_index(self) -> int:
        """Commands in the slots known chosen (1..commit): the index a write reaches
        once chosen, which may run ahead of the index applied so far."""
        r = self._replica()
        index = r.applied_index
        for slot in range(r.applied + 1, r.commit + 1):
            index += len(r.chosen[slot].commands)
        return index

    def _now(self) -> float:
        return self._clock().time()

    def _clock(self) -> Clock:
        if self.clock is None:
            raise RuntimeError("the node has not started")
        return self.clock

    def _replica(self) -> Replica:
        if self.replica is None:
            raise RuntimeError("the node has not started")
        return self.replica
