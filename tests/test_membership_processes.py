"""Membership changes for real: `pnyx serve` processes that join (`--join`), are promoted,
removed and replaced while a client writes; every acknowledged write is on every member
left afterwards. Every process a test starts is stopped when it ends."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pnyx.node.config import Address, NodeConfig
from pnyx.node.join import JoinError, prepare, read_state, write_state
from pnyx.testing import Cluster, Response, free_ports, request

REMOVED_LINE = "was removed from the cluster (configuration version"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_everything()


class Writer:
    """A client writing distinct keys to the members in `targets` (changed as the test
    goes), each write retried under its idempotency key until acknowledged."""

    def __init__(self, c: Cluster, targets: list[int]) -> None:
        self.c = c
        self.targets = list(targets)
        self.acked: dict[str, bytes] = {}
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.thread.join(30)

    def run(self) -> None:
        n = 0
        while not self.stopping:
            key, value = f"w-{n}", f"v-{n}".encode()
            while not self.stopping:
                i = random.choice(self.targets)
                with contextlib.suppress(OSError, ValueError):
                    r = self.c.put(i, key, value, timeout=3.0, idempotency_key=key)
                    if r.status == 200:
                        self.acked[key] = value
                        break
                time.sleep(0.05)
            n += 1

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} writes acknowledged"
            time.sleep(0.02)


def assert_every_write_on(c: Cluster, members: list[int], acked: dict[str, bytes]) -> None:
    """Each of `members` has applied everything chosen, and holds every acknowledged write
    (read locally: a stale read answers from the member's own state)."""
    commit = max(c.status(i)["commit_index"] for i in members)
    for i in members:
        deadline = time.monotonic() + 10
        while c.status(i)["applied_index"] < commit:
            assert time.monotonic() < deadline, f"node {i} never applied up to {commit}"
            time.sleep(0.05)
        for key, value in acked.items():
            r = c.get(i, key, "stale")
            assert r.status == 200 and r.body == value, (i, key, r.status, r.body[:200])


def wait_exit(c: Cluster, i: int, timeout: float = 15.0) -> int:
    try:
        return c.procs[i].wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"node {i} is still running: {c.log(i)[-1500:]}") from None


def serve(c: Cluster, i: int, data_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run `pnyx serve --join` for node `i` to its end (it is expected to refuse)."""
    peer, http = free_ports(2)
    join = ",".join(c.http_endpoint(j) for j in c.procs if c.procs[j].poll() is None)
    return subprocess.run(
        [sys.executable, "-m", "pnyx.cli", "serve", "--id", str(i), "--join", join,
         "--listen", f"127.0.0.1:{peer}", "--http", f"127.0.0.1:{http}",
         "--data-dir", str(data_dir), *flags],
        capture_output=True, text=True, timeout=30)


def test_the_cluster_grows_from_3_to_5_and_back_to_3_while_a_client_writes(
        cluster: Cluster) -> None:
    c = cluster
    with Writer(c, [1, 2, 3]) as writer:
        writer.wait_for(10)
        for new in (4, 5):
            c.join(new)
            view = c.wait_role(new, "voter")
            assert {m["id"]: m["role"] for m in view["members"]}[new] == "voter", view
            writer.targets.append(new)
            writer.wait_for(len(writer.acked) + 10)
        assert [m["role"] for m in c.members(3)["members"]] == ["voter"] * 5
        # Shrink by two of the first members, the leader first: each exits by itself.
        leader = c.leader()
        gone = [leader, next(i for i in (1, 2, 3) if i != leader)]
        stay = [i for i in c.ids if i not in gone]
        for old in gone:
            writer.targets.remove(old)
            r = c.remove(old, via=stay[0])
            assert r.status == 200, r.body
            assert wait_exit(c, old) == 0
            assert REMOVED_LINE in c.log(old), c.log(old)[-1500:]
            writer.wait_for(len(writer.acked) + 10)
    view = c.wait_role(gone[1], "gone", via=stay[0])
    assert sorted(m["id"] for m in view["members"]) == stay, view
    assert all(m["role"] == "voter" for m in view["members"]), view
    assert len(writer.acked) >= 60
    assert_every_write_on(c, stay, writer.acked)


def caught_up(c: Cluster, i: int, via: list[int], timeout: float = 20.0) -> None:
    """Wait until the leader's view has learner `i` applied within alpha of its commit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for j in via:
            with contextlib.suppress(OSError, ValueError):
                view = c.members(j)
                if view["leader"] != j:
                    continue
                m = next((m for m in view["members"] if m["id"] == i), None)
                if m is not None and m["applied"] is not None and (
                        m["applied"] >= view["commit"] - view["alpha"]):
                    assert m["role"] == "learner", m  # not promoted by itself
                    return
        time.sleep(0.05)
    raise TimeoutError(f"node {i} never caught up")


def test_a_killed_member_is_replaced_by_a_new_node_on_an_empty_data_directory(
        tmp_path: Path) -> None:
    # Snapshots every 100 commands: the newcomer catches up from a snapshot.
    c = Cluster(tmp_path, extra_args=("--snapshot-every", "100", "--snapshot-tail", "10"))
    try:
        c.start_all()
        with Writer(c, [1, 2, 3]) as writer:
            writer.wait_for(150, timeout=20)
            c.kill(3)
            writer.targets.remove(3)
            c.join(4, learner=True, via=[1, 2])
            caught_up(c, 4, [1, 2])
            leader = c.leader()
            deadline = time.monotonic() + 5
            while (status := c.status(leader)["configuration"])["pending"]:
                assert time.monotonic() < deadline, status
                time.sleep(0.05)
            assert status["voters"] == [1, 2, 3] and status["learners"] == [4], status
            assert status["pending"] == [] and status["version"] == 1, status
            assert status["learner_progress"]["4"]["lag_slots"] <= 64, status
            metrics = request("GET", c.url(leader, "/metrics")).body.decode()
            assert 'pnyx_members{role="learner"} 1.0' in metrics
            assert 'pnyx_learner_lag_slots{node="4"}' in metrics
            # One change: the new node votes and the dead one leaves, together.
            r = c.change(1, {"promote": [4], "remove": [3]})
            assert r.status == 200, r.body
            writer.targets.append(4)
            view = c.wait_role(4, "voter")
            assert sorted(m["id"] for m in view["members"]) == [1, 2, 4], view
            writer.wait_for(len(writer.acked) + 20)
        assert_every_write_on(c, [1, 2, 4], writer.acked)
        assert c.status(4)["snapshot"]["installed"] >= 1
        # The id of the node it replaced is never used again.
        refused = serve(c, 3, tmp_path / "again-3")
        assert refused.returncode == 1
        assert "ids are never reused" in refused.stderr, refused.stderr
    finally:
        c.stop_everything()


def test_a_join_under_an_id_already_a_member_is_refused(cluster: Cluster,
                                                       tmp_path: Path) -> None:
    c = cluster
    c.join(4)
    c.wait_role(4, "voter")
    # Node 4 "lost its disk": the same id on an empty data directory, a new incarnation.
    refused = serve(c, 4, tmp_path / "lost-4")
    assert refused.returncode == 1, refused.stderr
    assert "node 4 is already a member" in refused.stderr, refused.stderr
    assert "pnyx member replace 4" in refused.stderr, refused.stderr
    # A member of the first configuration, likewise.
    refused = serve(c, 2, tmp_path / "lost-2")
    assert refused.returncode == 1 and "already a member" in refused.stderr, refused.stderr
    # Another cluster's node is refused before it asks to be added.
    refused = serve(c, 6, tmp_path / "other-6", "--cluster-id", "other")
    assert refused.returncode == 1
    assert "is a member of cluster 'pnyx', not of 'other'" in refused.stderr, refused.stderr
    assert 6 not in {m["id"] for m in c.members(1)["members"]}
    # Node 4's own data: a restart ignores --join and serves again.
    c.signal(4, 15)
    assert wait_exit(c, 4) == 0
    c.start(4)
    assert "--join is ignored" in c.log(4)
    assert c.put(4, "after-restart", b"ok").status == 200


def test_adding_a_member_that_cannot_be_reached_leaves_writes_working(
        cluster: Cluster) -> None:
    c = cluster
    (dead,) = free_ports(1)  # nobody listens there
    r = request("POST", c.url(1, "/v1/members"),
                json.dumps({"id": 9, "peer": f"127.0.0.1:{dead}"}).encode(), timeout=10,
                headers={"Content-Type": "application/json"})
    assert r.status == 200, r.body
    started = time.monotonic()
    for n in range(30):
        w: Response = c.put(1 + n % 3, f"k-{n}", b"v", timeout=5.0)
        assert w.status == 200, w.body
    assert time.monotonic() - started < 10
    time.sleep(1.0)  # many heartbeats: time enough for a promotion, were it to come
    leader = c.leader()
    view = c.members(leader)
    roles = {m["id"]: m["role"] for m in view["members"]
             + [m for p in view["pending"] for m in p["members"]]}
    assert roles[9] == "learner", view  # never promoted: it never caught up
    # The cluster still tolerates one failure, as before the add.
    follower = next(i for i in c.ids if i != leader)
    c.kill(follower)
    other = next(i for i in c.ids if i not in (leader, follower))
    for n in range(10):
        w = c.put(other if n % 2 else leader, f"after-kill-{n}", b"v", timeout=5.0)
        assert w.status == 200, w.body
    assert c.remove(9, via=leader).status == 200
    c.wait_role(9, "gone", via=leader)


def consecutive_free_ports(count: int) -> int:
    """A base port below the ephemeral range with `count` free ports from it."""
    rng = random.Random(os.getpid())
    for _ in range(200):
        base = rng.randrange(20000, 30000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free run of ports")


def test_pnyx_cluster_starts_a_member_added_and_reports_one_removed(tmp_path: Path) -> None:
    base = consecutive_free_ports(20)
    peer_port, http_port = base, base + 10
    proc = subprocess.Popen(
        [sys.executable, "-m", "pnyx.cli", "cluster", "--nodes", "3", "--no-tls",
         "--data-dir", str(tmp_path / "data"), "--peer-port", str(peer_port),
         "--http-port", str(http_port), "--client-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()

    def wait_line(text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)

    try:
        wait_line("Ctrl-C")
        assert f"member add 4 127.0.0.1:{peer_port + 3}" in "".join(lines)
        (http4,) = free_ports(1)
        body = {"id": 4, "peer": f"127.0.0.1:{peer_port + 3}", "http": f"127.0.0.1:{http4}",
                "incarnation": 7}  # so a retry after a 503 is the same add
        deadline = time.monotonic() + 10
        while True:  # the cluster may still be electing its first leader
            r = request("POST", f"http://127.0.0.1:{http_port}/v1/members",
                        json.dumps(body).encode(), timeout=10,
                        headers={"Content-Type": "application/json"})
            if r.status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status == 200, r.body
        wait_line("node 4 was added at")
        deadline = time.monotonic() + 20
        while True:  # started by `pnyx cluster`, caught up and promoted by the leader
            with contextlib.suppress(OSError, ValueError):
                view = request("GET", f"http://127.0.0.1:{http4}/v1/members").json()
                if {m["id"]: m["role"] for m in view["members"]}.get(4) == "voter":
                    break
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        assert request("PUT", f"http://127.0.0.1:{http4}/v1/kv/x", b"y").status == 200
        r = request("DELETE", f"http://127.0.0.1:{http_port}/v1/members/4", timeout=10)
        assert r.status == 200, r.body
        wait_line("node 4 was removed from the cluster and stopped")
        assert proc.poll() is None  # the others go on
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


def joining_config(tmp_path: Path, node_id: int = 4, **kw: object) -> NodeConfig:
    (dead,) = free_ports(1)
    return NodeConfig(node_id, {}, tmp_path / "data", join=(Address("127.0.0.1", dead),),
                      listen=Address("127.0.0.1", dead), **kw)  # type: ignore[arg-type]


def test_a_join_whose_log_was_lost_is_refused_without_asking(tmp_path: Path) -> None:
    config = joining_config(tmp_path)
    write_state(config.data_dir, {"id": 4, "incarnation": 5, "cluster_id": "pnyx",
                                  "complete": True})
    with pytest.raises(JoinError, match=r"its log .* is gone.*pnyx member replace 4"):
        prepare(config, timeout=0.1)


def test_a_join_record_of_another_node_or_incarnation_is_refused(tmp_path: Path) -> None:
    write_state(tmp_path / "data", {"id": 5, "incarnation": 5})
    with pytest.raises(JoinError, match="node 5's join, not node 4's"):
        prepare(joining_config(tmp_path), timeout=0.1)
    write_state(tmp_path / "data", {"id": 4, "incarnation": 5})
    with pytest.raises(JoinError, match="under incarnation 5, not 6"):
        prepare(joining_config(tmp_path, incarnation=6), timeout=0.1)


def test_a_join_nobody_answers_gives_up_in_time_and_keeps_its_incarnation(
        tmp_path: Path) -> None:
    config = joining_config(tmp_path)
    started = time.monotonic()
    with pytest.raises(JoinError, match=r"no member added node 4 within 0\.5 s"):
        prepare(config, timeout=0.5)
    assert time.monotonic() - started < 5
    first = read_state(config.data_dir)
    assert first is not None and first["incarnation"] > 0
    with pytest.raises(JoinError):
        prepare(config, timeout=0.1)
    assert read_state(config.data_dir) == first  # a retry is the same join
