"""The CPU one committed write costs on the node's own path, three nodes in one process.

Run by hand (not a test):

    .venv/bin/python bench/bench_path.py                       # this tree
    .venv/bin/python bench/bench_path.py --tree /tmp/before/src --tree src --rounds 3

Three real `Node`s (SQLite log stores, peers over loopback TCP, the same
`KVMachine` and `Metrics` as `pnyx serve`) run on one uvloop event loop in one
process, and `--clients` closed-loop clients call the leader's
`submit_nowait` directly, each command checked with `kv.validate` first as the
client APIs do. What is timed is the process's CPU (user + system, every
thread) per committed write: the protocol, the driver's request machinery, the
peers' framing and TCP, the log store and the key-value machine on all three
nodes, summed — the cluster's CPU per write without the client protocol's
socket. A `DirectNode` (no consensus) is run the same way beside it.

With `--reads` the clients make linearizable reads (`read_nowait`) instead, of
keys written first, spread over every node (`--target all`, the default for
reads) or at the leader: the CPU per read of the read-index path, against a
`DirectNode`'s reads of local state.

With several `--tree`s each runs in its own process, alternated round by
round, so a before/after comparison shares one sitting (read the ratios; a
2-CPU machine shared with anything else drifts). `--fsync` turns fsync on
(slower, and noisier: the disk's latency then shapes the batches).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _one(args: argparse.Namespace) -> dict[str, Any]:
    """Run the measurement in this process, with whatever `pnyx` is importable."""
    from pnyx.node.config import Address, NodeConfig
    from pnyx.node.direct import DirectNode
    from pnyx.node.metrics import Metrics
    from pnyx.node.runtime import Node
    from pnyx.statemachine import kv
    from pnyx.statemachine.kv import KVMachine
    from pnyx.storage.log_store import SqliteLogStore
    from pnyx.testing import free_ports

    value = b"v" * 100
    keys = [f"k{i}" for i in range(1000)]

    async def drive(submit: Any, total: int, clients: int,
                    reads: bool = False) -> tuple[float, float, int]:
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        state = {"sent": 0, "ok": 0, "failed": 0}
        seqs = [0] * clients

        def send(c: int) -> None:
            if state["sent"] >= total:
                if state["ok"] + state["failed"] >= total and not finished.done():
                    finished.set_result(None)
                return
            state["sent"] += 1
            seqs[c] += 1
            key = keys[(c * 7919 + seqs[c]) % 1000]
            if reads:
                submit(c, kv.encode_query(key), lambda outcome, c=c: answered(c, outcome))
                return
            command = kv.encode_request(kv.Request(f"bench-{c}", seqs[c], kv.Put(key, value)))
            kv.validate(command)
            submit(command, lambda outcome, c=c: answered(c, outcome))

        ready: list[int] = []

        def answered(c: int, outcome: Any) -> None:
            # The next command on the next turn of the loop, as a client's would be
            # (and a node that answers at once must not recurse).
            state["ok" if outcome.ok else "failed"] += 1
            ready.append(c)
            if len(ready) == 1:
                loop.call_soon(resend)

        def resend() -> None:
            now = ready[:]
            ready.clear()
            for c in now:
                send(c)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        for c in range(clients):
            send(c)
        await finished
        return time.process_time() - cpu0, time.perf_counter() - wall0, state["ok"]

    async def cluster() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            ports = free_ports(3)
            members = {i: Address("127.0.0.1", ports[i - 1]) for i in (1, 2, 3)}
            nodes = []
            for i in members:
                config = NodeConfig(i, members, Path(tmp) / f"n{i}")
                store = SqliteLogStore.open(config.data_dir / "log.db", node_id=i,
                                            cluster_id=config.cluster_id, fsync=args.fsync)
                nodes.append(Node(config, store, KVMachine(max_clients=65536), Metrics()))
            for n in nodes:
                await n.start()
            try:
                deadline = time.monotonic() + 20
                leader = None
                while leader is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    leader = next((n for n in nodes if n.replica is not None
                                   and n.replica.is_leader), None)
                assert leader is not None, "no leader elected"

                def submit(command: bytes, done: Any) -> None:
                    leader.submit_nowait(command, done)

                await drive(submit, args.warmup, args.clients)
                if args.reads:
                    at = nodes if args.target == "all" else [leader]

                    def read(c: int, query: bytes, done: Any) -> None:
                        at[c % len(at)].read_nowait(query, "linearizable", done)

                    cpu, wall, ok = await drive(read, args.writes, args.clients, reads=True)
                    slots = 0
                else:
                    hot = leader.metrics._per_command if leader.metrics is not None else None
                    slots0 = hot.chosen_slots if hot is not None else 0
                    cpu, wall, ok = await drive(submit, args.writes, args.clients)
                    slots = (hot.chosen_slots - slots0) if hot is not None else 0
            finally:
                for n in nodes:
                    await n.stop()
        return {"cpu_us": cpu / ok * 1e6, "writes_per_s": ok / wall, "ok": ok,
                "per_slot": ok / slots if slots else None}

    async def direct() -> dict[str, Any]:
        node = DirectNode(1, KVMachine(max_clients=65536), Metrics())
        await node.start()
        try:
            await drive(node.submit_nowait, args.warmup, args.clients)
            if args.reads:
                def read(c: int, query: bytes, done: Any) -> None:
                    node.read_nowait(query, "linearizable", done)

                cpu, wall, ok = await drive(read, args.writes, args.clients, reads=True)
            else:
                cpu, wall, ok = await drive(node.submit_nowait, args.writes, args.clients)
        finally:
            await node.stop()
        return {"cpu_us": cpu / ok * 1e6, "writes_per_s": ok / wall, "ok": ok}

    try:
        import uvloop
        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    return {"cluster": run(cluster()), "direct": run(direct())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", default=[],
                   help="a source directory holding the pnyx package (repeat to compare)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--writes", type=int, default=100_000)
    p.add_argument("--warmup", type=int, default=20_000)
    p.add_argument("--fsync", action="store_true")
    p.add_argument("--reads", action="store_true",
                   help="linearizable reads (of keys the warm-up wrote) instead of writes")
    p.add_argument("--target", choices=("all", "leader"), default="all",
                   help="with --reads: read at every node in turn, or at the leader")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child or not args.tree:
        result = _one(args)
        print(json.dumps(result) if args.child else result)
        return
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in args.tree}
    passed = [a for a in sys.argv[1:] if a not in args.tree and a != "--tree"]
    for r in range(args.rounds):
        for tree in args.tree:
            env = {**os.environ, "PYTHONPATH": tree}
            out = subprocess.run([sys.executable, __file__, "--child", *passed], env=env,
                                 check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            results[tree].append(res)
            print(f"round {r + 1} {tree}: cluster {res['cluster']['cpu_us']:.1f} µs/op "
                  f"({res['cluster']['writes_per_s']:,.0f}/s), direct "
                  f"{res['direct']['cpu_us']:.1f} µs/op", flush=True)
    first = args.tree[0]
    unit = "read" if args.reads else "write"
    for tree in args.tree:
        c = statistics.median(x["cluster"]["cpu_us"] for x in results[tree])
        d = statistics.median(x["direct"]["cpu_us"] for x in results[tree])
        c0 = statistics.median(x["cluster"]["cpu_us"] for x in results[first])
        print(f"{tree}: median cluster {c:.1f} µs/{unit} ({c / c0:.2f}x of {first}), "
              f"direct {d:.1f} µs/{unit}")


if __name__ == "__main__":
    main()
