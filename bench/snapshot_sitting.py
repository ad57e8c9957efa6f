"""The snapshot measurements of issue 12: memory, disk, restart and rejoin against history.

Starts a 3-node `pnyx serve` cluster of a given checkout (its Python, so the code
before snapshots can be measured with the same script), writes 100-byte values over
`--keys` keys through the binary client (`pnyx.client.fast`), and at each
checkpoint of `--writes` reports every node's RSS and SQLite size (pnyx.db + -wal;
the snapshots directory separately). Then, optionally: the time a SIGKILLed
follower takes to serve again (`--restart`), and the time a follower whose data
directory was wiped takes to hold everything again (`--rejoin`, snapshot transfer;
new code only), with the leader's write latency during the transfer against a
window just before it. Every load is bounded in count and time; every process
started is stopped by its PID.

    python bench/snapshot_sitting.py --python /work/before/.venv/bin/python \
        --label before --writes 100000,1000000 --restart --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from pnyx.client.fast import AsyncFastClient  # noqa: E402
from pnyx.testing import free_ports  # noqa: E402


class Nodes:
    def __init__(self, python: str, root: Path, extra: list[str]) -> None:
        self.python, self.root, self.extra = python, root, extra
        ports = free_ports(9)
        self.ids = [1, 2, 3]
        self.peer = dict(zip(self.ids, ports[0:3], strict=True))
        self.http = dict(zip(self.ids, ports[3:6], strict=True))
        self.client = dict(zip(self.ids, ports[6:9], strict=True))
        self.spec = ",".join(f"{i}=127.0.0.1:{self.peer[i]}" for i in self.ids)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.everything: list[subprocess.Popen[bytes]] = []

    def start(self, i: int) -> float:
        log = open(self.root / f"node-{i}.log", "ab")  # noqa: SIM115 - closed below
        cmd = [self.python, "-m", "pnyx.cli", "serve", "--id", str(i), "--cluster", self.spec,
               "--http", f"127.0.0.1:{self.http[i]}", "--client",
               f"127.0.0.1:{self.client[i]}", "--data-dir", str(self.root / f"node-{i}"),
               *self.extra]
        started = time.monotonic()
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.everything.append(self.procs[i])
        return started

    def status(self, i: int) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.http[i]}/v1/status"
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def wait_serving(self, i: int, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[i].poll() is not None:
                raise RuntimeError(f"node {i} exited")
            with contextlib.suppress(OSError, ValueError):
                self.status(i)
                return time.monotonic()
            time.sleep(0.02)
        raise TimeoutError(f"node {i} never served")

    def leader(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = set()
            for i in self.ids:
                with contextlib.suppress(OSError, ValueError):
                    s = self.status(i)
                    seen.add(i if s["role"] == "leader" else s["leader"])
            if len(seen) == 1 and None not in seen:
                return int(seen.pop())
            time.sleep(0.1)
        raise TimeoutError("no leader")

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(30)

    def rss_mib(self, i: int) -> float:
        for line in Path(f"/proc/{self.procs[i].pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def disk_mib(self, i: int) -> dict[str, float]:
        d = self.root / f"node-{i}"
        db = sum(p.stat().st_size for p in d.glob("pnyx.db*") if p.suffix != ".db-shm")
        wal = d / "pnyx.db-wal"
        wal_size = wal.stat().st_size if wal.exists() else 0
        snaps = sum(p.stat().st_size for p in (d / "snapshots").glob("*")) \
            if (d / "snapshots").exists() else 0
        return {"db_mib": round(db / 2**20, 1), "wal_mib": round(wal_size / 2**20, 1),
                "snapshots_mib": round(snaps / 2**20, 1)}

    def stop_everything(self) -> None:
        for p in self.everything:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        for p in self.everything:
            with contextlib.suppress(Exception):
                p.wait(10)


async def load(endpoints: list[str], count: int, keys: int, seconds: float,
               concurrency: int, seed: int, latencies: list[float] | None = None,
               key_of: Any = None) -> tuple[int, float]:
    """`count` writes of 100-byte values (bounded by `seconds`); returns (done, elapsed)."""
    rng = random.Random(seed)
    value = b"x" * 100
    done = 0
    issued = 0
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    async with AsyncFastClient(endpoints, timeout=30) as client:
        async def worker() -> None:
            nonlocal done, issued
            while issued < count and time.monotonic() < deadline:
                n = issued
                issued += 1
                key = key_of(n) if key_of is not None else f"k{rng.randrange(keys)}"
                t = time.perf_counter()
                await client.put(key, value)
                if latencies is not None:
                    latencies.append(time.perf_counter() - t)
                done += 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.monotonic() - started


def p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--label", required=True)
    ap.add_argument("--writes", default="100000", help="checkpoints, cumulative writes")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--max-seconds", type=float, default=900, help="per load segment")
    ap.add_argument("--restart", action="store_true")
    ap.add_argument("--rejoin", action="store_true")
    ap.add_argument("--fill-keys", type=int, default=0,
                    help="before the checkpoints, write keys f0..fN once (a large state)")
    ap.add_argument("--json")
    ap.add_argument("extra", nargs="*", help="after --: more pnyx serve flags")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix=f"snapsit-{args.label}-"))
    nodes = Nodes(args.python, root, args.extra)
    out: dict[str, Any] = {"label": args.label, "extra": args.extra, "checkpoints": []}
    try:
        for i in nodes.ids:
            nodes.start(i)
        for i in nodes.ids:
            nodes.wait_serving(i)
        leader = nodes.leader()
        eps = [f"127.0.0.1:{nodes.client[leader]}"] + [
            f"127.0.0.1:{nodes.client[i]}" for i in nodes.ids if i != leader]
        # Warm up: the connections, an election settled.
        asyncio.run(load(eps, 1000, args.keys, 60, 32, 0))
        if args.fill_keys:
            n, el = asyncio.run(load(eps, args.fill_keys, 0, args.max_seconds,
                                     args.concurrency, 0, key_of=lambda n: f"f{n}"))
            out["fill"] = {"keys": n, "seconds": round(el, 1)}
            print(f"[{args.label}] filled {n} keys in {el:.1f}s", flush=True)
        written = 0
        for target in (int(w) for w in args.writes.split(",")):
            want = target - written
            n, el = asyncio.run(load(eps, want, args.keys, args.max_seconds,
                                     args.concurrency, target))
            written += n
            time.sleep(2)  # a snapshot in flight lands
            cp = {"writes": written, "segment_writes_per_s": round(n / el),
                  "nodes": {i: {"rss_mib": round(nodes.rss_mib(i), 1), **nodes.disk_mib(i)}
                            for i in nodes.ids}}
            with contextlib.suppress(OSError, ValueError, KeyError):
                cp["snapshot"] = nodes.status(leader).get("snapshot")
            out["checkpoints"].append(cp)
            print(f"[{args.label}] {json.dumps(cp)}", flush=True)
            if n < want:
                print(f"[{args.label}] segment cut short by time", flush=True)
                break
        follower = next(i for i in nodes.ids if i != leader)
        if args.restart:
            nodes.kill(follower)
            t0 = nodes.start(follower)
            t1 = nodes.wait_serving(follower)
            out["restart"] = {"node": follower, "to_serving_s": round(t1 - t0, 3),
                              "rss_mib_after": round(nodes.rss_mib(follower), 1)}
            print(f"[{args.label}] restart {out['restart']}", flush=True)
        if args.rejoin:
            # A window of writes at the leader without a transfer, then the same load
            # while a wiped follower fetches the snapshot and catches up.
            base: list[float] = []
            asyncio.run(load(eps, 20_000, args.keys, 60, 8, 7, base))
            target_index = nodes.status(leader)["commit_index"]
            nodes.kill(follower)
            shutil.rmtree(root / f"node-{follower}")
            during: list[float] = []
            t0 = nodes.start(follower)

            async def during_transfer() -> float:
                task = asyncio.create_task(load(eps, 2_000_000, args.keys, 600, 8, 8, during))
                loop = asyncio.get_running_loop()
                deadline = time.monotonic() + 600
                caught = float("nan")
                while time.monotonic() < deadline:
                    s = None
                    with contextlib.suppress(OSError, ValueError):
                        s = await loop.run_in_executor(None, nodes.status, follower)
                    if s is not None and s["applied_index"] >= target_index:
                        caught = time.monotonic()
                        break
                    await asyncio.sleep(0.05)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                return caught

            t1 = asyncio.run(during_transfer())
            s = nodes.status(follower)
            out["rejoin"] = {
                "node": follower, "to_caught_up_s": round(t1 - t0, 3),
                "standing": s.get("standing"), "snapshot": s.get("snapshot"),
                "p99_ms_without": round(p(base, 0.99) * 1e3, 2),
                "p50_ms_without": round(p(base, 0.5) * 1e3, 2),
                "p99_ms_during": round(p(during, 0.99) * 1e3, 2),
                "p50_ms_during": round(p(during, 0.5) * 1e3, 2),
                "writes_during": len(during)}
            print(f"[{args.label}] rejoin {json.dumps(out['rejoin'])}", flush=True)
    finally:
        nodes.stop_everything()
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
