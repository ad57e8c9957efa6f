"""The node: a Multi-Paxos `Replica` run by asyncio, with a disk and a network.

The replica is pure; this module carries out what it asks for, on one event
loop:

- **records** go to durable storage by **group commit**: while one commit is
  in flight, the records the replica produces meanwhile wait, and go together
  in the next transaction. Only when a commit returns does the replica hear
  `persisted(seq)` — and only then may the promises and acceptances that
  depend on it leave (the replica holds them until then);
- **messages** go to peers over TCP (`transport`), or straight back in for
  ourselves;
- **timers**: one timer, at the earliest moment the replica asked to wake;
- **requests**: `submit` and `read` wait for their outcome. A read that fails
  is retried until the deadline; a command whose outcome is unknown (its
  leader lost its ballot) is reported as such, for the caller to retry under
  its own request identity — only the caller's de-duplication makes that safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from pnyx.node.config import NodeConfig
from pnyx.node.transport import PeerTransport
from pnyx.protocol.log_messages import MalformedMessage, decode, encode
from pnyx.protocol.log_records import LogRecord, ReplicaDurable
from pnyx.protocol.quorum import QuorumSystem
from pnyx.protocol.replica import LogReady, Machine, Outcome, ReadMode, Replica, ReplicaConfig

log = logging.getLogger("pnyx.node")

RETRY_PAUSE = 0.02  # between attempts of one request, seconds


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
        self._waiters: dict[int, asyncio.Future[Outcome]] = {}
        # Request ids must never repeat across restarts: an old command could still be
        # applied, and must not complete a new request that happens to share its id.
        self._next_id = random.getrandbits(62)
        self._last_leader: tuple[int | None, Any] = (None, None)
        self._last_role = ""
        self._gathered: list[tuple[int, bytes]] = []
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
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(Outcome(False, error="the node is shutting down", unknown=True))
        self.store.close()

    # ------------------------------------------------------------- requests

    async def submit(self, command: bytes, *, timeout: float | None = None) -> Outcome:
        """Get `command` chosen and applied; its result, or why not within `timeout`."""
        started = time.perf_counter()
        if self.metrics is not None:
            self.metrics.proposed(1)
        # A command whose outcome is unknown is NOT resubmitted here: it may still be
        # chosen, and a second copy would apply twice on a machine without
        # de-duplication. The caller retries with its own request identity (the HTTP
        # and binary APIs do, with the key-value machine's idempotency keys).
        outcome = await self._until_done(
            lambda rid, now: self._gather(rid, command), timeout, retry_unknown=False,
        )
        if outcome.ok and self.metrics is not None:
            self.metrics.observe_commit_latency(time.perf_counter() - started)
        return outcome

    async def read(self, query: bytes, mode: ReadMode, *,
                   timeout: float | None = None) -> Outcome:
        return await self._until_done(
            lambda rid, now: self._replica().read(rid, query, mode, now), timeout
        )

    async def _until_done(self, start: Any, timeout: float | None, *,
                          retry_unknown: bool = True) -> Outcome:
        loop = self._loop
        assert loop is not None
        deadline = loop.time() + (timeout or self.config.request_timeout)
        last = Outcome(False, error="no quorum or no leader within the request timeout",
                       unknown=True)
        while not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._next_id += 1
            rid = self._next_id
            fut: asyncio.Future[Outcome] = loop.create_future()
            self._waiters[rid] = fut
            self._handle(start(rid, loop.time()))
            try:
                outcome = await asyncio.wait_for(asyncio.shield(fut), remaining)
            except TimeoutError:
                self._replica().cancel(rid)
                break
            except asyncio.CancelledError:
                self._replica().cancel(rid)  # the caller gave up: forget the request
                raise
            finally:
                self._waiters.pop(rid, None)
            if outcome.ok or not outcome.error or "too large" in outcome.error:
                return outcome
            if outcome.unknown and not retry_unknown:
                return outcome
            last = outcome
            await asyncio.sleep(min(RETRY_PAUSE, max(0.0, deadline - loop.time())))
        if last.error.startswith("aborted") or last.unknown:
            return Outcome(False, error=f"unavailable: {last.error}", unknown=True)
        return Outcome(False, error=f"unavailable: {last.error}", unknown=last.unknown)

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

    def _gather(self, rid: int, command: bytes) -> LogReady:
        """Hold the command until the end of this loop iteration, and submit everything
        gathered by then at once: commands that arrive together share a slot, one
        Accept round and one group commit."""
        self._gathered.append((rid, command))
        if len(self._gathered) == 1:
            assert self._loop is not None
            self._loop.call_soon(self._submit_gathered)
        return LogReady()

    def _submit_gathered(self) -> None:
        gathered, self._gathered = self._gathered, []
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
        for dst, message in ready.send:
            if dst == self.node_id:
                loop.call_soon(self._on_local, message)
            else:
                self.transport.send(dst, encode(message))
        for request_id, outcome in ready.outcomes:
            fut = self._waiters.get(request_id)
            if fut is not None and not fut.done():
                fut.set_result(outcome)
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
                await asyncio.to_thread(self.store.append, records)
            except Exception:
                # A disk that cannot be written cannot keep promises: stop rather than lie.
                log.exception("node %s: cannot write its log; stopping", self.node_id)
                self.closed = True
                raise
            if self.metrics is not None:
                self.metrics.observe_commit(time.perf_counter() - started, len(records))
            self._handle(self._replica().persisted(seq))
