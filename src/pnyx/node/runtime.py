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
from pnyx.node.transport import PeerTransport
from pnyx.protocol.multipaxos import Machine, Outcome, ReadMode, Replica
from pnyx.protocol.multipaxos.messages import LogMessage, MalformedMessage, decode, encode
from pnyx.protocol.multipaxos.records import LogRecord, ReplicaDurable

log = logging.getLogger("pnyx.node")

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
    """

    def __init__(
        self,
        config: NodeConfig,
        store: Any,
        machine: Machine,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(config.node_id, config.replica_config(), machine,
                         request_timeout=config.request_timeout, metrics=metrics)
        self.config = config
        self.store = store
        self.transport: PeerTransport | None = None
        self._disk: AsyncioDisk | None = None
        self._faulted: asyncio.Future[BaseException] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.on_fault = self._on_fault

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
        )
        self._disk = AsyncioDisk(self.store, loop, lambda: self._replica().is_leader)
        # Request ids must never repeat across restarts: a random start in 2^62.
        replica = self.open(loop, self._disk, TcpNetwork(self.transport), durable,
                            random.Random(), random.getrandbits(62))
        await self.transport.start()
        self.begin()
        log.debug("node %s started: %d slots chosen, applied to %d", self.node_id,
                  replica.commit, replica.applied)

    async def stop(self) -> None:
        self.close()
        if self._closing is not None:
            await self._closing
        if self.transport is not None:
            await self.transport.close()
        if self._disk is not None:
            await self._disk.drain()
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
            # Served beyond loopback without TLS, because `--insecure` said so.
            "insecure": self.config.insecure,
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
