"""A single durable record: the whole state of one single-decree Paxos process.

`FileRecord` keeps it in one file, replaced atomically: write a temporary
file, fsync it, rename it over the old one, fsync the directory. The file
starts with a magic number and a CRC32 of the payload, so a torn or foreign
file is refused with `CorruptRecord` naming the file instead of being read
as an empty state (which could break a promise). `MemoryRecord` is the twin
for tests and the simulator.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Protocol

import msgspec

from pnyx.protocol.synod.node import DurableState

MAGIC = b"PNYXSYN1"
_HEADER = struct.Struct(">8sI")  # magic, crc32 of payload
_decoder = msgspec.msgpack.Decoder(DurableState)
_encoder = msgspec.msgpack.Encoder()


class CorruptRecord(Exception):
    """A record file that exists but cannot be trusted."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


class Record(Protocol):
    def load(self) -> DurableState | None: ...
    def save(self, state: DurableState) -> None: ...


class MemoryRecord:
    def __init__(self) -> None:
        self.state: DurableState | None = None

    def load(self) -> DurableState | None:
        return self.state

    def save(self, state: DurableState) -> None:
        self.state = state


class FileRecord:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> DurableState | None:
        """The saved state; None if there is no file yet; `CorruptRecord` if it is damaged."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) < _HEADER.size:
            raise CorruptRecord(self.path, f"truncated: {len(data)} bytes")
        magic, crc = _HEADER.unpack_from(data)
        payload = data[_HEADER.size :]
        if magic != MAGIC:
            raise CorruptRecord(self.path, "not a pnyx record (bad magic number)")
        if zlib.crc32(payload) != crc:
            raise CorruptRecord(self.path, "checksum mismatch (torn or corrupted write)")
        try:
            return _decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CorruptRecord(self.path, f"undecodable: {exc}") from None

    def save(self, state: DurableState) -> None:
        payload = _encoder.encode(state)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(MAGIC, zlib.crc32(payload)) + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
