"""The snapshot files of one data directory: kept, pruned, sent and received.

This module owns `SnapshotStore` (the files of one directory, e.g.
`<data-dir>/snapshots/`), its in-memory twin `MemorySnapshotStore`, the
`Snapshots` protocol both meet, and `SnapshotGone`. The file format, and the
helpers for a file at any path (`write_file`, `save_file`, `read_info`), are in
`pnyx.storage.snapshot_file`; the names other modules import from here are
re-exported, so `pnyx.storage.snapshots` stays the place to import them from.

A crash while writing leaves at most a temporary file, which
`SnapshotStore.open` removes. A file in the directory that is damaged, of
another cluster, or of another format version is refused with one line naming
it (`CorruptStoreError`, `StoreIdentityError`): never skipped, never deleted,
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
import io
import os
import re
import threading
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Protocol

import msgspec

from pnyx.storage.errors import CorruptStoreError, StoreError, StoreIdentityError
from pnyx.storage.snapshot_file import (
    _PREFIX,
    _TMP_SUFFIX,
    END_MAGIC,
    FORMAT_VERSION,
    MAGIC,
    MAX_HEADER,
    SnapshotInfo,
    SnapshotMeta,
    _body_chunks,
    _check_identity,
    _check_shape,
    _fsync_dir,
    _info,
    _os_reason,
    _parse_head,
    _read_body,
    _rewrite,
    _StagedHead,
    _stream,
    _verify,
    read_info,
    save_file,
    write_file,
)
from pnyx.storage.snapshot_file import _hasher as _hasher  # tests read it from here

__all__ = [
    "END_MAGIC",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_HEADER",
    "MemorySnapshotStore",
    "SnapshotGone",
    "SnapshotInfo",
    "SnapshotMeta",
    "SnapshotStore",
    "Snapshots",
    "file_name",
    "read_info",
    "save_file",
    "write_file",
]


_NAME = re.compile(r"snapshot-([1-9][0-9]{0,18})\.pnyx")
_STAGED = re.compile(r"incoming-([1-9][0-9]{0,18})\.pnyx\.part")


class SnapshotGone(LookupError):
    """The snapshot of that slot is no longer kept (pruned, or never was): a peer
    being sent it must be sent the latest instead."""

    def __init__(self, slot: int) -> None:
        super().__init__(f"snapshot of slot {slot} is no longer kept")
        self.slot = slot


def file_name(slot: int) -> str:
    return f"snapshot-{slot}.pnyx"


def _staged_name(slot: int) -> str:
    return f"incoming-{slot}.pnyx.part"


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
