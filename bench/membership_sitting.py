"""The membership measurements of issue 13: writes during a 3 -> 5 -> 3 change and during
a replace, against steady state in the same run; the time from adding a member to its
voting, for a state of `--fill` keys.

Starts a 3-node `pnyx serve` cluster (real processes, fsync on), fills `--fill` keys of
100 bytes through the binary client, then keeps `--concurrency` writers busy (100-byte
values over `--keys` keys) through every phase, and times each write:

    steady-1   --steady seconds, nothing changing
    grow       node 4 started with `pnyx serve --join` (it asks to be added, catches up
               from a snapshot, is promoted by the leader), then node 5: 3 -> 5 voters
    steady-2
    shrink     DELETE /v1/members/5, then 4: 5 -> 3
    steady-3
    replace    a follower SIGKILLed; node 6 started with --join --join-as-learner on an
               empty data directory; once caught up, one change promotes 6 and removes
               the dead one (`/v1/members/change`, as `pnyx member replace` does)
    steady-4

Reports per phase: writes/s, p50/p99 latency, failed writes, and the ratio of writes/s
to steady-1; and for each added node, seconds from its start to its being a voter.
Every load is bounded in time; every process started is stopped by its PID.

    python bench/membership_sitting.py --fill 10000 --json out-10k.json
    python bench/membership_sitting.py --fill 1000000 --json out-1m.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from pnyx.client.fast import AsyncFastClient  # noqa: E402
from pnyx.testing import free_ports  # noqa: E402


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Nodes:
    def __init__(self, root: Path, extra: list[str]) -> None:
        self.root, self.extra = root, extra
        self.peer: dict[int, int] = {}
        self.http: dict[int, int] = {}
        self.client: dict[int, int] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.everything: list[subprocess.Popen[bytes]] = []
        for i in (1, 2, 3):
            self._ports(i)
        self.spec = ",".join(f"{i}=127.0.0.1:{self.peer[i]}" for i in (1, 2, 3))

    def _ports(self, i: int) -> None:
        self.peer[i], self.http[i], self.client[i] = free_ports(3)

    def start(self, i: int, join: list[int] | None = None, learner: bool = False) -> float:
        if i not in self.peer:
            self._ports(i)
        where = ["--cluster", self.spec] if join is None else [
            "--join", ",".join(f"127.0.0.1:{self.http[j]}" for j in join),
            "--listen", f"127.0.0.1:{self.peer[i]}", *(["--join-as-learner"] if learner else [])]
        log = open(self.root / f"node-{i}.log", "ab")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "pnyx.cli", "serve", "--id", str(i), *where,
               "--http", f"127.0.0.1:{self.http[i]}", "--client", f"127.0.0.1:{self.client[i]}",
               "--data-dir", str(self.root / f"node-{i}"), *self.extra]
        started = time.monotonic()
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.everything.append(self.procs[i])
        return started

    def url(self, i: int, path: str) -> str:
        return f"http://127.0.0.1:{self.http[i]}{path}"

    def members(self, i: int) -> dict[str, Any]:
        return http("GET", self.url(i, "/v1/members"), timeout=3)[1]  # type: ignore[no-any-return]

    def live(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def leader(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in self.live():
                with contextlib.suppress(OSError, ValueError):
                    s = http("GET", self.url(i, "/v1/status"), timeout=2)[1]
                    if s.get("role") == "leader":
                        return i
            time.sleep(0.1)
        raise TimeoutError("no leader")

    def wait_role(self, i: int, role: str, timeout: float = 900) -> float:
        """Wait until the leader's configuration in force has `i` as `role` (or "gone")
        with nothing pending; the time it was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError, TimeoutError):
                view = self.members(self.leader(5))
                roles = {m["id"]: m["role"] for m in view["members"]}
                if not view.get("pending") and (
                        roles.get(i) == role or (role == "gone" and i not in roles)):
                    return time.monotonic()
            time.sleep(0.05)
        raise TimeoutError(f"node {i} never became {role}")

    def caught_up(self, i: int, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError, TimeoutError):
                view = self.members(self.leader(5))
                me = [m for m in view["members"] if m["id"] == i]
                if me and me[0].get("applied") is not None and \
                        me[0]["applied"] >= view["commit"] - view.get("alpha", 64):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"node {i} never caught up")

    def stop_everything(self) -> None:
        for p in self.everything:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        for p in self.everything:
            with contextlib.suppress(Exception):
                p.wait(10)


class Load:
    """Writers in a thread of their own (their own event loop), each write timed."""

    def __init__(self, endpoints: list[str], keys: int, concurrency: int) -> None:
        self.endpoints, self.keys, self.concurrency = endpoints, keys, concurrency
        self.done: list[tuple[float, float]] = []  # (finished at, latency)
        self.failed: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        value = b"x" * 100
        async with AsyncFastClient(self.endpoints, timeout=10) as client:
            async def worker(seed: int) -> None:
                rng = random.Random(seed)
                while not self.stop.is_set():
                    t = time.perf_counter()
                    try:
                        await client.put(f"k{rng.randrange(self.keys)}", value)
                        self.done.append((time.monotonic(), time.perf_counter() - t))
                    except Exception:
                        self.failed.append(time.monotonic())
                        await asyncio.sleep(0.05)
            await asyncio.gather(*(worker(s) for s in range(self.concurrency)))


async def fill(endpoints: list[str], count: int, concurrency: int) -> float:
    started = time.monotonic()
    issued = 0
    async with AsyncFastClient(endpoints, timeout=30) as client:
        async def worker() -> None:
            nonlocal issued
            while issued < count:
                n = issued
                issued += 1
                await client.put(f"f{n}", b"y" * 100)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.monotonic() - started


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fill", type=int, default=10_000, help="keys written before (the state)")
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--steady", type=float, default=8.0)
    ap.add_argument("--json")
    ap.add_argument("extra", nargs="*", help="after --: more pnyx serve flags")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="membersit-"))
    nodes = Nodes(root, args.extra)
    out: dict[str, Any] = {"fill": args.fill, "concurrency": args.concurrency, "phases": [],
                           "to_voter_seconds": {}}
    phases: list[tuple[str, float, float]] = []
    load: Load | None = None
    try:
        for i in (1, 2, 3):
            nodes.start(i)
        leader = nodes.leader()
        eps = [f"127.0.0.1:{nodes.client[i]}" for i in (1, 2, 3)]
        took = asyncio.run(fill(eps, args.fill, 256))
        out["fill_seconds"] = round(took, 1)
        print(f"filled {args.fill} keys in {took:.1f}s", flush=True)
        load = Load(eps, args.keys, args.concurrency)
        load.thread.start()

        def steady(name: str) -> None:
            t = time.monotonic()
            time.sleep(args.steady)
            phases.append((name, t, time.monotonic()))
            print(f"{name} done", flush=True)

        steady("steady-1")
        t = time.monotonic()
        for i in (4, 5):
            started = nodes.start(i, join=[1, 2, 3])
            voter = nodes.wait_role(i, "voter")
            out["to_voter_seconds"][i] = round(voter - started, 2)
            print(f"node {i}: voter {voter - started:.2f}s after its start", flush=True)
        phases.append(("grow 3->5", t, time.monotonic()))
        steady("steady-2")
        t = time.monotonic()
        for i in (5, 4):
            leader = nodes.leader()
            via = leader if leader not in (4, 5) else 1
            status, body = http("DELETE", nodes.url(via, f"/v1/members/{i}"), timeout=30)
            if status != 200:
                raise RuntimeError(f"remove {i}: {status} {body}")
            nodes.wait_role(i, "gone")
        phases.append(("shrink 5->3", t, time.monotonic()))
        steady("steady-3")
        t = time.monotonic()
        leader = nodes.leader()
        victim = next(i for i in (1, 2, 3) if i != leader)
        nodes.procs[victim].send_signal(signal.SIGKILL)
        nodes.procs[victim].wait(30)
        started = nodes.start(6, join=[i for i in (1, 2, 3) if i != victim], learner=True)
        nodes.wait_role(6, "learner")
        nodes.caught_up(6)
        version = nodes.members(nodes.leader())["version"]
        status, body = http("POST", nodes.url(nodes.leader(), "/v1/members/change"),
                            {"base": version, "promote": [6], "remove": [victim]}, timeout=30)
        if status != 200:
            raise RuntimeError(f"replace: {status} {body}")
        voter = nodes.wait_role(6, "voter")
        out["to_voter_seconds"]["6 (replace)"] = round(voter - started, 2)
        phases.append((f"replace {victim}->6", t, time.monotonic()))
        steady("steady-4")
    finally:
        if load is not None:
            load.stop.set()
            load.thread.join(30)
        nodes.stop_everything()
    base = None
    for name, a, b in phases:
        lat = [lat for at, lat in load.done if a <= at < b] if load else []
        fails = sum(1 for at in load.failed if a <= at < b) if load else 0
        rate = len(lat) / (b - a)
        base = base or rate
        row = {"phase": name, "seconds": round(b - a, 1), "writes_per_s": round(rate),
               "ratio_to_steady_1": round(rate / base, 2),
               "p50_ms": round(pct(lat, 0.5) * 1000, 1), "p99_ms": round(pct(lat, 0.99) * 1000, 1),
               "failed": fails}
        out["phases"].append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(out["to_voter_seconds"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
