"""Peer transport: framed messages between the nodes of a cluster, over TCP.

A frame is `pnyx.wire.framing`'s: a 4-byte big-endian length and that many
bytes of payload. Each node opens one outbound connection to every peer, and
sends its messages on it; it receives on the connections its peers open to
it. The first frame on a connection is a `Hello` naming the cluster and the
sender, so a node can refuse strangers; it also advertises where the sender
serves clients (`advertised`, what `/v1/status` shows of each member).
Outbound connections reconnect with exponential backoff (from 50 ms up to
`reconnect_max`, each attempt bounded by `connect_timeout`); each has a bounded
queue (a slow or dead peer drops the oldest messages rather than exhausting
memory — Paxos copes with loss). A frame over the size limit, a bad Hello, a
sender outside the configuration, or garbage closes that connection with a
logged reason; the node keeps running.

With TLS files (`tls`), every peer connection is mutual TLS against the
cluster's CA (`pnyx.tls`), and a Hello is believed only when the node id it
claims is the one the sender's certificate names: a process without a
member's key cannot speak as that member, so it cannot forge a `Chosen` or a
`Prepare`. The dialling side checks the same of the member it dialled. A
failed handshake or a mismatch closes the connection with one logged warning
(naming the claimed and the certified id). Over TLS the node accepts peers
itself and awaits each handshake in a task, so a failed one can be logged.
Certificates renewed on disk are used by the next connection
(`pnyx.tls.Reloading`); open connections keep theirs.
Without TLS files the peers talk plaintext, which `pnyx serve` allows only on
loopback or with `--insecure`.

**Dead connections are found by our own traffic, not TCP's timers.** When we
have sent to a peer and heard nothing from it for `dead_after` seconds, both
connections with it are closed and ours is made again: after a partition heals,
silently or not, the members talk again within about `dead_after` plus a
connect, instead of waiting out TCP's retransmission backoff (seconds, growing
with the partition's length). Not every message is answered (a `Forward`, a
`CatchUp` with nothing to send), and two followers send each other nothing; so a
peer we have not heard from for a quarter of `dead_after` is sent a transport
`PING`, which its transport answers with a `PONG` at once, whatever its node
makes of our messages. Both are frames no protocol message can be (msgpack never
uses the byte 0xc1), and go only to peers whose Hello says they understand them
(`pings`): an older member gets none, and is judged by the protocol's traffic
alone. Time this process did not run (a loop blocked by a long callback, a
stopped process) is not counted as the peers' silence: their answers were
waiting, unread. As a backstop every peer socket has TCP keepalive and
`TCP_USER_TIMEOUT`.

**The peers can change while the transport runs** (`set_peers`, for membership
changes): a peer dropped loses its outbound link, its queued messages and its
inbound connections, and its Hello is refused from then on; a peer added is
dialled; a peer whose address changed is dialled at the new one.

Both sides are asyncio Protocols, with no task per connection or message: an
inbound frame reaches the node in the callback that received its last byte;
outbound messages are written together at the end of the loop iteration that
sent them, or at once when 8 KiB or more are waiting (an Accept with a batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import msgspec

from pnyx.node.config import Address
from pnyx.tls import Reloading, TlsFiles, member_id, peer_client_context, peer_server_context
from pnyx.wire.framing import FrameDecoder, FrameTooLarge, encode_frame

log = logging.getLogger("pnyx.transport")

DEFAULT_MAX_FRAME = 32 << 20
HELLO_TIMEOUT = 5.0
WRITE_NOW_BYTES = 8192  # queued for a peer: written at once rather than at the iteration's end
HELLO_LIMIT = 4096  # bytes: a Hello is tiny; anything longer is not one
USER_TIMEOUT_MS = 5000  # TCP_USER_TIMEOUT: unacknowledged data closes a connection after this
# Transport liveness frames: 0xc1 is the one byte msgpack never uses, so no protocol
# message (a msgpack array) can be either.
PING = b"\xc1ping"
PONG = b"\xc1pong"


class Hello(msgspec.Struct, frozen=True, array_like=True, tag="hello"):
    cluster_id: str
    node_id: int
    # Where the sender serves clients, for observers (the live view, `/v1/status`): its
    # HTTP base URL and binary client address, "" for none. Trailing with defaults, so a
    # Hello without them still decodes (and a newer one's extra fields are ignored).
    http: str = ""
    client: str = ""
    # It answers a PING with a PONG (an older member would hand a PING to its node as a
    # malformed message).
    pings: bool = False


_hello_decoder = msgspec.msgpack.Decoder(Hello)
_encoder = msgspec.msgpack.Encoder()


class FrameError(Exception):
    """The bytes on a connection are not frames we accept."""


frame = encode_frame  # the one framing, shared with the client protocol


class _Peer:
    """The outbound side of one peer: its queue, and its connection when there is one."""

    def __init__(self, node_id: int, address: Address, max_queue: int,
                 max_queue_bytes: int) -> None:
        self.node_id = node_id
        self.address = address
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.connected = False
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None
        self.link: _Outbound | None = None
        self.flush_scheduled = False
        self.refusal = ""  # why the last TLS connection to it failed: logged once per change
        # When we first sent to it since we last heard from it (None: we have heard since,
        # or sent nothing); and when we last heard from it (time.monotonic()).
        self.waiting_since: float | None = None
        self.heard_at = -1e9
        self.judged_dead = False  # logged once per silence
        self.pings = False  # its Hello says it answers a PING
        self.pinged_at = -1e9
        self.links = 0  # outbound connections made to it, ever
        # Set when it dials us while we have no link to it: our next attempt is made now.
        self.wake = asyncio.Event()
        self.silences = 0  # times its connections were closed for its silence


class _Outbound(asyncio.Protocol):
    """Our connection to a peer: we only write on it. Writes pause while the kernel's
    buffer is full (`pause_writing`); what is sent meanwhile waits in the peer's queue."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_resume: Callable[[], None] = lambda: None
        self.error: Exception | None = None  # why the connection ended, if it failed
        self.dead = False  # closed by us: the peer had gone silent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _backstop(transport)

    def data_received(self, data: bytes) -> None:
        pass  # peers never answer on our connection; they open their own

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.error = exc
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.on_resume()

    def writable(self) -> bool:
        return self.transport is not None and not self.paused and not self.transport.is_closing()


class _Inbound(asyncio.Protocol):
    """A connection a peer opened to us: a Hello, then frames, each handed to the node as
    it completes, in the callback that received its last byte (no task, no extra wait)."""

    def __init__(self, owner: PeerTransport) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.src: int | None = None  # known once the Hello is read
        # Until the Hello is read, a frame longer than a Hello is refused.
        self.frames = FrameDecoder(HELLO_LIMIT)
        self.peer: Any = "?"
        self.hello_timer: asyncio.TimerHandle | None = None
        self.certified: int | None = None  # the member its TLS certificate names
        self.opened = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.opened = time.monotonic()
        _backstop(transport)
        self.peer = transport.get_extra_info("peername")
        if self.owner.tls is not None:
            self.certified = member_id(transport.get_extra_info("peercert"),
                                       self.owner.cluster_id)
        self.owner._inbound.add(self)
        self.hello_timer = asyncio.get_running_loop().call_later(
            HELLO_TIMEOUT, self.refuse, "no hello within the time allowed")

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._inbound.discard(self)
        self.transport = None
        self.frames.clear()
        if self.hello_timer is not None:
            self.hello_timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return  # refused already: what follows is not read
        if self.src is not None:
            self.owner._heard(self.src)
        self.frames.feed(data)
        try:
            for payload in self.frames.frames():
                if self.src is None:
                    self.src = self.owner._hello(bytes(payload), self.certified)
                    self.frames.max_frame = self.owner.max_frame
                    self.owner._heard(self.src)
                    if self.hello_timer is not None:
                        self.hello_timer.cancel()
                        self.hello_timer = None
                else:
                    data = bytes(payload)
                    if data == PING:
                        self.owner.send(self.src, PONG)
                    elif data != PONG:  # a PONG has done its work: the peer was heard
                        self.owner.on_message(self.src, data)
                if self.transport is None:
                    return  # refused, or closed by the node while handling the frame
        except (FrameError, FrameTooLarge) as exc:
            self.refuse(str(exc))

    def refuse(self, reason: str) -> None:
        if self.transport is None:
            return
        self.owner.refused += 1
        log.warning("closing connection from %s: %s", self.peer, reason)
        self.transport.abort()
        self.transport = None


class PeerTransport:
    def __init__(
        self,
        node_id: int,
        cluster_id: str,
        peers: dict[int, Address],
        listen: Address,
        on_message: Callable[[int, bytes], None],
        *,
        max_queue: int = 100_000,
        max_queue_bytes: int = 64 << 20,
        max_frame: int = DEFAULT_MAX_FRAME,
        on_peer_state: Callable[[int, bool], None] | None = None,
        tls: TlsFiles | None = None,
        http: str = "",
        client: str = "",
        dead_after: float | None = None,
        connect_timeout: float = 2.0,
        reconnect_max: float = 1.0,
    ) -> None:
        self.node_id = node_id
        # Sent to and not heard from for this long: the connections are dead (None: never
        # judged). A connection attempt gives up after `connect_timeout`; attempts are
        # `reconnect_max` apart at most.
        self.dead_after = dead_after
        self.connect_timeout = connect_timeout
        self.reconnect_max = reconnect_max
        self._watcher: asyncio.Task[None] | None = None
        # What our Hello advertises, and what each peer's last accepted Hello did.
        self.http = http
        self.client = client
        self.advertised: dict[int, Hello] = {}
        # TLS between members, or None for plaintext: contexts rebuilt when the files change.
        self.tls = tls
        self._server_tls = Reloading(tls, peer_server_context) if tls is not None else None
        self._client_tls = Reloading(tls, peer_client_context) if tls is not None else None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._listeners: list[socket.socket] = []  # TLS: accepted here, handshakes in tasks
        self._accepting: list[asyncio.Task[None]] = []
        self.cluster_id = cluster_id
        self.listen = listen
        self.on_message = on_message
        self.on_peer_state = on_peer_state
        self.max_frame = max_frame
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.peers = {
            pid: _Peer(pid, addr, max_queue, max_queue_bytes)
            for pid, addr in peers.items()
            if pid != node_id
        }
        self.refused = 0  # inbound connections closed: failed handshake, bad Hello or frames
        self.silences = 0  # times a peer's connections were closed for its silence
        self._server: asyncio.Server | None = None
        self._inbound: set[_Inbound] = set()
        self._started = False
        self._closing = False
        self._retired: set[asyncio.Task[None]] = set()  # outbound tasks of peers dropped

    async def start(self) -> None:
        """Listen for peers (raises OSError if the address cannot be bound) and connect out."""
        loop = asyncio.get_running_loop()
        if self.tls is None:
            self._server = await loop.create_server(
                lambda: _Inbound(self), self.listen.host, self.listen.port)
        else:
            # Each handshake is awaited (`connect_accepted_socket`), so a failed one is
            # logged: a server made with `ssl=` drops those without a word.
            self._listeners = await _listen(self.listen)
            self._accepting = [asyncio.create_task(self._accept(sock))
                               for sock in self._listeners]
        self._started = True
        for peer in self.peers.values():
            peer.task = asyncio.create_task(self._run_outbound(peer))
        if self.dead_after is not None:
            self._watcher = asyncio.create_task(self._watch(self.dead_after))

    async def close(self) -> None:
        # Nothing is awaited until every connection is closed: a peer's outbound task that
        # ran in between would see a young link lost, and log that we refused it.
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._inbound):
            if conn.transport is not None:
                conn.transport.abort()
        tasks = [p.task for p in self.peers.values() if p.task] + [
            *self._accepting, *self._handshakes, *self._retired]
        if self._watcher is not None:
            tasks.append(self._watcher)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sock in self._listeners:  # after the accepts are cancelled: no fd reused under them
            sock.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def send(self, dst: int, payload: bytes) -> None:
        peer = self.peers.get(dst)
        if peer is None:
            return
        data = frame(payload)
        if peer.waiting_since is None and peer.link is not None:
            # Silence counts only on a connection that is up: a connection being made
            # (a TLS handshake, a peer starting) is not a dead one.
            peer.waiting_since = time.monotonic()
        peer.queue.append(data)
        peer.queued_bytes += len(data)
        # Bounded in count and bytes: the oldest messages go first (Paxos copes with loss).
        while len(peer.queue) > 1 and (
            len(peer.queue) > peer.max_queue or peer.queued_bytes > peer.max_queue_bytes
        ):
            peer.queued_bytes -= len(peer.queue.popleft())
            peer.dropped += 1
        if peer.link is None:
            return  # kept for when the connection is up
        if peer.queued_bytes >= WRITE_NOW_BYTES:
            # Enough for a write of its own: send it now, not after the rest of this loop
            # iteration (which may hold milliseconds of client requests).
            self._flush(peer)
        elif not peer.flush_scheduled:
            # Small messages sent in this loop iteration go together, in one write.
            peer.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, peer)

    def set_peers(self, peers: dict[int, Address]) -> None:
        """Make `peers` the peers (our own id in it is ignored), before or after `start`.
        A peer no longer in it is dropped: its outbound link and queued messages go, its
        connections to us are closed, and its Hello is refused from now on, as a
        stranger's. A new one is dialled; one whose address changed is dialled again, at
        the new address (what is queued for it waits for that connection)."""
        wanted = {pid: addr for pid, addr in peers.items() if pid != self.node_id}
        for pid in [pid for pid in self.peers if pid not in wanted]:
            peer = self.peers.pop(pid)
            self.advertised.pop(pid, None)
            self._retire(peer)
            peer.queue.clear()
            peer.queued_bytes = 0
            for conn in list(self._inbound):
                if conn.src == pid and conn.transport is not None:
                    conn.transport.abort()
                    conn.transport = None  # nothing more it sent is read
            log.info("node %s is no longer a peer", pid)
        for pid, address in wanted.items():
            peer = self.peers.get(pid)
            if peer is None:
                self.peers[pid] = peer = _Peer(pid, address, self.max_queue,
                                               self.max_queue_bytes)
                log.info("node %s at %s is a peer", pid, address)
            elif peer.address != address:
                log.info("node %s moved from %s to %s: reconnecting", pid, peer.address,
                         address)
                self._retire(peer)
                peer.address = address
            else:
                continue
            if self._started and not self._closing:
                peer.task = asyncio.create_task(self._run_outbound(peer))

    def _retire(self, peer: _Peer) -> None:
        """Stop `peer`'s outbound task and close its link (awaited by `close`)."""
        task, peer.task = peer.task, None
        if task is not None and not task.done():
            task.cancel()
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        link, peer.link = peer.link, None
        if link is not None and link.transport is not None:
            link.transport.abort()
        peer.waiting_since = None
        self._set_state(peer, False)

    def reachable(self, peer_id: int) -> bool:
        peer = self.peers.get(peer_id)
        return peer.connected if peer is not None else peer_id == self.node_id

    def heard_within(self, peer_id: int, seconds: float) -> bool:
        """Whether a frame came from `peer_id` in the last `seconds`."""
        peer = self.peers.get(peer_id)
        return peer is not None and time.monotonic() - peer.heard_at <= seconds

    # -------------------------------------------------------------- liveness

    def _heard(self, src: int) -> None:
        peer = self.peers.get(src)
        if peer is not None:
            peer.heard_at = time.monotonic()
            peer.waiting_since = None
            if peer.judged_dead:
                peer.judged_dead = False
                log.info("node %s is heard from again", src)

    async def _watch(self, dead_after: float) -> None:
        """Close the connections of every peer we sent to and have not heard from in
        `dead_after` seconds; ours is made again at once. Ping the peers we have not
        heard from lately (see the module's docstring)."""
        interval = dead_after / 4
        last = time.monotonic()
        while not self._closing:
            await asyncio.sleep(interval)
            now = time.monotonic()
            stalled = now - last - interval
            last = now
            peers = list(self.peers.values())
            if stalled > interval / 2:
                # This process did not run for `stalled` seconds: what the peers sent
                # meanwhile is still unread, so that time is not their silence.
                for peer in peers:
                    if peer.waiting_since is not None:
                        peer.waiting_since = min(now, peer.waiting_since + stalled)
            for peer in peers:
                if (peer.pings and peer.link is not None and now - peer.heard_at >= interval
                        and now - peer.pinged_at >= interval):
                    peer.pinged_at = now
                    self.send(peer.node_id, PING)
                since = peer.waiting_since
                if since is None or now - since < dead_after:
                    continue
                self.silences += 1
                peer.silences += 1
                if not peer.judged_dead:
                    peer.judged_dead = True
                    log.info("node %s has not answered for %.2f s: reconnecting", peer.node_id,
                             now - since)
                peer.waiting_since = now  # judged again only after another silence
                link = peer.link
                if link is not None and link.transport is not None:
                    link.dead = True
                    link.transport.abort()
                # Its connection to us may be as stuck as ours to it: closed, it is made
                # again at once. Not one younger than a second, which the peer would
                # report as refused (and which is fresh anyway).
                for conn in list(self._inbound):
                    if conn.src == peer.node_id and conn.transport is not None and (
                            now - conn.opened >= 1.0):
                        conn.transport.abort()

    # -------------------------------------------------------------- outbound

    def _flush(self, peer: _Peer) -> None:
        peer.flush_scheduled = False  # a scheduled call finding the queue empty does nothing
        link = peer.link
        if not peer.queue or link is None or not link.writable():
            return  # kept until the connection is up and writable again
        assert link.transport is not None
        chunk = b"".join(peer.queue)
        peer.queue.clear()
        peer.queued_bytes = 0
        link.transport.write(chunk)

    async def _connect(self, peer: _Peer) -> _Outbound:
        """A connection to `peer`: the TCP connect within `connect_timeout` (a lost SYN is
        sent again by a new attempt, not after TCP's one-second retry), given up at once
        when the peer dials us meanwhile (the network is back: an attempt whose SYN was
        lost in it would wait in vain). Over TLS, then the handshake, within 2 s."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(peer.address.host, peer.address.port,
                                       type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            connect = asyncio.ensure_future(loop.sock_connect(sock, address))
            woken = asyncio.ensure_future(peer.wake.wait())
            try:
                await asyncio.wait((connect, woken), timeout=self.connect_timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
                connect.cancel()  # nothing, if it is done
            if not connect.done() or connect.cancelled():
                raise TimeoutError("connect timed out")
            connect.result()  # OSError if refused, unreachable
            if self._client_tls is None:
                _, link = await loop.create_connection(_Outbound, sock=sock)
            else:
                _, link = await asyncio.wait_for(loop.create_connection(
                    _Outbound, sock=sock, ssl=self._client_tls.context(),
                    server_hostname=peer.address.host, ssl_handshake_timeout=2.0), 2.0)
        except BaseException:
            sock.close()
            raise
        return link

    async def _pause(self, peer: _Peer, seconds: float) -> None:
        """Wait `seconds` before the next attempt, or until the peer dials us."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.wake.wait(), seconds)

    async def _run_outbound(self, peer: _Peer) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.05
        while not self._closing:
            tls = self._client_tls is not None
            peer.wake.clear()
            try:
                link = await self._connect(peer)
            except (TimeoutError, OSError) as exc:
                if isinstance(exc, ssl.SSLError):  # not a refused connect: say so, once
                    self._refuse_outbound(peer, f"TLS handshake failed: {exc}")
                await self._pause(peer, backoff)
                backoff = min(backoff * 2, self.reconnect_max)
                continue
            if tls and link.transport is not None:
                certified = member_id(link.transport.get_extra_info("peercert"),
                                      self.cluster_id)
                if certified != peer.node_id:
                    link.transport.abort()
                    self._refuse_outbound(
                        peer, f"its certificate names {_named(certified, self.cluster_id)}, "
                        f"not node {peer.node_id}, the member dialled")
                    await asyncio.sleep(1.0)
                    continue
            made = loop.time()
            try:
                # The peer may have closed it already, before create_connection returned:
                # then this attempt is over (the next one comes after the backoff).
                transport = link.transport
                if transport is not None and not transport.is_closing():
                    transport.write(frame(_encoder.encode(Hello(
                        self.cluster_id, self.node_id, self.http, self.client, pings=True))))
                    link.on_resume = lambda peer=peer: self._flush(peer)
                    peer.link = link
                    peer.links += 1
                    peer.waiting_since = None  # a fresh connection: not judged yet
                    self._set_state(peer, True)
                    self._flush(peer)
                    await link.lost
            finally:
                if peer.link is link:  # not when `set_peers` has retired us already
                    peer.link = None
                    self._set_state(peer, False)
                if link.transport is not None:
                    link.transport.abort()
            if loop.time() - made >= 1.0 or link.dead:
                backoff = 0.05  # it was up, or we closed it: reconnect at once
                peer.refusal = ""
            elif not self._closing:
                # Closed at once: the peer refuses us (over TLS 1.3 our certificate is judged
                # after our side's handshake ends). Say so once, and back off as from a
                # failed connect, rather than be refused twenty times a second.
                self._refuse_outbound(peer, "it closed the connection at once (its log says "
                                      f"why){f': {link.error}' if link.error else ''}")
                backoff = min(backoff * 2, self.reconnect_max)
            await asyncio.sleep(backoff)

    def _refuse_outbound(self, peer: _Peer, reason: str) -> None:
        if reason != peer.refusal:  # a peer retried every second is logged once per reason
            peer.refusal = reason
            log.warning("closing connection to node %s at %s: %s", peer.node_id, peer.address,
                        reason)

    def _set_state(self, peer: _Peer, up: bool) -> None:
        if peer.connected != up:
            peer.connected = up
            if self.on_peer_state is not None:
                self.on_peer_state(peer.node_id, up)

    # --------------------------------------------------------------- inbound

    async def _accept(self, listener: socket.socket) -> None:
        """Accept peers on `listener` (TLS): each one's handshake in a task of its own."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, say: the next one may do
                log.warning("cannot accept a peer connection on %s: %s", self.listen, exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._accept_tls(sock, address))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _accept_tls(self, sock: socket.socket, address: Any) -> None:
        """The TLS handshake of an inbound peer connection; then it is an `_Inbound`."""
        assert self._server_tls is not None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: _Inbound(self), sock, ssl=self._server_tls.context(),
                ssl_handshake_timeout=HELLO_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            # No certificate, one from another CA, an expired one, or not TLS at all.
            self.refused += 1
            log.warning("closing connection from %s: TLS handshake failed: %s", address,
                        exc if str(exc) else repr(exc))
            sock.close()

    def _hello(self, data: bytes, certified: int | None = None) -> int:
        """The sender a Hello names, if it is one of our peers (and, over TLS, the member
        its certificate names: `certified`); else `FrameError`."""
        try:
            hello = _hello_decoder.decode(data)
        except (msgspec.MsgspecError, ValueError):
            raise FrameError("the first frame is not a pnyx hello") from None
        if hello.cluster_id != self.cluster_id:
            raise FrameError(f"hello from cluster {hello.cluster_id!r}, not ours")
        peer = self.peers.get(hello.node_id)
        if peer is None:
            raise FrameError(f"hello from node {hello.node_id}, which is not a peer "
                             "(not in the configuration)")
        if self.tls is not None and certified != hello.node_id:
            raise FrameError(f"hello claims node {hello.node_id} but its certificate names "
                             f"{_named(certified, self.cluster_id)}")
        self.advertised[hello.node_id] = hello
        peer.pings = hello.pings
        if peer.link is None:
            peer.wake.set()
        return hello.node_id


def _backstop(transport: asyncio.BaseTransport) -> None:
    """TCP's own dead-peer detection, in case ours (the protocol's traffic) cannot act:
    keepalive probes after a second of silence, and unacknowledged data given up on
    after `USER_TIMEOUT_MS`."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    # Best effort: a TLS transport's socket may refuse options (uvloop's does, some).
    with contextlib.suppress(Exception):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


async def _listen(address: Address) -> list[socket.socket]:
    """Listening sockets on every address `address.host` resolves to (as
    `loop.create_server` makes them); OSError if one cannot be bound."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(
                (i[0], i[1], i[2], "", i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _named(certified: int | None, cluster_id: str) -> str:
    return f"node {certified}" if certified is not None else (
        f"no member of cluster {cluster_id!r}")
