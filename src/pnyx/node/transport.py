"""Peer transport: framed messages between the nodes of a cluster, over TCP.

A frame is a 4-byte big-endian length and that many bytes of payload. Each
node opens one outbound connection to every peer, and sends its messages on
it; it receives on the connections its peers open to it. The first frame on a
connection is a `Hello` naming the cluster and the sender, so a node can
refuse strangers. Outbound connections reconnect with exponential backoff;
each has a bounded queue (a slow or dead peer drops the oldest messages
rather than exhausting memory — Paxos copes with loss). A frame over the size
limit, a bad Hello, a sender outside the configuration, or garbage closes
that connection with a logged reason; the node keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import Callable

import msgspec

from pnyx.node.config import Address

log = logging.getLogger("pnyx.transport")

_LEN = struct.Struct(">I")
DEFAULT_MAX_FRAME = 32 << 20
HELLO_TIMEOUT = 5.0


class Hello(msgspec.Struct, frozen=True, array_like=True, tag="hello"):
    cluster_id: str
    node_id: int


_hello_decoder = msgspec.msgpack.Decoder(Hello)
_encoder = msgspec.msgpack.Encoder()


class FrameError(Exception):
    """The bytes on a connection are not frames we accept."""


async def read_frame(reader: asyncio.StreamReader, max_frame: int) -> bytes:
    header = await reader.readexactly(_LEN.size)
    (length,) = _LEN.unpack(header)
    if length > max_frame:
        raise FrameError(f"frame of {length} bytes is over the limit of {max_frame}")
    return await reader.readexactly(length)


def frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


class _Peer:
    """The outbound side of one peer: a queue and the task that drains it."""

    def __init__(self, node_id: int, address: Address, max_queue: int,
                 max_queue_bytes: int) -> None:
        self.node_id = node_id
        self.address = address
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.wakeup = asyncio.Event()
        self.connected = False
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None


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
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.listen = listen
        self.on_message = on_message
        self.on_peer_state = on_peer_state
        self.max_frame = max_frame
        self.peers = {
            pid: _Peer(pid, addr, max_queue, max_queue_bytes)
            for pid, addr in peers.items()
            if pid != node_id
        }
        self.refused = 0  # inbound connections closed for a bad Hello or bad frames
        self._server: asyncio.Server | None = None
        self._inbound: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Listen for peers (raises OSError if the address cannot be bound) and connect out."""
        self._server = await asyncio.start_server(
            self._accept, self.listen.host, self.listen.port, limit=1 << 20
        )
        for peer in self.peers.values():
            peer.task = asyncio.create_task(self._run_outbound(peer))

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = [p.task for p in self.peers.values() if p.task] + list(self._inbound)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def send(self, dst: int, payload: bytes) -> None:
        peer = self.peers.get(dst)
        if peer is None:
            return
        data = frame(payload)
        peer.queue.append(data)
        peer.queued_bytes += len(data)
        # Bounded in count and bytes: the oldest messages go first (Paxos copes with loss).
        while len(peer.queue) > 1 and (
            len(peer.queue) > peer.max_queue or peer.queued_bytes > peer.max_queue_bytes
        ):
            peer.queued_bytes -= len(peer.queue.popleft())
            peer.dropped += 1
        peer.wakeup.set()

    def reachable(self, peer_id: int) -> bool:
        peer = self.peers.get(peer_id)
        return peer.connected if peer is not None else peer_id == self.node_id

    # -------------------------------------------------------------- outbound

    async def _run_outbound(self, peer: _Peer) -> None:
        backoff = 0.05
        while not self._closing:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(peer.address.host, peer.address.port), 2.0
                )
            except (TimeoutError, OSError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            try:
                writer.write(frame(_encoder.encode(Hello(self.cluster_id, self.node_id))))
                self._set_state(peer, True)
                await self._drain_queue(peer, writer)
            except (OSError, ConnectionError):
                pass
            finally:
                self._set_state(peer, False)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            await asyncio.sleep(backoff)

    async def _drain_queue(self, peer: _Peer, writer: asyncio.StreamWriter) -> None:
        while not self._closing:
            if not peer.queue:
                peer.wakeup.clear()
                await peer.wakeup.wait()
            # Write everything queued in one go: small frames are coalesced per syscall.
            chunk = b"".join(peer.queue)
            peer.queue.clear()
            peer.queued_bytes = 0
            writer.write(chunk)
            await writer.drain()
            if writer.is_closing():
                raise ConnectionError("closed")

    def _set_state(self, peer: _Peer, up: bool) -> None:
        if peer.connected != up:
            peer.connected = up
            if self.on_peer_state is not None:
                self.on_peer_state(peer.node_id, up)

    # --------------------------------------------------------------- inbound

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inbound.add(task)
        peer = writer.get_extra_info("peername")
        try:
            src = await self._hello(reader)
            while True:
                self.on_message(src, await read_frame(reader, self.max_frame))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away
        except asyncio.CancelledError:
            pass  # we are closing
        except FrameError as exc:
            self.refused += 1
            log.warning("closing connection from %s: %s", peer, exc)
        finally:
            self._inbound.discard(task)
            writer.close()

    async def _hello(self, reader: asyncio.StreamReader) -> int:
        try:
            data = await asyncio.wait_for(read_frame(reader, 4096), HELLO_TIMEOUT)
        except TimeoutError:
            raise FrameError("no hello within the time allowed") from None
        try:
            hello = _hello_decoder.decode(data)
        except (msgspec.MsgspecError, ValueError):
            raise FrameError("the first frame is not a pnyx hello") from None
        if hello.cluster_id != self.cluster_id:
            raise FrameError(f"hello from cluster {hello.cluster_id!r}, not ours")
        if hello.node_id not in self.peers:
            raise FrameError(f"hello from node {hello.node_id}, which is not a peer")
        return hello.node_id
