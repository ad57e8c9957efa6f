"""The binary client protocol against HTTP: requests per second, in one run.

Run by hand (not a test):

    .venv/bin/python bench/bench_wire.py [--seconds 2] [--rounds 3] [--concurrency 256]

Servers run in child processes, so on a 2-core machine the load generator
(this process, one event loop) and the server each get a core:

- `bench/trivial_server.py`: answers every frame at once, no node. What a
  load generator reaches against it is that generator's own ceiling.
- a `FakeNode` (tests/fake_node.py: no Paxos, one KVMachine, every command
  applied at once) served both ways from one process: the binary protocol
  (`pnyx.api.binary.serve_clients`) and HTTP (`pnyx.api.http.make_app`).

Load generators, each for `--seconds`, closed loop, every one once per round
(`--rounds`), reporting medians:

- `raw`: pipelined frames written by hand on one connection, `--window`
  requests outstanding (no futures, no retries): the server's ceiling.
- `AsyncFastClient`: `--concurrency` tasks calling `put`/`get` through one client
  (one connection).
- `AsyncClient` (HTTP): `--http-concurrency` tasks calling `put`/`get` through
  one aiohttp client.

Writes use a fresh key and idempotency key each; reads read one of 1,000
keys written first.

Measured (2-core machine shared with other jobs, medians of 3 rounds):
trivial server: raw 457 k/s, AsyncFastClient 185 k/s; fake node: raw put
80 k/s, get 154 k/s; AsyncFastClient put 54 k/s, get 118 k/s; AsyncClient
(HTTP) put 8.3 k/s, get 12.4 k/s: binary / HTTP = 6.5x (put), 9.6x (get).
Under heavier load from other jobs the HTTP path suffers more (17-23x).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # fake_node

import pnyx  # noqa: E402
from pnyx import wire  # noqa: E402
from pnyx.statemachine import kv  # noqa: E402
from pnyx.wire.stream import FramedProtocol  # noqa: E402

# --- the fake node's server (a child process) ----------------------------------


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


async def _serve_fake(binary_port: int, http_port: int) -> None:
    from aiohttp import web

    from fake_node import FakeNode
    from pnyx.api.binary import serve_clients
    from pnyx.api.http import make_app

    node = FakeNode()
    # The fake node records every request for tests; millions of records here
    # would slow it down (and the collector with it) as the run goes on.
    node.submitted = _Discard()
    node.reads = _Discard()
    await serve_clients(node, "127.0.0.1", binary_port)
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server {args} did not start")


# --- load generators ----------------------------------------------------------------


_raw_ids = itertools.count(1)


class _RawLoad(FramedProtocol):
    """Keeps `window` requests outstanding on one connection; counts answers."""

    def __init__(self, make: Callable[[int], wire.ClientRequest], window: int) -> None:
        super().__init__()
        self.make = make
        self.window = window
        self.ids = _raw_ids  # shared: ids double as idempotency keys, fresh in every load
        self.answered = 0
        self.failed = 0
        self.running = True
        self.done = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        for _ in range(self.window):
            self.send(self.make(next(self.ids)))

    def frame_received(self, view: memoryview) -> bool:
        response = wire.response_decoder.decode(view)
        self.answered += 1
        if not response.ok:
            self.failed += 1
        if self.running:
            self.send(self.make(next(self.ids)))
        return True

    def protocol_error(self, reason: str) -> None:
        raise RuntimeError(reason)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def raw_load(port: int, make: Callable[[int], wire.ClientRequest], seconds: float,
                   window: int) -> float:
    loop = asyncio.get_running_loop()
    transport, load = await loop.create_connection(lambda: _RawLoad(make, window),
                                                   "127.0.0.1", port)
    await asyncio.sleep(0.3)  # warm up
    start, before = time.perf_counter(), load.answered
    await asyncio.sleep(seconds)
    rate = (load.answered - before) / (time.perf_counter() - start)
    load.running = False
    await asyncio.sleep(0.2)
    transport.close()
    assert load.failed == 0, f"{load.failed} requests failed"
    return rate


async def closed_loop(call: Callable[[int], Awaitable[object]], concurrency: int,
                      seconds: float) -> float:
    counter = itertools.count()
    done = 0
    stop = False

    async def worker() -> None:
        nonlocal done
        while not stop:
            await call(next(counter))
            done += 1

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(0.3)  # warm up
    start, before = time.perf_counter(), done
    await asyncio.sleep(seconds)
    rate = (done - before) / (time.perf_counter() - start)
    stop = True
    await asyncio.gather(*tasks)
    return rate


# --- the run ------------------------------------------------------------------------------


def _put_request(n: int) -> wire.ClientRequest:
    command = kv.encode_request(kv.IdempotentRequest(f"raw.{n}", kv.Put(f"w{n}", b"v" * 16)))
    return wire.ClientRequest(n, "submit", command)


_GET_QUERIES = [kv.encode_query(f"r{i}") for i in range(1000)]


def _get_request(n: int) -> wire.ClientRequest:
    return wire.ClientRequest(n, "read", _GET_QUERIES[n % 1000], "linearizable")


Load = Callable[[], Awaitable[float]]


async def run(args: argparse.Namespace, trivial_port: int, binary_port: int,
              http_port: int) -> None:
    seconds, conc, http_conc = args.seconds, args.concurrency, args.http_concurrency
    value = b"v" * 16
    raw_command = kv.encode_request(kv.IdempotentRequest("x", kv.Put("k", value)))
    trivial = pnyx.AsyncFastClient([f"127.0.0.1:{trivial_port}"])
    fast = pnyx.AsyncFastClient([f"127.0.0.1:{binary_port}"])
    slow = pnyx.AsyncClient([f"127.0.0.1:{http_port}"])
    await asyncio.gather(*(fast.put(f"r{i}", value) for i in range(1000)))
    loads: dict[str, Load] = {
        "trivial server, raw frames":
            lambda: raw_load(trivial_port, _put_request, seconds, args.window),
        "trivial server, AsyncFastClient.submit_raw":
            lambda: closed_loop(lambda n: trivial.submit_raw(raw_command), conc, seconds),
        "fake node, raw frames put":
            lambda: raw_load(binary_port, _put_request, seconds, args.window),
        "fake node, raw frames get":
            lambda: raw_load(binary_port, _get_request, seconds, args.window),
        "fake node, AsyncFastClient.put":
            lambda: closed_loop(lambda n: fast.put(f"f{n}", value), conc, seconds),
        "fake node, AsyncFastClient.get":
            lambda: closed_loop(lambda n: fast.get(f"r{n % 1000}"), conc, seconds),
        "fake node, AsyncClient (HTTP).put":
            lambda: closed_loop(lambda n: slow.put(f"h{n}", value), http_conc, seconds),
        "fake node, AsyncClient (HTTP).get":
            lambda: closed_loop(lambda n: slow.get(f"r{n % 1000}"), http_conc, seconds),
    }
    print(f"load generator: one event loop, {seconds:g} s per load, {args.rounds} rounds "
          f"(every load once per round, so drift in the machine's load hits all alike); "
          f"concurrency {conc} (binary), {http_conc} (HTTP), raw window {args.window}")
    rates: dict[str, list[float]] = {name: [] for name in loads}
    for r in range(args.rounds):
        print(f"round {r + 1}:", flush=True)
        for name, load in loads.items():
            rates[name].append(await load())
            print(f"  {name:<46} {rates[name][-1]:>10,.0f} req/s", flush=True)
    await trivial.close()
    await fast.close()
    await slow.close()

    print("median over rounds:")
    for name, values in rates.items():
        print(f"  {name:<46} {statistics.median(values):>10,.0f} req/s")

    def ratio(a: str, b: str) -> str:
        per_round = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        return f"{statistics.median(per_round):5.1f}x"

    print("ratios (median of each round's ratio):")
    for op in ("put", "get"):
        print(f"  {op}: AsyncFastClient / AsyncClient (HTTP) = "
              f"{ratio(f'fake node, AsyncFastClient.{op}', f'fake node, AsyncClient (HTTP).{op}')}"
              f"; raw frames / AsyncFastClient = "
              f"{ratio(f'fake node, raw frames {op}', f'fake node, AsyncFastClient.{op}')}")
    print("  trivial server: raw frames / AsyncFastClient = "
          f"{ratio('trivial server, raw frames', 'trivial server, AsyncFastClient.submit_raw')}")


def main() -> None:
    parser = argparse.ArgumentParser(description="binary protocol vs HTTP, requests/s")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--http-concurrency", type=int, default=64)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--serve-fake", nargs=2, type=int, metavar=("BINARY", "HTTP"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        asyncio.run(_serve_fake(*args.serve_fake))
        return
    trivial_port, binary_port, http_port = _free_port(), _free_port(), _free_port()
    procs = [
        _start(["bench/trivial_server.py", "--port", str(trivial_port)], trivial_port),
        _start([__file__, "--serve-fake", str(binary_port), str(http_port)], http_port),
    ]
    try:
        asyncio.run(run(args, trivial_port, binary_port, http_port))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(5)


if __name__ == "__main__":
    main()
