"""Starting, finding and stopping the systems under test, each member its own process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnyx import wire
from pnyx.testing import free_ports
from pnyxbench.common import LEASE_MS, SERVE_ENV, BenchError
from pnyxbench.config import System, script_path


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Ask Linux to SIGTERM this child if the benchmark dies without cleaning up (SIGKILL)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Every process the benchmark started, so each can be stopped however the run ends."""

    def __init__(self) -> None:
        self.servers: list[subprocess.Popen[bytes]] = []
        self.workers: list[Any] = []
        self.started: list[int] = []  # every pid ever started, for the report and the tests

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # A group of its own: Ctrl-C in the terminal reaches the benchmark,
                # which stops the servers in order, instead of killing them mid-run.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.servers.append(proc)
        self.started.append(proc.pid)
        return proc

    def pids(self) -> list[int]:
        return [p.pid for p in self.servers] + [w.pid for w in self.workers if w.pid]

    def stop(self, procs: Sequence[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
        """SIGTERM each group, then SIGKILL what is left after `grace` seconds."""
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop_workers(self) -> None:
        for w in self.workers:
            if w.is_alive():
                w.terminate()
        for w in self.workers:
            w.join(2)
            if w.is_alive():
                w.kill()
                w.join()
        self.workers.clear()

    def stop_all(self) -> None:
        self.stop_workers()
        self.stop(self.servers)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Ports:
    """Ports for the systems: free ones the kernel picks, or consecutive from --port-base."""

    def __init__(self, base: int | None) -> None:
        self.next = base

    def take(self, count: int) -> list[int]:
        if self.next is None:
            return free_ports(count)
        ports = list(range(self.next, self.next + count))
        self.next += count
        for port in ports:
            if port > 65535:
                raise BenchError(f"--port-base leaves too few ports: {port} is past 65535")
            if not _port_free(port):
                raise BenchError(f"port {port} on 127.0.0.1 is in use "
                                 "(choose another --port-base)")
        return ports


# The client addresses that speak TLS (pnyxN-tls), and the CA their certificates chain to.
TLS_CA: dict[tuple[str, int], str] = {}


def connect(address: tuple[str, int], timeout: float) -> socket.socket:
    """A blocking connection to a node's client port, over TLS if it speaks it."""
    s = socket.create_connection(address, timeout=timeout)
    if address in TLS_CA:
        import ssl

        ctx = ssl.create_default_context(cafile=TLS_CA[address])
        s = ctx.wrap_socket(s, server_hostname=address[0])
    return s


def call(address: tuple[str, int], request: wire.ClientRequest,
         timeout: float = 1.0) -> wire.ClientResponse:
    """One request over a fresh connection, blocking; raises OSError if nobody answers."""
    with connect(address, timeout) as s:
        s.sendall(wire.frame(request))
        try:
            payload = wire.read_frame(s, wire.MAX_FRAME)
        except wire.FrameTooLarge as exc:
            raise OSError(str(exc)) from None
        return wire.response_decoder.decode(payload)


def node_status(address: tuple[str, int]) -> dict[str, Any] | None:
    """The node's status over the wire protocol; None if it answered but not with one."""
    response = call(address, wire.ClientRequest(1, "status"))
    if not response.ok:
        return None
    try:
        status = json.loads(response.result)
    except ValueError:
        return None
    return status if isinstance(status, dict) else None


@dataclass
class Running:
    """A started (or found) system: where its clients go and which processes are its nodes."""

    system: System
    clients: dict[int, tuple[str, int]]  # node id -> client address
    procs: dict[int, subprocess.Popen[bytes]]
    logs: dict[int, Path]
    leader: int = 1
    protocol: str = "wire"  # or "etcd"

    def targets(self, how: str) -> list[tuple[str, int]]:
        if how == "leader" or len(self.clients) == 1:
            return [self.clients[self.leader]]
        return [self.clients[i] for i in sorted(self.clients)]

    def last_line(self, i: int) -> str:
        try:
            text = self.logs[i].read_text(errors="replace").strip()
        except OSError:
            return "no log"
        return text.splitlines()[-1][:300] if text else "no output"


def _start_members(s: System, root: Path, ports: Ports, procs: Processes,
                   command: Callable[[int, str, int], list[str]]) -> Running:
    """Start `s.nodes` members on 127.0.0.1: `command(id, cluster spec, client port)`
    is each one's command line; each gets a peer port and a client port of its own."""
    n = s.nodes
    peer, client = ports.take(n), ports.take(n)
    ids = range(1, n + 1)
    spec = ",".join(f"{i}=127.0.0.1:{peer[i - 1]}" for i in ids)
    running = Running(s, {}, {}, {})
    for i in ids:
        running.logs[i] = root / f"node-{i}.log"
        running.clients[i] = ("127.0.0.1", client[i - 1])
        running.procs[i] = procs.start(command(i, spec, client[i - 1]), running.logs[i])
    return running


def _start_pnyx(s: System, root: Path, ports: Ports, procs: Processes) -> Running:
    serve = (os.environ[SERVE_ENV].split() if os.environ.get(SERVE_ENV)
             else [sys.executable, "-m", "pnyx.cli"])

    def command(i: int, spec: str, client: int) -> list[str]:
        cmd = [*serve, "serve", "--id", str(i), "--cluster", spec,
               "--data-dir", str(root / f"node-{i}"), "--client", f"127.0.0.1:{client}"]
        if s.kind == "pnyx-nofsync":
            cmd.append("--unsafe-no-fsync")
        if s.kind == "pnyx-direct":
            cmd.append("--no-consensus")
        if s.kind == "pnyx-lease":
            cmd += ["--read-lease", str(LEASE_MS)]
        if s.kind == "pnyx-tls":
            # TLS on the client port; PNYX_BENCH_PEER_TLS=1 adds mutual TLS between members.
            member = [f"{root}/certs/node-{i}.pem", f"{root}/certs/node-{i}-key.pem"]
            cmd += ["--cert-file", member[0], "--key-file", member[1]]
            if os.environ.get("PNYX_BENCH_PEER_TLS") == "1":
                cmd += ["--peer-cert-file", member[0], "--peer-key-file", member[1],
                        "--peer-trusted-ca-file", f"{root}/certs/ca.pem"]
        return cmd

    if s.kind == "pnyx-tls":
        from pnyx import certs

        certs.init_ca(root / "certs", "pnyx", force=True)
        for i in range(1, s.nodes + 1):
            certs.issue_member(root / "certs", i, ["127.0.0.1"])
    running = _start_members(s, root, ports, procs, command)
    if s.kind == "pnyx-tls":
        for address in running.clients.values():
            TLS_CA[address] = str(root / "certs" / "ca.pem")
    return running


def _start_pysyncobj(s: System, root: Path, ports: Ports, procs: Processes) -> Running:
    script = str(script_path("pysyncobj_server.py", s.name))

    def command(i: int, spec: str, client: int) -> list[str]:
        cmd = [sys.executable, script, "--id", str(i), "--cluster", spec,
               "--client", f"127.0.0.1:{client}"]
        if s.kind == "pysyncobj-nobatch":
            cmd.append("--no-batch")
        return cmd

    return _start_members(s, root, ports, procs, command)


def _start_trivial(s: System, root: Path, ports: Ports, procs: Processes) -> Running:
    (port,) = ports.take(1)
    cmd = [sys.executable, str(script_path("trivial_server.py", s.name)),
           "--host", "127.0.0.1", "--port", str(port)]
    running = Running(s, {1: ("127.0.0.1", port)}, {}, {1: root / "trivial.log"})
    running.procs[1] = procs.start(cmd, running.logs[1])
    return running


def _start_etcd(s: System, root: Path, ports: Ports, procs: Processes) -> Running:
    n = s.nodes
    peer, client = ports.take(n), ports.take(n)
    ids = range(1, n + 1)
    initial = ",".join(f"n{i}=http://127.0.0.1:{peer[i - 1]}" for i in ids)
    running = Running(s, {}, {}, {}, protocol="etcd")
    for i in ids:
        url = f"http://127.0.0.1:{client[i - 1]}"
        cmd = ["etcd", "--name", f"n{i}", "--data-dir", str(root / f"node-{i}"),
               "--listen-client-urls", url, "--advertise-client-urls", url,
               "--listen-peer-urls", f"http://127.0.0.1:{peer[i - 1]}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[i - 1]}",
               "--initial-cluster", initial, "--initial-cluster-state", "new",
               "--log-level", "warn"]
        running.logs[i] = root / f"node-{i}.log"
        running.clients[i] = ("127.0.0.1", client[i - 1])
        running.procs[i] = procs.start(cmd, running.logs[i])
    return running


def _etcd_status(address: tuple[str, int]) -> dict[str, Any] | None:
    import urllib.request

    url = f"http://{address[0]}:{address[1]}/v3/maintenance/status"
    with urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"),
                                timeout=1.0) as r:
        body = json.loads(r.read())
    header = body.get("header", {})
    member, leader = header.get("member_id"), body.get("leader")
    return {"role": "leader" if member is not None and member == leader else "follower",
            "leader_member": leader}


def start_system(s: System, root: Path, ports: Ports, procs: Processes,
                 timeout: float) -> Running:
    """Start `s` and wait until every node answers and agrees on a leader."""
    if s.kind == "wire":
        assert s.address is not None
        running = Running(s, {1: s.address}, {}, {})
        try:
            node_status(s.address)
        except OSError as exc:
            raise BenchError(f"{s.name}: nothing answers at {s.address[0]}:{s.address[1]} "
                             f"({getattr(exc, 'strerror', None) or exc})") from None
        return running
    root.mkdir(parents=True, exist_ok=True)
    starter: dict[str, Callable[[System, Path, Ports, Processes], Running]] = {
        "pnyx": _start_pnyx, "pnyx-nofsync": _start_pnyx, "pnyx-direct": _start_pnyx,
        "pnyx-tls": _start_pnyx, "pnyx-lease": _start_pnyx,
        "pysyncobj": _start_pysyncobj, "pysyncobj-nobatch": _start_pysyncobj,
        "trivial": _start_trivial, "etcd": _start_etcd,
    }
    running = starter[s.kind](s, root, ports, procs)
    _wait_ready(running, timeout)
    return running


def _wait_ready(running: Running, timeout: float) -> None:
    s = running.system
    deadline = time.monotonic() + timeout
    statuses: dict[int, dict[str, Any] | None] = {}
    while time.monotonic() < deadline:
        for i, proc in running.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{s.name}: node {i} exited at start: {running.last_line(i)}")
        for i, address in running.clients.items():
            try:
                statuses[i] = (_etcd_status(address) if running.protocol == "etcd"
                               else node_status(address))
            except (OSError, ValueError):
                statuses.pop(i, None)
        if len(statuses) == len(running.clients):
            if s.kind == "trivial":
                return
            leaders = [i for i, st in statuses.items() if st and st.get("role") == "leader"]
            if len(leaders) == 1:
                agreed = {st.get("leader") for st in statuses.values() if st}
                # etcd names leaders by member id: one node calling itself leader will do.
                if running.protocol == "etcd" or agreed == {leaders[0]}:
                    running.leader = leaders[0]
                    return
        time.sleep(0.05)
    silent = sorted(set(running.clients) - set(statuses))
    if silent:
        i = silent[0]
        host, port = running.clients[i]
        raise BenchError(f"{s.name}: node {i} did not answer on {host}:{port} within "
                         f"{timeout:g} s ({running.last_line(i)})")
    raise BenchError(f"{s.name}: no leader agreed on within {timeout:g} s")


