"""The snapshot file format: writing, reading and verifying one file at any path.

This module owns the format (`SnapshotMeta`, the header; `SnapshotInfo`, what a
verified file says), checking a file whole or by its shape, checking a transfer's
first bytes as they arrive (`_StagedHead`), and the helpers for any path
(`write_file`, `save_file`, `read_info`) used by backup and restore and by the
stores in `pnyx.storage.snapshots`, which keep the files of one directory. A
snapshot is the state machine's bytes after every command of slots 1..slot was
applied; once one is durable, the log store may forget those slots
(`CompactRecord`).

File format (version 1), `snapshot-<slot>.pnyx`:

    offset 0   8 bytes   magic b"PNYXSNAP"
               u32 BE    format version (1)
               u32 BE    header length H (at most 1 MiB)
    16         H bytes   header: MessagePack map `SnapshotMeta` (slot >= 1,
                         index >= 0 = commands applied, cluster_id, members,
                         body_length B, and membership: the configurations
                         after the slot, when any changed — absent before)
    16+H       B bytes   body: the state machine's snapshot, as it gave it
    16+H+B     32 bytes  blake2b-256 of every byte before it (prefix, header, body)
               8 bytes   end magic b"PNYXEND\\n"

A file is written whole to a temporary name (`*.tmp`), fsynced, renamed into
place, and the directory fsynced: a crash leaves the old file or the new one,
and at most a temporary file. A file that is damaged (any byte: the checksum
covers all of them but the trailer, which is checked by its end magic and
length), of another cluster, or of another format version is refused with one
line naming it (`CorruptStoreError`, `StoreIdentityError`).

The underscore helpers are shared with `pnyx.storage.snapshots` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec

from pnyx.storage.errors import CorruptStoreError, StoreError, StoreIdentityError

MAGIC = b"PNYXSNAP"
END_MAGIC = b"PNYXEND\n"
FORMAT_VERSION = 1
MAX_HEADER = 1 << 20  # a header is a few hundred bytes; more is damage
_PREFIX = struct.Struct(">8sII")  # magic, format version, header length
_DIGEST_SIZE = 32
_TRAILER = struct.Struct(f">{_DIGEST_SIZE}s8s")  # blake2b of all before, end magic
_COPY_CHUNK = 1 << 20
_TMP_SUFFIX = ".tmp"
_U64 = 1 << 64
_I64 = 1 << 63


class SnapshotMeta(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a snapshot's header says: where in the log it stands, and whose it is."""

    slot: int  # every slot 1..slot is in it
    index: int  # commands the state machine applied
    cluster_id: str
    members: tuple[int, ...]
    body_length: int  # bytes of the state machine's snapshot
    # The cluster's membership after `slot` (`pnyx.protocol.multipaxos.membership`);
    # empty in files written before membership changes (their first configuration).
    membership: bytes = b""

    def __post_init__(self) -> None:
        # Runs on decoding too: a header with a right checksum and a value no pnyx
        # writes is refused as damage (msgspec turns the ValueError into a
        # ValidationError).
        if not 1 <= self.slot < _I64:
            raise ValueError(f"snapshot slot {self.slot} out of range")
        if not 0 <= self.index < _I64:
            raise ValueError(f"snapshot index {self.index} out of range")
        if not 0 <= self.body_length < _I64:
            raise ValueError(f"snapshot body length {self.body_length} out of range")
        if any(not 0 <= m < _U64 for m in self.members):
            raise ValueError(f"snapshot member ids {self.members} out of range")


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A verified snapshot file: where in the log it stands, its size and place."""

    slot: int
    index: int
    members: tuple[int, ...]
    size: int  # bytes of the whole file (what a transfer sends)
    path: Path | None  # None in a `MemorySnapshotStore`
    body_offset: int  # where the state machine's bytes start in the file
    cluster_id: str
    membership: bytes = b""  # as `SnapshotMeta.membership`



_encoder = msgspec.msgpack.Encoder()
_meta_decoder = msgspec.msgpack.Decoder(SnapshotMeta)


def _head_bytes(meta: SnapshotMeta) -> bytes:
    header = _encoder.encode(meta)
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header


def _hasher(data: bytes = b"") -> hashlib._Hash:
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE)


# ------------------------------------------------------------------ reading


def _parse_head(f: BinaryIO, name: Path) -> tuple[SnapshotMeta, bytes]:
    """The header of the file `f` is at the start of, and the bytes it was read from."""
    prefix = f.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise CorruptStoreError(name, f"truncated: {len(prefix)} bytes, not a snapshot")
    magic, version, header_length = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise CorruptStoreError(name, "not a pnyx snapshot (bad magic number)")
    if version != FORMAT_VERSION:
        raise StoreIdentityError(name, f"snapshot format version {version}; this pnyx "
                                 f"reads version {FORMAT_VERSION}")
    if header_length > MAX_HEADER:
        raise CorruptStoreError(name, f"header length {header_length} out of range")
    header = f.read(header_length)
    if len(header) < header_length:
        raise CorruptStoreError(name, "truncated in the header")
    try:
        meta = _meta_decoder.decode(header)
    except (msgspec.MsgspecError, ValueError) as exc:
        raise CorruptStoreError(name, f"header does not decode: {exc}") from None
    return meta, prefix + header


def _expected_size(head: bytes, meta: SnapshotMeta) -> int:
    return len(head) + meta.body_length + _TRAILER.size


def _check_identity(meta: SnapshotMeta, name: Path, *, cluster_id: str | None,
                    slot: int | None) -> None:
    if cluster_id is not None and meta.cluster_id != cluster_id:
        raise StoreIdentityError(name, f"a snapshot of cluster {meta.cluster_id!r}, not of "
                                 f"cluster {cluster_id!r}")
    if slot is not None and meta.slot != slot:
        raise CorruptStoreError(name, f"its header says slot {meta.slot}, its name slot "
                                f"{slot}")


def _body_chunks(f: BinaryIO, name: Path, meta: SnapshotMeta, head: bytes,
                 chunk: int = _COPY_CHUNK) -> Iterator[bytes]:
    """The body of `f` (positioned after the header) in chunks; after the last one,
    the trailer is checked: `CorruptStoreError` if the file is not what it says."""
    digest = _hasher(head)
    left = meta.body_length
    while left:
        data = f.read(min(chunk, left))
        if not data:
            raise CorruptStoreError(name, "truncated in the body")
        digest.update(data)
        left -= len(data)
        yield data
    _check_trailer(f.read(_TRAILER.size + 1), digest, name)


def _check_trailer(trailer: bytes, digest: hashlib._Hash, name: Path) -> None:
    if len(trailer) != _TRAILER.size:
        what = "extended past its end" if len(trailer) > _TRAILER.size else "truncated"
        raise CorruptStoreError(name, f"{what} (the length is not the header's)")
    checksum, end = _TRAILER.unpack(trailer)
    if end != END_MAGIC:
        raise CorruptStoreError(name, "no end marker (truncated or damaged)")
    if checksum != digest.digest():
        raise CorruptStoreError(name, "checksum mismatch (damaged)")


def _verify(f: BinaryIO, name: Path, *, cluster_id: str | None, slot: int | None,
            path: Path | None) -> SnapshotInfo:
    """Read the whole file `f`, checking everything; its `SnapshotInfo`."""
    meta, head = _parse_head(f, name)
    _check_identity(meta, name, cluster_id=cluster_id, slot=slot)
    for _ in _body_chunks(f, name, meta, head):
        pass
    return _info(meta, head, path)


def _check_shape(f: BinaryIO, size: int, name: Path, *, cluster_id: str | None,
                 slot: int | None, path: Path | None) -> SnapshotInfo:
    """Header, length and end magic only: the cheap check of an older file at open."""
    meta, head = _parse_head(f, name)
    _check_identity(meta, name, cluster_id=cluster_id, slot=slot)
    if size != _expected_size(head, meta):
        raise CorruptStoreError(name, f"{size} bytes, its header says "
                                f"{_expected_size(head, meta)} (truncated or extended)")
    f.seek(size - len(END_MAGIC))
    if f.read(len(END_MAGIC)) != END_MAGIC:
        raise CorruptStoreError(name, "no end marker (truncated or damaged)")
    return _info(meta, head, path)


def _info(meta: SnapshotMeta, head: bytes, path: Path | None) -> SnapshotInfo:
    return SnapshotInfo(meta.slot, meta.index, tuple(meta.members),
                        _expected_size(head, meta), path, len(head), meta.cluster_id,
                        meta.membership)


def read_info(path: str | os.PathLike[str], *, cluster_id: str | None = None) -> SnapshotInfo:
    """Verify the snapshot file at any `path` whole (of `cluster_id`, if given)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _verify(f, path, cluster_id=cluster_id, slot=None, path=path)
    except OSError as exc:
        raise StoreError(path, f"cannot read the snapshot: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ writing


def _stream(write: Callable[[bytes], None], meta: SnapshotMeta,
            chunks: Iterable[bytes]) -> int:
    """Write the file of `meta` and body `chunks` through `write`, chunk by chunk as
    they come (never joined); its size. `ValueError` if the body is not
    `meta.body_length` bytes."""
    head = _head_bytes(meta)
    digest = _hasher(head)
    write(head)
    written = 0
    for chunk in chunks:
        if not chunk:
            continue
        written += len(chunk)
        if written > meta.body_length:
            raise ValueError(f"the body is longer than the {meta.body_length} bytes its "
                             "header says")
        digest.update(chunk)
        write(chunk)
    if written != meta.body_length:
        raise ValueError(f"the body is {written} bytes, its header says {meta.body_length}")
    write(_TRAILER.pack(digest.digest(), END_MAGIC))
    return len(head) + written + _TRAILER.size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)


def write_file(path: str | os.PathLike[str], meta: SnapshotMeta, chunks: Iterable[bytes],
               *, fsync: bool = True) -> SnapshotInfo:
    """Write a snapshot file of `meta` and body `chunks` at any `path`, atomically.

    The chunks are written as they come (for `pnyx backup`, a body streamed over
    HTTP). On any error the temporary file is removed and a file already at
    `path` is untouched; an `OSError` becomes a `StoreError` naming `path` and
    the reason; a body of another length than `meta.body_length` is `ValueError`.
    """
    path = Path(path)
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            size = _stream(lambda data: _write_all(fd, data), meta, chunks)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StoreError(path, f"cannot write the snapshot: {_os_reason(exc)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if fsync:
        try:
            _fsync_dir(path.parent)
        except OSError as exc:
            # The file is in place; whether its name survives a power loss is unknown.
            raise StoreError(path, f"cannot make the snapshot's name durable: "
                             f"{_os_reason(exc)}") from None
    return SnapshotInfo(meta.slot, meta.index, tuple(meta.members), size, path,
                        size - meta.body_length - _TRAILER.size, meta.cluster_id,
                        meta.membership)


def _rewrite(f: BinaryIO, name: Path, dest: Path, *, expect_cluster: str | None,
             new_cluster: str | None, fsync: bool) -> SnapshotInfo:
    """Copy the snapshot in `f` to `dest`, verifying it as it goes; with
    `new_cluster`, its header says that cluster (and its checksum is recomputed)."""
    meta, head = _parse_head(f, name)
    _check_identity(meta, name, cluster_id=expect_cluster, slot=None)
    if new_cluster is not None:
        # A new cluster starts from its own first configuration, not the old one's
        # members (`pnyx restore`).
        meta = msgspec.structs.replace(meta, cluster_id=new_cluster, membership=b"")
    # The source's trailer is checked after its last chunk, before the copy's
    # trailer is written: a damaged source leaves no copy.
    return write_file(dest, meta, _body_chunks(f, name, meta, head), fsync=fsync)


class _ChunkReader:
    """A stream of chunks read as a file (`read(n)` only)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._current = b""
        self._at = 0  # in `_current`: a big chunk is sliced, never copied whole again

    def read(self, n: int) -> bytes:
        parts = []
        while n:
            if self._at >= len(self._current):
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._current, self._at = chunk, 0
                continue
            part = self._current[self._at:self._at + n]
            self._at += len(part)
            n -= len(part)
            parts.append(part)
        return b"".join(parts)


def save_file(path: str | os.PathLike[str], file_chunks: Iterable[bytes], *,
              cluster_id: str | None = None, fsync: bool = True) -> SnapshotInfo:
    """Write a stream of a whole snapshot file's bytes (e.g. `pnyx backup` fetching
    one over HTTP) at `path`, atomically, verifying it as it comes: nothing is left
    at `path` unless the stream was a whole, sound snapshot (of `cluster_id`, if
    given). Errors are those of `read_info` and `write_file`."""
    path = Path(path)
    return _rewrite(_ChunkReader(file_chunks), path, path,  # type: ignore[arg-type]
                    expect_cluster=cluster_id, new_cluster=None, fsync=fsync)


def _read_body(f: BinaryIO, name: Path, *, cluster_id: str, slot: int) -> bytes:
    meta, head = _parse_head(f, name)
    _check_identity(meta, name, cluster_id=cluster_id, slot=slot)
    # One read of the whole body (what `restore` wants), hashed as one.
    chunks = list(_body_chunks(f, name, meta, head, chunk=max(meta.body_length, 1)))
    return chunks[0] if chunks else b""


class _StagedHead:
    """What is known of an incoming transfer once its header has arrived."""

    def __init__(self) -> None:
        self.total: int | None = None  # the file's size, as its header says

    def check(self, data: bytes, name: Path, *, slot: int, cluster_id: str) -> None:
        """Check what has been staged (`data`: at least its first bytes) as far as it
        goes; once the header is whole, remember the size the file will have."""
        if self.total is not None or len(data) < _PREFIX.size:
            return
        magic, version, header_length = _PREFIX.unpack_from(data)
        if magic != MAGIC or version != FORMAT_VERSION or header_length > MAX_HEADER:
            _parse_head(io.BytesIO(data[:_PREFIX.size]), name)  # raises why it is not one
        if len(data) >= _PREFIX.size + header_length:
            meta, head = _parse_head(io.BytesIO(data), name)
            _check_identity(meta, name, cluster_id=cluster_id, slot=slot)
            self.total = _expected_size(head, meta)
