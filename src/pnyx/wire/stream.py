"""`FramedProtocol`: an asyncio protocol that reads frames and coalesces the frames it writes.

The binary API's server connections and `pnyx.FastClient` both build on it;
it knows nothing of either side (imports only the standard library, msgspec
and `pnyx.wire`). `max_frame` defaults to the client protocol's `MAX_FRAME`.

It also keeps the two clocks a server needs to bound a connection in time,
at the cost of one clock read per chunk received (none per frame):
`last_received`, when bytes last arrived (for an idle timeout), and
`stalled(now, timeout)`, whether a frame has been started and left
unfinished for `timeout` seconds (a client that sends half a frame and
stops, or trickles one in a byte at a time). Time while the owner has paused
parsing does not count: the stall is then the owner's, not the peer's.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import msgspec

from pnyx.wire.framing import HEADER, LENGTH, FrameDecoder, FrameTooLarge
from pnyx.wire.messages import MAX_FRAME

_encoder = msgspec.msgpack.Encoder()


class FramedProtocol(asyncio.Protocol):
    """An `asyncio.Protocol` that splits the stream into frames and coalesces writes.

    Subclasses implement `frame_received(view)` (return False to stop parsing
    for now: `resume_parsing()` continues with what is buffered) and
    `protocol_error(reason)` (a frame over `max_frame` arrived). `send(message)`
    queues one MessagePack frame; everything queued in one event-loop iteration
    is written with one `write`.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.decoder = FrameDecoder(max_frame)
        self._parsing_paused = False
        self._out = bytearray()
        self._flush_scheduled = False
        self.last_received = self.loop.time()
        # When the frame now buffered incomplete was started (or parsing last resumed);
        # None when no partial frame is buffered.
        self._partial_since: float | None = None

    @property
    def max_frame(self) -> int:
        return self.decoder.max_frame

    # -- reading --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = self.last_received = self.loop.time()
        decoder = self.decoder
        before = decoder.buffered()
        decoder.feed(data)
        if not self._parsing_paused:
            self._parse()
        left = decoder.buffered()
        if not left:
            self._partial_since = None
        elif self._partial_since is None or left < before + len(data):
            # A frame was completed (frames are consumed whole): the one left is new.
            self._partial_since = now

    def stalled(self, now: float, timeout: float) -> bool:
        """True if a frame was started `timeout` seconds ago or more and is still not
        complete (never while the owner has paused parsing)."""
        since = self._partial_since
        return since is not None and not self._parsing_paused and now - since >= timeout

    def _parse(self) -> None:
        try:
            for view in self.decoder.frames():
                keep_going = self.frame_received(view)
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                if not keep_going:
                    self._parsing_paused = True
                    return
        except FrameTooLarge as exc:
            self.protocol_error(str(exc))

    def resume_parsing(self) -> None:
        """Parse what arrived while `frame_received` had paused parsing."""
        if not self._parsing_paused:
            return
        self._parsing_paused = False
        self._parse()
        # The frame left over starts its clock now: the pause was ours.
        self._partial_since = self.loop.time() if self.decoder.buffered() else None

    def frame_received(self, view: memoryview) -> bool:
        raise NotImplementedError

    def protocol_error(self, reason: str) -> None:
        raise NotImplementedError

    # -- writing --

    def send(self, message: Any) -> None:
        out = self._out
        start = len(out)
        out += b"\0\0\0\0"
        # Straight into the outgoing buffer: no intermediate bytes per frame.
        _encoder.encode_into(message, out, start + HEADER)
        LENGTH.pack_into(out, start, len(out) - start - HEADER)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def pending_output(self) -> int:
        """Bytes queued by `send` and not yet handed to the transport."""
        return len(self._out)

    def flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        # A new buffer each time: the transport may keep a view of this one.
        self._out = bytearray()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out)
