"""The one length-prefixed framing pnyx speaks on TCP: peers to peers, clients to nodes.

A frame is a 4-byte big-endian unsigned length, then that many bytes of
payload. Both the peer protocol (`pnyx.node.transport`) and the client
protocol (`pnyx.wire.messages`) are frames of MessagePack; only their size
limits differ, and the limit is the receiver's to choose.

API (stable; imports only the standard library):

- `HEADER`: 4, the bytes of the length prefix; `LENGTH`: its `struct.Struct(">I")`.
- `encode_frame(payload) -> bytes`: the frame carrying `payload`.
- `FrameDecoder(max_frame)`: incremental. `feed(data)` takes bytes as they
  arrive; `frames()` yields every frame now complete, as a `memoryview` of its
  payload (valid until the next `feed`), in order. A frame whose announced
  length is over `max_frame` raises `FrameTooLarge` (before its payload is
  waited for or buffered). `max_frame` may be changed between frames (a peer's
  Hello has a smaller limit than what follows it). A consumer may stop
  iterating at any frame (`break`): the frames after it stay buffered and the
  next `frames()` continues with them.
- `FrameTooLarge(ValueError)`: `.length` and `.limit`; its message says both.
- `read_frame(sock, max_frame) -> bytes`: one frame from a blocking socket
  (for simple synchronous tools; raises `FrameTooLarge`, or `ConnectionError`
  if the peer closes mid-frame).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Final

LENGTH: Final = struct.Struct(">I")
HEADER: Final = LENGTH.size


class FrameTooLarge(ValueError):
    """A frame announced a length over the receiver's limit: the stream is not ours to read."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes is over the limit of {limit}")
        self.length = length
        self.limit = limit


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """The frame carrying `payload`: its length, then the payload."""
    return LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into frames, without copying a chunk that holds whole frames.

    Bytes received arrive in `feed`; a chunk that starts at a frame boundary is
    parsed in place. Only the start of an incomplete frame is copied aside, and
    a large frame arriving in many chunks is joined once, when complete.
    """

    __slots__ = ("_buf", "_data", "_need", "_pos", "max_frame")

    def __init__(self, max_frame: int) -> None:
        if max_frame < 0:
            raise ValueError("max_frame must not be negative")
        self.max_frame = max_frame
        # Invariant: `_buf` is empty, or every byte of `_data` is consumed (`_pos == len`).
        self._data: bytes = b""  # a chunk fed whole, parsed in place up to `_pos`
        self._pos = 0
        self._buf = bytearray()  # the start of a frame not complete yet
        self._need = HEADER  # bytes `_buf` must hold before a frame can complete

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the bytes that arrived; `frames()` yields what they complete."""
        if self._pos < len(self._data):
            # The consumer stopped part way through the last chunk: keep its rest.
            self._buf += memoryview(self._data)[self._pos:]
            self._data, self._pos = b"", 0
            self._buf += data
        elif self._buf:
            self._buf += data
        else:
            self._data = data if isinstance(data, bytes) else bytes(data)
            self._pos = 0

    def buffered(self) -> int:
        """Bytes received and not yet yielded as frames."""
        return len(self._buf) + len(self._data) - self._pos

    def clear(self) -> None:
        """Drop everything buffered (the connection is gone)."""
        self._data, self._pos = b"", 0
        self._buf.clear()
        self._need = HEADER

    def frames(self) -> Iterator[memoryview]:
        """Every frame complete so far, in order; `FrameTooLarge` on an oversized one.

        One iteration at a time: a consumer that stops early leaves the rest
        buffered for the next call (it must not resume the old iterator).
        """
        buf = self._buf
        if buf:
            if len(buf) < self._need:
                return  # most of a large frame: wait for the rest rather than copy it again
            data = bytes(buf)
            buf.clear()
            pos = 0
        else:
            data, pos = self._data, self._pos
        size = len(data)
        view = memoryview(data)
        unpack = LENGTH.unpack_from
        need = HEADER
        self._data = data
        while size - pos >= HEADER:
            (length,) = unpack(data, pos)
            if length > self.max_frame:
                self.clear()
                raise FrameTooLarge(length, self.max_frame)
            end = pos + HEADER + length
            if end > size:
                need = HEADER + length
                break
            # Recorded before the yield: a consumer that stops here resumes after this frame.
            self._pos = end
            yield view[pos + HEADER:end]
            pos = end
        if pos < size:
            buf += view[pos:]
            self._need = need
        self._data, self._pos = b"", 0


def read_frame(sock: socket.socket, max_frame: int) -> bytes:
    """One frame's payload from a blocking socket."""
    (length,) = LENGTH.unpack(_recv_exactly(sock, HEADER))
    if length > max_frame:
        raise FrameTooLarge(length, max_frame)
    return _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)
