"""Snapshot files: written whole or not at all, verified, sent and received in chunks.

A snapshot stands for a prefix of the log that may already be compacted away,
so a damaged snapshot, or one of another cluster, is refused with one line
naming the file, never skipped, deleted or read as something else; a write
that fails (a full disk) leaves the previous snapshot readable and no
temporary file; a transfer is checked as it arrives, resumes after a restart,
and installs only whole and verified. `MemorySnapshotStore` behaves the same.
"""

from __future__ import annotations

import errno
import itertools
import os
import subprocess
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from pnyx.storage import (
    CorruptStoreError,
    MemorySnapshotStore,
    SnapshotGone,
    SnapshotInfo,
    SnapshotMeta,
    Snapshots,
    SnapshotStore,
    StoreError,
    StoreIdentityError,
)
from pnyx.storage import snapshots as snapshots_module
from pnyx.storage.snapshots import (
    END_MAGIC,
    MAGIC,
    file_name,
    read_info,
    save_file,
    write_file,
)

CLUSTER = "test-cluster"
MEMBERS = (1, 2, 3)


def meta(slot: int, body: bytes, *, cluster_id: str = CLUSTER, index: int | None = None
         ) -> SnapshotMeta:
    return SnapshotMeta(slot, slot if index is None else index, cluster_id, MEMBERS, len(body))


def body_of(slot: int, size: int = 3000) -> bytes:
    return bytes((slot * 7 + i) % 251 for i in range(size))


def chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def write(store: Snapshots, slot: int, body: bytes | None = None) -> SnapshotInfo:
    body = body_of(slot) if body is None else body
    return store.write(meta(slot, body, cluster_id=store.cluster_id), chunks(body))


def transfer(source: Snapshots, dest: Snapshots, slot: int, *, chunk: int = 1000,
             stop_after: int | None = None) -> None:
    """Send the snapshot of `slot` from `source` to `dest` as a node does: staged
    chunks from where `dest` is, the last few may be left out."""
    offset = dest.staged(slot)
    sent = 0
    while stop_after is None or sent < stop_after:
        data, total = source.read_chunk(slot, offset, chunk)
        if not data:
            break
        dest.stage(slot, offset, data)
        offset += len(data)
        sent += 1
        if offset == total:
            break


def assert_one_line_naming(error: BaseException, name: Path | str, *parts: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert str(name) in message
    for part in parts:
        assert part in message, message


@pytest.fixture(params=["files", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Snapshots]:
    """Opens the store of the test (a reopened `SnapshotStore` reads the same directory;
    each call makes another `MemorySnapshotStore`, of `name` a directory of its own)."""

    def make(name: str = "snapshots", cluster_id: str = CLUSTER) -> Snapshots:
        if request.param == "memory":
            return MemorySnapshotStore(cluster_id=cluster_id)
        return SnapshotStore.open(tmp_path / name, cluster_id=cluster_id)

    return make


def open_dir(path: Path, cluster_id: str = CLUSTER) -> SnapshotStore:
    return SnapshotStore.open(path, cluster_id=cluster_id)


# ------------------------------------------------------------------ writing, reading


def test_a_written_snapshot_is_the_latest_and_its_body_reads_back(make_store) -> None:
    store = make_store()
    assert store.latest() is None
    first = write(store, 10)
    second = write(store, 25, body_of(25, 5000))
    assert store.latest() == second
    assert (second.slot, second.index, second.members) == (25, 25, MEMBERS)
    assert store.body(first) == body_of(10)
    assert store.body(second) == body_of(25, 5000)
    assert [i.slot for i in store.snapshots()] == [10, 25]


def test_an_empty_body_is_a_snapshot_too(make_store) -> None:
    store = make_store()
    info = store.write(meta(1, b""), [])
    assert store.body(info) == b""


def test_the_file_has_the_documented_layout_and_its_slot_in_its_name(tmp_path: Path) -> None:
    store = open_dir(tmp_path)
    body = body_of(42)
    info = write(store, 42, body)
    assert info.path == tmp_path / "snapshot-42.pnyx" == tmp_path / file_name(42)
    data = info.path.read_bytes()
    assert len(data) == info.size
    assert data[:8] == MAGIC and int.from_bytes(data[8:12], "big") == 1
    header_length = int.from_bytes(data[12:16], "big")
    header = msgspec.msgpack.decode(data[16:16 + header_length])
    assert header == {"slot": 42, "index": 42, "cluster_id": CLUSTER,
                      "members": list(MEMBERS), "body_length": len(body)}
    assert info.body_offset == 16 + header_length
    assert data[info.body_offset:info.body_offset + len(body)] == body
    assert data[-8:] == END_MAGIC and len(data) == info.body_offset + len(body) + 32 + 8


def test_a_reopened_store_finds_every_snapshot_and_the_newest_as_latest(
        tmp_path: Path) -> None:
    store = open_dir(tmp_path)
    for slot in (5, 300, 40):
        write(store, slot)
    reopened = open_dir(tmp_path)
    assert reopened.latest() == store.latest()
    assert reopened.latest().slot == 300  # by slot, not by when it was written
    assert reopened.snapshots() == store.snapshots()
    assert reopened.body(reopened.latest()) == body_of(300)


def test_the_body_is_written_chunk_by_chunk_as_it_comes_never_joined(tmp_path: Path) -> None:
    store = open_dir(tmp_path)
    body = body_of(7, 64 * 1024 * 8)
    temporary = tmp_path / "snapshot-7.pnyx.tmp"
    on_disk_before_each_chunk: list[int] = []

    def watched() -> Iterator[bytes]:
        for chunk in chunks(body, 64 * 1024):
            on_disk_before_each_chunk.append(temporary.stat().st_size)
            yield chunk

    store.write(meta(7, body), watched())
    # Before each chunk is handed over, every earlier one is already in the file.
    steps = [b - a for a, b in itertools.pairwise(on_disk_before_each_chunk)]
    assert steps == [64 * 1024] * 7
    assert store.body(store.latest()) == body


@pytest.mark.parametrize("body_size", [2999, 3001])
def test_a_body_of_another_length_than_its_header_says_is_refused_and_leaves_nothing(
        make_store, tmp_path: Path, body_size: int) -> None:
    store = make_store()
    kept = write(store, 3)
    with pytest.raises(ValueError, match="3000"):
        store.write(meta(9, body_of(9)), chunks(body_of(9, body_size)))
    assert store.latest() == kept and store.snapshots() == [kept]
    if isinstance(store, SnapshotStore):
        assert sorted(os.listdir(store.directory)) == ["snapshot-3.pnyx"]


def test_a_snapshot_of_another_cluster_is_not_written(make_store) -> None:
    store = make_store()
    with pytest.raises(ValueError, match="other"):
        store.write(meta(3, b"x", cluster_id="other"), [b"x"])
    assert store.latest() is None


def test_a_failing_body_source_leaves_nothing_and_its_error_passes_through(
        make_store) -> None:
    store = make_store()
    kept = write(store, 3)

    def failing() -> Iterator[bytes]:
        yield b"x" * 100
        raise RuntimeError("the machine failed mid-snapshot")

    with pytest.raises(RuntimeError, match="mid-snapshot"):
        store.write(meta(9, b"x" * 200), failing())
    assert store.snapshots() == [kept]
    if isinstance(store, SnapshotStore):
        assert sorted(os.listdir(store.directory)) == ["snapshot-3.pnyx"]


@pytest.mark.parametrize(("fields", "part"), [
    ({"slot": 0}, "slot 0"),
    ({"index": -1}, "index -1"),
    ({"body_length": -1}, "body length -1"),
    ({"members": (1, 2**64)}, "member ids"),
])
def test_a_meta_no_pnyx_writes_is_refused(fields: dict[str, object], part: str) -> None:
    values: dict[str, object] = {"slot": 1, "index": 0, "cluster_id": CLUSTER,
                                 "members": MEMBERS, "body_length": 0}
    values.update(fields)
    with pytest.raises(ValueError, match=part):
        SnapshotMeta(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------ refusing bad files


def damage(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["header", "body", "checksum"])
def test_a_flipped_bit_in_the_newest_snapshot_is_refused_at_open_naming_it(
        tmp_path: Path, where: str) -> None:
    store = open_dir(tmp_path)
    write(store, 3)
    info = write(store, 8)
    assert info.path is not None
    offset = {"header": 29,  # the index's value: 8 becomes 9, and the header still decodes
              "body": info.body_offset + 1500,
              "checksum": info.size - 20}[where]
    assert where != "header" or info.path.read_bytes()[24:30] == b"index\x08"
    damage(info.path, offset)
    with pytest.raises(CorruptStoreError) as error:
        open_dir(tmp_path)
    assert_one_line_naming(error.value, info.path, "checksum mismatch")
    assert info.path.exists()  # refused, not deleted (nor skipped for slot 3)


@pytest.mark.parametrize("how", ["truncated", "extended", "emptied"])
def test_a_newest_snapshot_of_the_wrong_length_is_refused_at_open(
        tmp_path: Path, how: str) -> None:
    store = open_dir(tmp_path)
    info = write(store, 8)
    assert info.path is not None
    data = info.path.read_bytes()
    info.path.write_bytes({"truncated": data[:-1], "extended": data + b"\0",
                           "emptied": b""}[how])
    with pytest.raises(CorruptStoreError) as error:
        open_dir(tmp_path)
    assert_one_line_naming(error.value, info.path)


def test_an_older_snapshot_of_the_wrong_length_is_refused_at_open_too(tmp_path: Path) -> None:
    store = open_dir(tmp_path)
    older = write(store, 3)
    write(store, 8)
    assert older.path is not None
    older.path.write_bytes(older.path.read_bytes()[:-5])
    with pytest.raises(CorruptStoreError) as error:
        open_dir(tmp_path)
    assert_one_line_naming(error.value, older.path, "truncated")


def test_damage_in_an_older_snapshots_body_is_found_when_it_is_read(tmp_path: Path) -> None:
    # Only the newest is verified whole at open; any other is verified as read.
    store = open_dir(tmp_path)
    older = write(store, 3)
    write(store, 8)
    assert older.path is not None
    damage(older.path, older.body_offset + 10)
    reopened = open_dir(tmp_path)
    with pytest.raises(CorruptStoreError) as error:
        reopened.body(older)
    assert_one_line_naming(error.value, older.path, "checksum mismatch")


def test_a_snapshot_of_another_cluster_in_the_directory_is_refused_at_open(
        tmp_path: Path) -> None:
    info = write(open_dir(tmp_path, cluster_id="other"), 4)
    with pytest.raises(StoreIdentityError) as error:
        open_dir(tmp_path)
    assert_one_line_naming(error.value, info.path, "'other'", repr(CLUSTER))


def test_a_snapshot_of_another_format_version_is_refused_at_open(tmp_path: Path) -> None:
    info = write(open_dir(tmp_path), 4)
    assert info.path is not None
    data = bytearray(info.path.read_bytes())
    data[8:12] = (2).to_bytes(4, "big")
    info.path.write_bytes(bytes(data))
    with pytest.raises(StoreIdentityError) as error:
        open_dir(tmp_path)
    assert_one_line_naming(error.value, info.path, "format version 2")


def test_a_file_whose_name_and_header_disagree_on_the_slot_is_refused(tmp_path: Path) -> None:
    info = write(open_dir(tmp_path), 4)
    assert info.path is not None
    info.path.rename(tmp_path / "snapshot-5.pnyx")
    with pytest.raises(CorruptStoreError) as error:
        open_dir(tmp_path)
    assert_one_line_naming(error.value, tmp_path / "snapshot-5.pnyx", "slot 4", "slot 5")


def test_a_header_no_pnyx_writes_is_refused_even_with_a_right_checksum(tmp_path: Path) -> None:
    # A slot 0 snapshot, written byte for byte as pnyx would (checksum and all).
    header = msgspec.msgpack.encode({"slot": 0, "index": 0, "cluster_id": CLUSTER,
                                     "members": [1], "body_length": 0})
    head = MAGIC + (1).to_bytes(4, "big") + len(header).to_bytes(4, "big") + header
    digest = snapshots_module._hasher(head).digest()
    (tmp_path / "snapshot-1.pnyx").write_bytes(head + digest + END_MAGIC)
    with pytest.raises(CorruptStoreError) as error:
        open_dir(tmp_path)
    assert_one_line_naming(error.value, tmp_path / "snapshot-1.pnyx", "slot 0")


def test_leftover_temporary_files_are_removed_at_open_and_staged_transfers_kept(
        tmp_path: Path) -> None:
    write(open_dir(tmp_path), 4)
    (tmp_path / "snapshot-9.pnyx.tmp").write_bytes(b"half a snapshot")
    (tmp_path / "incoming-12.pnyx.part").write_bytes(b"PNYX")
    (tmp_path / "README").write_text("not ours: left alone")
    store = open_dir(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README", "incoming-12.pnyx.part",
                                            "snapshot-4.pnyx"]
    assert store.latest().slot == 4
    assert store.staged(12) == 4


def test_read_info_verifies_any_file_and_refuses_a_damaged_one(tmp_path: Path) -> None:
    info = write(open_dir(tmp_path / "snaps"), 6)
    assert info.path is not None
    assert read_info(info.path, cluster_id=CLUSTER) == info
    with pytest.raises(StoreIdentityError):
        read_info(info.path, cluster_id="other")
    damage(info.path, info.body_offset)
    with pytest.raises(CorruptStoreError) as error:
        read_info(info.path)
    assert_one_line_naming(error.value, info.path, "checksum mismatch")


# ------------------------------------------------------------------ sending


def test_chunks_read_from_any_offset_reassemble_the_file(make_store) -> None:
    store = make_store()
    info = write(store, 11, body_of(11, 10_000))
    parts, offset = [], 0
    while True:
        data, total = store.read_chunk(11, offset, 999)
        assert total == info.size
        if not data:
            break
        parts.append(data)
        offset += len(data)
    whole = b"".join(parts)
    assert len(whole) == info.size and whole.startswith(MAGIC) and whole.endswith(END_MAGIC)
    assert store.read_chunk(11, info.size + 5, 10) == (b"", info.size)
    with pytest.raises(ValueError):
        store.read_chunk(11, -1, 10)


def test_a_chunk_of_a_pruned_snapshot_is_gone(make_store) -> None:
    store = make_store()
    write(store, 3)
    write(store, 9)
    store.prune(keep=[])
    with pytest.raises(SnapshotGone) as error:
        store.read_chunk(3, 0, 100)
    assert error.value.slot == 3
    with pytest.raises(SnapshotGone):
        store.read_chunk(4, 0, 100)  # never was


def test_reading_a_chunk_reads_only_that_range(tmp_path: Path) -> None:
    store = open_dir(tmp_path)
    big = os.urandom(16 * 1024 * 1024)
    store.write(meta(5, big), chunks(big, 1 << 20))
    del big
    tracemalloc.start()
    try:
        data, total = store.read_chunk(5, 8 * 1024 * 1024, 64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data) == 64 * 1024 and total > 16 * 1024 * 1024
    assert peak < 1024 * 1024, peak


def test_prune_keeps_what_it_is_told_and_always_the_latest(make_store) -> None:
    store = make_store()
    for slot in (2, 4, 6, 8):
        write(store, slot)
    store.prune(keep=[4])
    assert [i.slot for i in store.snapshots()] == [4, 8]
    store.prune(keep=[])
    assert [i.slot for i in store.snapshots()] == [8]
    if isinstance(store, SnapshotStore):
        assert os.listdir(store.directory) == ["snapshot-8.pnyx"]
        assert [i.slot for i in open_dir(store.directory).snapshots()] == [8]


# ------------------------------------------------------------------ receiving


@pytest.mark.parametrize("pair", ["files->memory", "memory->files", "files->files"])
def test_a_transfer_in_chunks_installs_the_same_snapshot(tmp_path: Path, pair: str) -> None:
    def make(kind: str, name: str) -> Snapshots:
        if kind == "memory":
            return MemorySnapshotStore(cluster_id=CLUSTER)
        return open_dir(tmp_path / name)

    source_kind, dest_kind = pair.split("->")
    source, dest = make(source_kind, "a"), make(dest_kind, "b")
    sent = write(source, 20, body_of(20, 12_345))
    assert dest.staged(20) == 0
    transfer(source, dest, 20, chunk=1000)
    assert dest.staged(20) == sent.size
    installed = dest.install_staged(20)
    assert (installed.slot, installed.index, installed.members, installed.size) == (
        sent.slot, sent.index, sent.members, sent.size)
    assert dest.latest() == installed
    assert dest.body(installed) == body_of(20, 12_345)
    assert dest.staged(20) == 0  # nothing left staged
    if isinstance(dest, SnapshotStore):
        assert os.listdir(dest.directory) == ["snapshot-20.pnyx"]


def test_a_staged_transfer_survives_a_restart_and_resumes_where_it_was(tmp_path: Path) -> None:
    source = open_dir(tmp_path / "a")
    write(source, 30, body_of(30, 20_000))
    dest = open_dir(tmp_path / "b")
    transfer(source, dest, 30, chunk=4096, stop_after=2)
    restarted = open_dir(tmp_path / "b")
    assert restarted.staged(30) == 8192
    transfer(source, restarted, 30, chunk=4096)
    assert restarted.body(restarted.install_staged(30)) == body_of(30, 20_000)


def test_a_chunk_at_another_offset_than_the_staged_size_is_refused(make_store) -> None:
    source, dest = make_store("a"), make_store("b")
    write(source, 5)
    transfer(source, dest, 5, chunk=100, stop_after=3)
    data, _ = source.read_chunk(5, 400, 100)
    with pytest.raises(ValueError, match="300"):
        dest.stage(5, 400, data)
    assert dest.staged(5) == 300  # what was staged stays


def test_staging_another_slot_discards_the_staged_transfer(make_store) -> None:
    source, dest = make_store("a"), make_store("b")
    write(source, 5)
    write(source, 9)
    transfer(source, dest, 5, chunk=100, stop_after=3)
    assert dest.staged(9) == 0
    assert dest.staged(5) == 0  # the transfer of 5 is gone, not kept beside 9's
    transfer(source, dest, 9)
    assert dest.install_staged(9).slot == 9


def test_a_damaged_transfer_is_refused_whole_deleted_and_the_snapshot_kept_untouched(
        make_store) -> None:
    source, dest = make_store("a"), make_store("b")
    kept = write(dest, 2)
    info = write(source, 7)
    data, _ = source.read_chunk(7, 0, info.size)
    damaged = bytearray(data)
    damaged[info.body_offset + 100] ^= 0x40
    dest.stage(7, 0, bytes(damaged))
    with pytest.raises(CorruptStoreError) as error:
        dest.install_staged(7)
    assert_one_line_naming(error.value, "incoming-7.pnyx.part", "checksum mismatch")
    assert dest.staged(7) == 0
    assert dest.snapshots() == [kept] and dest.body(kept) == body_of(2)
    if isinstance(dest, SnapshotStore):
        assert os.listdir(dest.directory) == ["snapshot-2.pnyx"]


def test_a_cut_short_transfer_is_not_installed(make_store) -> None:
    source, dest = make_store("a"), make_store("b")
    write(source, 7)
    transfer(source, dest, 7, chunk=500, stop_after=2)
    with pytest.raises(CorruptStoreError, match="truncated"):
        dest.install_staged(7)
    assert dest.latest() is None and dest.staged(7) == 0


def test_a_snapshot_of_another_cluster_is_refused_as_soon_as_its_header_arrives(
        make_store) -> None:
    source, dest = make_store("a", cluster_id="other"), make_store("b")
    write(source, 7)
    header_chunk, _ = source.read_chunk(7, 0, 200)
    with pytest.raises(StoreIdentityError) as error:
        dest.stage(7, 0, header_chunk)
    assert_one_line_naming(error.value, "incoming-7.pnyx.part", "'other'")
    assert dest.staged(7) == 0


def test_a_transfer_that_is_not_a_snapshot_of_its_slot_is_refused_at_its_first_chunk(
        make_store) -> None:
    source, dest = make_store("a"), make_store("b")
    write(source, 7)
    with pytest.raises(CorruptStoreError, match="magic"):
        dest.stage(7, 0, b"GET / HTTP/1.1\r\n\r\n")
    first, _ = source.read_chunk(7, 0, 200)
    with pytest.raises(CorruptStoreError, match="slot 7, its name slot 8"):
        dest.stage(8, 0, first)
    assert dest.staged(8) == 0


def test_a_transfer_longer_than_its_header_says_is_refused(make_store) -> None:
    source, dest = make_store("a"), make_store("b")
    info = write(source, 7)
    whole, _ = source.read_chunk(7, 0, info.size)
    dest.stage(7, 0, whole)
    with pytest.raises(CorruptStoreError, match="more than"):
        dest.stage(7, info.size, b"\0")
    assert dest.staged(7) == 0


def test_installing_with_nothing_staged_is_an_error(make_store) -> None:
    with pytest.raises(StoreError, match="no staged snapshot"):
        make_store().install_staged(3)


# ------------------------------------------------------------------ backup, restore


def test_a_backup_restored_into_a_new_cluster_says_that_cluster_and_verifies(
        make_store, tmp_path: Path) -> None:
    store = make_store()
    info = write(store, 40, body_of(40, 7000))
    backup = tmp_path / "backup.pnyx"
    exported = store.export(info, backup)
    assert read_info(backup, cluster_id=CLUSTER) == exported
    new = make_store("restored", cluster_id="new-cluster")
    restored = new.import_file(backup)
    assert restored.cluster_id == "new-cluster" and restored.slot == 40
    assert new.body(restored) == body_of(40, 7000)
    if isinstance(new, SnapshotStore):
        # The header was rewritten, and so the checksum: the file verifies as the new one.
        assert read_info(restored.path, cluster_id="new-cluster") == restored
        assert open_dir(new.directory, cluster_id="new-cluster").latest() == restored


def test_an_export_may_say_another_cluster(make_store, tmp_path: Path) -> None:
    store = make_store()
    info = write(store, 40)
    exported = store.export(info, tmp_path / "b.pnyx", cluster_id="elsewhere")
    assert read_info(tmp_path / "b.pnyx", cluster_id="elsewhere") == exported


def test_a_damaged_backup_is_refused_and_leaves_nothing(make_store, tmp_path: Path) -> None:
    store = make_store()
    info = write(store, 40)
    backup = tmp_path / "backup.pnyx"
    store.export(info, backup)
    damage(backup, info.body_offset + 5)
    new = make_store("restored", cluster_id="new-cluster")
    with pytest.raises(CorruptStoreError) as error:
        new.import_file(backup)
    assert_one_line_naming(error.value, backup, "checksum mismatch")
    assert new.latest() is None
    if isinstance(new, SnapshotStore):
        assert os.listdir(new.directory) == []


def test_a_backup_of_another_cluster_than_asked_for_is_refused(
        make_store, tmp_path: Path) -> None:
    store = make_store()
    store.export(write(store, 40), tmp_path / "backup.pnyx")
    with pytest.raises(StoreIdentityError):
        make_store("restored").import_file(tmp_path / "backup.pnyx", cluster_id="other")


def test_a_snapshot_file_is_written_at_any_path_from_a_stream_of_its_body(
        tmp_path: Path) -> None:
    body = body_of(12, 50_000)
    info = write_file(tmp_path / "backup.pnyx", meta(12, body), chunks(body, 4096))
    assert read_info(tmp_path / "backup.pnyx", cluster_id=CLUSTER) == info
    assert os.listdir(tmp_path) == ["backup.pnyx"]
    restored = open_dir(tmp_path / "new").import_file(tmp_path / "backup.pnyx")
    assert open_dir(tmp_path / "new").body(restored) == body


@pytest.mark.parametrize("chunk", [1, 777, 1 << 20])
def test_a_stream_of_a_whole_snapshot_file_is_saved_at_any_path_verified(
        make_store, tmp_path: Path, chunk: int) -> None:
    store = make_store()
    info = write(store, 12, body_of(12, 5000))
    data, _ = store.read_chunk(12, 0, info.size)
    saved = save_file(tmp_path / "backup.pnyx", chunks(data, chunk), cluster_id=CLUSTER)
    assert (tmp_path / "backup.pnyx").read_bytes() == data
    assert read_info(tmp_path / "backup.pnyx") == saved


@pytest.mark.parametrize("cut", ["damaged", "truncated", "extended", "other-cluster"])
def test_a_stream_that_is_not_a_whole_sound_snapshot_leaves_nothing_at_the_path(
        tmp_path: Path, cut: str) -> None:
    store = MemorySnapshotStore(cluster_id=CLUSTER)
    info = write(store, 12)
    data = bytearray(store.read_chunk(12, 0, info.size)[0])
    if cut == "damaged":
        data[info.body_offset + 7] ^= 0x10
    elif cut == "truncated":
        del data[-1]
    elif cut == "extended":
        data += b"\0"
    with pytest.raises(StoreError):
        save_file(tmp_path / "backup.pnyx", chunks(bytes(data), 500),
                  cluster_id="elsewhere" if cut == "other-cluster" else CLUSTER)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ a full disk


def test_running_out_of_space_mid_write_fails_in_one_line_and_keeps_the_previous_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_dir(tmp_path)
    kept = write(store, 3)
    real_write = os.write
    room = [20_000]

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        if len(data) > room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        room[0] -= len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    body = body_of(9, 100_000)
    with pytest.raises(StoreError) as error:
        store.write(meta(9, body), chunks(body, 4096))
    monkeypatch.undo()
    assert_one_line_naming(error.value, tmp_path / "snapshot-9.pnyx",
                           "No space left on device")
    assert os.listdir(tmp_path) == ["snapshot-3.pnyx"]
    assert store.latest() == kept and store.body(kept) == body_of(3)
    assert open_dir(tmp_path).latest() == kept


def test_a_full_disk_fails_the_snapshot_write_and_keeps_the_previous_one(
        tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        store = open_dir(mount / "snapshots")
        kept = write(store, 3, body_of(3, 500_000))
        big = os.urandom(3 * 1024 * 1024)
        with pytest.raises(StoreError) as error:
            store.write(meta(9, big), chunks(big, 64 * 1024))
        assert_one_line_naming(error.value, mount / "snapshots" / "snapshot-9.pnyx",
                               "No space left on device")
        assert os.listdir(mount / "snapshots") == ["snapshot-3.pnyx"]
        assert store.latest() == kept and store.body(kept) == body_of(3, 500_000)
        reopened = open_dir(mount / "snapshots")
        assert reopened.latest() == kept and reopened.body(kept) == body_of(3, 500_000)
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# ------------------------------------------------------------------ threads


def test_chunks_are_read_whole_while_snapshots_are_written_and_pruned(tmp_path: Path) -> None:
    # The node writes and prunes from one worker thread while others send chunks.
    store = open_dir(tmp_path)
    write(store, 1)
    errors: list[BaseException] = []
    done = threading.Event()

    def sender() -> None:
        try:
            while not done.is_set():
                latest = store.latest()
                assert latest is not None
                try:
                    data, total = store.read_chunk(latest.slot, 0, 1 << 20)
                except SnapshotGone:
                    continue  # pruned meanwhile: a node sends the new latest
                assert len(data) == total and data.endswith(END_MAGIC)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for slot in range(2, 60):
            write(store, slot)
            store.prune(keep=[])
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert [i.slot for i in store.snapshots()] == [59]
