"""Real-cluster benchmark: committed writes/s and latency over HTTP, and leader failover.

Run by hand (not a test):
    .venv/bin/python bench/bench_real.py [--seconds 20] [--clients 32] [--trials 20]

Starts `pnyx serve` processes on 127.0.0.1 (fsync on) with `pnyx.testing.Cluster`
and drives them with a closed loop of concurrent clients (aiohttp, one
process), each writing 100-byte values to its own keys, through all nodes in
turn. Reports, for 3 nodes and for 1 node, in the same run: committed writes
per second, latency p50/p90/p99/max, and the commands the leader made durable
per fsync (group commit). Then SIGKILLs the leader `--trials` times and
reports the time from the kill to the next successful write (median, max).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from pnyx.sim.report import percentile
from pnyx.testing import Cluster, request


async def load(urls: list[str], clients: int, seconds: float, warmup: float,
               value: bytes) -> tuple[int, list[float], float]:
    latencies: list[float] = []
    done = 0
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup
    errors = 0

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        n = 0
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            n += 1
            url = f"{urls[(k + n) % len(urls)]}/v1/kv/c{k}-{n % 100}"
            started = time.perf_counter()
            async with session.put(url, data=value) as r:
                await r.read()
                ok = r.status == 200
            if not ok:
                errors += 1
                continue
            if started >= measure_from:
                latencies.append(time.perf_counter() - started)
                done += 1

    connector = aiohttp.TCPConnector(limit=clients * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(k, session) for k in range(clients)))
    return done, latencies, errors


def metric(text: str, name: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M):
        total += float(m.group(1))
    return total


def throughput(nodes: int, clients: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as root:
        c = Cluster(Path(root), nodes=nodes)
        try:
            c.start_all()
            c.leader()
            urls = [f"http://127.0.0.1:{c.http_ports[i]}" for i in c.ids]
            done, lat, errors = asyncio.run(load(urls, clients, seconds, 2.0, b"x" * 100))
            leader = c.leader()
            text = request("GET", c.url(leader, "/metrics")).body.decode()
            commits = metric(text, "pnyx_fsync_seconds_count")
            commands = metric(text, "pnyx_chosen_commands_total")
            print(f"  {nodes} node{'s' if nodes > 1 else ''}, {clients} clients, 100 B values: "
                  f"{done / seconds:8,.0f} writes/s   p50 {percentile(lat, 50) * 1000:6.2f} ms  "
                  f"p90 {percentile(lat, 90) * 1000:6.2f} ms  "
                  f"p99 {percentile(lat, 99) * 1000:6.2f} ms  max {max(lat) * 1000:7.1f} ms  "
                  f"errors {errors}  leader: {commands / max(commits, 1):.1f} commands/fsync")
        finally:
            c.stop_everything()


def failover(trials: int) -> None:
    times: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        c = Cluster(Path(root), nodes=3)
        try:
            c.start_all()
            for t in range(trials):
                leader = c.leader()
                others = [i for i in c.ids if i != leader]
                c.kill(leader)
                killed = time.perf_counter()
                n = 0
                while True:
                    n += 1
                    try:
                        r = c.put(others[n % 2], "failover", str(t).encode(), timeout=1.0,
                                  idempotency_key=f"failover-{t}")
                        if r.status == 200:
                            break
                    except OSError:
                        pass
                    time.sleep(0.01)
                times.append(time.perf_counter() - killed)
                c.start(leader)
        finally:
            c.stop_everything()
    print(f"  leader SIGKILL -> next successful write, {trials} trials (election timeout "
          f"300-600 ms, heartbeat 50 ms): median {statistics.median(times) * 1000:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    print("throughput (fsync on):")
    for nodes in (3, 1):
        throughput(nodes, args.clients, args.seconds)
    print("failover:")
    failover(args.trials)


if __name__ == "__main__":
    main()
