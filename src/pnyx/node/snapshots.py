"""The node's snapshot port: `pnyx.storage.snapshots.SnapshotStore`, off the event loop.

Every operation runs in a worker thread and reports back on the loop, so the
loop is never blocked by serializing or writing a snapshot, however large the
state: the machine's chunks (captured already, copy-on-write) are drawn and
written in the `save` thread, while the loop goes on applying commands. Taking
a snapshot has a thread of its own, so a large write never holds up the chunks
a peer is fetching (a transfer in flight), which have the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable, Collection, Iterator
from typing import Any

from pnyx.storage.errors import StoreError
from pnyx.storage.snapshots import SnapshotGone, SnapshotInfo, SnapshotMeta, SnapshotStore

log = logging.getLogger("pnyx.node")


class ThreadSnapshots:
    """`SnapshotPort` over a `SnapshotStore` on the node's event loop."""

    def __init__(self, store: SnapshotStore, loop: asyncio.AbstractEventLoop, *,
                 cluster_id: str, members: tuple[int, ...]) -> None:
        self.store = store
        self.loop = loop
        self.cluster_id = cluster_id
        self.members = members
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "pnyx-snapshot-write")
        self._transfer = concurrent.futures.ThreadPoolExecutor(1, "pnyx-snapshot-transfer")
        self.writing = False  # a snapshot is being written (metrics)
        self.closed = False

    def _run(self, pool: concurrent.futures.ThreadPoolExecutor, work: Callable[[], Any],
             done: Callable[[Any, BaseException | None], None]) -> None:
        def finish(result: Any, error: BaseException | None) -> None:
            if not self.closed:
                done(result, error)

        def job() -> None:
            try:
                result, error = work(), None
            except Exception as exc:  # reported on the loop, never raised there
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: the node is gone
                self.loop.call_soon_threadsafe(finish, result, error)

        try:
            pool.submit(job)
        except RuntimeError as exc:  # shut down
            self.loop.call_soon(finish, None, exc)

    def save(self, slot: int, index: int, chunks: Iterator[bytes],
             done: Callable[[int, BaseException | None], None],
             membership: bytes = b"") -> None:
        self.writing = True

        def write() -> int:
            # The file's header states the body's length, known only once the chunks
            # are drawn: they are spooled to a temporary file first (never joined in
            # memory), then streamed into the snapshot file.
            spool = self.store.directory / f"spool-{slot}.tmp"
            try:
                length = 0
                with open(spool, "w+b") as f:
                    for chunk in chunks:
                        f.write(chunk)
                        length += len(chunk)
                    f.seek(0)
                    meta = SnapshotMeta(slot, index, self.cluster_id, self.members, length,
                                        membership)
                    return self.store.write(meta, iter(lambda: f.read(1 << 20), b"")).size
            finally:
                spool.unlink(missing_ok=True)

        def finished(size: Any, error: BaseException | None) -> None:
            self.writing = False
            done(size or 0, error)

        self._run(self._writer, write, finished)

    def read(self, slot: int, offset: int, size: int,
             done: Callable[[bytes | None, int], None]) -> None:
        def read() -> tuple[bytes | None, int]:
            try:
                return self.store.read_chunk(slot, offset, size)
            except SnapshotGone:
                return None, 0

        def finished(result: Any, error: BaseException | None) -> None:
            if error is not None:
                log.warning("snapshot %s: cannot read for a peer: %s", slot, error)
                done(None, 0)
            else:
                done(*result)

        self._run(self._transfer, read, finished)

    def begin_staging(self, slot: int, done: Callable[[int], None]) -> None:
        self._run(self._transfer, lambda: self.store.staged(slot),
                  lambda size, error: done(0 if error is not None else size))

    def stage(self, slot: int, offset: int, data: bytes, done: Callable[[int], None]) -> None:
        def stage() -> int:
            self.store.stage(slot, offset, data)
            return offset + len(data)

        def finished(size: Any, error: BaseException | None) -> None:
            if error is not None:
                log.warning("snapshot %s from a peer: cannot stage: %s", slot, error)
            done(0 if error is not None else size)

        self._run(self._transfer, stage, finished)

    def install(self, slot: int,
                done: Callable[[Any, bytes | None, BaseException | None], None]) -> None:
        def install() -> tuple[SnapshotInfo, bytes]:
            info = self.store.install_staged(slot)
            return info, self.store.body(info)

        def finished(result: Any, error: BaseException | None) -> None:
            if error is not None:
                done(None, None, error)
            else:
                done(result[0], result[1], None)

        self._run(self._transfer, install, finished)

    def keep(self, slots: Collection[int]) -> None:
        keep = tuple(slots)

        def prune() -> None:
            try:
                self.store.prune(keep)
            except StoreError as exc:
                log.warning("cannot delete old snapshots: %s", exc)

        self._run(self._transfer, prune, lambda _r, _e: None)

    def close(self) -> None:
        """Stop: work in flight finishes (a snapshot write completes or is left as a
        temporary file the next open removes); nothing more is reported."""
        self.closed = True
        self._writer.shutdown(wait=False, cancel_futures=True)
        self._transfer.shutdown(wait=False, cancel_futures=True)
