"""Backup and restore for real: `GET /v1/snapshot` on running nodes (both HTTP servers),
`pnyx backup` from a cluster taking writes, `pnyx restore` into fresh data directories
and a new cluster serving every acknowledged key, and every refusal of bad input (a
non-empty directory, damaged or foreign files, a damaged stream, the old cluster id, a
restored member meeting the old cluster). Every process a test starts is stopped."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pnyx.protocol.multipaxos.records import Standing
from pnyx.statemachine import kv
from pnyx.statemachine.kv import KVMachine
from pnyx.storage.log_store import SqliteLogStore
from pnyx.storage.snapshots import SnapshotMeta, read_info, write_file
from pnyx.testing import Cluster, request

PNYX = [sys.executable, "-m", "pnyx.cli"]


def pnyx(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PNYX, *args], capture_output=True, text=True, timeout=timeout)


def stop(*clusters: Cluster) -> None:
    for c in clusters:
        for proc in c.everything:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def body_of(path: Path) -> bytes:
    info = read_info(path)
    data = path.read_bytes()
    return data[info.body_offset:info.size - 40]  # trailer: 32-byte checksum, end magic


def machine_of(path: Path) -> KVMachine:
    machine = KVMachine()
    machine.restore(body_of(path))
    return machine


def made_backup(path: Path, keys: int = 20, cluster_id: str = "old") -> Path:
    """A backup file as `pnyx backup` writes it, of a machine with `keys` keys."""
    machine = KVMachine()
    for n in range(1, keys + 1):
        machine.apply(kv.encode_request(kv.Put(f"k{n}", b"v%d" % n)), n)
    body = machine.snapshot()
    write_file(path, SnapshotMeta(keys, keys, cluster_id, (1, 2, 3), len(body)), [body])
    return path


class Writer(threading.Thread):
    """Writes w0, w1, ... (each key once) through the nodes in turn; records when each
    write was acknowledged."""

    def __init__(self, c: Cluster) -> None:
        super().__init__(daemon=True)
        self.c = c
        self.acked: dict[str, tuple[bytes, float]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            key, value = f"w{n}", b"value-%d" % n
            i = n % len(self.c.ids) + 1
            try:
                r = self.c.put(i, key, value, timeout=5.0, idempotency_key=key)
                if r.status == 200:
                    self.acked[key] = (value, time.monotonic())
            except (OSError, ValueError):
                pass
            n += 1


# ------------------------------------------------------------------ the endpoint


@pytest.mark.parametrize("server", ["h1", "aiohttp"])
def test_snapshot_endpoint_streams_a_sound_file_of_the_applied_state(
        tmp_path: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNYX_HTTP_SERVER", server)
    c = Cluster(tmp_path, nodes=1)
    try:
        c.start_all()
        for n in range(30):
            assert c.put(1, f"k{n}", b"v%d" % n).status == 200
        r = request("GET", c.url(1, "/v1/snapshot"), timeout=10)
        assert r.status == 200, r.body
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert int(r.headers["Content-Length"]) == len(r.body)
        path = tmp_path / "got.pnyx"
        path.write_bytes(r.body)
        info = read_info(path)
        assert (int(r.headers["X-Pnyx-Slot"]), int(r.headers["X-Pnyx-Index"])) == (
            info.slot, info.index)
        assert r.headers["X-Pnyx-Keys"] == "30"
        assert info.index == c.status(1)["applied_index"] and info.cluster_id == "pnyx"
        machine = machine_of(path)
        assert machine.key_count == 30 and machine.read("k29") == (b"v29", info.index)
        # Errors in the API's JSON shape; nothing is left in the snapshot directory.
        bad = request("GET", c.url(1, "/v1/snapshot?x=1"))
        assert bad.status == 400 and bad.json()["error"]["code"] == "bad_param"
        wrong = request("PUT", c.url(1, "/v1/snapshot"), b"")
        assert wrong.status == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
        assert not list((tmp_path / "node-1" / "snapshots").glob("backup-*"))
    finally:
        stop(c)


def test_snapshot_from_a_lagging_member_holds_every_write_acknowledged_before_it(
        tmp_path: Path) -> None:
    """The linearizable point: a member killed while the others chose 300 writes is
    asked for a snapshot the moment it serves again, before it has caught up; the
    snapshot holds every one of them (without the read barrier it misses them: shown
    to fail with the barrier removed)."""
    c = Cluster(tmp_path)
    try:
        c.start_all()
        leader = c.leader()
        behind = next(i for i in c.ids if i != leader)
        for n in range(50):
            assert c.put(leader, f"early{n}", b"1").status == 200
        time.sleep(0.5)  # the member learns they were chosen (and records it)
        c.kill(behind)
        for n in range(300):
            assert c.put(leader, f"k{n}", b"v%d" % n).status == 200
        c.start(behind, wait=False)
        deadline = time.monotonic() + 20
        while True:  # the first answer it gives, as soon as its HTTP port is up
            try:
                r = request("GET", c.url(behind, "/v1/snapshot"), timeout=15)
                break
            except OSError:
                assert time.monotonic() < deadline, c.log(behind)[-2000:]
                time.sleep(0.005)
        assert r.status == 200, r.body
        path = tmp_path / "behind.pnyx"
        path.write_bytes(r.body)
        machine = machine_of(path)
        missing = [n for n in range(300) if (machine.read(f"k{n}") or (b"",))[0] != b"v%d" % n]
        assert not missing, f"{len(missing)} acknowledged writes missing"
        assert int(r.headers["X-Pnyx-Index"]) >= 350
    finally:
        stop(c)


def test_a_node_that_cannot_confirm_a_leader_answers_503(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    try:
        c.start_all()
        c.kill(2)
        c.kill(3)
        r = request("GET", c.url(1, "/v1/snapshot"), timeout=15)
        assert r.status == 503, r.body
        assert r.json()["error"]["code"] == "unavailable" and "Retry-After" in r.headers
    finally:
        stop(c)


# ------------------------------------------------------------------ backup, restore


def test_backup_during_writes_restores_into_a_new_cluster_with_every_acknowledged_key(
        tmp_path: Path) -> None:
    old = Cluster(tmp_path / "old", extra_args=("--snapshot-every", "300"))
    new = Cluster(tmp_path / "new")
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    writer = Writer(old)
    try:
        old.start_all()
        writer.start()
        while len(writer.acked) < 400:
            time.sleep(0.05)
        began = time.monotonic()
        endpoints = ",".join(old.http_endpoint(i) for i in old.ids)
        done = pnyx("backup", "--endpoints", endpoints, str(tmp_path / "b.pnyx"), "--json")
        ended = time.monotonic()
        count = len(writer.acked)
        while len(writer.acked) < count + 20 and time.monotonic() < ended + 5:
            time.sleep(0.05)  # writes go on after it
        writer.stopping.set()
        writer.join(10)
        assert done.returncode == 0, done.stderr
        printed = json.loads(done.stdout)
        info = read_info(tmp_path / "b.pnyx")
        assert (printed["slot"], printed["index"], printed["bytes"]) == (
            info.slot, info.index, info.size)
        assert info.cluster_id == "pnyx" and printed["keys"] >= 400
        before = {k: v for k, (v, at) in writer.acked.items() if at < began}
        after = {k for k, (_, at) in writer.acked.items() if at > ended}
        assert len(before) >= 400 and after, "writes went on during the backup"
        stop(old)

        cluster_id = ""
        for i in new.ids:
            args = ["restore", str(tmp_path / "b.pnyx"), "--data-dir",
                    str(new.root / f"node-{i}"), "--id", str(i), "--cluster", new.spec,
                    "--json"]
            if cluster_id:
                args += ["--cluster-id", cluster_id]
            seeded = pnyx(*args)
            assert seeded.returncode == 0, seeded.stderr
            cluster_id = json.loads(seeded.stdout)["cluster_id"]
        assert cluster_id.startswith("restored-")
        new.extra_args = ("--cluster-id", cluster_id)
        new.start_all()
        assert {new.status(i)["standing"] for i in new.ids} == {"voter"}
        machine = machine_of(tmp_path / "b.pnyx")
        # The header's slot and index were captured with the state: the machine's own
        # count of commands applied is the header's index.
        assert machine.applied_index == info.index
        for key, value in before.items():
            r = new.get(1 + hash(key) % 3, key)
            assert (r.status, r.body) == (200, value), key
        assert set(before) <= set(machine._data)
        assert new.status(1)["applied_index"] >= info.index
        assert new.put(2, "after-restore", b"yes").status == 200
        assert new.get(3, "after-restore").body == b"yes"
    finally:
        writer.stopping.set()
        stop(old, new)


def test_backup_refuses_to_overwrite_a_file_unless_forced(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "c")
    (tmp_path / "c").mkdir()
    try:
        c.start_all()
        empty = pnyx("backup", "--endpoints", c.http_endpoint(1), str(tmp_path / "e.pnyx"))
        assert empty.returncode == 1 and "409 empty" in empty.stderr, empty.stderr
        assert c.put(1, "k", b"v").status == 200
        target = tmp_path / "b.pnyx"
        target.write_bytes(b"precious")
        refused = pnyx("backup", "--endpoints", c.http_endpoint(1), str(target))
        assert refused.returncode == 2 and target.read_bytes() == b"precious"
        assert refused.stderr.count("\n") == 1 and "--force" in refused.stderr
        forced = pnyx("backup", "--endpoints", c.http_endpoint(1), str(target), "--force")
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.startswith(f"backup {target}: slot ")
        read_info(target)
    finally:
        stop(c)


class _Serving(http.server.BaseHTTPRequestHandler):
    answer: bytes = b""
    length: int = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(self.length))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: object) -> None:
        pass


def _serve(answer: bytes, length: int) -> Iterator[str]:
    handler = type("H", (_Serving,), {"answer": answer, "length": length})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("damage", ["flipped", "truncated", "cut_short", "not_a_snapshot"])
def test_backup_refuses_a_damaged_stream_as_it_arrives_and_leaves_no_file(
        tmp_path: Path, damage: str) -> None:
    good = made_backup(tmp_path / "good.pnyx").read_bytes()
    if damage == "flipped":
        data = bytearray(good)
        data[len(data) // 2] ^= 1
        answer, length = bytes(data), len(data)
    elif damage == "truncated":  # a whole answer, of a file cut short
        answer = good[:-100]
        length = len(answer)
    elif damage == "cut_short":  # the connection ends before the answer's length
        answer, length = good[:-100], len(good)
    else:
        answer = b"<html>not a snapshot</html>" * 10
        length = len(answer)
    target = tmp_path / "b.pnyx"
    for endpoint in _serve(answer, length):
        done = pnyx("backup", "--endpoints", endpoint, str(target), "--timeout", "2")
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and "no snapshot" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pnyx"]


def test_restore_seeds_a_voter_store_compacted_to_the_snapshot(tmp_path: Path) -> None:
    backup = made_backup(tmp_path / "b.pnyx", keys=12)
    spec = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"
    data = tmp_path / "d2"
    done = pnyx("restore", str(backup), "--data-dir", str(data), "--id", "2", "--cluster",
                spec, "--cluster-id", "fresh")
    assert done.returncode == 0, done.stderr
    assert "cluster 'fresh'" in done.stdout and "slot 12" in done.stdout
    assert sorted(p.name for p in data.iterdir()) == ["pnyx.db", "snapshots"]
    assert [p.name for p in (data / "snapshots").iterdir()] == ["snapshot-12.pnyx"]
    info = read_info(data / "snapshots" / "snapshot-12.pnyx", cluster_id="fresh")
    assert (info.slot, info.index) == (12, 12)
    assert body_of(data / "snapshots" / "snapshot-12.pnyx") == body_of(backup)
    with SqliteLogStore.open(data / "pnyx.db", node_id=2, cluster_id="fresh") as store:
        durable = store.load()
        assert durable.compacted == 12 and durable.standing is Standing.VOTER
        assert durable.promised.round == 0 and not durable.accepted and not durable.chosen
        assert store.check_members({1: "127.0.0.1:1", 2: "127.0.0.1:2",
                                    3: "127.0.0.1:3"}) is None  # the same list, recorded


def test_restore_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    backup = made_backup(tmp_path / "b.pnyx")
    good = backup.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 1
    (tmp_path / "flipped.pnyx").write_bytes(bytes(flipped))
    (tmp_path / "truncated.pnyx").write_bytes(good[:-10])
    (tmp_path / "text.txt").write_text("hello, not a snapshot\n" * 10)
    full = tmp_path / "full"
    full.mkdir()
    (full / "pnyx.db").write_bytes(b"somebody's log")
    spec = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"
    fresh = tmp_path / "fresh"
    cases = {
        "not empty": (backup, full, "1", spec, []),
        "checksum": (tmp_path / "flipped.pnyx", fresh, "1", spec, []),
        "truncated": (tmp_path / "truncated.pnyx", fresh, "1", spec, []),
        "not a pnyx snapshot": (tmp_path / "text.txt", fresh, "1", spec, []),
        "cannot read": (tmp_path / "missing.pnyx", fresh, "1", spec, []),
        "not in --cluster": (backup, fresh, "4", spec, []),
        "own id": (backup, fresh, "1", spec, ["--cluster-id", "old"]),
    }
    for expected, (source, data, node, members, extra) in cases.items():
        done = pnyx("restore", str(source), "--data-dir", str(data), "--id", node,
                    "--cluster", members, *extra)
        assert done.returncode == 2, (expected, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and expected in done.stderr, (expected,
                                                                          done.stderr)
        assert not fresh.exists(), expected
    assert [p.name for p in full.iterdir()] == ["pnyx.db"]
    assert (full / "pnyx.db").read_bytes() == b"somebody's log"


def test_a_restored_member_cannot_join_the_old_cluster(tmp_path: Path) -> None:
    """A member restored at an old member's address, with the old member list: the old
    members refuse its hello (another cluster id), so it never counts in their quorums
    nor they in its."""
    c = Cluster(tmp_path)
    try:
        c.start_all()
        for n in range(20):
            assert c.put(1, f"k{n}", b"v%d" % n).status == 200
        done = pnyx("backup", "--endpoints", c.http_endpoint(1), str(tmp_path / "b.pnyx"))
        assert done.returncode == 0, done.stderr
        stop(c)
        (tmp_path / "node-3").rename(tmp_path / "node-3.old")
        seeded = pnyx("restore", str(tmp_path / "b.pnyx"), "--data-dir",
                      str(tmp_path / "node-3"), "--id", "3", "--cluster", c.spec,
                      "--cluster-id", "restored-test")
        assert seeded.returncode == 0, seeded.stderr
        c.start(1, wait=False)
        c.start(2, wait=False)
        c.extra_args = ("--cluster-id", "restored-test")
        c.start(3)
        c.extra_args = ()
        c.wait_ready(1)
        c.wait_ready(2)
        assert c.put(1, "later", b"old cluster").status == 200
        time.sleep(1.0)
        assert "hello from cluster 'restored-test', not ours" in c.log(1) + c.log(2)
        assert c.status(1)["leader"] in (1, 2) and c.status(3)["leader"] is None
        # The restored member has no quorum: it serves no linearizable read nor write.
        assert c.get(3, "k1", timeout=15).status == 503
        assert c.get(3, "later", "stale").status == 404
    finally:
        stop(c)
