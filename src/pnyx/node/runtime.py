"""The node: the `Driver` over asyncio, TCP and SQLite.

Everything the replica asks for is carried out by `pnyx.node.driver.Driver`
(group commit, persist-before-send, wake-ups, the request machinery); the
simulator runs that same class. This module supplies the real ports:

- the **clock** is the asyncio event loop itself (same method names);
- the **disk** is the log store (`pnyx.storage`), written by `AsyncioDisk`:
  the leader writes in a thread, a follower on the loop;
- the **network** is `PeerTransport` (TCP), messages encoded once per broadcast;

and the asyncio face of the requests (`submit` and `read`, awaited) and the
node's `status` (each member's role as seen here, and where it serves clients, as
its peer Hello advertised) and `recent_log` (the last slots, for observers).

A storage fault stops the node (`Driver.disk_failed`): it closes its peer
links at once, so no member counts it as reachable, reports itself
`stopped` (never leader) to whoever still asks, and `stopped_by_fault()`
returns the error, for `pnyx serve` to release the client ports and exit.

**A member cut off answers at once.** A follower that has missed the leader for
`CUT_OFF_AFTER` election timeouts is cut off (`cut_off()`) when an election
cannot help it: a member refused it a pre-vote because it still hears a leader,
and named that leader (the bridge: pre-vote keeps it from deposing a leader the
others see), or it
reaches no quorum of members (a minority). Otherwise it waits, as an election
after a leader's crash will give it a leader. A leader is cut off when it has
heard from no quorum for an election timeout. A member cut off refuses writes and linearizable
reads at once with `Code.CUT_OFF` (HTTP 503 with `Retry-After` and the leader it
last followed, `leader_hint()`; binary `unavailable`), and fails the requests it
held when it became so, rather than hold them until their timeout, so its
clients go to another member now. A command it never sent anywhere fails for
certain; one it had forwarded or proposed may still be chosen (`unknown`).
Quorum and stale reads are still served: a quorum may be within reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from pnyx.node.config import NodeConfig
from pnyx.node.driver import Driver
from pnyx.node.metrics import Metrics
from pnyx.node.requests import NO_QUORUM, SHUTTING_DOWN, Request
from pnyx.node.snapshots import ThreadSnapshots
from pnyx.node.transport import PeerTransport
from pnyx.protocol.multipaxos import Code, Machine, Outcome, ReadMode, Replica
from pnyx.protocol.multipaxos.election import Role
from pnyx.protocol.multipaxos.messages import (
    LogMessage,
    MalformedMessage,
    PreVoteReply,
    decode,
    encode,
)
from pnyx.protocol.multipaxos.records import LogRecord, ReplicaDurable

log = logging.getLogger("pnyx.node")

# Election timeouts a follower must have missed the leader for before it may be cut off
# (then only if an election cannot help it: see the module's docstring): past the time
# an election after a leader's crash takes, a timeout drawn in [1, 2) of them and a round.
CUT_OFF_AFTER = 2.0
MAX_RECENT = 256  # slots `recent_log` describes at most, however many are asked for
_WILDCARD = frozenset({"", "0.0.0.0", "::", "*"})


def advertised(config: NodeConfig) -> tuple[str, str]:
    """Where this member serves clients, as its peers are told: the HTTP base URL
    (https with client-port TLS) and the binary client address; "" for none. A
    wildcard bind is advertised under the host the peers dial this member at."""
    def address(bound: Any) -> str:
        if bound is None:
            return ""
        host = bound.host
        if host in _WILDCARD:
            host = self_host.host
        return f"[{host}]:{bound.port}" if ":" in host else f"{host}:{bound.port}"

    self_host = config.members[config.node_id]
    http = address(config.http)
    scheme = "https" if config.cert_file is not None else "http"
    return (f"{scheme}://{http}" if http else "", address(config.client))

__all__ = ["NO_QUORUM", "SHUTTING_DOWN", "AsyncioDisk", "Node", "Request", "TcpNetwork"]


class AsyncioDisk:
    """The log store as the driver's disk, on the event loop."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop,
                 in_thread: Callable[[], bool]) -> None:
        self.store = store
        self.loop = loop
        self.in_thread = in_thread
        self.pending: asyncio.Future[None] | None = None  # the last write in a thread

    def write(self, records: list[LogRecord],
              done: Callable[[BaseException | None], None]) -> None:
        if self.in_thread():
            # The leader's own acceptance is one vote of several: the followers can
            # choose a slot while its disk is slow, and its loop goes on serving
            # clients meanwhile. So it writes in a thread.
            try:
                future = self.loop.run_in_executor(None, self.store.append, records)
            except RuntimeError as exc:  # the executor is shut down: nothing was written
                done(exc)
                return
            # A cancelled write is not known to be durable: it is reported as failed,
            # never as done, so no message waiting for it can leave.
            future.add_done_callback(lambda f: done(
                asyncio.CancelledError("the write was cancelled") if f.cancelled()
                else f.exception()))
            self.pending = future
            return
        # Everything a follower would answer waits for this write anyway; writing on
        # the loop saves two thread hand-offs per group commit (and, on a busy machine,
        # the wait for a CPU each of them costs).
        try:
            self.store.append(records)
        except Exception as exc:
            done(exc)
            return
        done(None)

    async def drain(self) -> None:
        """Wait for the write in flight, if any."""
        if self.pending is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.pending


class TcpNetwork:
    """`PeerTransport` as the driver's network: a broadcast is encoded once."""

    def __init__(self, transport: PeerTransport) -> None:
        self.transport = transport
        self._last: Any = None
        self._data = b""

    def send(self, dst: int, message: LogMessage) -> None:
        if message is not self._last:
            self._last, self._data = message, encode(message)
        self.transport.send(dst, self._data)


class Node(Driver):
    """A member of a cluster: the driver over the event loop, `store` and peers over TCP.

    `start` loads the replica's durable state from `store` and listens for peers;
    `stop` answers every request still held, closes the peers and the store.
    `cut_off_after`: election timeouts a follower must have missed the leader for before
    it may be cut off (None: never cut off; for tests of the request machinery alone).
    """

    cut_off_after: float | None = CUT_OFF_AFTER

    def __init__(
        self,
        config: NodeConfig,
        store: Any,
        machine: Machine,
        metrics: Metrics | None = None,
        snapshot_store: Any = None,
    ) -> None:
        """`snapshot_store`: the node's `SnapshotStore`; without one it takes no
        snapshots and its log is never compacted."""
        super().__init__(config.node_id, config.replica_config(), machine,
                         request_timeout=config.request_timeout, metrics=metrics)
        self.config = config
        self.store = store
        self.snapshot_store = snapshot_store
        self.snapshot_port: ThreadSnapshots | None = None
        self.transport: PeerTransport | None = None
        self._disk: AsyncioDisk | None = None
        self._faulted: asyncio.Future[BaseException] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.on_fault = self._on_fault
        # Why this member is cut off, as of the last look (every heartbeat interval);
        # None when it is not. Checked per request, so it costs one attribute read.
        self._cut_off: str | None = None
        self._followed: int | None = None  # the leader it last followed, for hints
        # The last pre-vote refused by a member that still hears a leader: when, by whom,
        # and which leader. Since we last heard a leader ourselves, it says we are cut off.
        self._denied: tuple[float, int, int] = (-1e18, 0, 0)
        self._watch_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._faulted = loop.create_future()
        durable: ReplicaDurable = self.store.load()
        http, client = advertised(self.config)
        self.transport = PeerTransport(
            self.node_id, self.config.cluster_id, self.config.members,
            self.config.peer_listen, self._on_frame,
            on_peer_state=self._on_peer_state, tls=self.config.peer_tls,
            http=http, client=client,
            # Judging peers dead by their silence (`dead_after`) is off for now: it closed
            # healthy TLS links in tests/test_peer_tls.py (not understood yet). Connections
            # are made again within about half an election timeout.
            dead_after=None,
            connect_timeout=self.config.election_timeout / 2,
            reconnect_max=self.config.election_timeout / 2,
        )
        self._disk = AsyncioDisk(self.store, loop, lambda: self._replica().is_leader)
        snapshot = None
        if self.snapshot_store is not None:
            snapshot = self.snapshot_store.latest()
            if snapshot is not None:
                # The newest snapshot, then only the log's tail: a restart costs the
                # state's size, not the history's length. (The store verified the file.)
                self.machine.restore(self.snapshot_store.body(snapshot))  # type: ignore[attr-defined]
            self.snapshot_port = ThreadSnapshots(
                self.snapshot_store, loop, cluster_id=self.config.cluster_id,
                members=tuple(sorted(self.config.members)))
        if self.metrics is not None:
            self.metrics.snapshots = self.snapshot_status  # type: ignore[assignment]
        # Request ids must never repeat across restarts: a random start in 2^62.
        replica = self.open(loop, self._disk, TcpNetwork(self.transport), durable,
                            random.Random(), random.getrandbits(62), self.snapshot_port,
                            snapshot)
        await self.transport.start()
        self.begin()
        self._watch()
        log.debug("node %s started: %d slots chosen, applied to %d", self.node_id,
                  replica.commit, replica.applied)

    async def stop(self) -> None:
        if self._watch_handle is not None:
            self._watch_handle.cancel()
        self.close()
        if self._closing is not None:
            await self._closing
        if self.transport is not None:
            await self.transport.close()
        if self._disk is not None:
            await self._disk.drain()
        if self.snapshot_port is not None:
            self.snapshot_port.close()
        self.store.close()

    async def stopped_by_fault(self) -> BaseException:
        """Wait until a storage fault stops the node; the error (see `Driver.disk_failed`)."""
        if self._faulted is None:
            raise RuntimeError("the node has not started")
        return await asyncio.shield(self._faulted)

    def _on_fault(self, error: BaseException) -> None:
        # Peers stop counting us at once: our links close now, not when the process ends.
        if self.transport is not None:
            self._closing = asyncio.get_running_loop().create_task(self.transport.close())
        if self._faulted is not None and not self._faulted.done():
            self._faulted.set_result(error)

    # ------------------------------------------------------------- requests

    def submit_nowait(self, command: bytes, done: Callable[[Outcome], None], *,
                      timeout: float | None = None) -> Request:
        if self._cut_off is not None and (why := self.cut_off()) is not None:
            return self._refuse(done, why)
        return super().submit_nowait(command, done, timeout=timeout)

    def read_nowait(self, query: bytes, mode: ReadMode, done: Callable[[Outcome], None], *,
                    timeout: float | None = None) -> Request:
        if mode == "linearizable" and self._cut_off is not None and (
                why := self.cut_off()) is not None:
            return self._refuse(done, why)
        return super().read_nowait(query, mode, done, timeout=timeout)

    def cut_off(self) -> str | None:
        """Why this member can serve no write nor linearizable read now (see the module's
        docstring), or None if it may."""
        r = self.replica
        if r is None or self.clock is None or self.closed:
            return None
        election = r.election
        now = self.clock.time()
        timeout = self.config.election_timeout
        if election.role is Role.LEADER:
            silent = now - election.quorum_seen_at
            if self.cut_off_after is None or silent <= timeout:
                return None
            return (f"node {self.node_id} leads but has heard from no quorum for "
                    f"{silent:.1f} s; ask another member")
        if election.leader is not None:
            self._followed = election.leader
        silent = now - election.heard_at
        if self.cut_off_after is None or silent < self.cut_off_after * timeout:
            return None
        transport = self.transport
        # Heard from lately, not merely connected: a connection into a partition stays
        # up (TCP has not noticed), and by now every member that can reach us has said
        # something (a pre-vote round has come and gone).
        reached = {self.node_id} | {
            pid for pid in election.others
            if transport is not None and transport.heard_within(pid, 2 * timeout)}
        denied_at, seen_by, leader = self._denied
        if denied_at > election.heard_at and now - denied_at <= 2 * timeout:
            cause = f"node {seen_by} still hears leader {leader} and refused it an election"
            self._followed = leader
        elif not election.quorums.is_phase1_quorum(reached):
            cause = f"it reaches {len(reached)} of {len(election.others) + 1} members"
        else:
            return None  # an election may well give it a leader: wait for it
        hint = self.leader_hint()
        last = (f"; the last leader it followed is node {hint['leader']}"
                + (f" at {hint['leader_http']}" if hint["leader_http"] else "")
                if hint["leader"] is not None else "")
        return (f"node {self.node_id} has heard from no leader for {silent:.1f} s ({cause})"
                f"{last}; ask another member")

    def leader_hint(self) -> dict[str, Any]:
        """The leader this member last followed and where it serves HTTP (None: unknown)."""
        leader = self._followed
        heard = self.transport.advertised if self.transport is not None else {}
        hello = heard.get(leader) if leader is not None else None
        return {"leader": leader, "leader_http": (hello.http or None) if hello else None}

    def _refuse(self, done: Callable[[Outcome], None], why: str) -> Request:
        """A request refused at once: never handed to the replica, so it fails for certain."""
        clock = self._clock()
        request = Request(self, lambda rid: None, done, clock.time(), False)
        request.finish(Outcome.failed(Code.CUT_OFF, why))
        return request

    def _watch(self) -> None:
        """Every heartbeat interval: is this member cut off? If it is, the requests it
        holds fail now rather than at their timeout."""
        self._watch_handle = None
        if self.closed:
            return
        why = self._cut_off = self.cut_off()
        if why is not None:
            self._fail_held(why)
        self._watch_handle = asyncio.get_running_loop().call_later(
            self.config.heartbeat_interval, self._watch)

    def _fail_held(self, why: str) -> None:
        r = self._replica()
        # A command still waiting for a leader was never sent anywhere: it fails for
        # certain. One forwarded to a leader, or proposed, may still be chosen.
        unsent = {c.id for c in r.pipeline.unrouted}
        held = [request for members in self._deadlines.values() for request in members]
        for request in held:
            if request.finished:
                continue
            unknown = not request.retry_unknown and request.rid is not None and (
                request.rid not in unsent)
            self._forget(request)
            request.finish(Outcome.failed(Code.CUT_OFF, why, unknown=unknown))

    async def submit(self, command: bytes, *, timeout: float | None = None) -> Outcome:
        """Get `command` chosen and applied; its result, or why not within `timeout`."""
        return await self._wait(lambda done: self.submit_nowait(command, done, timeout=timeout))

    async def read(self, query: bytes, mode: ReadMode, *,
                   timeout: float | None = None) -> Outcome:
        return await self._wait(lambda done: self.read_nowait(query, mode, done,
                                                              timeout=timeout))

    async def _wait(self, start: Callable[[Callable[[Outcome], None]], Request]) -> Outcome:
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def resolve(outcome: Outcome) -> None:
            if not fut.done():  # cancelled by the caller, between its cancel and ours
                fut.set_result(outcome)

        request = start(resolve)
        try:
            return await fut
        except asyncio.CancelledError:
            request.cancel()  # the caller gave up: forget the request
            raise

    def status(self) -> dict[str, Any]:
        r = self._replica()
        transport = self.transport
        stopped = self.closed  # the replica's last role is history, not a claim
        own = advertised(self.config)
        heard = transport.advertised if transport is not None else {}
        members = {}
        for pid, addr in sorted(self.config.members.items()):
            hello = heard.get(pid)
            # Where it serves clients: as its last Hello said (None: not heard from yet).
            http, client = own if pid == self.node_id else (
                (hello.http, hello.client) if hello is not None else (None, None))
            members[str(pid)] = {
                "address": str(addr),
                "reachable": not stopped and (
                    pid == self.node_id or (transport is not None and transport.reachable(pid))),
                "http": http or None,
                "client": client or None,
            }
        return {
            "id": self.node_id,
            "role": "stopped" if stopped else r.role.value,
            "leader": None if stopped else r.leader,
            "ballot": str(r.ballot if r.is_leader else r.leader_ballot),
            # Indexes count commands (as X-Pnyx-Index and a write's index do): the commit
            # index counts those in the slots known chosen, the applied index those
            # applied. Slots are the log positions Paxos agrees on.
            "commit_index": self.commit_index(),
            "applied_index": r.applied_index,
            "commit_slot": r.commit,
            "applied_slot": r.applied,
            "members": members,
            # Whether it votes: "new" until every member answered it started empty too,
            # "learner" if it started empty in a cluster with history (lost its disk).
            "standing": r.standing.name.lower(),
            "snapshot": self.snapshot_status(),
            # Served beyond loopback without TLS, because `--insecure` said so.
            "insecure": self.config.insecure,
        }

    def snapshot_status(self) -> dict[str, Any]:
        """The newest durable snapshot, the log kept in memory above the compacted
        floor, and transfers in flight (for status and metrics)."""
        r = self._replica()
        log_, transfer = r.log, r.transfer
        fetch = transfer.fetch
        return {
            "slot": log_.snapshot_slot,
            "index": log_.snapshot_index,
            "bytes": log_.snapshot_size,
            "taking": log_.taking or None,
            "last_seconds": round(self.last_snapshot_seconds, 6),
            "failures": self.snapshot_failures,
            "compacted_slot": log_.floor,
            "log_slots_in_memory": len(log_.chosen),
            "fetching": None if fetch is None else {
                "slot": fetch.slot, "from": fetch.source, "bytes": max(fetch.offset, 0),
                "of": fetch.total},
            "serving": len(transfer.holds),
            "installed": transfer.installs,
        }

    def recent_log(self, n: int) -> dict[str, Any]:
        """The last `n` slots of this replica (`recent_slots`)."""
        return {"id": self.node_id, **recent_slots(self._replica(), n)}

    # ------------------------------------------------------------- plumbing

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
        if type(message) is PreVoteReply and message.leader and self.clock is not None:
            # It still hears a leader we do not: we are cut off from that leader.
            self._denied = (self.clock.time(), src, message.leader)
        self.deliver(message)

    def _on_peer_state(self, peer: int, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.peer_state(peer, up)


def recent_slots(r: Replica, n: int) -> dict[str, Any]:
    """The last `n` slots of replica `r` (at most `MAX_RECENT`), oldest first: each
    chosen, accepted but not known chosen, in flight (the leader's, with the acceptors
    that accepted it so far) or a gap; with its ballot where known and its number of
    commands (0: a no-op). Read through the units' accessors, over those slots only."""
    n = max(0, min(n, MAX_RECENT))
    flying = r.pipeline.in_flight()
    top = max(r.log.max_chosen, r.acceptor.max_accepted, flying[-1][0] if flying else 0)
    first = max(1, top - n + 1)
    chosen = r.log.chosen_in(first, top)
    accepted = r.acceptor.accepted_in(first, top)
    voting = {slot: (ballot, voters, size) for slot, ballot, voters, size in flying}
    slots: list[dict[str, Any]] = []
    for slot in range(first, top + 1) if n else ():
        entry = accepted.get(slot)
        value = chosen.get(slot)
        row: dict[str, Any] = {"slot": slot}
        if value is not None:
            # The ballot it was chosen in is known when this acceptor holds that value.
            same = entry is not None and (entry.value is value or entry.value == value)
            row.update(state="chosen", ballot=str(entry.ballot) if same else None,
                       commands=len(value.commands))
        elif slot in voting:
            ballot, voters, size = voting[slot]
            row.update(state="in_flight", ballot=str(ballot), votes=list(voters), commands=size)
        elif entry is not None:
            row.update(state="accepted", ballot=str(entry.ballot),
                       commands=len(entry.value.commands))
        else:
            row.update(state="gap")
        slots.append(row)
    return {
        "commit_slot": r.commit,
        "applied_slot": r.applied,
        "slots": slots,
        "in_flight": [{"slot": slot, "ballot": str(ballot), "votes": list(voters)}
                      for slot, ballot, voters, _ in flying[:MAX_RECENT]],
    }
