"""The store for real: three `pnyx serve` processes on 127.0.0.1, real TCP, real fsync,
real SIGKILL and SIGSTOP. Every process a test starts is stopped when it ends."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pnyx.testing import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_everything()


def write_until_ok(c: Cluster, i: int, key: str, value: bytes, deadline: float,
                   idem: str) -> int:
    """Retry one write (same idempotency key) until it succeeds; return its index."""
    while time.monotonic() < deadline:
        try:
            r = c.put(i, key, value, timeout=2.0, idempotency_key=idem)
        except (OSError, ValueError):  # refused, reset, or cut off mid-answer by a kill
            r = None
        if r is not None and r.status == 200:
            return int(r.json()["index"])
        i = i % len(c.ids) + 1
        time.sleep(0.05)
    raise TimeoutError(f"write {key}={value!r} never succeeded")


def test_writes_and_reads_through_every_node(cluster: Cluster) -> None:
    for i in cluster.ids:
        r = cluster.put(i, f"key-{i}", f"from {i}".encode())
        assert r.status == 200, r.body
    for i in cluster.ids:
        for j in cluster.ids:
            for mode in ("linearizable", "quorum"):
                r = cluster.get(i, f"key-{j}", mode)
                assert r.status == 200 and r.body == f"from {j}".encode(), (i, j, mode, r)
    assert cluster.get(1, "missing").status == 404


def test_writes_continue_after_the_leader_is_killed(cluster: Cluster) -> None:
    cluster.put(1, "before", b"1")
    leader = cluster.leader()
    cluster.kill(leader)
    started = time.monotonic()
    other = next(i for i in cluster.ids if i != leader)
    write_until_ok(cluster, other, "after", b"2", started + 10, "after-kill")
    took = time.monotonic() - started
    assert took < 3.0, f"the next write took {took:.2f}s after the leader died"
    assert cluster.get(other, "before").body == b"1"


def test_a_killed_node_restarts_and_catches_up(cluster: Cluster) -> None:
    victim = 3
    cluster.kill(victim)
    for n in range(20):
        assert cluster.put(1 + n % 2, f"k{n}", str(n).encode()).status == 200
    cluster.start(victim)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = cluster.get(victim, "k19", "stale")
        if r.status == 200 and r.body == b"19":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the restarted node never caught up")
    for n in range(20):
        assert cluster.get(victim, f"k{n}", "stale").body == str(n).encode()


def test_the_cluster_carries_on_while_a_node_is_stopped(cluster: Cluster) -> None:
    leader = cluster.leader()
    paused = leader  # the hardest case: stop the leader itself
    cluster.signal(paused, signal.SIGSTOP)
    try:
        other = next(i for i in cluster.ids if i != paused)
        write_until_ok(cluster, other, "while-stopped", b"yes", time.monotonic() + 10, "stop")
    finally:
        cluster.signal(paused, signal.SIGCONT)
    # Once resumed it learns what it missed.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if cluster.get(paused, "while-stopped", "stale").body == b"yes":
            return
        time.sleep(0.05)
    pytest.fail("the resumed node never learned the write made while it was stopped")


def test_every_acknowledged_write_survives_a_crash_loop(tmp_path: Path) -> None:
    """SIGKILL a random node at a random moment, again and again, while writing; then
    every acknowledged write is present, and the same, on every node."""
    c = Cluster(tmp_path, election_ms=200, heartbeat_ms=40)
    rng = random.Random(1)
    kills = 0
    writes: list[tuple[str, bytes, bool]] = []  # key, value, acknowledged
    try:
        c.start_all()
        deadline = time.monotonic() + 150
        n = 0
        while kills < 50 and time.monotonic() < deadline:
            victim = rng.choice(c.ids)
            for _ in range(rng.randint(1, 4)):
                n += 1
                key, value = f"w{n % 25}", f"v{n}".encode()
                target = rng.choice(c.ids)
                try:  # a client retries elsewhere with the same key until it is answered
                    write_until_ok(c, target, key, value, time.monotonic() + 8, f"w{n}")
                    ok = True
                except TimeoutError:
                    ok = False
                writes.append((key, value, ok))
            time.sleep(rng.uniform(0, 0.05))  # the kill lands at a random moment
            c.kill(victim)
            kills += 1
            c.start(victim, wait=False)
            time.sleep(rng.uniform(0, 0.1))
        for i in c.ids:
            c.wait_ready(i)
        assert kills == 50, f"only {kills} kills fitted in the time allowed"
        acked = sum(ok for _, _, ok in writes)
        assert acked >= 50, f"only {acked} writes were acknowledged"
        print(f"crash loop: {kills} SIGKILLs, {len(writes)} writes, {acked} acknowledged")
        for key in sorted({k for k, _, _ in writes}):
            history = [(v, ok) for k, v, ok in writes if k == key]
            last_acked = max((n for n, (_, ok) in enumerate(history) if ok), default=None)
            if last_acked is None:
                continue
            # The last acknowledged value, unless a later write whose answer was lost landed.
            allowed = {v for v, _ in history[last_acked:]}
            # A member with no leader yet (the last restarts may still be electing one)
            # answers 503 with Retry-After at once: ask again, as a client does.
            until = time.monotonic() + 15
            while (truth := c.get(1, key, "linearizable", timeout=10.0)).status == 503:
                assert time.monotonic() < until, (key, truth)
                time.sleep(0.1)
            assert truth.status == 200 and truth.body in allowed, (key, truth, allowed)
            for i in c.ids:
                until = time.monotonic() + 10
                while (got := c.get(i, key, "stale")).body != truth.body:
                    assert time.monotonic() < until, (key, i, got.body, truth.body)
                    time.sleep(0.05)
    finally:
        c.stop_everything()
