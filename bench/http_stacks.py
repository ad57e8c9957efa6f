"""The HTTP stacks alone, at their best: what each can serve before pnyx does anything.

    .venv/bin/python bench/http_stacks.py [--rounds 2] [--duration 5] [--connections 64]

Runs, alternated round by round, a server that reads each PUT's body and answers a
fixed 200 JSON body, on uvloop, in a process of its own, driven by `wrk` (PUT, 100
bytes, keep-alive); reports requests/s and the server's CPU per request (/proc):

- `aiohttp-lowlevel`: aiohttp tuned as far as it goes: its low-level `web.Server`
  (no application, router or middleware), access log off, its C parser;
- `httptools`: an `asyncio.Protocol` on `httptools` (what `pnyx.api.http_h1` is built
  on), writing each answer's bytes at once.

The gap between these two is the most a server on aiohttp could close by tuning; the
gap between `httptools` here and `pnyx.api.http_h1` on a direct node
(bench/results/2026-12-03-perf/direct_cpu.sh) is pnyx's own work per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANSWER = b'{"index": 1}'


def serve_aiohttp(port: int) -> None:  # pragma: no cover - a child process
    from aiohttp import web

    async def handler(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        server = web.Server(handler, access_log=None)
        await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_httptools(port: int) -> None:  # pragma: no cover - a child process
    import httptools

    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
                b"\r\n\r\n%s" % (len(ANSWER), ANSWER))

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.body = bytearray()

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.body = bytearray()
            self.transport.write(response)  # type: ignore[attr-defined]

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def measure(stack: str, connections: int, duration: float) -> tuple[float, float]:
    from pnyx.testing import free_ports

    (port,) = free_ports(1)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", stack, "--port", str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:  # until it listens (a loaded machine starts Python slowly)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        t0 = _ticks(proc.pid)
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "-s",
                              str(HERE / "wrk_put.lua"), f"http://127.0.0.1:{port}"],
                             capture_output=True, text=True, check=True).stdout
        t1 = _ticks(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rate, (t1 - t0) / os.sysconf("SC_CLK_TCK") / requests * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--serve", choices=["aiohttp-lowlevel", "httptools"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        import uvloop  # type: ignore[import-not-found]

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        (serve_aiohttp if args.serve == "aiohttp-lowlevel" else serve_httptools)(args.port)
        return 0
    sys.path.insert(0, str(HERE.parent / "src"))
    for rnd in range(args.rounds):
        for stack in ("aiohttp-lowlevel", "httptools"):
            rate, us = measure(stack, args.connections, args.duration)
            print(f"round {rnd + 1} {stack:<17} {rate:>9,.0f} requests/s  "
                  f"{us:6.1f} us of server CPU per request", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
