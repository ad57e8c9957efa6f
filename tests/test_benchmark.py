"""`pnyx bench`: one-line errors, a tiny real run with its table and JSON, and cleanup.

The runs are short (about a second of load each) and use the trivial server
and `pnyx1-direct`; the real comparison is run by hand (see the module doc).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pnyxbench as benchmark
from pnyxbench import Summary, parse_size, parse_system, percentile, ratios

TINY = ["--clients", "2", "--duration", "1", "--warmup", "0.2", "--rounds", "1"]


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pnyx.cli", "bench", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def serve_has_no_consensus() -> bool:
    out = subprocess.run([sys.executable, "-m", "pnyx.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=30).stdout
    return "--no-consensus" in out and "--client" in out


# ------------------------------------------------------------------ parsing


def test_system_names() -> None:
    assert parse_system("pnyx3").kind == "pnyx"
    assert parse_system("pnyx5-nofsync").nodes == 5
    assert parse_system("pnyx1-direct").kind == "pnyx-direct"
    assert parse_system("pysyncobj3-nobatch").with_nodes(7).name == "pysyncobj7-nobatch"
    assert parse_system("wire@127.0.0.1:9000").address == ("127.0.0.1", 9000)
    assert parse_system("pnyx3-lease").with_nodes(5).name == "pnyx5-lease"
    assert parse_system("pnyx3-lease").replicated


def test_sizes_and_percentiles() -> None:
    assert [parse_size(t) for t in ("10", "100B", "1KiB", "64k", "1MiB")] == [
        10, 100, 1024, 65536, 1 << 20]
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0, 99.0, 100.0)
    assert percentile([], 50) == 0.0


@pytest.mark.parametrize("args, words", [
    (["--systems", "pnyx3,foo"], "unknown system 'foo'"),
    (["--systems", "pnyx3-direct"], "pnyx1-direct"),
    (["--clients", "0"], "--clients: 0 is outside"),
    (["--clients", "many"], "not an integer"),
    (["--value-size", "huge"], "--value-size"),
    (["--read-ratio", "1.5"], "--read-ratio"),
    (["--duration", "soon"], "--duration"),
    (["--clients", "1,2", "--value-size", "10,20"], "one curve at a time"),
    (["--target", "moon"], "--target"),
    (["--nodes", "3,5", "--systems", "trivial"], "none of --systems is replicated"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_flags_are_one_line(args: list[str], words: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = benchmark.main(args)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert words in err and len(err.splitlines()) == 1, err


def test_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = benchmark.main(["--systems", "trivial", "--no-ceiling", "--no-probe",
                               "--port-base", str(port), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == [f"pnyx bench: port {port} on 127.0.0.1 is in use "
                   "(choose another --port-base)"]


def test_unreachable_node_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    code = benchmark.main(["--systems", f"wire@127.0.0.1:{port}", "--no-ceiling", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith(
        f"pnyx bench: wire@127.0.0.1:{port}: nothing answers at 127.0.0.1:{port}"), err


# ------------------------------------------------------------------ real runs


def check_run(result: subprocess.CompletedProcess[str], out: Path, systems: list[str]) -> None:
    assert result.returncode == 0, result.stderr
    for name in systems:
        assert any(line.startswith(name) for line in result.stdout.splitlines()), result.stdout
    assert "p99 ms" in result.stdout
    report = json.loads(out.read_text())
    rows = {x["system"]: x for x in report["summaries"] if not x["probe"]}
    assert set(rows) == {n.rstrip("*") for n in systems}
    for row in rows.values():
        assert row["throughput"] > 0 and row["errors"] == 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert report["pids"], "the report lists the processes it started"
    assert not [pid for pid in report["pids"] if alive(pid)], "a process outlived the benchmark"


def test_tiny_run_against_the_trivial_server(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = bench("--systems", "trivial", *TINY, "--json", str(out))
    check_run(result, out, ["trivial*"])
    report = json.loads(out.read_text())
    assert report["fsync_ms"]["samples"] > 0


@pytest.mark.skipif(not serve_has_no_consensus(),
                    reason="pnyx serve has no --client/--no-consensus yet")
def test_tiny_run_against_pnyx1_direct(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = bench("--systems", "pnyx1-direct", "--no-probe", *TINY, "--json", str(out))
    check_run(result, out, ["trivial*", "pnyx1-direct"])
    report = json.loads(out.read_text())
    assert [r["ratio"] for r in report["ratios"]] == []  # no pnyxN to compare
    assert report["summaries"][-1]["commands"] > 0


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pnyx.cli", "bench", "--systems", "trivial", "--no-ceiling",
         "--no-probe", "--clients", "2", "--duration", "30", "--rounds", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: set[int] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(seen) < 2:  # the server and a generator
            seen.update(children(proc.pid))
            time.sleep(0.1)
        assert len(seen) >= 2, "the benchmark did not start its processes"
        time.sleep(0.5)
        seen.update(children(proc.pid))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted" in err.strip().splitlines()[-1]
    assert not [pid for pid in seen if alive(pid)]


def _at(system: str, kind: str, throughput: float, nodes: int = 3) -> Summary:
    return Summary(system, kind, nodes, 32, 100, 0.0, False, 1, throughput, [throughput],
                   1.0, 1.0, 1.0, 1.0, 1.0, 0, "", 0, 0.1, None, None)


def test_ratios_hold_pnyx_to_the_issue_targets_and_compare_like_for_like() -> None:
    """The 3x target is against PySyncObj as it comes (its defaults); its no-batching
    setting is shown without a target, and pnyx without fsync is compared with it, as
    neither fsyncs."""
    rows = {r["ratio"]: r for r in ratios([
        _at("pnyx3", "pnyx", 30_000), _at("pnyx3-nofsync", "pnyx-nofsync", 40_000),
        _at("pnyx1-direct", "pnyx-direct", 100_000, nodes=1),
        _at("pysyncobj3", "pysyncobj", 2_000),
        _at("pysyncobj3-nobatch", "pysyncobj-nobatch", 8_000),
    ])}
    assert rows["pnyx3 / pysyncobj3"]["value"] == 15.0
    assert rows["pnyx3 / pysyncobj3"]["target"] == 3.0 and rows["pnyx3 / pysyncobj3"]["met"]
    assert rows["pnyx3 / pysyncobj3-nobatch"]["target"] is None
    assert rows["pnyx3 / pnyx1-direct"]["met"] is False  # 0.3 < 0.5
    assert rows["pnyx3-nofsync / pysyncobj3-nobatch"]["value"] == 5.0
    assert rows["pnyx3-nofsync / pysyncobj3-nobatch"]["target"] is None
