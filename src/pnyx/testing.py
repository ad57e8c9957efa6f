"""A real local cluster for tests and benchmarks: `pnyx serve` processes on 127.0.0.1.

Each node is its own process with its own data directory. `Cluster` finds
free ports, starts the nodes, waits until they answer, kills them for real
(SIGKILL, SIGSTOP), and stops every process it started in `stop_everything`
— call it in a `finally`. Requests go over HTTP with the standard library, so
what uses this depends on nothing but the node itself. pnyx's own tests use
it; so can yours.

Membership: `join(i)` starts a new node `i` on an empty data directory with
`pnyx serve --join` (it asks the running members to add it, and is promoted
to voter by the leader once caught up), `wait_voter(i)` waits for that,
`remove(i)` asks the cluster to remove a member (`DELETE /v1/members/{i}`),
`members()` reads the configuration (`GET /v1/members`).

`Cluster(..., namespaces=True)` puts each node in a network namespace of its
own, with its own address (`pnyx.netns`: veth pairs on a bridge; root only,
`pnyx.netns.unavailable()` says why not), so the network between nodes can
be cut for real: `cut(a, b, kind)`, `partition(groups, kind)` and `heal()`,
by blackhole routes or silent loss. Clients here still reach every node.
`stop_everything` then also removes the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pnyx.netns import CutKind, NetnsNetwork


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)


def request(method: str, url: str, body: bytes | None = None, timeout: float = 5.0,
            headers: dict[str, str] | None = None) -> Response:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, r.read(), dict(r.headers))
    except urllib.error.HTTPError as e:
        return Response(e.code, e.read(), dict(e.headers))


class Cluster:
    def __init__(self, root: Path, nodes: int = 3, election_ms: int = 300,
                 heartbeat_ms: int = 50, extra_args: tuple[str, ...] = (), *,
                 namespaces: bool = False) -> None:
        self.root = root
        self.ids = list(range(1, nodes + 1))
        self.net: NetnsNetwork | None = None
        if namespaces:
            # Each node alone in its namespace: the same ports everywhere, its own address.
            self.net = NetnsNetwork(self.ids).setup()
            self.hosts = {i: self.net.address(i) for i in self.ids}
            self.peer_ports = dict.fromkeys(self.ids, 7001)
            self.http_ports = dict.fromkeys(self.ids, 8001)
            self.client_ports = dict.fromkeys(self.ids, 9001)
        else:
            ports = free_ports(3 * nodes)
            self.hosts = dict.fromkeys(self.ids, "127.0.0.1")
            self.peer_ports = dict(zip(self.ids, ports[:nodes], strict=True))
            self.http_ports = dict(zip(self.ids, ports[nodes:2 * nodes], strict=True))
            self.client_ports = dict(zip(self.ids, ports[2 * nodes:], strict=True))
        self.spec = ",".join(f"{i}={self.hosts[i]}:{self.peer_ports[i]}" for i in self.ids)
        self.election_ms = election_ms
        self.heartbeat_ms = heartbeat_ms
        self.extra_args = extra_args
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.everything: list[subprocess.Popen[bytes]] = []
        self.joined: set[int] = set()  # ids started with --join (no --cluster)
        self._via: dict[int, list[int]] = {}  # whom a joined node asks to add it
        self._join_flags: dict[int, list[str]] = {}

    def url(self, i: int, path: str) -> str:
        return f"http://{self.hosts[i]}:{self.http_ports[i]}{path}"

    def http_endpoint(self, i: int) -> str:
        return f"{self.hosts[i]}:{self.http_ports[i]}"

    def client_endpoint(self, i: int) -> str:
        """Node `i`'s binary client port (served only with `namespaces=True`)."""
        return f"{self.hosts[i]}:{self.client_ports[i]}"

    def start(self, i: int, wait: bool = True) -> None:
        log = open(self.root / f"node-{i}.log", "ab")  # noqa: SIM115 - closed with the process
        if i in self.joined:
            # Asks the members to add it (ignored once its data directory holds data).
            members = ",".join(self.http_endpoint(j) for j in self._via[i])
            where = ["--join", members, "--listen", f"{self.hosts[i]}:{self.peer_ports[i]}",
                     *self._join_flags[i]]
        else:
            where = ["--cluster", self.spec]
        cmd = [
            sys.executable, "-m", "pnyx.cli", "serve", "--id", str(i), *where,
            "--http", f"{self.hosts[i]}:{self.http_ports[i]}", "--data-dir",
            str(self.root / f"node-{i}"), "--election-timeout", str(self.election_ms),
            "--heartbeat", str(self.heartbeat_ms), *self.extra_args,
        ]
        if self.net is not None:
            # Beyond loopback, plaintext is refused unless asked for; `ip netns exec`
            # execs the command, so the process is the node itself.
            cmd = [*self.net.exec_prefix(i), *cmd, "--insecure",
                   "--client", self.client_endpoint(i)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        self.procs[i] = proc
        self.everything.append(proc)
        if wait:
            self.wait_ready(i)

    def join(self, i: int, wait: bool = True, via: list[int] | None = None, *,
             learner: bool = False, incarnation: int = 0,
             ports: tuple[int, int, int] | None = None) -> None:
        """Start a new node `i` (not yet a member) with `pnyx serve --join`, asking the
        members `via` (default: every member started so far) to add it; on an empty data
        directory unless one is left from an earlier run. `learner`: added as a learner
        the leader does not promote by itself (`--join-as-learner`); `incarnation`: the
        one it was added under beforehand (`--incarnation`); `ports`: its peer, HTTP and
        client ports (default: free ones). Not with `namespaces=True`."""
        if self.net is not None:
            raise RuntimeError("join() needs a Cluster without namespaces")
        if i in self.hosts:
            raise ValueError(f"node {i} exists already in this Cluster")
        peer, http, client = ports if ports is not None else free_ports(3)
        self.hosts[i] = "127.0.0.1"
        self.peer_ports[i], self.http_ports[i], self.client_ports[i] = peer, http, client
        self.joined.add(i)
        self.ids.append(i)
        self._via[i] = list(via) if via is not None else [j for j in self.procs if j != i]
        self._join_flags[i] = [*(["--join-as-learner"] if learner else []),
                               *(["--incarnation", str(incarnation)] if incarnation else [])]
        self.start(i, wait=wait)

    def members(self, i: int) -> dict:  # type: ignore[type-arg]
        """The configuration as member `i` knows it (`GET /v1/members`)."""
        return request("GET", self.url(i, "/v1/members"), timeout=5.0).json()

    def remove(self, i: int, via: int, timeout: float = 10.0) -> Response:
        """Ask member `via` to remove member `i` (`DELETE /v1/members/{i}`), asking again
        while no leader answers (503)."""
        deadline = time.monotonic() + timeout
        while True:
            r = request("DELETE", self.url(via, f"/v1/members/{i}"), timeout=timeout)
            if r.status != 503 or time.monotonic() > deadline:
                return r
            time.sleep(0.1)

    def change(self, via: int, body: dict, timeout: float = 10.0) -> Response:  # type: ignore[type-arg]
        """`POST /v1/members/change` at member `via` (asked again while it answers 503)."""
        deadline = time.monotonic() + timeout
        while True:
            r = request("POST", self.url(via, "/v1/members/change"), json.dumps(body).encode(),
                        timeout=timeout, headers={"Content-Type": "application/json"})
            if r.status != 503 or time.monotonic() > deadline:
                return r
            time.sleep(0.1)

    def wait_role(self, i: int, role: str = "voter", via: int | None = None,
                  timeout: float = 20.0) -> dict:  # type: ignore[type-arg]
        """Wait until member `via`'s configuration in force (default: `i`'s own) has `i`
        in `role` ("voter", "learner", or "gone": in no configuration); the view."""
        deadline = time.monotonic() + timeout
        view: dict = {}  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                view = self.members(i if via is None else via)
                roles = {m["id"]: m["role"] for m in view["members"]}
                pending = [m["id"] for p in view.get("pending", ()) for m in p["members"]]
                if (roles.get(i) == role and not view.get("pending")) or (
                        role == "gone" and i not in roles and i not in pending):
                    return view
            time.sleep(0.05)
        raise TimeoutError(f"node {i} is not {role} (last view: {view})")

    def start_all(self) -> None:
        for i in self.ids:
            self.start(i, wait=False)
        for i in self.ids:
            self.wait_ready(i)
        self.wait_formed()

    def wait_formed(self, timeout: float = 20.0) -> None:
        """Wait until no member is still asking whether the cluster is new (a member that
        started empty votes once every other one answered it is empty too: see
        `pnyx.protocol.multipaxos.standing`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            standings = set()
            for i, proc in self.procs.items():
                if proc.poll() is None:
                    with contextlib.suppress(OSError, ValueError):
                        standings.add(self.status(i).get("standing"))
            if standings and "new" not in standings:
                return
            time.sleep(0.05)
        raise TimeoutError("the members never all answered that the cluster is new")

    def wait_ready(self, i: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[i].poll() is not None:
                raise RuntimeError(f"node {i} exited: {self.log(i)[-2000:]}")
            with contextlib.suppress(OSError):
                if request("GET", self.url(i, "/v1/status"), timeout=0.5).status == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"node {i} did not answer: {self.log(i)[-2000:]}")

    def log(self, i: int) -> str:
        return (self.root / f"node-{i}.log").read_text(errors="replace")

    def signal(self, i: int, sig: int) -> None:
        self.procs[i].send_signal(sig)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def status(self, i: int) -> dict:  # type: ignore[type-arg]
        return request("GET", self.url(i, "/v1/status"), timeout=2.0).json()

    def leader(self, timeout: float = 10.0) -> int:
        """The node every live node agrees leads."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = set()
            for i, proc in self.procs.items():
                if proc.poll() is None:
                    with contextlib.suppress(OSError, ValueError):
                        s = self.status(i)
                        seen.add(s["leader"] if s["role"] != "leader" else i)
            if len(seen) == 1 and None not in seen:
                return int(seen.pop())
            time.sleep(0.05)
        raise TimeoutError("no leader agreed on")

    def put(self, i: int, key: str, value: bytes, timeout: float = 5.0,
            idempotency_key: str | None = None) -> Response:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return request("PUT", self.url(i, f"/v1/kv/{key}"), value, timeout, headers)

    def get(self, i: int, key: str, consistency: str = "linearizable",
            timeout: float = 5.0) -> Response:
        return request("GET", self.url(i, f"/v1/kv/{key}?consistency={consistency}"),
                       timeout=timeout)

    # -- the network between nodes (namespaces=True only) --

    def _network(self) -> NetnsNetwork:
        if self.net is None:
            raise RuntimeError("the network can be cut only in a Cluster(namespaces=True)")
        return self.net

    def cut(self, a: int, b: int, kind: CutKind = "blackhole") -> None:
        """Nodes `a` and `b` no longer reach each other, both ways."""
        self._network().cut(a, b, kind)

    def partition(self, groups: list[list[int]], kind: CutKind = "blackhole") -> None:
        """Cut every pair of nodes in different groups."""
        self._network().partition(groups, kind)

    def heal(self) -> None:
        self._network().heal()

    def stop_everything(self) -> None:
        try:
            for proc in self.everything:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGCONT)
                        proc.kill()
            for proc in self.everything:
                with contextlib.suppress(Exception):
                    proc.wait(10)
        finally:
            if self.net is not None:
                self.net.teardown()
