"""A node under idle and stalled connections: does it still serve a probe write quickly?

Run by hand (not a test):

    .venv/bin/python bench/bench_connections.py [--idle 2000] [--stalled 200] [--probes 300]
        [--tls]

Starts one `pnyx serve` (a one-member cluster, fsync on, HTTP and binary ports on
127.0.0.1; with `--tls`, both ports over TLS with certificates made by `pnyx.certs`),
then measures the latency of sequential probe writes (`pnyx.Client.put` over HTTP,
`pnyx.FastClient.put` over the binary port):

1. `normal`: nothing else connected;
2. `loaded`: with `--idle` idle connections (half on each port, connected and
   silent) and `--stalled` stalled ones (half HTTP requests whose announced body
   never comes, half binary frames started and never finished) held open for
   the whole phase — the node runs with timeouts long enough that it keeps them;
3. `cleanup`: the same load against a node with short timeouts (1 s body,
   2 s idle), counting how many of those connections it has closed 3 s later.

Target (issue 11): a probe write under load within 2x its normal latency (p50).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import pnyx  # noqa: E402
from pnyx import certs, wire  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def node(workdir: Path, *, body_ms: int, idle_ms: int, tls: Path | None,
         ) -> Iterator[tuple[int, int]]:
    peer, http_port, client_port = free_port(), free_port(), free_port()
    data = Path(tempfile.mkdtemp(dir=workdir))
    cmd = [str(ROOT / ".venv/bin/pnyx"), "serve", "--id", "1", "--cluster",
           f"1=127.0.0.1:{peer}", "--data-dir", str(data), "--http",
           f"127.0.0.1:{http_port}", "--client", f"127.0.0.1:{client_port}",
           "--body-timeout", str(body_ms), "--idle-timeout", str(idle_ms),
           "--max-connections", "8192"]
    if tls is not None:
        cmd += ["--cert-file", str(tls / "node-1.pem"), "--key-file",
                str(tls / "node-1-key.pem")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with client(http_port, client_port, tls) as (http, _):
            deadline = time.monotonic() + 20
            while True:
                try:
                    if http.status().get("role") == "leader":
                        break
                except pnyx.PnyxError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the node did not become leader in 20 s")
                time.sleep(0.1)
        yield http_port, client_port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def client(http_port: int, client_port: int, tls: Path | None,
           ) -> Iterator[tuple[pnyx.Client, pnyx.FastClient]]:
    opts = {} if tls is None else {"cacert": tls / "ca.pem"}
    with pnyx.Client([f"127.0.0.1:{http_port}"], retry_timeout=5, **opts) as http, \
            pnyx.FastClient([f"127.0.0.1:{client_port}"], retry_timeout=5, **opts) as fast:
        yield http, fast


def probe(http_port: int, client_port: int, tls: Path | None, n: int,
          ) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"HTTP": [], "binary": []}
    with client(http_port, client_port, tls) as (http, fast):
        http.put("warm", b"x")
        fast.put("warm", b"x")
        for i in range(n):
            for name, c in (("HTTP", http), ("binary", fast)):
                started = time.perf_counter()
                c.put(f"probe/{name}/{i}", b"v" * 100)
                out[name].append(time.perf_counter() - started)
    return out


def load(http_port: int, client_port: int, idle: int, stalled: int, tls: Path | None,
         ) -> list[socket.socket]:
    """Open the idle and stalled connections; they stay open until closed by the caller."""
    ctx = None
    if tls is not None:
        ctx = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    socks: list[socket.socket] = []

    def connect(port: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if ctx is not None:
            s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
        socks.append(s)
        return s

    for i in range(idle):
        connect(http_port if i % 2 == 0 else client_port)
    half_frame = wire.frame(wire.ClientRequest(1, "status"))[:3]
    for i in range(stalled):
        if i % 2 == 0:
            connect(http_port).sendall(b"PUT /v1/kv/stalled HTTP/1.1\r\nHost: x\r\n"
                                       b"Content-Length: 1000\r\n\r\n0123456789")
        else:
            connect(client_port).sendall(half_frame)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(65536)
            # An answer (a 408) followed by the close may still be arriving; EOF is closed.
            n += 0 if data == b"" or b"408" in data else 1
        except (BlockingIOError, ssl.SSLWantReadError):
            n += 1
        except OSError:
            pass
    return n


def summary(name: str, samples: dict[str, list[float]]) -> dict[str, float]:
    medians = {}
    for port, xs in samples.items():
        xs = sorted(xs)
        p50 = statistics.median(xs)
        p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
        medians[port] = p50
        print(f"  {name:8} {port:6} p50 {p50 * 1000:7.2f} ms   p99 {p99 * 1000:7.2f} ms   "
              f"max {xs[-1] * 1000:7.2f} ms   ({len(xs)} probes)")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--stalled", type=int, default=200)
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--tls", action="store_true", help="both client ports over TLS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tls = None
        if args.tls:
            tls = work / "certs"
            certs.init_ca(tls, "pnyx")
            certs.issue_member(tls, 1, ["127.0.0.1", "localhost"])
        print(f"one node, fsync on, {'TLS' if tls else 'plaintext'}; {args.idle} idle + "
              f"{args.stalled} stalled connections; {args.probes} sequential probe writes "
              f"per port per phase (pid {os.getpid()})")
        with node(work, body_ms=600_000, idle_ms=600_000, tls=tls) as (hp, cp):
            normal = summary("normal", probe(hp, cp, tls, args.probes))
            started = time.monotonic()
            socks = load(hp, cp, args.idle, args.stalled, tls)
            print(f"  opened {len(socks)} connections in {time.monotonic() - started:.1f} s")
            time.sleep(1.0)
            loaded = summary("loaded", probe(hp, cp, tls, args.probes))
            print(f"  still open after the probes: {still_open(socks)} of {len(socks)}")
            for s in socks:
                s.close()
            for port in normal:
                ratio = loaded[port] / normal[port]
                print(f"  {port}: loaded p50 / normal p50 = {ratio:.2f}x "
                      f"({'within' if ratio <= 2 else 'OVER'} the 2x target)")
        with node(work, body_ms=1000, idle_ms=2000, tls=tls) as (hp, cp):
            socks = load(hp, cp, args.idle, args.stalled, tls)
            stalled = socks[args.idle:]
            time.sleep(3.0)
            print(f"cleanup (body timeout 1 s, idle timeout 2 s), 3 s later: "
                  f"{still_open(socks[:args.idle])} of {args.idle} idle and "
                  f"{still_open(stalled)} of {len(stalled)} stalled connections still open")
            for s in socks:
                s.close()


if __name__ == "__main__":
    main()
