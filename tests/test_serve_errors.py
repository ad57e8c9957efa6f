"""`pnyx serve` and `pnyx cluster` refuse to start with one line and a non-zero exit,
and `pnyx cluster` stops every node it started."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pnyx.storage import SqliteLogStore
from pnyx.testing import free_ports, request


def serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pnyx.cli", "serve", *args],
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]


def test_a_peer_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = serve("--id", "1", "--cluster", f"1=127.0.0.1:{port}", "--data-dir", str(tmp_path))
    one_line_error(r, "cannot listen for peers")


def test_an_http_port_in_use_is_one_line(tmp_path: Path) -> None:
    (peer,) = free_ports(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = serve("--id", "1", "--cluster", f"1=127.0.0.1:{peer}", "--http",
                  f"127.0.0.1:{port}", "--data-dir", str(tmp_path))
    one_line_error(r, "cannot serve HTTP")


def test_an_unresolvable_peer_is_one_line(tmp_path: Path) -> None:
    r = serve("--id", "1", "--cluster", "1=127.0.0.1:7001,2=no-such-host.invalid:7002",
              "--data-dir", str(tmp_path))
    one_line_error(r, "cannot resolve")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_data_dir_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    r = serve("--id", "1", "--cluster", "1=127.0.0.1:7001", "--data-dir", str(locked / "d"))
    one_line_error(r, "cannot be written")


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (peer,) = free_ports(1)
    target = tmp_path / "file"
    target.write_text("not a directory")
    r = serve("--id", "1", "--cluster", f"1=127.0.0.1:{peer}", "--data-dir", str(target))
    one_line_error(r, "cannot be written")


def test_a_data_dir_of_another_node_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (peer,) = free_ports(1)
    SqliteLogStore.open(tmp_path / "pnyx.db", node_id=2, cluster_id="pnyx").close()
    r = serve("--id", "1", "--cluster", f"1=127.0.0.1:{peer}", "--data-dir", str(tmp_path))
    one_line_error(r, "pnyx.db")


def test_a_corrupt_store_is_one_line_naming_the_file(tmp_path: Path) -> None:
    (peer,) = free_ports(1)
    (tmp_path / "pnyx.db").write_bytes(b"this is not a database" * 100)
    r = serve("--id", "1", "--cluster", f"1=127.0.0.1:{peer}", "--data-dir", str(tmp_path))
    one_line_error(r, "pnyx.db")



def _store_with_a_damaged_row(path: Path, sql: str, *params: object) -> None:
    """A sound store of node 1 of cluster 'pnyx' with 20 slots, then one row damaged."""
    import sqlite3

    from pnyx.protocol.ballot import Ballot
    from pnyx.protocol.multipaxos.messages import Batch, Command, Entry
    from pnyx.protocol.multipaxos.records import AcceptRecord, ChosenRecord, PromiseRecord

    records: list = [PromiseRecord(Ballot(2, 1))]
    for n in range(1, 21):
        value = Batch((Command(1, n, b"x" * 50),))
        records += [AcceptRecord(Entry(n, Ballot(2, 1), value)), ChosenRecord(n, value)]
    with SqliteLogStore.open(path, node_id=1, cluster_id="pnyx") as store:
        store.append(records)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


@pytest.mark.parametrize(("sql", "params", "needle"), [
    ("UPDATE chosen SET value = ? WHERE slot = 7", (b"\xc1garbage",),
     "chosen slot 7: checksum mismatch"),
    ("UPDATE accepted SET round = 3 WHERE slot = 9", (), "accepted slot 9"),
    ("UPDATE promise SET round = 1", (), "promise row missing or damaged"),
])
def test_a_damaged_row_is_one_line_naming_the_file_and_the_row(
        tmp_path: Path, sql: str, params: tuple[object, ...], needle: str) -> None:
    (peer,) = free_ports(1)
    _store_with_a_damaged_row(tmp_path / "pnyx.db", sql, *params)
    r = serve("--id", "1", "--cluster", f"1=127.0.0.1:{peer}", "--data-dir", str(tmp_path))
    one_line_error(r, needle)
    assert "pnyx.db" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--id", "x"],
        ["--id", "1", "--cluster", "1=localhost"],
        ["--id", "1", "--cluster", "1=127.0.0.1:7001", "--data-dir", "d", "--http", "nope"],
        ["--id", "1", "--cluster", "1=127.0.0.1:7001", "--data-dir", "d",
         "--election-timeout", "10", "--heartbeat", "50"],
        ["--config", "/nonexistent.toml"],
        ["--id", "1", "--cluster", "1=127.0.0.1:7001", "--data-dir", "d",
         "--max-command", "4096"],
        ["--id", "1", "--cluster", "1=127.0.0.1:7001", "--data-dir", "d", "--window", "many"],
    ],
)
def test_bad_flags_are_one_line(args: list[str]) -> None:
    r = serve(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_serve_reads_a_toml_config(tmp_path: Path) -> None:
    peer, http = free_ports(2)
    config = tmp_path / "node.toml"
    config.write_text(f'id = 1\ncluster = "1=127.0.0.1:{peer}"\n'
                      f'data_dir = "{tmp_path / "data"}"\nhttp = "127.0.0.1:{http}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "pnyx.cli", "serve", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if request("PUT", f"http://127.0.0.1:{http}/v1/kv/a", b"1").status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the node from the TOML file never answered")
        assert request("GET", f"http://127.0.0.1:{http}/v1/kv/a").body == b"1"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0


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
    raise RuntimeError("no run of free ports found")


def test_cluster_starts_nodes_and_stops_them_all_on_ctrl_c(tmp_path: Path) -> None:
    peer = consecutive_free_ports(9)
    http, fast = peer + 3, peer + 6
    proc = subprocess.Popen(
        [sys.executable, "-m", "pnyx.cli", "cluster", "--nodes", "3", "--data-dir",
         str(tmp_path / "data"), "--peer-port", str(peer), "--http-port", str(http),
         "--client-port", str(fast)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        banner = ""
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while "Ctrl-C" not in banner and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner += line
        assert "3 nodes running" in banner, banner + (proc.stderr.read() if proc.stderr else "")
        assert request("PUT", f"http://127.0.0.1:{http}/v1/kv/x", b"y").status == 200
        assert request("GET", f"http://127.0.0.1:{http + 2}/v1/kv/x").body == b"y"
        from pnyx import FastClient

        with FastClient([f"127.0.0.1:{fast + 1}"]) as client:  # the binary protocol too
            client.put("z", b"fast")
            assert client.get("z")[0] == b"fast"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    for port in (http, http + 1, http + 2):
        with pytest.raises(OSError):
            request("GET", f"http://127.0.0.1:{port}/v1/status", timeout=1)


def test_cluster_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "pnyx.cli", "cluster", "--peer-port",
                            str(port), "--data-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=30)
    one_line_error(r, "in use")


def test_the_start_up_line_names_only_what_the_node_serves_and_sigterm_is_logged(
        tmp_path: Path) -> None:
    peer, http = free_ports(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pnyx.cli", "serve", "--id", "1", "--cluster",
         f"1=127.0.0.1:{peer}", "--http", f"127.0.0.1:{http}", "--data-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        started = proc.stderr.readline()
        assert f"peers on 127.0.0.1:{peer}, HTTP on 127.0.0.1:{http}, data in" in started
        assert "None" not in started and "clients" not in started
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "stopping on SIGTERM" in rest and "node 1 stopped" in rest, rest


def test_cluster_help_describes_the_ports() -> None:
    out = subprocess.run([sys.executable, "-m", "pnyx.cli", "cluster", "--help"],
                         capture_output=True, text=True, timeout=30).stdout
    out = " ".join(out.split())  # argparse wraps the description
    assert "Start a local cluster" in out
    assert "--peer-port + i - 1" in out and "--client-port" in out


def test_bench_without_a_checkout_says_how_to_get_it_in_one_line(tmp_path: Path) -> None:
    code = ("import sys, pnyx.cli.bench as b; b.bench_dir = lambda: None; "
            "b.MODULE = 'pnyxbench_absent'; from pnyx.cli import main; "
            "sys.exit(main(['bench', '--help']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    one_line_error(r, "source checkout")


def test_other_member_ids_than_the_data_was_made_with_are_one_line_naming_both(
        tmp_path: Path) -> None:
    p1, p2, p3, p4 = free_ports(4)
    three = f"1=127.0.0.1:{p1},2=127.0.0.1:{p2},3=127.0.0.1:{p3}"
    with SqliteLogStore.open(tmp_path / "pnyx.db", node_id=1, cluster_id="pnyx") as store:
        store.check_members({int(i): a for i, a in (m.split("=") for m in three.split(","))})
    four = f"{three},4=127.0.0.1:{p4}"
    r = serve("--id", "1", "--cluster", four, "--data-dir", str(tmp_path))
    one_line_error(r, "pnyx.db")
    assert f"created with members {three}, not {four}" in r.stderr


def test_moved_member_addresses_are_told_at_start_and_the_node_serves(tmp_path: Path) -> None:
    p1, p2, p3, moved = free_ports(4)
    with SqliteLogStore.open(tmp_path / "pnyx.db", node_id=1, cluster_id="pnyx") as store:
        store.check_members({1: f"127.0.0.1:{p1}", 2: f"127.0.0.1:{p2}",
                             3: f"127.0.0.1:{p3}"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pnyx.cli", "serve", "--id", "1", "--cluster",
         f"1=127.0.0.1:{p1},2=127.0.0.1:{moved},3=127.0.0.1:{p3}", "--data-dir",
         str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first, second = proc.stderr.readline(), proc.stderr.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert "WARNING" in first and "member addresses changed" in first, first
    assert f"was 2=127.0.0.1:{p2}, now 2=127.0.0.1:{moved}" in first, first
    assert "serving" in second, second
    assert proc.returncode == 0
