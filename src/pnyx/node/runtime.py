"""The node: the `Driver` over asyncio, TCP and SQLite.

Everything the replica asks for is carried out by `pnyx.node.driver.Driver`
(group commit, persist-before-send, wake-ups, the request machinery); the
simulator runs that same class. This module supplies the real ports:

- the **clock** is the asyncio event loop itself (same method names);
- the **disk** is the log store (`pnyx.storage`), written by `AsyncioDisk`:
  a follower writes on the loop, the leader in a thread when its loop has other
  work meanwhile (or its disk is slow);
- the **network** is `PeerTransport` (TCP), messages encoded once per broadcast;

and the asyncio face of the requests (`submit` and `read`, awaited) and the
node's `status` (each member's role as seen here, and where it serves clients, as
its peer Hello advertised) and `recent_log` (the last slots, for observers).

**Membership** (`pnyx.protocol.multipaxos.membership`): `change_members` (awaited)
and `membership_view` (what `GET /v1/members` answers) are the node's face of the
replica's configurations. **The peers follow the configurations**: whenever the
replica's configurations change, the transport's peer table is made again
(`peer_table`): every id in a known configuration, at the address its newest
configuration gives (`Member.peer`), else the first configuration's (`--cluster`,
or for a node that joined, the cluster's answer, persisted); a joined node that
knows no configuration holding itself yet also keeps the members the join answer
named. A member removed stays a peer for `REMOVED_GRACE` seconds, so that what it
still sends reaches us and it is told it was removed (`Removed`). When the
replica finds this node removed, the node logs one line saying so and
`removed_from_cluster()` returns, for `pnyx serve` to stop (exit status 0).

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
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pnyx.node.config import Address, ConfigError, NodeConfig
from pnyx.node.driver import Driver
from pnyx.node.metrics import Metrics
from pnyx.node.requests import NO_QUORUM, SHUTTING_DOWN, Request
from pnyx.node.snapshots import ThreadSnapshots
from pnyx.node.transport import PeerTransport
from pnyx.protocol.multipaxos import Code, Machine, Outcome, ReadMode, Replica
from pnyx.protocol.multipaxos.election import Role
from pnyx.protocol.multipaxos.membership import ALPHA, Config, Member
from pnyx.protocol.multipaxos.messages import (
    LogMessage,
    MalformedMessage,
    PreVoteReply,
    Removed,
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
# A member removed stays our peer this long: what it still sends reaches us, and it is
# told it was removed (it may have missed the slots that say so). Then it is dropped,
# so a dead host is not dialled forever.
REMOVED_GRACE = 30.0
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

    self_host = config.peer_address
    http = address(config.http)
    scheme = "https" if config.cert_file is not None else "http"
    return (f"{scheme}://{http}" if http else "", address(config.client))

__all__ = ["NO_QUORUM", "SHUTTING_DOWN", "AsyncioDisk", "Node", "Request", "TcpNetwork"]


# A leader's write goes to a thread only when the loop has something to do meanwhile, or
# the disk is slow: otherwise the two hand-offs cost more than the write overlaps. Measured
# (bench/results/2026-12-03-cpu): 1 client, p50 0.92 -> 0.77 ms; always on the loop, 256
# clients lost 13 % of their writes/s; this rule, within the noise of always in a thread.
SLOW_WRITE = 0.001  # seconds: a group commit slower than this goes to a thread


class AsyncioDisk:
    """The log store as the driver's disk, on the event loop or in a thread.

    `in_thread()`: this replica's own vote is one of several (it leads), so its
    write may go to a thread. It does when `overlap()` says the loop has other work
    in flight meanwhile, or the last write took longer than `SLOW_WRITE`.
    """

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop,
                 in_thread: Callable[[], bool],
                 overlap: Callable[[], bool] = lambda: True) -> None:
        self.store = store
        self.loop = loop
        self.in_thread = in_thread
        self.overlap = overlap
        self.last_seconds = 0.0  # how long the last write took, wherever it ran
        self.pending: asyncio.Future[None] | None = None  # the last write in a thread

    def _append(self, records: list[LogRecord]) -> None:
        started = time.perf_counter()
        try:
            self.store.append(records)
        finally:
            self.last_seconds = time.perf_counter() - started

    def write(self, records: list[LogRecord],
              done: Callable[[BaseException | None], None]) -> None:
        if self.in_thread() and (self.overlap() or self.last_seconds > SLOW_WRITE):
            # The leader's own acceptance is one vote of several: the followers can
            # choose a slot while its disk is slow, and its loop goes on serving
            # clients meanwhile. So it writes in a thread.
            try:
                future = self.loop.run_in_executor(None, self._append, records)
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
            self._append(records)
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
        join_peers: Mapping[int, Address] | None = None,
    ) -> None:
        """`snapshot_store`: the node's `SnapshotStore`; without one it takes no
        snapshots and its log is never compacted. `join_peers`: for a node that joined
        (`pnyx serve --join`), the members the cluster's answer named and their
        addresses, its peers until it learns a configuration holding itself."""
        if config.joining:
            raise ConfigError("the node has not joined yet: no first configuration")
        super().__init__(config.node_id, config.replica_config(), machine,
                         request_timeout=config.request_timeout, metrics=metrics)
        self.config = config
        self.join_peers = dict(join_peers or {})
        self.on_members_changed = self._update_peers
        self.on_removed = self._on_removed
        # The transport's peers as last set, and members removed that stay peers a
        # while (`REMOVED_GRACE`): id -> (address, since when).
        self.peers: dict[int, Address] = {}
        self._departed: dict[int, tuple[Address, float]] = {}
        self._departed_timer: asyncio.TimerHandle | None = None
        self._bad_peer: set[str] = set()  # addresses that did not parse, logged once
        self._removed: asyncio.Future[int] | None = None
        self._told_removed = 0  # the configuration version a `Removed` named
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
        self._removed = loop.create_future()
        durable: ReplicaDurable = self.store.load()
        http, client = advertised(self.config)
        self.transport = PeerTransport(
            self.node_id, self.config.cluster_id, self.config.members,
            self.config.peer_listen, self._on_frame,
            on_peer_state=self._on_peer_state, tls=self.config.peer_tls,
            http=http, client=client,
            # A peer silent for two election timeouts is reconnected (an election has been
            # held by then); connections are made again within half an election timeout.
            dead_after=2 * self.config.election_timeout,
            connect_timeout=self.config.election_timeout / 2,
            reconnect_max=self.config.election_timeout / 2,
        )
        self._disk = AsyncioDisk(
            self.store, loop, lambda: self._replica().is_leader,
            overlap=lambda: (self._replica().in_flight > 1 or len(self._waiters) > 1
                             or bool(self._gathered)))
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
            self.metrics.membership = self.membership_metrics  # type: ignore[assignment]
        # Request ids must never repeat across restarts: a random start in 2^62.
        replica = self.open(loop, self._disk, TcpNetwork(self.transport), durable,
                            random.Random(), random.getrandbits(62), self.snapshot_port,
                            snapshot)
        self._update_peers()  # the configurations the disk holds, before we dial anyone
        await self.transport.start()
        self.begin()
        self._watch()
        log.debug("node %s started: %d slots chosen, applied to %d", self.node_id,
                  replica.commit, replica.applied)

    async def stop(self) -> None:
        if self._watch_handle is not None:
            self._watch_handle.cancel()
        if self._departed_timer is not None:
            self._departed_timer.cancel()
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

    async def removed_from_cluster(self) -> int:
        """Wait until this node finds it was removed from the cluster; the configuration
        version that removed it (as far as it knows). It decides nothing any more."""
        if self._removed is None:
            raise RuntimeError("the node has not started")
        return await asyncio.shield(self._removed)

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
        elif not election.is_quorum(reached, phase1=True):
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

    async def change_members(self, *, add: Iterable[Member] = (), remove: Iterable[int] = (),
                             promote: Iterable[int] = (), move: Iterable[Member] = (),
                             base: int | None = None,
                             timeout: float | None = None) -> Outcome:
        """A membership change (`Driver.change_members_nowait`): add members (learners;
        `promote=True` on one lets the leader make it a voter once caught up), remove or
        promote ids, against configuration version `base` (None: the latest known here).
        Ok once applied here; else why not (CONFLICT, BAD_REQUEST, REFUSED, or as a write:
        no leader, cut off, timeout, `unknown` when it may still take effect)."""
        if self._cut_off is not None and (why := self.cut_off()) is not None:
            return Outcome.failed(Code.CUT_OFF, why)
        adding, removing, promoting = tuple(add), tuple(remove), tuple(promote)
        moving = tuple(move)
        return await self._wait(lambda done: self.change_members_nowait(
            done, add=adding, remove=removing, promote=promoting, move=moving, base=base,
            timeout=timeout))

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
        in_force = r.configuration
        latest = r.configs[-1]
        members = {}
        for pid in sorted({self.node_id} | {m.id for c in r.configs for m in c.members}):
            addr = self.address_of(pid)
            http, client = self._client_addresses(pid)
            # Its role in the configuration in force, else in the newest holding it.
            member = _member(in_force, pid) or _member(latest, pid)
            members[str(pid)] = {
                "address": str(addr) if addr is not None else None,
                "reachable": not stopped and (
                    pid == self.node_id or (transport is not None and transport.reachable(pid))),
                "http": http or None,
                "client": client or None,
                "role": _role(member) if member is not None else "removed",
            }
        progress = r.progress if r.is_leader else {}
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
            # The configuration in force (from `start`, its first slot), those chosen to
            # come, and (on the leader) each learner's catch-up: the slot it last said it
            # applied and how far behind the leader's commit that is.
            "configuration": {
                **_config_summary(in_force),
                "pending": [_config_summary(c) for c in r.configs if c.start > in_force.start],
                "learner_progress": {str(m.id): {
                    "applied": progress.get(m.id) if r.is_leader else None,
                    "lag_slots": (max(0, r.commit - progress.get(m.id, 0))
                                  if r.is_leader else None),
                } for m in latest.members if not m.voter},
            },
            "removed": self.removed,
            # Whether it votes: "new" until every member answered it started empty too,
            # "learner" if it started empty in a cluster with history (lost its disk).
            "standing": r.standing.name.lower(),
            "snapshot": self.snapshot_status(),
            # Served beyond loopback without TLS, because `--insecure` said so.
            "insecure": self.config.insecure,
        }

    def membership_view(self) -> dict[str, Any]:
        """The configurations as `GET /v1/members` answers them (JSON-ready): the one in
        force (`version`, `start`: the first slot it governs, `members`), those chosen
        but not yet in force (`pending`), the first configuration's addresses
        (`genesis`, what a joining node needs), `alpha`, the leader known here and the
        commit slot. A member's `applied` is the leader's view of its progress (null on
        a follower: only the leader tracks it)."""
        r = self._replica()
        in_force = r.configuration
        progress = r.progress if r.is_leader else None
        return {
            "cluster_id": self.config.cluster_id,
            **self._view_of(in_force, r, progress),
            "pending": [self._view_of(c, r, progress)
                        for c in r.configs if c.start > in_force.start],
            "genesis": {str(i): str(a) for i, a in sorted(self.config.members.items())},
            "alpha": ALPHA,
            "leader": None if self.closed else r.leader,
            "commit": r.commit,
        }

    def _view_of(self, config: Config, r: Replica,
                 progress: dict[int, int] | None) -> dict[str, Any]:
        members = []
        for m in config.members:
            addr = self.address_of(m.id)
            http = m.http or _host_port(self._client_addresses(m.id)[0])
            applied = None
            if progress is not None:
                applied = r.applied if m.id == self.node_id else progress.get(m.id)
            members.append({
                "id": m.id, "peer": m.peer or (str(addr) if addr is not None else ""),
                "http": http, "role": _role(m), "promote": m.promote, "applied": applied,
                "incarnation": m.incarnation})
        return {"version": config.version, "start": config.start, "members": members}

    def _client_addresses(self, pid: int) -> tuple[str, str]:
        """Where member `pid` serves clients (HTTP base URL, binary address; "" for none
        or not known): ours as configured, a peer's as its last Hello said."""
        if pid == self.node_id:
            return advertised(self.config)
        hello = self.transport.advertised.get(pid) if self.transport is not None else None
        return (hello.http, hello.client) if hello is not None else ("", "")

    def membership_metrics(self) -> dict[str, Any]:
        """What the metrics read at each scrape: the configuration's version and first
        slot, members by role, configurations pending, and (leader) each learner's lag."""
        r = self._replica()
        in_force = r.configuration
        progress = r.progress
        latest = r.configs[-1]
        return {
            "version": in_force.version,
            "start": in_force.start,
            "voters": sum(1 for m in in_force.members if m.voter),
            "learners": sum(1 for m in in_force.members if not m.voter),
            "pending": sum(1 for c in r.configs if c.start > in_force.start),
            "lag": {m.id: max(0, r.commit - progress.get(m.id, 0))
                    for m in latest.members if not m.voter} if r.is_leader
            else {},
        }

    # ------------------------------------------------------------- membership

    def address_of(self, pid: int) -> Address | None:
        """Where the peers reach member `pid`: its newest configuration's `peer`, else the
        first configuration's address (or the join answer's); None if unknown."""
        if pid == self.node_id:
            return self.config.peer_address
        r = self.replica
        if r is not None:
            for config in reversed(r.configs):
                m = _member(config, pid)
                if m is not None and m.peer:
                    parsed = self._parse_peer(pid, m.peer)
                    if parsed is not None:
                        return parsed
                    break
        if pid in self.peers:
            return self.peers[pid]
        return self.join_peers.get(pid) or self.config.members.get(pid)

    def _parse_peer(self, pid: int, text: str) -> Address | None:
        try:
            return Address.parse(text)
        except ConfigError as exc:
            if text not in self._bad_peer:
                self._bad_peer.add(text)
                log.warning("member %s: its peer address cannot be used (%s)", pid, exc)
            return None

    def peer_table(self) -> dict[int, Address]:
        """The peers the configurations say we have now (see the module's docstring),
        without those removed lately (`_departed`)."""
        r = self._replica()
        ids = set(r.membership.members())
        if self.node_id not in ids:
            # Joined, and no configuration holding us is known yet: the members the
            # cluster's answer named are the ones who will send us the log.
            ids |= set(self.join_peers)
        table = {}
        for pid in sorted(ids - {self.node_id}):
            addr = self.address_of(pid)
            if addr is None:
                log.warning("member %s has no known address: it is not dialled", pid)
                continue
            table[pid] = addr
        return table

    def _update_peers(self) -> None:
        """The configurations changed: make the transport's peers follow them."""
        if self.clock is None or self.replica is None:
            return
        now = self.clock.time()
        table = self.peer_table()
        departed = self._departed
        for pid, addr in self.peers.items():
            if pid not in table and pid not in departed:
                departed[pid] = (addr, now)
        for pid, (addr, since) in list(departed.items()):
            if pid in table or now - since >= REMOVED_GRACE:
                del departed[pid]
            else:
                table[pid] = addr
        if self._departed_timer is not None:
            self._departed_timer.cancel()
            self._departed_timer = None
        if departed and not self.closed:
            first = min(since for _, since in departed.values())
            self._departed_timer = self.clock.call_at(first + REMOVED_GRACE + 0.01,
                                                      self._update_peers)
        if table != self.peers:
            added = sorted(set(table) - set(self.peers))
            dropped = sorted(set(self.peers) - set(table))
            if self.peers and (added or dropped):
                log.info("node %s: peers now %s%s%s", self.node_id,
                         ", ".join(f"{i}={a}" for i, a in sorted(table.items())) or "none",
                         f" (added {added})" if added else "",
                         f" (dropped {dropped})" if dropped else "")
            self.peers = table
            if self.transport is not None:
                self.transport.set_peers(dict(table))

    def _on_removed(self) -> None:
        r = self._replica()
        version = max(r.membership.latest.version, self._told_removed)
        log.warning("node %s was removed from the cluster (configuration version %s): it "
                    "stops serving", self.node_id, version)
        if self._removed is not None and not self._removed.done():
            self._removed.set_result(version)

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
        if type(message) is Removed:
            self._told_removed = max(self._told_removed, message.version)
        if type(message) is PreVoteReply and message.leader and self.clock is not None:
            # It still hears a leader we do not: we are cut off from that leader.
            self._denied = (self.clock.time(), src, message.leader)
        self.deliver(message)

    def _on_peer_state(self, peer: int, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.peer_state(peer, up)


def _member(config: Config, pid: int) -> Member | None:
    for m in config.members:
        if m.id == pid:
            return m
    return None


def _role(m: Member) -> str:
    return "voter" if m.voter else "learner"


def _config_summary(config: Config) -> dict[str, Any]:
    return {"version": config.version, "start": config.start,
            "voters": [m.id for m in config.members if m.voter],
            "learners": [m.id for m in config.members if not m.voter]}


def _host_port(url: str) -> str:
    """"http://h:p" -> "h:p" (the form `Member.http` holds)."""
    return url.split("://", 1)[-1]


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
