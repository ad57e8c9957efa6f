"""The snapshot files of one data directory: written atomically, verified, sent and received.

This module owns the snapshot file format, `SnapshotStore` (the files of one
directory, e.g. `<data-dir>/snapshots/`), its in-memory twin
`MemorySnapshotStore`, and helpers for any path (`write_file`, `save_file`,
`read_info`) used by backup and restore. A snapshot is the state machine's bytes after
every command of slots 1..slot was applied; once one is durable, the log
store may forget those slots (`CompactRecord`).

File format (version 1), `snapshot-<slot>.pnyx`:

    offset 0   8 bytes   magic b"PNYXSNAP"
               u32 BE    format version (1)
               u32 BE    header length H (at most 1 MiB)
    16         H bytes   header: MessagePack map `SnapshotMeta` (slot >= 1,
                         index >= 0 = commands applied, cluster_id, members,
                         body_length B)
    16+H       B bytes   body: the state machine's snapshot, as it gave it
    16+H+B     32 bytes  blake2b-256 of every byte before it (prefix, header, body)
               8 bytes   end magic b"PNYXEND\\n"

A file is written whole to a temporary name (`*.tmp`), fsynced, renamed into
place, and the directory fsynced: a crash leaves the old file or the new one,
and at most a temporary file, which `SnapshotStore.open` removes. A file in
the directory that is damaged (any byte: the checksum covers all of them but
the trailer, which is checked by its end magic and length), of another
cluster, or of another format version is refused with one line naming it
(`CorruptStoreError`, `StoreIdentityError`): never skipped, never deleted,
since the log it stands for may already be compacted away. At open, the
newest file is verified fully and the older ones by header and length;
`body` verifies the whole file again as it reads it.

Sending a snapshot to a peer is `read_chunk` (one range of the file, the
whole file never in memory); receiving it is `staged` / `stage` (appending
to `incoming-<slot>.pnyx.part`, which survives a restart so a transfer
resumes) and `install_staged` (verified whole, fsynced, renamed into place).
Staged chunks are not fsynced one by one: a crash may lose the last ones (the
transfer resumes from what is there) or leave a torn tail, which the
checksum refuses at install (the transfer then starts over).
Errors about what a peer sent are `CorruptStoreError` / `StoreIdentityError`
naming the staged file (the staged file is deleted; ask for the snapshot
again); an error of the local disk is a plain `StoreError`.

Every method blocks (the node calls them from a worker thread) and is
thread-safe: a lock guards the list of files, so a `prune` never deletes a
file under a `read_chunk`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import os
import re
import struct
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

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
_NAME = re.compile(r"snapshot-([1-9][0-9]{0,18})\.pnyx")
_STAGED = re.compile(r"incoming-([1-9][0-9]{0,18})\.pnyx\.part")
_U64 = 1 << 64
_I64 = 1 << 63


class SnapshotMeta(msgspec.Struct, frozen=True):
    """What a snapshot's header says: where in the log it stands, and whose it is."""

    slot: int  # every slot 1..slot is in it
    index: int  # commands the state machine applied
    cluster_id: str
    members: tuple[int, ...]
    body_length: int  # bytes of the state machine's snapshot

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


class SnapshotGone(LookupError):
    """The snapshot of that slot is no longer kept (pruned, or never was): a peer
    being sent it must be sent the latest instead."""

    def __init__(self, slot: int) -> None:
        super().__init__(f"snapshot of slot {slot} is no longer kept")
        self.slot = slot


_encoder = msgspec.msgpack.Encoder()
_meta_decoder = msgspec.msgpack.Decoder(SnapshotMeta)


def file_name(slot: int) -> str:
    return f"snapshot-{slot}.pnyx"


def _staged_name(slot: int) -> str:
    return f"incoming-{slot}.pnyx.part"


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
                        _expected_size(head, meta), path, len(head), meta.cluster_id)


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
                        size - meta.body_length - _TRAILER.size, meta.cluster_id)


def _rewrite(f: BinaryIO, name: Path, dest: Path, *, expect_cluster: str | None,
             new_cluster: str | None, fsync: bool) -> SnapshotInfo:
    """Copy the snapshot in `f` to `dest`, verifying it as it goes; with
    `new_cluster`, its header says that cluster (and its checksum is recomputed)."""
    meta, head = _parse_head(f, name)
    _check_identity(meta, name, cluster_id=expect_cluster, slot=None)
    if new_cluster is not None:
        meta = msgspec.structs.replace(meta, cluster_id=new_cluster)
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


# ------------------------------------------------------------------ the stores


class Snapshots(Protocol):
    """What the node and the simulator use: `SnapshotStore` and `MemorySnapshotStore`."""

    cluster_id: str

    def latest(self) -> SnapshotInfo | None: ...
    def snapshots(self) -> list[SnapshotInfo]: ...
    def write(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> SnapshotInfo: ...
    def read_chunk(self, slot: int, offset: int, size: int) -> tuple[bytes, int]: ...
    def staged(self, slot: int) -> int: ...
    def stage(self, slot: int, offset: int, data: bytes) -> None: ...
    def install_staged(self, slot: int) -> SnapshotInfo: ...
    def body(self, info: SnapshotInfo) -> bytes: ...
    def prune(self, keep: Collection[int]) -> None: ...
    def export(self, info: SnapshotInfo, dest_path: str | os.PathLike[str], *,
               cluster_id: str | None = None) -> SnapshotInfo: ...
    def import_file(self, path: str | os.PathLike[str], *,
                    cluster_id: str | None = None) -> SnapshotInfo: ...


def _check_range(offset: int, size: int) -> None:
    if offset < 0 or size < 0:
        raise ValueError(f"offset {offset} and size {size} must not be negative")


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


class SnapshotStore:
    """The snapshot files of one directory. Open with `SnapshotStore.open`."""

    def __init__(self, directory: Path, *, cluster_id: str, fsync: bool,
                 infos: dict[int, SnapshotInfo]) -> None:
        self.directory = directory
        self.cluster_id = cluster_id
        self.fsync = fsync
        self._infos = infos
        self._lock = threading.Lock()  # the list of files; a read racing a prune
        self._write_lock = threading.Lock()  # one write at a time (a slot's temp name)
        self._stage_lock = threading.Lock()  # one incoming transfer at a time
        self._staged_head: tuple[int, _StagedHead] | None = None

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, cluster_id: str,
             fsync: bool = True) -> SnapshotStore:
        """The snapshots in `directory` (made if missing), checked.

        Removes leftover temporary files; verifies the newest snapshot whole and
        the others by header and length. Raises `CorruptStoreError` or
        `StoreIdentityError` naming the first file that is damaged or not of
        `cluster_id` (nothing is skipped or deleted), `StoreError` if the
        directory cannot be read.
        """
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            names = os.listdir(directory)
            for name in names:
                if name.endswith(_TMP_SUFFIX):
                    (directory / name).unlink()
        except OSError as exc:
            raise StoreError(directory, f"cannot open the snapshot directory: "
                             f"{_os_reason(exc)}") from None
        slots = sorted((int(m.group(1)) for m in map(_NAME.fullmatch, names) if m),
                       reverse=True)
        infos: dict[int, SnapshotInfo] = {}
        for i, slot in enumerate(slots):
            path = directory / file_name(slot)
            try:
                with open(path, "rb") as f:
                    if i == 0:
                        info = _verify(f, path, cluster_id=cluster_id, slot=slot, path=path)
                    else:
                        info = _check_shape(f, os.fstat(f.fileno()).st_size, path,
                                            cluster_id=cluster_id, slot=slot, path=path)
            except OSError as exc:
                raise StoreError(path, f"cannot read the snapshot: {_os_reason(exc)}"
                                 ) from None
            infos[slot] = info
        return cls(directory, cluster_id=cluster_id, fsync=fsync, infos=infos)

    # -------------------------------------------------------------- kept snapshots

    def latest(self) -> SnapshotInfo | None:
        """The newest snapshot (verified), or None if there is none."""
        with self._lock:
            return self._infos[max(self._infos)] if self._infos else None

    def snapshots(self) -> list[SnapshotInfo]:
        """Every snapshot kept, oldest first."""
        with self._lock:
            return [self._infos[s] for s in sorted(self._infos)]

    def write(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> SnapshotInfo:
        """Write the snapshot of `meta` with the body `chunks` (written as they come),
        atomically; on any error, nothing of it is left and the previous snapshots are
        intact. `StoreError` naming the file and the reason if the disk fails;
        `ValueError` for a snapshot of another cluster or a body of another length."""
        if meta.cluster_id != self.cluster_id:
            raise ValueError(f"a snapshot of cluster {meta.cluster_id!r} in a store of "
                             f"cluster {self.cluster_id!r}")
        path = self.directory / file_name(meta.slot)
        with self._write_lock:  # one temporary file per slot
            info = write_file(path, meta, chunks, fsync=self.fsync)
            with self._lock:
                self._infos[meta.slot] = info
        return info

    def read_chunk(self, slot: int, offset: int, size: int) -> tuple[bytes, int]:
        """Bytes `offset`..`offset+size` of the snapshot file of `slot` (fewer at its
        end), and the file's size. Reads that range only. `SnapshotGone` if the
        snapshot of `slot` is no longer kept."""
        _check_range(offset, size)
        with self._lock:
            info = self._infos.get(slot)
            if info is None or info.path is None:
                raise SnapshotGone(slot)
            try:
                with open(info.path, "rb") as f:
                    f.seek(offset)
                    return f.read(size), info.size
            except FileNotFoundError:
                raise SnapshotGone(slot) from None
            except OSError as exc:
                raise StoreError(info.path, f"cannot read the snapshot: {_os_reason(exc)}"
                                 ) from None

    def body(self, info: SnapshotInfo) -> bytes:
        """The state machine's bytes of snapshot `info`, verified again as read
        (`CorruptStoreError` if the file was damaged since). `SnapshotGone` if it is
        no longer kept."""
        with self._lock:
            kept = self._infos.get(info.slot)
            if kept is None or kept.path is None:
                raise SnapshotGone(info.slot)
            try:
                f = open(kept.path, "rb")  # noqa: SIM115 (read outside the lock, closed below)
            except FileNotFoundError:
                raise SnapshotGone(info.slot) from None
            except OSError as exc:
                raise StoreError(kept.path, f"cannot read the snapshot: {_os_reason(exc)}"
                                 ) from None
        with f:
            try:
                return _read_body(f, kept.path, cluster_id=self.cluster_id, slot=info.slot)
            except OSError as exc:
                raise StoreError(kept.path, f"cannot read the snapshot: {_os_reason(exc)}"
                                 ) from None

    def prune(self, keep: Collection[int]) -> None:
        """Delete the snapshot files whose slot is not in `keep`, never the latest."""
        with self._lock:
            if not self._infos:
                return
            latest = max(self._infos)
            doomed = [s for s in self._infos if s not in keep and s != latest]
            for slot in doomed:
                info = self._infos.pop(slot)
                assert info.path is not None
                try:
                    info.path.unlink(missing_ok=True)
                except OSError as exc:
                    raise StoreError(info.path, f"cannot delete the snapshot: "
                                     f"{_os_reason(exc)}") from None
            if doomed and self.fsync:
                with contextlib.suppress(OSError):  # a deletion lost is only space
                    _fsync_dir(self.directory)

    # -------------------------------------------------------------- receiving

    def staged(self, slot: int) -> int:
        """Bytes of an incoming transfer of `slot` already staged (0 if none); a
        staged transfer of any other slot is discarded."""
        with self._stage_lock:
            size = 0
            try:
                for name in os.listdir(self.directory):
                    m = _STAGED.fullmatch(name)
                    if m is None:
                        continue
                    if int(m.group(1)) == slot:
                        size = (self.directory / name).stat().st_size
                    else:
                        (self.directory / name).unlink()
            except OSError as exc:
                raise StoreError(self.directory, f"cannot read the staged snapshot: "
                                 f"{_os_reason(exc)}") from None
            if self._staged_head is not None and self._staged_head[0] != slot:
                self._staged_head = None
            return size

    def stage(self, slot: int, offset: int, data: bytes) -> None:
        """Append `data` to the staged transfer of `slot` at `offset`, which must be
        the bytes staged so far (`ValueError` if not). What arrived is checked as far
        as it goes: a transfer that is not a snapshot of `slot` of this cluster, or
        longer than its header says, is refused (and its staged file deleted)."""
        path = self.directory / _staged_name(slot)
        with self._stage_lock:
            try:
                have = path.stat().st_size if path.exists() else 0
                if offset != have:
                    raise ValueError(f"{path}: a chunk at offset {offset}, but {have} "
                                     "bytes are staged")
                head = self._head_of(slot)
                if head.total is None:  # the header is not whole yet, or not read since a start
                    start = b""
                    if have:
                        with open(path, "rb") as f:
                            start = f.read(_PREFIX.size + MAX_HEADER)
                    head.check(start + data[:_PREFIX.size + MAX_HEADER], path, slot=slot,
                               cluster_id=self.cluster_id)
                if head.total is not None and have + len(data) > head.total:
                    raise CorruptStoreError(path, f"more than the {head.total} bytes its "
                                            "header says")
                with open(path, "ab") as f:
                    f.write(data)
            except (CorruptStoreError, StoreIdentityError):
                self._discard(path)
                raise
            except OSError as exc:
                raise StoreError(path, f"cannot stage the snapshot: {_os_reason(exc)}"
                                 ) from None

    def install_staged(self, slot: int) -> SnapshotInfo:
        """Verify the staged transfer of `slot` whole, make it durable and install it
        as the snapshot of `slot`. On any failure the staged file is deleted and the
        error raised; the snapshots kept are untouched."""
        staged = self.directory / _staged_name(slot)
        path = self.directory / file_name(slot)
        with self._stage_lock:
            try:
                with open(staged, "rb") as f:
                    info = _verify(f, staged, cluster_id=self.cluster_id, slot=slot,
                                   path=path)
                    if self.fsync:
                        os.fsync(f.fileno())
                with self._write_lock, self._lock:
                    os.replace(staged, path)
                    self._infos[slot] = info
                    self._staged_head = None
            except FileNotFoundError:
                raise StoreError(staged, "no staged snapshot to install") from None
            except OSError as exc:
                self._discard(staged)
                raise StoreError(staged, f"cannot install the snapshot: {_os_reason(exc)}"
                                 ) from None
            except BaseException:
                self._discard(staged)
                raise
        if self.fsync:
            try:
                _fsync_dir(self.directory)
            except OSError as exc:
                raise StoreError(path, f"cannot make the snapshot's name durable: "
                                 f"{_os_reason(exc)}") from None
        return info

    def _head_of(self, slot: int) -> _StagedHead:
        if self._staged_head is None or self._staged_head[0] != slot:
            self._staged_head = (slot, _StagedHead())
        return self._staged_head[1]

    def _discard(self, staged: Path) -> None:
        self._staged_head = None
        with contextlib.suppress(OSError):
            staged.unlink(missing_ok=True)

    # -------------------------------------------------------------- backup, restore

    def export(self, info: SnapshotInfo, dest_path: str | os.PathLike[str], *,
               cluster_id: str | None = None) -> SnapshotInfo:
        """Copy snapshot `info` to `dest_path` (a backup: the same format), verified
        as copied; with `cluster_id`, the copy says that cluster instead."""
        with self._lock:
            kept = self._infos.get(info.slot)
            if kept is None or kept.path is None:
                raise SnapshotGone(info.slot)
            try:
                f = open(kept.path, "rb")  # noqa: SIM115 (read outside the lock, closed below)
            except OSError as exc:
                raise StoreError(kept.path, f"cannot read the snapshot: {_os_reason(exc)}"
                                 ) from None
        with f:
            return _rewrite(f, kept.path, Path(dest_path), expect_cluster=self.cluster_id,
                            new_cluster=cluster_id, fsync=self.fsync)

    def import_file(self, path: str | os.PathLike[str], *,
                    cluster_id: str | None = None) -> SnapshotInfo:
        """Install the backup at `path` as a snapshot of this store, verified as copied.

        `cluster_id` is the cluster the backup must be of; None accepts a backup of
        any cluster (restoring into a new cluster). The installed snapshot says this
        store's cluster (its header, and so its checksum, rewritten if it differs).
        """
        source = Path(path)
        try:
            with open(source, "rb") as f:
                meta, _ = _parse_head(f, source)
                f.seek(0)
                dest = self.directory / file_name(meta.slot)
                with self._write_lock:
                    info = _rewrite(f, source, dest, expect_cluster=cluster_id,
                                    new_cluster=self.cluster_id, fsync=self.fsync)
                    with self._lock:
                        self._infos[info.slot] = info
                return info
        except OSError as exc:
            raise StoreError(source, f"cannot read the backup: {_os_reason(exc)}") from None


def _read_body(f: BinaryIO, name: Path, *, cluster_id: str, slot: int) -> bytes:
    meta, head = _parse_head(f, name)
    _check_identity(meta, name, cluster_id=cluster_id, slot=slot)
    # One read of the whole body (what `restore` wants), hashed as one.
    chunks = list(_body_chunks(f, name, meta, head, chunk=max(meta.body_length, 1)))
    return chunks[0] if chunks else b""


class MemorySnapshotStore:
    """The in-memory twin of `SnapshotStore`: the same interface and file format, the
    files kept as bytes for the life of the object (`path` is None)."""

    def __init__(self, *, cluster_id: str = "") -> None:
        self.cluster_id = cluster_id
        self._files: dict[int, bytes] = {}
        self._infos: dict[int, SnapshotInfo] = {}
        self._staged: tuple[int, bytearray, _StagedHead] | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, *, cluster_id: str = "") -> MemorySnapshotStore:
        return cls(cluster_id=cluster_id)

    def latest(self) -> SnapshotInfo | None:
        with self._lock:
            return self._infos[max(self._infos)] if self._infos else None

    def snapshots(self) -> list[SnapshotInfo]:
        with self._lock:
            return [self._infos[s] for s in sorted(self._infos)]

    def write(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> SnapshotInfo:
        if meta.cluster_id != self.cluster_id:
            raise ValueError(f"a snapshot of cluster {meta.cluster_id!r} in a store of "
                             f"cluster {self.cluster_id!r}")
        data = bytearray()
        _stream(data.extend, meta, chunks)
        return self._keep(bytes(data), meta.slot)

    def read_chunk(self, slot: int, offset: int, size: int) -> tuple[bytes, int]:
        _check_range(offset, size)
        with self._lock:
            data = self._files.get(slot)
            if data is None:
                raise SnapshotGone(slot)
            return data[offset:offset + size], len(data)

    def body(self, info: SnapshotInfo) -> bytes:
        with self._lock:
            data = self._files.get(info.slot)
        if data is None:
            raise SnapshotGone(info.slot)
        return _read_body(io.BytesIO(data), _memory_name(info.slot),
                          cluster_id=self.cluster_id, slot=info.slot)

    def prune(self, keep: Collection[int]) -> None:
        with self._lock:
            if not self._infos:
                return
            latest = max(self._infos)
            for slot in [s for s in self._infos if s not in keep and s != latest]:
                del self._infos[slot], self._files[slot]

    def staged(self, slot: int) -> int:
        with self._lock:
            if self._staged is not None and self._staged[0] != slot:
                self._staged = None
            return len(self._staged[1]) if self._staged is not None else 0

    def stage(self, slot: int, offset: int, data: bytes) -> None:
        name = _memory_name(slot, staged=True)
        with self._lock:
            if self._staged is None or self._staged[0] != slot:
                self._staged = (slot, bytearray(), _StagedHead())
            _, buffer, head = self._staged
            if offset != len(buffer):
                raise ValueError(f"{name}: a chunk at offset {offset}, but {len(buffer)} "
                                 "bytes are staged")
            try:
                if head.total is None:
                    head.check(bytes(buffer[:_PREFIX.size + MAX_HEADER]) + data, name,
                               slot=slot, cluster_id=self.cluster_id)
                if head.total is not None and len(buffer) + len(data) > head.total:
                    raise CorruptStoreError(name, f"more than the {head.total} bytes its "
                                            "header says")
            except BaseException:
                self._staged = None
                raise
            buffer.extend(data)

    def install_staged(self, slot: int) -> SnapshotInfo:
        name = _memory_name(slot, staged=True)
        with self._lock:
            staged, self._staged = self._staged, None
        if staged is None or staged[0] != slot:
            raise StoreError(name, "no staged snapshot to install")
        data = bytes(staged[1])
        _verify(io.BytesIO(data), name, cluster_id=self.cluster_id, slot=slot, path=None)
        return self._keep(data, slot)

    def export(self, info: SnapshotInfo, dest_path: str | os.PathLike[str], *,
               cluster_id: str | None = None) -> SnapshotInfo:
        with self._lock:
            data = self._files.get(info.slot)
        if data is None:
            raise SnapshotGone(info.slot)
        return _rewrite(io.BytesIO(data), _memory_name(info.slot), Path(dest_path),
                        expect_cluster=self.cluster_id, new_cluster=cluster_id, fsync=False)

    def import_file(self, path: str | os.PathLike[str], *,
                    cluster_id: str | None = None) -> SnapshotInfo:
        source = Path(path)
        try:
            with open(source, "rb") as f:
                meta, head = _parse_head(f, source)
                _check_identity(meta, source, cluster_id=cluster_id, slot=None)
                new = msgspec.structs.replace(meta, cluster_id=self.cluster_id)
                data = bytearray()
                _stream(data.extend, new, _body_chunks(f, source, meta, head))
        except OSError as exc:
            raise StoreError(source, f"cannot read the backup: {_os_reason(exc)}") from None
        return self._keep(bytes(data), new.slot)

    def _keep(self, data: bytes, slot: int) -> SnapshotInfo:
        meta, head = _parse_head(io.BytesIO(data), _memory_name(slot))
        info = _info(meta, head, None)
        with self._lock:
            self._files[slot] = data
            self._infos[slot] = info
        return info


def _memory_name(slot: int, *, staged: bool = False) -> Path:
    return Path("<memory>", _staged_name(slot) if staged else file_name(slot))
