"""Snapshots for real: `pnyx serve` processes that take snapshots, compact their logs,
send a snapshot to a node whose disk was wiped, restart from snapshots in a crash
loop, and refuse a damaged snapshot file at start. Every process a test starts is
stopped when it ends."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pnyx.testing import Cluster


def write_until_ok(c: Cluster, i: int, key: str, value: bytes, deadline: float,
                   idem: str) -> int:
    """Retry one write (same idempotency key) through node after node until it
    succeeds; return the node that answered."""
    while time.monotonic() < deadline:
        try:
            r = c.put(i, key, value, timeout=2.0, idempotency_key=idem)
        except (OSError, ValueError):  # refused, reset, or cut off mid-answer by a kill
            r = None
        if r is not None and r.status == 200:
            return i
        i = i % len(c.ids) + 1
        time.sleep(0.02)
    raise TimeoutError(f"write {key}={value!r} never succeeded")


def snapshot_status(c: Cluster, i: int) -> dict:  # type: ignore[type-arg]
    return c.status(i)["snapshot"]


def wait_for(what: str, predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (OSError, ValueError, KeyError):
            pass  # a node still starting
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def assert_every_acknowledged_write_everywhere(
        c: Cluster, writes: list[tuple[str, bytes, bool]], timeout: float = 15.0) -> None:
    """Per key, a linearizable read gives the last acknowledged value (or a later write
    whose answer was lost); every node's stale read comes to give the same value."""
    keys = sorted({k for k, _, _ in writes})
    checked = 0
    for key in keys:
        history = [(v, ok) for k, v, ok in writes if k == key]
        last_acked = max((n for n, (_, ok) in enumerate(history) if ok), default=None)
        if last_acked is None:
            continue
        allowed = {v for v, _ in history[last_acked:]}
        # A member with no leader yet answers 503 with Retry-After at once: ask again.
        until = time.monotonic() + timeout
        while (truth := c.get(1, key, "linearizable", timeout=10.0)).status == 503:
            assert time.monotonic() < until, (key, truth)
            time.sleep(0.1)
        assert truth.status == 200 and truth.body in allowed, (key, truth, allowed)
        for i in c.ids:
            until = time.monotonic() + timeout
            while (got := c.get(i, key, "stale")).body != truth.body:
                assert time.monotonic() < until, (key, i, got.status, got.body, truth.body)
                time.sleep(0.05)
        checked += 1
    assert checked == len(keys), "a key was never acknowledged: the check proves little"


def snapshot_files(c: Cluster, i: int) -> list[Path]:
    return sorted((c.root / f"node-{i}" / "snapshots").glob("snapshot-*.pnyx"))


class Writer(threading.Thread):
    """One client writing key after key (bounded in count and time), each retried with
    its idempotency key until answered or given up; records what was acknowledged."""

    def __init__(self, c: Cluster, keys: int, limit: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.c, self.keys, self.limit = c, keys, limit
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.writes: list[tuple[str, bytes, bool]] = []  # key, value, acknowledged
        self.acked = 0

    def run(self) -> None:
        n = 0
        target = 1
        while (not self.stop.is_set() and n < self.limit
               and time.monotonic() < self.deadline):
            n += 1
            key, value = f"k{n % self.keys}", f"v{n}".encode()
            try:
                target = write_until_ok(self.c, target, key, value,
                                        min(self.deadline, time.monotonic() + 8), f"w{n}")
                ok = True
            except TimeoutError:
                ok = False
            self.writes.append((key, value, ok))
            self.acked += ok


def test_a_wiped_node_rejoins_as_a_learner_through_a_snapshot_with_every_acknowledged_write(
        tmp_path: Path) -> None:
    """While a client writes, node 3 is SIGKILLed, its data directory deleted, and it is
    started empty. The others compacted their logs, so only a snapshot can bring it
    back: it comes back as a learner, installs a snapshot from a peer, catches up, and
    then holds every acknowledged write, as do the others."""
    c = Cluster(tmp_path, extra_args=("--snapshot-every", "50", "--snapshot-tail", "10"))
    writer = Writer(c, keys=40, limit=3000, seconds=40)
    try:
        c.start_all()
        # Keys written once, before everything else, and never again: after compaction
        # they live only in the snapshots, so the wiped node can have them from nowhere else.
        early = [(f"early{n}", f"e{n}".encode(), True) for n in range(30)]
        for key, value, _ in early:
            write_until_ok(c, 1, key, value, time.monotonic() + 8, key)
        writer.start()
        wait_for("200 acknowledged writes", lambda: writer.acked >= 200, 20)
        # The log below the snapshots is gone on the two that stay up: the wiped node
        # cannot be brought back from the log alone.
        wait_for("compaction on nodes 1 and 2",
                 lambda: all(snapshot_status(c, i)["compacted_slot"] > 0 for i in (1, 2)),
                 10)
        c.kill(3)
        shutil.rmtree(tmp_path / "node-3")
        acked_while_down = writer.acked
        wait_for("writes while node 3 is gone", lambda: writer.acked >= acked_while_down + 60,
                 10)
        c.start(3)
        wait_for("node 3 installing a snapshot",
                 lambda: snapshot_status(c, 3)["installed"] >= 1, 20)
        status = c.status(3)
        assert status["standing"] == "learner", status
        # Writes go on through the transfer and after it.
        acked_at_install = writer.acked
        wait_for("writes after the install", lambda: writer.acked >= acked_at_install + 60, 10)
        writer.stop.set()
        writer.join(15)
        assert not writer.is_alive()
        floors = {i: snapshot_status(c, i)["compacted_slot"] for i in (1, 2)}
        assert all(f > 0 for f in floors.values()), floors
        assert_every_acknowledged_write_everywhere(c, early + writer.writes)
        print(f"wipe and rejoin: {len(writer.writes)} writes, {writer.acked} acknowledged, "
              f"compacted to {floors}, node 3: {snapshot_status(c, 3)}")
    finally:
        writer.stop.set()
        c.stop_everything()


def test_every_acknowledged_write_survives_a_crash_loop_with_snapshots_on(
        tmp_path: Path) -> None:
    """SIGKILL a random node at a random moment, again and again, while writing, with a
    snapshot every 20 commands: restarts load a snapshot and replay only the tail, and
    every acknowledged write is present, and the same, on every node."""
    c = Cluster(tmp_path, election_ms=200, heartbeat_ms=40,
                extra_args=("--snapshot-every", "20", "--snapshot-tail", "5"))
    rng = random.Random(2)
    kills = restarts_with_snapshot = 0
    writes: list[tuple[str, bytes, bool]] = []
    try:
        c.start_all()
        deadline = time.monotonic() + 60
        n = 0
        while kills < 20 and time.monotonic() < deadline:
            victim = rng.choice(c.ids)
            for _ in range(rng.randint(3, 8)):
                n += 1
                key, value = f"w{n % 25}", f"v{n}".encode()
                try:
                    write_until_ok(c, rng.choice(c.ids), key, value, time.monotonic() + 8,
                                   f"w{n}")
                    ok = True
                except TimeoutError:
                    ok = False
                writes.append((key, value, ok))
            time.sleep(rng.uniform(0, 0.05))
            c.kill(victim)
            kills += 1
            restarts_with_snapshot += bool(snapshot_files(c, victim))
            c.start(victim, wait=False)
            time.sleep(rng.uniform(0, 0.1))
        for i in c.ids:
            c.wait_ready(i)
        assert kills == 20, f"only {kills} kills fitted in the time allowed"
        acked = sum(ok for _, _, ok in writes)
        assert acked >= 60, f"only {acked} writes were acknowledged"
        assert restarts_with_snapshot >= kills // 2, (restarts_with_snapshot, kills)
        assert_every_acknowledged_write_everywhere(c, writes)
        # One more restart of each node, with no writes in flight: it comes up from its
        # snapshot (compacted floor above 0 at once), holding far fewer slots than chosen.
        for i in c.ids:
            c.kill(i)
            c.start(i)
            s = c.status(i)
            assert s["snapshot"]["slot"] > 0 and s["snapshot"]["compacted_slot"] > 0, s
            assert s["snapshot"]["log_slots_in_memory"] < s["commit_slot"], s
        assert_every_acknowledged_write_everywhere(c, writes)
        print(f"crash loop with snapshots: {kills} SIGKILLs ({restarts_with_snapshot} onto "
              f"a snapshot), {len(writes)} writes, {acked} acknowledged")
    finally:
        c.stop_everything()


def test_a_damaged_snapshot_file_is_refused_at_start_naming_the_file(tmp_path: Path) -> None:
    c = Cluster(tmp_path, extra_args=("--snapshot-every", "20", "--snapshot-tail", "5"))
    try:
        c.start_all()
        for n in range(60):
            write_until_ok(c, 1, f"k{n % 10}", f"v{n}".encode(), time.monotonic() + 8, f"w{n}")
        wait_for("a snapshot on node 1", lambda: snapshot_status(c, 1)["slot"] > 0, 10)
        c.kill(1)
    finally:
        c.stop_everything()
    newest = snapshot_files(c, 1)[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    cmd = [sys.executable, "-m", "pnyx.cli", "serve", "--id", "1", "--cluster", c.spec,
           "--http", c.http_endpoint(1), "--data-dir", str(tmp_path / "node-1"),
           "--snapshot-every", "20", "--snapshot-tail", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(newest) in lines[0] or newest.name in lines[0], lines[0]
