"""The HTTP API against the binary protocol on the same 3-node cluster, with `wrk`.

    .venv/bin/python bench/http_wrk.py [--connections 256] [--duration 10] [--rounds 2]
        [--server h1|aiohttp] [--json out.json]

Starts three `pnyx serve` nodes on 127.0.0.1 (fsync on, each with an HTTP and a
binary client port), waits for a leader, then alternates, round by round:
`wrk` (Debian's package: a C load generator, so the client is not the limit)
with `--connections` keep-alive connections PUTting 100-byte values to 1,000
keys on the leader's HTTP port (`bench/wrk_put.lua`), and `pnyx bench` with as
many closed-loop clients on the same leader's binary port. It prints each
run and the ratio HTTP / binary. `--server` picks the HTTP server stack the
nodes run (`PNYX_HTTP_SERVER`): `h1` (httptools, the default of `pnyx serve`)
or `aiohttp` (the application of `pnyx.api.http.make_app`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pnyx.testing import free_ports  # noqa: E402
from pnyxbench.processes import Processes, node_status  # noqa: E402


def start_cluster(root: Path, procs: Processes, server: str) -> tuple[dict[int, int],
                                                                      dict[int, int], int]:
    peer, http, client = free_ports(3), free_ports(3), free_ports(3)
    spec = ",".join(f"{i + 1}=127.0.0.1:{peer[i]}" for i in range(3))
    os.environ["PNYX_HTTP_SERVER"] = server
    for i in range(3):
        cmd = [sys.executable, "-m", "pnyx.cli", "serve", "--id", str(i + 1), "--cluster", spec,
               "--data-dir", str(root / f"node-{i + 1}"), "--http", f"127.0.0.1:{http[i]}",
               "--client", f"127.0.0.1:{client[i]}"]
        procs.start(cmd, root / f"node-{i + 1}.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            statuses = {i + 1: node_status(("127.0.0.1", client[i])) for i in range(3)}
        except OSError:
            time.sleep(0.1)
            continue
        leaders = [i for i, st in statuses.items() if st and st.get("role") == "leader"]
        if len(leaders) == 1:
            return ({i + 1: http[i] for i in range(3)}, {i + 1: client[i] for i in range(3)},
                    leaders[0])
        time.sleep(0.1)
    raise SystemExit("http_wrk: no leader within 30 s")


def run_wrk(port: int, connections: int, duration: float, threads: int) -> dict[str, float]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
           "-s", str(HERE / "wrk_put.lua"), f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {"ops_s": rate, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
            "raw": out}  # type: ignore[dict-item]


def run_binary(port: int, clients: int, duration: float) -> dict[str, float]:
    cmd = [sys.executable, "-m", "pnyxbench", "--systems", f"wire@127.0.0.1:{port}",
           "--clients", str(clients), "--duration", f"{duration:g}", "--warmup", "1",
           "--rounds", "1", "--no-ceiling", "--no-probe", "--json", "-"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=HERE)
    s = json.loads(done.stdout)["summaries"][0]
    return {"ops_s": s["throughput"], "p99_ms": s["p99_ms"], "errors": s["errors"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--server", choices=["h1", "aiohttp"], default="h1")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("http_wrk: needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    procs = Processes()
    root = Path(tempfile.mkdtemp(prefix="pnyx-wrk-"))
    results: list[dict[str, object]] = []
    try:
        http, client, leader = start_cluster(root, procs, args.server)
        print(f"cluster up, leader {leader}; HTTP server {args.server}", flush=True)
        for rnd in range(args.rounds):
            w = run_wrk(http[leader], args.connections, args.duration, args.threads)
            print(f"round {rnd + 1} HTTP  ({args.server}, wrk -c{args.connections}): "
                  f"{w['ops_s']:>9,.0f}/s  p99 {w['p99_ms']:.1f} ms  non-2xx {w['non_2xx']}",
                  flush=True)
            b = run_binary(client[leader], args.connections, args.duration)
            print(f"round {rnd + 1} binary (pnyx bench, {args.connections} clients): "
                  f"{b['ops_s']:>9,.0f}/s  p99 {b['p99_ms']:.1f} ms  errors {b['errors']}",
                  flush=True)
            print(f"round {rnd + 1} HTTP / binary = {w['ops_s'] / b['ops_s']:.2f}", flush=True)
            results.append({"round": rnd + 1, "server": args.server,
                            "http": {k: v for k, v in w.items() if k != "raw"},
                            "binary": b, "ratio": w["ops_s"] / b["ops_s"]})
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
