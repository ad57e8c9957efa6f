"""`pnyx cluster`: a local cluster on 127.0.0.1, for trying pnyx out.

It starts one `pnyx serve` process per node (peer, HTTP and binary client
ports counted up from --peer-port, --http-port and --client-port), waits until
every node answers, tells the user where they are and how to talk to them, and
stops them all on Ctrl-C or SIGTERM.

Its members talk mutual TLS, as a production cluster should: the first run
makes a CA and a certificate per node in DIR/certs (`pnyx.certs`), later runs
reuse them; `--no-tls` turns that off. The client ports stay plaintext, on
loopback only.

**Adding and removing nodes.** While it runs it watches the configuration
(`GET /v1/members`, every `WATCH_INTERVAL` seconds): a member added with
`pnyx member add ID 127.0.0.1:PORT` that it does not run yet is started here
(`pnyx serve --join`, under the incarnation the add drew, in DIR/node-ID, its
certificate made first), and a node removed with `pnyx member remove ID`
stops by itself and is reported as removed, not failed. A later run starts
the members the configuration holds again. Members at non-loopback addresses
are left to the user (`pnyx serve --join`, as printed at start).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pnyx.cli.common import StartError, UsageError, check_data_dir
from pnyx.node.config import Address

DESCRIPTION = ("Start a local cluster of `pnyx serve` processes on 127.0.0.1 and keep it "
               "running until Ctrl-C. Node i (from 1) listens for peers on --peer-port + i - 1, "
               "serves HTTP on --http-port + i - 1 and the binary client protocol on "
               "--client-port + i - 1; its log is in DIR/node-i and its output in "
               "DIR/logs/node-i.log. Peers talk mutual TLS with certificates made in DIR/certs "
               "(unless --no-tls). To grow it, run `pnyx member add ID 127.0.0.1:PORT --http "
               "127.0.0.1:PORT` (with --endpoints of a node): this command sees the new member "
               "and starts its process (a learner, promoted once caught up); `pnyx member "
               "remove ID` stops that node. Both commands are printed once the cluster runs.")
WATCH_INTERVAL = 1.0  # seconds between looks at the configuration
REMOVED_LINE = "was removed from the cluster"  # what a removed node logs (pnyx.node.runtime)


def add_parsers(sub: Any) -> None:
    cl = sub.add_parser(
        "cluster",
        help="start a local cluster on 127.0.0.1 and keep it running until Ctrl-C",
        description=DESCRIPTION,
    )
    cl.add_argument("--nodes", type=int, default=3, help="how many nodes, 1..15 (default 3)")
    cl.add_argument("--data-dir", default="pnyx-data", metavar="DIR",
                    help="where the nodes keep their logs (default ./pnyx-data)")
    cl.add_argument("--peer-port", type=int, default=7001, metavar="PORT",
                    help="first peer port (default 7001)")
    cl.add_argument("--http-port", type=int, default=8001, metavar="PORT",
                    help="first HTTP port (default 8001)")
    cl.add_argument("--client-port", type=int, default=9001, metavar="PORT",
                    help="first port of the binary client protocol, for pnyx.FastClient "
                    "(default 9001; 0 to serve none)")
    cl.add_argument("--unsafe-no-fsync", action="store_true",
                    help="do not fsync (benchmarks only)")
    cl.add_argument("--no-tls", action="store_true",
                    help="peers talk plaintext (default: mutual TLS, with a CA and node "
                    "certificates made in DIR/certs on the first run)")
    cl.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 15:
        raise UsageError(f"pnyx cluster: --nodes must be in 1..15, got {args.nodes}")
    ports = [("--peer-port", args.peer_port), ("--http-port", args.http_port)]
    if args.client_port:
        ports.append(("--client-port", args.client_port))
    for flag, port in ports:
        if not 1024 <= port <= 65535 - args.nodes:
            raise UsageError(f"pnyx cluster: {flag} {port} is outside 1024..65535")
    return cluster(args.nodes, Path(args.data_dir), args.peer_port, args.http_port,
                   fsync=not args.unsafe_no_fsync, client_port=args.client_port or None,
                   tls=not args.no_tls)


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


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _new_members(endpoints: list[Address], running: dict[int, Any]
                 ) -> list[tuple[int, Address, Address, int]]:
    """Members the configuration holds (in force or to come) at a loopback address that
    are not run here: (id, peer, http, incarnation). The http address is the member's, or
    a free port when it has none. Nothing when no endpoint answers."""
    view: dict[str, Any] | None = None
    for endpoint in endpoints:
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(
                f"http://{endpoint}/v1/members", timeout=0.5) as response:
            view = json.loads(response.read())
            break
    if not isinstance(view, dict):
        return []
    found = []
    seen: set[int] = set()
    for config in [view, *view.get("pending", ())]:
        for m in config.get("members", ()):
            i = m.get("id")
            if not isinstance(i, int) or i in running or i in seen:
                continue
            seen.add(i)
            try:
                peer = Address.parse(str(m.get("peer") or ""))
                http = (Address.parse(m["http"]) if m.get("http")
                        else Address("127.0.0.1", _free_port()))
            except ValueError:
                continue
            if _loopback(peer.host) and _loopback(http.host):
                found.append((i, peer, http, int(m.get("incarnation") or 0)))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peer_certificates(certs_dir: Path, ids: range) -> dict[int, list[str]]:
    """Each node's `pnyx serve` flags of peer TLS, from certificates in `certs_dir`; the CA
    and any node's certificate that is missing are made there first."""
    from pnyx.certs import CA_CERT, CertError, init_ca, issue_member

    try:
        if not (certs_dir / CA_CERT).exists():
            init_ca(certs_dir)
        for i in ids:
            if not (certs_dir / f"node-{i}.pem").exists():
                issue_member(certs_dir, i, ["127.0.0.1", "localhost"])
    except (CertError, OSError) as exc:
        raise StartError(f"cannot make certificates in {certs_dir}: {exc}") from None
    return {i: ["--peer-cert-file", str(certs_dir / f"node-{i}.pem"),
                "--peer-key-file", str(certs_dir / f"node-{i}-key.pem"),
                "--peer-trusted-ca-file", str(certs_dir / CA_CERT)] for i in ids}


def cluster(nodes: int, data_dir: Path, peer_port: int, http_port: int,
            fsync: bool = True, ready_timeout: float = 20.0,
            client_port: int | None = None, tls: bool = True) -> int:
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
    check_data_dir(data_dir)
    peer_tls = peer_certificates(data_dir / "certs", ids) if tls else {}
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
    tls_flags = dict(peer_tls)

    def launch(i: int, where: list[str], http: Address, binary: Address | None) -> None:
        cmd = [sys.executable, "-m", "pnyx.cli", "serve", "--id", str(i), *where,
               "--http", str(http), "--data-dir", str(data_dir / f"node-{i}")]
        if not fsync:
            cmd.append("--unsafe-no-fsync")
        if binary is not None:
            cmd += ["--client", str(binary)]
        if tls and i not in tls_flags:
            tls_flags.update(peer_certificates(data_dir / "certs", range(i, i + 1)))
        cmd += tls_flags.get(i, [])
        with open(logs / f"node-{i}.log", "ab") as out:
            procs[i] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    try:
        for i in ids:
            launch(i, ["--cluster", spec], https[i], fast.get(i))
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
        nxt = nodes + 1
        add_peer, add_http = (Address("127.0.0.1", peer_port + nxt - 1),
                              Address("127.0.0.1", http_port + nxt - 1))
        print(f"pnyx cluster: {nodes} nodes running, data in {data_dir}/")
        print(f"peers talk mutual TLS (certificates in {data_dir / 'certs'}/); clients "
              "plaintext on loopback\n" if tls else
              "peers talk plaintext (--no-tls); clients plaintext on loopback\n")
        for i in ids:
            binary = f"   binary {fast[i]}" if fast else ""
            print(f"  node {i}   peers {peers[i]}   HTTP http://{https[i]}{binary}   "
                  f"log {logs / f'node-{i}.log'}")
        first = https[1]
        print(f"\nWatch it live (any member shows them all): http://{first}/ui")
        # Show the command as the user can type it (./dev.sh runs .venv/bin/pnyx).
        pnyx = sys.argv[0] if Path(sys.argv[0]).name == "pnyx" else "pnyx"
        certs = data_dir / "certs"
        own_tls = (f" \\\n      --peer-cert-file {certs}/node-{nxt}.pem --peer-key-file "
                   f"{certs}/node-{nxt}-key.pem --peer-trusted-ca-file {certs}/ca.pem\n"
                   f"  (its certificate first: {pnyx} certs issue {certs} --node-id {nxt})"
                   if tls else "")
        print(f"""
Talk to it (any node accepts any request):
  {pnyx} put greeting hello --endpoints {endpoints}
  {pnyx} get greeting --endpoints {endpoints}
  {pnyx} status --endpoints {endpoints}
  curl -X PUT --data-binary hello http://{first}/v1/kv/greeting
  curl http://{https[nodes]}/v1/kv/greeting
  curl http://{first}/v1/status

Change the members (this command starts a node added at 127.0.0.1, a removed one stops):
  export PNYX_ENDPOINTS={endpoints}
  {pnyx} member list
  {pnyx} member add {nxt} {add_peer} --http {add_http}
  {pnyx} member remove {nxt}
or start a new node yourself, and it asks the cluster to add it:
  {pnyx} serve --id {nxt} --join {endpoints} --listen {add_peer} --http {add_http} \\
      --data-dir {data_dir / f"node-{nxt}"}{own_tls}

Press Ctrl-C to stop every node.""", flush=True)
        reported: set[int] = set()
        lost: set[int] = set()  # members whose data directory is gone (see below)
        watched = time.monotonic()
        while not interrupted:
            for i, p in list(procs.items()):
                if p.poll() is not None and i not in reported:
                    reported.add(i)
                    if p.returncode == 0 and REMOVED_LINE in _tail(logs / f"node-{i}.log"):
                        print(f"pnyx cluster: node {i} was removed from the cluster and "
                              "stopped", flush=True)
                    else:
                        print(f"pnyx cluster: node {i} exited with status {p.returncode}; "
                              f"see {logs / f'node-{i}.log'}", file=sys.stderr, flush=True)
            if len(reported) == len(procs):
                return 1
            if time.monotonic() - watched >= WATCH_INTERVAL:
                watched = time.monotonic()
                live = [i for i, p in procs.items() if p.poll() is None]
                for i, peer, http, incarnation in _new_members(
                        [https[i] for i in live if i in https], procs):
                    node_dir = data_dir / f"node-{i}"
                    if (logs / f"node-{i}.log").exists() and not any(
                            (node_dir / name).exists() for name in ("pnyx.db", "join.json")):
                        # It ran here, and its data is gone: started again under the
                        # incarnation it was added with, it would vote having forgotten
                        # its votes. Never: it is replaced under a new id.
                        if i not in lost:
                            lost.add(i)
                            print(f"pnyx cluster: node {i} is a member and ran here before, "
                                  f"but {node_dir} is gone: it must not vote again under "
                                  f"its id, so it is not started; replace it: pnyx member "
                                  f"replace {i} NEW_ID 127.0.0.1:PORT", file=sys.stderr,
                                  flush=True)
                        continue
                    https[i] = http
                    join = ",".join(str(https[j]) for j in live if j in https)
                    print(f"pnyx cluster: node {i} was added at {peer}: starting it "
                          f"(HTTP http://{http}, log {logs / f'node-{i}.log'})", flush=True)
                    launch(i, ["--join", join, "--listen", str(peer), "--incarnation",
                               str(incarnation)], http, None)
            time.sleep(0.2)
        print("\npnyx cluster: stopping all nodes", flush=True)
        return 0
    finally:
        stop_all()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
