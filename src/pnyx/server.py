"""Running nodes for real: `pnyx serve` (one node) and `pnyx cluster` (a local cluster).

`serve` opens the node's durable store, starts the node (peer transport) and
the HTTP API on one event loop (uvloop when installed), and runs until
SIGINT or SIGTERM. Every way it can fail to start — a port that cannot be
bound, an address that does not resolve, a data directory that cannot be
written, a store that belongs to another node or is damaged — is one line on
stderr and a non-zero exit (`StartError`), never a retry loop.

`cluster` starts `serve` processes for a local cluster on 127.0.0.1, waits
until they answer, tells the user where they are and how to talk to them,
and stops them all on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pnyx.node.config import Address, ConfigError, NodeConfig

log = logging.getLogger("pnyx.server")


class StartError(Exception):
    """The node cannot start; the message is one line for the user."""


def _check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".pnyx-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise StartError(f"data directory {path} cannot be written: {exc.strerror}") from None


async def _serve(config: NodeConfig, stop: asyncio.Event) -> None:
    from aiohttp import web

    from pnyx.api.binary import close_server, serve_clients
    from pnyx.api.http import make_app
    from pnyx.node.metrics import Metrics
    from pnyx.node.direct import DirectNode
    from pnyx.node.runtime import Node
    from pnyx.statemachine.kv import KVMachine
    from pnyx.storage.log_store import SqliteLogStore, StoreError

    metrics = Metrics()
    node: Node | DirectNode
    if config.consensus:
        _check_data_dir(config.data_dir)
        db = config.data_dir / "pnyx.db"
        try:
            store = SqliteLogStore.open(db, node_id=config.node_id,
                                        cluster_id=config.cluster_id, fsync=config.fsync)
        except StoreError as exc:
            raise StartError(str(exc)) from None
        node = Node(config, store, KVMachine(max_clients=65536), metrics)
        try:
            await node.start()
        except OSError as exc:
            store.close()
            raise StartError(f"cannot listen for peers on {config.peer_listen}: "
                             f"{exc.strerror or exc}") from None
        chosen = node.replica.commit if node.replica is not None else 0
    else:
        node = DirectNode(config.node_id, metrics=metrics, max_command=config.max_command)
        chosen = 0
    runner: web.AppRunner | None = None
    clients: asyncio.Server | None = None
    try:
        if config.http is not None:
            app = make_app(node, max_value=config.max_command - 4096,
                           request_timeout=config.request_timeout)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, config.http.host, config.http.port)
            try:
                await site.start()
            except OSError as exc:
                raise StartError(f"cannot serve HTTP on {config.http}: "
                                 f"{exc.strerror or exc}") from None
        if config.client is not None:
            try:
                clients = await serve_clients(node, config.client.host, config.client.port,
                                              max_command=config.max_command)
            except OSError as exc:
                raise StartError(f"cannot serve clients on {config.client}: "
                                 f"{exc.strerror or exc}") from None
        log.info("node %s serving: peers on %s, HTTP on %s, clients on %s, data in %s, "
                 "%d slots chosen%s", config.node_id, config.peer_listen, config.http,
                 config.client, config.data_dir, chosen,
                 "" if config.consensus else " (NO CONSENSUS: benchmark mode)")
        await stop.wait()
    finally:
        if clients is not None:
            await close_server(clients)
        if runner is not None:
            await runner.cleanup()
        if isinstance(node, Node):
            await node.stop()


def serve(config: NodeConfig) -> int:
    """Run one node until SIGINT/SIGTERM. Raises `StartError` if it cannot start."""
    try:
        config.check_addresses()
    except ConfigError as exc:
        raise StartError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s node {config.node_id} %(levelname)s %(message)s")
    # A node holds its whole log in dicts of millions of entries, which every full
    # collection of the cyclic GC walks (tens of milliseconds each, a tail on every
    # request). pnyx makes little cyclic garbage, so collect the old generations
    # far less often: the 256-client p99 drops ~2x in `pnyx bench`.
    gc.set_threshold(700, 50, 100)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await _serve(config, stop)

    asyncio.run(main())
    return 0


# ------------------------------------------------------------------ cluster


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(http: Address) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http}/v1/status", timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def cluster(nodes: int, data_dir: Path, peer_port: int, http_port: int,
            fsync: bool = True, ready_timeout: float = 20.0,
            client_port: int | None = None) -> int:
    """Start a local cluster of `nodes` processes and wait for Ctrl-C."""
    ids = range(1, nodes + 1)
    peers = {i: Address("127.0.0.1", peer_port + i - 1) for i in ids}
    https = {i: Address("127.0.0.1", http_port + i - 1) for i in ids}
    fast = ({i: Address("127.0.0.1", client_port + i - 1) for i in ids}
            if client_port is not None else {})
    for addr in [*peers.values(), *https.values(), *fast.values()]:
        if not _port_free(addr.port):
            raise StartError(f"port {addr.port} on 127.0.0.1 is in use "
                             "(choose others with --peer-port / --http-port / --client-port)")
    _check_data_dir(data_dir)
    spec = ",".join(f"{i}={addr}" for i, addr in peers.items())
    procs: dict[int, subprocess.Popen[bytes]] = {}
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)

    def stop_all() -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
            if p.poll() is None:
                p.kill()
                p.wait()

    interrupted = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        for i in ids:
            cmd = [sys.executable, "-m", "pnyx.cli", "serve", "--id", str(i), "--cluster", spec,
                   "--http", str(https[i]), "--data-dir", str(data_dir / f"node-{i}")]
            if not fsync:
                cmd.append("--unsafe-no-fsync")
            if fast:
                cmd += ["--client", str(fast[i])]
            with open(logs / f"node-{i}.log", "ab") as out:
                procs[i] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        waiting = set(ids)
        while waiting and time.monotonic() < deadline and not interrupted:
            for i in sorted(waiting):
                if procs[i].poll() is not None:
                    tail = (logs / f"node-{i}.log").read_text(errors="replace").strip()
                    last = tail.splitlines()[-1] if tail else "no output"
                    raise StartError(f"node {i} exited at start: {last}")
                if _answers(https[i]):
                    waiting.discard(i)
            time.sleep(0.1)
        if interrupted:
            return 130
        if waiting:
            raise StartError(f"nodes {sorted(waiting)} did not answer within {ready_timeout:g} s "
                             f"(see {logs})")
        endpoints = ",".join(str(a) for a in https.values())
        print(f"pnyx cluster: {nodes} nodes running, data in {data_dir}/\n")
        for i in ids:
            binary = f"   binary {fast[i]}" if fast else ""
            print(f"  node {i}   peers {peers[i]}   HTTP http://{https[i]}{binary}   "
                  f"log {logs / f'node-{i}.log'}")
        first = https[1]
        # Show the command as the user can type it (./dev.sh runs .venv/bin/pnyx).
        pnyx = sys.argv[0] if Path(sys.argv[0]).name == "pnyx" else "pnyx"
        print(f"""
Talk to it (any node accepts any request):
  {pnyx} put greeting hello --endpoints {endpoints}
  {pnyx} get greeting --endpoints {endpoints}
  curl -X PUT --data-binary hello http://{first}/v1/kv/greeting
  curl http://{https[nodes]}/v1/kv/greeting
  curl http://{first}/v1/status

Press Ctrl-C to stop every node.""", flush=True)
        reported: set[int] = set()
        while not interrupted:
            for i, p in procs.items():
                if p.poll() is not None and i not in reported:
                    reported.add(i)
                    print(f"pnyx cluster: node {i} exited with status {p.returncode}; "
                          f"see {logs / f'node-{i}.log'}", file=sys.stderr, flush=True)
            if len(reported) == len(procs):
                return 1
            time.sleep(0.2)
        print("\npnyx cluster: stopping all nodes", flush=True)
        return 0
    finally:
        stop_all()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
