"""Fail-stop on storage faults, for real: a `pnyx serve` process whose data directory is a
2 MiB tmpfs fills it, and stops — one line on stderr naming the cause, exit status 74,
its ports released, never again reporting itself leader or reachable — while the other
two members keep serving every write they acknowledged.

Needs root (to mount the tmpfs); skipped with the reason otherwise. Every mount is
unmounted, and every process stopped, in a `finally`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pnyx.cli.serve import EXIT_DISK_FAULT, FAULT_GRACE
from pnyx.testing import Cluster

VALUE = b"v" * 16384  # 2 MiB of tmpfs holds about a hundred of these, WAL and all
EXIT_BOUND = FAULT_GRACE + 3.0  # from the failed write to the process gone


def _mount_refusal() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount command"
    return None


pytestmark = pytest.mark.skipif(_mount_refusal() is not None,
                                reason=f"fail-stop test skipped: {_mount_refusal()}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    path.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"fail-stop test skipped: cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)  # still busy


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def fill_until_exit(c: Cluster, victim: int, writer: int) -> tuple[dict[str, bytes], float]:
    """Write distinct 16 KiB values through `writer` until `victim` exits; the writes
    acknowledged, and the wall-clock time the victim's process ended."""
    acked: dict[str, bytes] = {}
    proc = c.procs[victim]
    exited_at: list[float] = []
    watcher = threading.Thread(target=lambda: (proc.wait(), exited_at.append(time.time())),
                               daemon=True)
    watcher.start()
    deadline = time.monotonic() + 60
    n = 0
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the node on the full disk never exited"
        n += 1
        key, value = f"fill-{n}", VALUE[:-8] + b"%08d" % n
        try:
            r = c.put(writer, key, value, timeout=3.0, idempotency_key=key)
        except (OSError, ValueError):
            r = None
        if r is not None and r.status == 200:
            acked[key] = value
        elif writer == victim:
            break  # our writer is the victim: stop sending, just watch it go
    watcher.join(EXIT_BOUND + 10)
    assert exited_at, "the node on the full disk never exited"
    return acked, exited_at[0]


def logged_at(line: str) -> float:
    """The wall-clock time of a `pnyx serve` log line (its asctime, local time)."""
    stamp = " ".join(line.split()[:2])
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def assert_fail_stopped(c: Cluster, victim: int, exited_at: float) -> float:
    """The victim stopped as fail-stop demands; the seconds from its fault to its exit."""
    proc = c.procs[victim]
    assert proc.returncode == EXIT_DISK_FAULT, c.log(victim)[-3000:]
    log = c.log(victim)
    assert "Traceback" not in log, log[-3000:]
    fault_lines = [line for line in log.splitlines() if "CRITICAL" in line]
    assert len(fault_lines) == 1, log[-3000:]
    line = fault_lines[0]
    assert "disk failed a durable write" in line and "pnyx.db" in line, line
    assert "database or disk is full" in line, line
    assert log.rstrip().splitlines()[-1] == line, "the fault is the last word"
    # The line is logged in the turn of the event loop in which the write failed.
    took = exited_at - logged_at(line)
    assert took < EXIT_BOUND, f"{took:.2f}s from the failing write to exit"
    assert not port_open(c.peer_ports[victim]) and not port_open(c.http_ports[victim])
    return took


def assert_survivors_serve(c: Cluster, victim: int, acked: dict[str, bytes]) -> None:
    survivors = [i for i in c.ids if i != victim]
    deadline = time.monotonic() + 10
    # The survivors may still name the dead leader until their election timeout.
    while (leader := c.leader(timeout=10)) == victim:
        assert time.monotonic() < deadline, "the survivors never elected another leader"
        time.sleep(0.05)
    r = c.put(leader, "after", b"still serving", idempotency_key="after")
    assert r.status == 200, r.body
    for i in survivors:
        status = c.status(i)
        assert status["members"][str(victim)]["reachable"] is False, status
        for key, value in acked.items():
            r = c.get(i, key)
            assert r.status == 200 and r.body == value, (i, key, r.status)
        assert c.get(i, "after").body == b"still serving"


def make_leader(c: Cluster, want: int) -> int:
    """Kill and restart whoever leads until `want` does: each election after a kill is a
    race between the two members left, so this takes two rounds on average."""
    deadline = time.monotonic() + 60
    while (leader := c.leader()) != want:
        assert time.monotonic() < deadline, f"node {want} never led"
        c.kill(leader)
        c.start(leader)
    return leader


@pytest.mark.parametrize("victim_role", ["follower", "leader"])
def test_a_node_whose_disk_fills_exits_in_one_line_and_the_rest_keep_every_acked_write(
        tmp_path: Path, victim_role: str) -> None:
    c = Cluster(tmp_path)
    victim = 3
    mount = tmp_path / f"node-{victim}"
    try:
        with tmpfs(mount):
            c.start_all()
            leader = make_leader(c, victim) if victim_role == "leader" else c.leader()
            if victim_role == "follower" and leader == victim:
                c.kill(victim)
                c.start(victim)
                leader = c.leader()
                assert leader != victim
            writer = victim if victim_role == "leader" else leader
            acked, exited_at = fill_until_exit(c, victim, writer)
            took = assert_fail_stopped(c, victim, exited_at)
            print(f"\n{victim_role} on a full tmpfs: exited {took:.3f}s after its write "
                  f"failed; {len(acked)} writes acknowledged\n"
                  f"{c.log(victim).rstrip().splitlines()[-1]}")
            assert_survivors_serve(c, victim, acked)
    finally:
        c.stop_everything()
