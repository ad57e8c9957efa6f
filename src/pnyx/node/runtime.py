"""The node: a Multi-Paxos `Replica` run by asyncio, with a disk and a network.

The replica is pure; this module carries out what it asks for, on one event
loop:

- **records** go to durable storage by **group commit**: while one commit is
  in flight, the records the replica produces meanwhile wait, and go together
  in the next transaction. Only when a commit returns does the replica hear
  `persisted(seq)` — and only then may the promises and acceptances that
  depend on it leave (the replica holds them until then). The leader writes in
  a thread, a follower on the loop (see `_group_commit`);
- **messages** go to peers over TCP (`transport`), or straight back in for
  ourselves;
- **timers**: one timer, at the earliest moment the replica asked to wake;
- **requests**: `submit_nowait` and `read_nowait` call back with their outcome
  (`submit` and `read` are the same, awaited), with no task, future or timer of
  their own: deadlines are kept in buckets, one timer for all. A read that fails
  is retried until the deadline; a command whose outcome is unknown (its
  leader lost its ballot) is reported as such, for the caller to retry under
  its own request identity — only the caller's de-duplication makes that safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from pnyx.node.config import NodeConfig
from pnyx.node.transport import PeerTransport
from pnyx.protocol.multipaxos import (
    Code,
    LogReady,
    Machine,
    Outcome,
    ReadMode,
    Replica,
    ReplicaConfig,
)
from pnyx.protocol.multipaxos.messages import MalformedMessage, decode, encode
from pnyx.protocol.multipaxos.records import LogRecord, ReplicaDurable
from pnyx.protocol.quorum import QuorumSystem

log = logging.getLogger("pnyx.node")

RETRY_PAUSE = 0.02  # between attempts of one request, seconds
DEADLINE_TICK = 0.05  # how late, at most, a request gives up after its deadline, seconds
NO_QUORUM = Outcome.failed(Code.NO_LEADER, "no quorum or no leader within the request timeout",
                           unknown=True)
SHUTTING_DOWN = Outcome.failed(Code.SHUTTING_DOWN, "the node is shutting down", unknown=True)


class Request:
    """One client request at the node: its attempts so far and its one deadline.

    A read is attempted again (after `RETRY_PAUSE`) whenever an attempt fails,
    until the deadline; a command only when the failure says it was refused
    (never when its outcome is unknown). `done` hears the outcome exactly once.
    """

    __slots__ = ("attempt", "bucket", "deadline", "done", "finished", "last", "node",
                 "retry_handle", "retry_unknown", "rid", "started")

    def __init__(self, node: Node, attempt: Callable[[int], LogReady | None],
                 done: Callable[[Outcome], None], deadline: float,
                 retry_unknown: bool) -> None:
        self.node = node
        self.attempt = attempt
        self.done = done
        self.deadline = deadline
        self.retry_unknown = retry_unknown
        self.rid: int | None = None  # the id of the attempt at the replica, if any
        self.retry_handle: asyncio.TimerHandle | None = None
        self.last: Outcome | None = None  # the last attempt's failure
        self.finished = False
        self.started = 0.0
        self.bucket = 0

    def cancel(self) -> None:
        """The caller gave up: forget the request; `done` is not called."""
        if not self.finished:
            self.finished = True
            self.node._forget(self)
            self.node._drop_deadline(self)

    def finish(self, outcome: Outcome) -> None:
        if not self.finished:
            self.finished = True
            self.node._drop_deadline(self)
            try:
                self.done(outcome)
            except Exception:
                # The caller's bug must not cost the other requests answered with it.
                log.exception("a request's done callback failed")

    def gave_up(self) -> Outcome:
        """The outcome of a request whose deadline passed, from its last failure."""
        last = self.last or NO_QUORUM
        unknown = last.unknown or last.code is Code.ABORTED
        return Outcome.failed(last.code, f"unavailable: {last.error}", unknown=unknown)


class Node:
    def __init__(
        self,
        config: NodeConfig,
        store: Any,
        machine: Machine,
        metrics: Any = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.store = store
        self.machine = machine
        self.metrics = metrics
        members = tuple(sorted(config.members))
        self.replica_config = ReplicaConfig(
            members,
            QuorumSystem.majority(members),
            heartbeat_interval=config.heartbeat_interval,
            election_timeout=config.election_timeout,
            max_command=config.max_command,
        )
        self.replica: Replica | None = None
        self.transport: PeerTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._records: list[LogRecord] = []
        self._records_seq = 0
        self._writer: asyncio.Task[None] | None = None
        self._waiters: dict[int, Request] = {}  # by the id of their current attempt
        # Every request not finished, by the DEADLINE_TICK its deadline falls in.
        self._deadlines: dict[int, set[Request]] = {}
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = 0
        # Request ids must never repeat across restarts: an old command could still be
        # applied, and must not complete a new request that happens to share its id.
        self._next_id = random.getrandbits(62)
        self._last_leader: tuple[int | None, Any] = (None, None)
        self._last_role = ""
        self._gathered: list[tuple[int, bytes]] = []
        self._gathered_stale = False  # a request was forgotten while commands were gathered
        self.closed = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        durable: ReplicaDurable = self.store.load()
        self.replica = Replica(
            self.node_id, self.replica_config, random.Random(), self.machine, durable,
            now=loop.time(),
        )
        self.transport = PeerTransport(
            self.node_id, self.config.cluster_id, self.config.members,
            self.config.peer_listen, self._on_frame,
            on_peer_state=self._on_peer_state,
        )
        await self.transport.start()
        self._handle(self.replica.tick(loop.time()))
        log.debug("node %s started: %d slots chosen, applied to %d", self.node_id,
                 self.replica.commit, self.replica.applied)

    async def stop(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            await self.transport.close()
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        requests = [r for members in self._deadlines.values() for r in members]
        self._deadlines.clear()
        for request in requests:
            self._forget(request)
            request.finish(SHUTTING_DOWN)
        self.store.close()

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
        return self._start(lambda rid: self._gather(rid, command), done, timeout,
                           retry_unknown=False, timed=True)

    def read_nowait(self, query: bytes, mode: ReadMode, done: Callable[[Outcome], None], *,
                    timeout: float | None = None) -> Request:
        """Like `submit_nowait`, for a read with `mode`'s guarantee."""
        return self._start(
            lambda rid: self._replica().read(rid, query, mode, self._now()), done, timeout,
            retry_unknown=True, timed=False,
        )

    async def submit(self, command: bytes, *, timeout: float | None = None) -> Outcome:
        """Get `command` chosen and applied; its result, or why not within `timeout`."""
        return await self._wait(lambda done: self.submit_nowait(command, done, timeout=timeout))

    async def read(self, query: bytes, mode: ReadMode, *,
                   timeout: float | None = None) -> Outcome:
        return await self._wait(lambda done: self.read_nowait(query, mode, done,
                                                              timeout=timeout))

    async def _wait(self, start: Callable[[Callable[[Outcome], None]], Request]) -> Outcome:
        fut: asyncio.Future[Outcome] = self._running_loop().create_future()

        def resolve(outcome: Outcome) -> None:
            if not fut.done():  # cancelled by the caller, between its cancel and ours
                fut.set_result(outcome)

        request = start(resolve)
        try:
            return await fut
        except asyncio.CancelledError:
            request.cancel()  # the caller gave up: forget the request
            raise

    # The request machinery: attempts, the retry pause between them, one deadline.

    def _start(self, attempt: Callable[[int], LogReady | None],
               done: Callable[[Outcome], None], timeout: float | None, *,
               retry_unknown: bool, timed: bool) -> Request:
        loop = self._running_loop()
        request = Request(self, attempt, done, loop.time()
                          + (timeout or self.config.request_timeout), retry_unknown)
        if self.closed:
            request.finish(SHUTTING_DOWN)
            return request
        if timed:
            request.started = time.perf_counter()
        # Deadlines are kept in buckets of DEADLINE_TICK: adding and removing a request
        # is O(1), and one timer serves them all (a request gives up at most a tick late).
        request.bucket = bucket = math.ceil(request.deadline / DEADLINE_TICK)
        members = self._deadlines.get(bucket)
        if members is None:
            members = self._deadlines[bucket] = set()
            if self._deadline_timer is None or bucket < self._deadline_at:
                self._arm_deadlines(bucket)
        members.add(request)
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
        assert self._loop is not None
        remaining = request.deadline - self._loop.time()
        if remaining <= 0:
            request.finish(request.gave_up())
        else:
            request.retry_handle = self._loop.call_later(min(RETRY_PAUSE, remaining),
                                                         self._attempt, request)

    def _forget(self, request: Request) -> None:
        """Stop `request` at the replica (a command may still be applied)."""
        if request.rid is not None:
            self._waiters.pop(request.rid, None)
            if self._gathered:  # its command may not have reached the replica yet
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
            members.discard(request)

    def _arm_deadlines(self, bucket: int) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = bucket
        self._deadline_timer = self._running_loop().call_at(bucket * DEADLINE_TICK,
                                                            self._expire)

    def _expire(self) -> None:
        """Give up on the requests whose deadline passed; re-arm for the next ones."""
        self._deadline_timer = None
        # When the timer of a bucket fires, the loop's clock may read a hair before
        # `bucket * DEADLINE_TICK` (floating point: uvloop's clock reads whole
        # milliseconds, 2.05 where the bucket's time is 2.0500000000000003). Without the
        # microsecond of slack the bucket was kept and its timer re-armed for a moment
        # already past: the loop spun until the clock moved on.
        now = self._running_loop().time() + 1e-6
        for bucket in [b for b in self._deadlines if b * DEADLINE_TICK <= now]:
            for request in self._deadlines.pop(bucket):
                self._forget(request)
                request.finish(request.gave_up())
        if self._deadlines:
            self._arm_deadlines(min(self._deadlines))

    def _now(self) -> float:
        return self._running_loop().time()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the node has not started")
        return self._loop

    def status(self) -> dict[str, Any]:
        r = self._replica()
        transport = self.transport
        members = {
            str(pid): {
                "address": str(addr),
                "reachable": pid == self.node_id
                or (transport is not None and transport.reachable(pid)),
            }
            for pid, addr in sorted(self.config.members.items())
        }
        return {
            "id": self.node_id,
            "role": r.role.value,
            "leader": r.leader,
            "ballot": str(r.ballot if r.is_leader else r.leader_ballot),
            # Indexes count commands (as X-Pnyx-Index and a write's index do); the
            # replica applies a slot as soon as it knows it chosen, so the two agree
            # but for an instant. Slots are the log positions Paxos agrees on.
            "commit_index": r.applied_index,
            "applied_index": r.applied_index,
            "commit_slot": r.commit,
            "applied_slot": r.applied,
            "members": members,
        }

    # ------------------------------------------------------------- plumbing

    def _gather(self, rid: int, command: bytes) -> None:
        """Hold the command until the end of this loop iteration, and submit everything
        gathered by then at once: commands that arrive together share a slot, one
        Accept round and one group commit."""
        self._gathered.append((rid, command))
        if len(self._gathered) == 1:
            assert self._loop is not None
            self._loop.call_soon(self._submit_gathered)

    def _submit_gathered(self) -> None:
        gathered, self._gathered = self._gathered, []
        if self._gathered_stale:  # not proposed yet, and no longer wanted: need never be
            self._gathered_stale = False
            gathered = [g for g in gathered if g[0] in self._waiters]
        if gathered and not self.closed and self._loop is not None:
            self._handle(self._replica().submit_many(gathered, self._loop.time()))

    def _replica(self) -> Replica:
        if self.replica is None:
            raise RuntimeError("the node has not started")
        return self.replica

    def _on_frame(self, src: int, data: bytes) -> None:
        if self.closed:
            return
        try:
            message = decode(data)
        except MalformedMessage as exc:
            self._replica().dropped += 1
            log.warning("dropping a malformed message from node %s: %s", src, exc)
            return
        if message.src != src:
            self._replica().dropped += 1
            log.warning("dropping a message from node %s claiming to be from %s", src,
                        message.src)
            return
        assert self._loop is not None
        self._handle(self._replica().step(message, self._loop.time()))

    def _on_local(self, message: Any) -> None:
        if not self.closed and self._loop is not None:
            self._handle(self._replica().step(message, self._loop.time()))

    def _on_peer_state(self, peer: int, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.peer_state(peer, up)

    def _handle(self, ready: LogReady) -> None:
        if self.closed:
            return
        loop = self._loop
        assert loop is not None and self.transport is not None
        if ready.persist:
            self._records.extend(ready.persist)
            self._records_seq = ready.persist_seq
            if self._writer is None or self._writer.done():
                self._writer = loop.create_task(self._group_commit())
        last: Any = None
        data = b""
        for dst, message in ready.send:
            if dst == self.node_id:
                loop.call_soon(self._on_local, message)
            else:
                if message is not last:  # a broadcast: one message, encoded once
                    last, data = message, encode(message)
                self.transport.send(dst, data)
        for request_id, outcome in ready.outcomes:
            request = self._waiters.pop(request_id, None)
            if request is not None:
                self._attempt_done(request, outcome)
        if self.metrics is not None:
            if ready.applied:
                self.metrics.chosen(len(ready.applied),
                                    sum(len(v.commands) for _, v in ready.applied))
                for _, value in ready.applied:
                    self.metrics.observe_batch(len(value.commands))
            self._note_role()
        if ready.wake_at is not None:
            self._wake_at(ready.wake_at)

    def _note_role(self) -> None:
        r = self._replica()
        if r.role.value != self._last_role:
            self._last_role = r.role.value
            self.metrics.set_role(r.role.value)
            if r.role.value == "candidate":
                self.metrics.election_started()
        current = (r.leader, r.ballot if r.is_leader else r.leader_ballot)
        if current != self._last_leader and r.leader is not None:
            self._last_leader = current
            self.metrics.leader_changed()

    def _wake_at(self, when: float) -> None:
        if self._timer_at is not None and self._timer_at <= when and self._timer is not None:
            return  # an earlier wake-up is already set; the replica re-asks after it
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self.closed and self._loop is not None:
            self._handle(self._replica().tick(self._loop.time()))

    async def _group_commit(self) -> None:
        while self._records and not self.closed:
            records, seq = self._records, self._records_seq
            self._records = []
            started = time.perf_counter()
            try:
                if self._replica().is_leader:
                    # The leader's own acceptance is one vote of several: the followers can
                    # choose a slot while its disk is slow, and its loop goes on serving
                    # clients meanwhile. So it writes in a thread.
                    await asyncio.to_thread(self.store.append, records)
                else:
                    # Everything a follower would answer waits for this write anyway;
                    # writing on the loop saves two thread hand-offs per group commit
                    # (and, on a busy machine, the wait for a CPU each of them costs).
                    self.store.append(records)
            except Exception:
                # A disk that cannot be written cannot keep promises: stop rather than lie.
                log.exception("node %s: cannot write its log; stopping", self.node_id)
                self.closed = True
                raise
            if self.metrics is not None:
                self.metrics.observe_commit(time.perf_counter() - started, len(records))
            self._handle(self._replica().persisted(seq))
