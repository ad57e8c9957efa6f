"""`pnyx bench`: pnyx side by side with PySyncObj and with itself unreplicated.

This module lives in a source checkout's bench/, not in the installed package:
`pnyx bench` (`pnyx.cli.bench`) imports it from there, and
`python bench/pnyxbench.py ...` runs it directly.

    pnyx bench --systems pnyx3,pnyx3-nofsync,pnyx1-direct,pysyncobj3 \\
        --clients 32 --value-size 100 --duration 10 --rounds 2 --json out.json

The benchmark starts every system itself on 127.0.0.1, in a scratch data
directory, and drives each with the same closed-loop load generator speaking
pnyx's binary client protocol (`pnyx.wire`): every client keeps exactly
one request in flight, under its own client id with increasing `seq`, and
sends the next the moment the answer arrives. After a warm-up it counts
completions and records each latency; it reports throughput and p50, p90,
p99 and max as a table and as JSON, with a ratio table and the issue's
targets, and optionally a PNG plot.

**Systems** (`--systems`, comma-separated):

- `pnyxN` — N `pnyx serve` nodes, fsync on (the default, crash-safe);
- `pnyxN-nofsync` — the same with `--unsafe-no-fsync` (for comparison only);
- `pnyx1-direct` — one `pnyx serve --no-consensus`: the same server with
  Paxos and the disk bypassed (`pnyx.node.direct.DirectNode`), the cost floor;
- `pysyncobjN` — N PySyncObj nodes replicating a dict, behind the same wire
  protocol (`bench/pysyncobj_server.py`; `pip install 'pnyx[bench]'`), with
  PySyncObj's defaults; `pysyncobjN-nobatch` sets `appendEntriesUseBatch=False`,
  PySyncObj's own setting for latency. (With the defaults, entries leave the
  leader once per 100 ms append period, so a closed loop of C clients gets
  about 10·C commits/s; without batching each command goes out at once.)
- `etcdN` — N etcd servers, driven through their JSON gateway, if `etcd` is
  installed (Debian `etcd-server`);
- `trivial` — `bench/trivial_server.py`, which answers every request at once:
  the load generator's own ceiling. It is measured in every run anyway.
- `wire@HOST:PORT` — a server already running; the benchmark neither starts
  nor stops it.

**Fairness.** Rounds (`--rounds`) alternate the systems round-robin, so slow
drift of a shared machine (other tenants, thermal limits, page cache) falls
on all of them alike; each system is started fresh in each round. The load
generator runs in its own process(es) (`--procs`), never in the benchmark's
own, and is measured against the trivial server at the same load, so a
reader can see how close each system came to what the generator can drive.
The servers and the generator share the machine's cores: on a 2-core
machine every number is a lower bound for a machine with cores to spare.

**Curves.** Give one of `--clients`, `--value-size`, `--read-ratio` or
`--nodes` as a list (`--clients 1,4,16,64,256`) for a scaling curve; `--plot`
draws throughput and p99 against it.

**Cleanup.** Every process the benchmark starts is in its own process group
and is stopped on the way out — after success, on an error, on Ctrl-C and on
SIGTERM — and on Linux also if the benchmark itself is killed. Every error
(an unknown system, a port in use, a node that does not answer) is one line
on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final, cast

from pnyx import wire
from pnyx.statemachine import kv
from pnyx.testing import free_ports

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

BENCH_DIR_ENV: Final = "PNYX_BENCH_DIR"
# The command that runs one pnyx node; override it to benchmark another build
# (it gets `serve --id ... --cluster ... --data-dir ... --client ...` appended).
SERVE_ENV: Final = "PNYX_BENCH_SERVE"
KNOWN_SYSTEMS: Final = ("pnyxN", "pnyxN-nofsync", "pnyx1-direct", "pysyncobjN",
                        "pysyncobjN-nobatch", "etcdN", "trivial", "wire@HOST:PORT")
DEFAULT_SYSTEMS: Final = "pnyx3,pnyx3-nofsync,pnyx1-direct,pysyncobj3"
# Clients share connections (each still has one request in flight): fewer, busier
# connections batch more per syscall on both sides. Measured on 2 cores against
# the trivial server, 32 clients: 1 connection 246 k/s, 4: 177 k/s, 32: 78 k/s.
DEFAULT_CONNECTIONS: Final = 4
CONNECT_GRACE: Final = 0.5  # seconds the generator gets to connect before the clock starts


class BenchError(Exception):
    """The benchmark cannot go on; the message is one line for the user."""


class _Usage(Exception):
    """A bad flag: one line on stderr, exit status 2."""


# ------------------------------------------------------------------ systems


@dataclass(frozen=True)
class System:
    """One thing to measure, parsed from its `--systems` name."""

    name: str
    kind: str  # pnyx, pnyx-nofsync, pnyx-direct, pysyncobj, etcd, trivial, wire
    nodes: int = 1
    address: tuple[str, int] | None = None  # wire@ only

    @property
    def replicated(self) -> bool:
        return self.kind in ("pnyx", "pnyx-nofsync", "pysyncobj", "pysyncobj-nobatch", "etcd")

    def with_nodes(self, nodes: int) -> System:
        base, _, variant = self.kind.partition("-")
        suffix = f"-{variant}" if variant else ""
        return replace(self, name=f"{base}{nodes}{suffix}", nodes=nodes)


_SYSTEM = re.compile(r"(pnyx|pysyncobj|etcd)(\d+)(-nofsync|-direct|-nobatch)?")


def parse_system(text: str) -> System:
    """A system from its name; raises `_Usage` naming the known ones."""
    name = text.strip()
    if name == "trivial":
        return System(name, "trivial")
    if name.startswith("wire@"):
        host, sep, port = name[5:].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _Usage(f"{name!r} is not wire@HOST:PORT")
        return System(name, "wire", address=(host, int(port)))
    m = _SYSTEM.fullmatch(name)
    if m is None:
        raise _Usage(f"unknown system {name!r} (known: {', '.join(KNOWN_SYSTEMS)})")
    base, nodes, variant = m.group(1), int(m.group(2)), m.group(3)
    if not 1 <= nodes <= 15:
        raise _Usage(f"{name}: between 1 and 15 nodes, not {nodes}")
    if variant == "-direct":
        if base != "pnyx" or nodes != 1:
            raise _Usage(f"unknown system {name!r}: the unreplicated server is pnyx1-direct")
        return System(name, "pnyx-direct")
    if variant == "-nofsync":
        if base != "pnyx":
            raise _Usage(f"unknown system {name!r}: only pnyx has an -nofsync variant")
        return System(name, "pnyx-nofsync", nodes)
    if variant == "-nobatch":
        if base != "pysyncobj":
            raise _Usage(f"unknown system {name!r}: only pysyncobj has a -nobatch variant")
        return System(name, "pysyncobj-nobatch", nodes)
    return System(name, base, nodes)


# ------------------------------------------------------------------ config


@dataclass(frozen=True)
class Point:
    """One load to measure a system at."""

    clients: int
    value_size: int
    read_ratio: float
    probe: bool = False  # the extra 1-client run for the latency target


@dataclass
class Config:
    systems: list[System]
    clients: list[int]
    value_sizes: list[int]
    read_ratios: list[float]
    nodes: list[int] | None
    duration: float
    warmup: float
    rounds: int
    procs: int
    connections: int | None
    keys: int
    read_mode: str
    target: str
    ceiling: bool
    probe: bool
    json_path: str | None
    plot_path: str | None
    port_base: int | None
    data_dir: Path | None
    start_timeout: float
    keep: bool
    seed: int

    @property
    def curve(self) -> str | None:
        """The dimension given as a list, if any."""
        for name, values in (("clients", self.clients), ("value_size", self.value_sizes),
                             ("read_ratio", self.read_ratios), ("nodes", self.nodes or [])):
            if len(values) > 1:
                return name
        return None

    def points(self) -> list[Point]:
        return [Point(c, v, r) for c in self.clients for v in self.value_sizes
                for r in self.read_ratios]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    # Parsed as text and checked in `run`, so a bad value is one line whichever
    # parser class the caller uses (as in `pnyx.cli.kv`).
    a = p.add_argument
    a("--systems", default=DEFAULT_SYSTEMS,
      help=f"comma-separated, of {', '.join(KNOWN_SYSTEMS)} (default {DEFAULT_SYSTEMS})")
    a("--clients", default="32", help="closed-loop clients, or a list (default 32)")
    a("--value-size", default="100", metavar="BYTES",
      help="value size (10, 1KiB, 64KiB), or a list (default 100)")
    a("--read-ratio", default="0", metavar="R",
      help="fraction of requests that are reads, 0..1, or a list (default 0)")
    a("--read-mode", default="linearizable", help="linearizable (default), quorum or stale")
    a("--nodes", metavar="N,...", help="cluster sizes for the replicated systems (a curve)")
    a("--duration", default="10", metavar="SECONDS", help="measured time per run (default 10)")
    a("--warmup", default="2", metavar="SECONDS", help="unmeasured time first (default 2)")
    a("--rounds", default="2", help="times each system runs, alternating (default 2)")
    a("--procs", default="1",
      help="load generator processes (default 1: on 2 cores a second one competes with "
      "the servers for CPU; see the ceiling)")
    a("--connections", metavar="N",
      help="connections per generator process, shared by its clients (default 4)")
    a("--keys", default="1000", help="distinct keys the clients write and read (default 1000)")
    a("--target", default="leader",
      help="where clients connect: leader (default) or all (spread over every node)")
    a("--no-ceiling", action="store_true",
      help="skip the trivial server (the load generator's ceiling)")
    a("--no-probe", action="store_true",
      help="skip the 1-client latency probe of pnyx and the fsync/round-trip measurements")
    a("--json", dest="json_path", metavar="FILE", help="write the results as JSON (- for stdout)")
    a("--plot", dest="plot_path", metavar="FILE.png",
      help="plot throughput and p99 (needs matplotlib)")
    a("--port-base", metavar="PORT",
      help="use ports from PORT up (default: free ports the system picks)")
    a("--data-dir", metavar="DIR", help="scratch directory for the nodes (default: a temp dir)")
    a("--start-timeout", default="20", metavar="SECONDS",
      help="how long a system may take to answer and elect a leader (default 20)")
    a("--keep", action="store_true", help="keep the scratch directory (logs, data)")
    a("--seed", default="1", help="seed of the clients' key choices (default 1)")


def _ints(text: str, flag: str, lo: int, hi: int) -> list[int]:
    out = []
    for part in text.split(","):
        try:
            v = int(part)
        except ValueError:
            raise _Usage(f"{flag}: {part!r} is not an integer") from None
        if not lo <= v <= hi:
            raise _Usage(f"{flag}: {v} is outside {lo}..{hi}")
        out.append(v)
    return out


_SIZE = re.compile(r"(\d+)\s*(b|k|kb|kib|m|mb|mib)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from `10`, `100B`, `1KiB`, `64k`, `1MiB` (binary multiples)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(text)
    unit = (m.group(2) or "b").lower()
    return int(m.group(1)) * {"b": 1, "k": 1024, "kb": 1024, "kib": 1024,
                              "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}[unit]


def _number(text: str, flag: str, lo: float, hi: float) -> float:
    try:
        v = float(text)
    except ValueError:
        raise _Usage(f"{flag}: {text!r} is not a number") from None
    if not (lo <= v <= hi) or math.isnan(v):
        raise _Usage(f"{flag}: {text} is outside {lo:g}..{hi:g}")
    return v


def config_from(args: argparse.Namespace) -> Config:
    """Every flag checked, or `_Usage` with one line saying which and why."""
    systems: list[System] = []
    for name in str(args.systems).split(","):
        if not name.strip():
            raise _Usage("--systems: an empty name")
        s = parse_system(name)
        if s.name in (x.name for x in systems):
            raise _Usage(f"--systems: {s.name} is named twice")
        systems.append(s)
    clients = _ints(args.clients, "--clients", 1, 4096)
    sizes = []
    for part in str(args.value_size).split(","):
        try:
            size = parse_size(part)
        except ValueError:
            raise _Usage(f"--value-size: {part!r} is not a size like 100, 1KiB or 64KiB") from None
        # Leave room in the 1 MiB command limit for the key and the envelope.
        if not 0 <= size <= (1 << 20) - 4096:
            raise _Usage(f"--value-size: {size} bytes is outside 0..{(1 << 20) - 4096}")
        sizes.append(size)
    ratios = [_number(r, "--read-ratio", 0.0, 1.0) for r in str(args.read_ratio).split(",")]
    nodes = _ints(args.nodes, "--nodes", 1, 15) if args.nodes else None
    if args.read_mode not in ("linearizable", "quorum", "stale"):
        raise _Usage(f"--read-mode: {args.read_mode!r} is not linearizable, quorum or stale")
    if args.target not in ("leader", "all"):
        raise _Usage(f"--target: {args.target!r} is not leader or all")
    lists = [flag for flag, values in (("--clients", clients), ("--value-size", sizes),
                                       ("--read-ratio", ratios), ("--nodes", nodes or []))
             if len(values) > 1]
    if len(lists) > 1:
        raise _Usage(f"one curve at a time: {' and '.join(lists)} are both lists")
    if nodes is not None and not any(s.replicated for s in systems):
        raise _Usage("--nodes: none of --systems is replicated (pnyxN, pysyncobjN, etcdN)")
    if nodes is not None:
        expanded: list[System] = []
        for s in systems:
            for n in (nodes if s.replicated else [s.nodes]):
                t = s.with_nodes(n) if s.replicated else s
                if t.name not in (x.name for x in expanded):
                    expanded.append(t)
        systems = expanded
    port_base = None
    if args.port_base is not None:
        port_base = _ints(args.port_base, "--port-base", 1024, 65000)[0]
    plot = args.plot_path
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise _Usage("--plot needs matplotlib: pip install 'pnyx[bench]'")
    connections = None
    if args.connections is not None:
        connections = _ints(args.connections, "--connections", 1, 4096)[0]
    cfg = Config(
        systems=systems, clients=clients, value_sizes=sizes, read_ratios=ratios, nodes=nodes,
        duration=_number(args.duration, "--duration", 0.1, 24 * 3600),
        warmup=_number(args.warmup, "--warmup", 0.0, 3600),
        rounds=_ints(args.rounds, "--rounds", 1, 100)[0],
        procs=_ints(args.procs, "--procs", 1, 64)[0],
        connections=connections,
        keys=_ints(args.keys, "--keys", 1, 10_000_000)[0],
        read_mode=args.read_mode, target=args.target,
        ceiling=not args.no_ceiling, probe=not args.no_probe,
        json_path=args.json_path, plot_path=plot, port_base=port_base,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        start_timeout=_number(args.start_timeout, "--start-timeout", 1.0, 600.0),
        keep=bool(args.keep), seed=_ints(args.seed, "--seed", 0, 2**31)[0],
    )
    for s in systems:
        _check_available(s)
    return cfg


def bench_dir() -> Path:
    """Where the bench/ scripts are: $PNYX_BENCH_DIR, else this module's own directory."""
    env = os.environ.get(BENCH_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent


def _script(name: str, system: str) -> Path:
    path = bench_dir() / name
    if not path.is_file():
        raise _Usage(f"{system} needs bench/{name} from a pnyx source checkout "
                     f"(set {BENCH_DIR_ENV} to its bench/ directory)")
    return path


def _check_available(s: System) -> None:
    """Refuse, before anything starts, a system this machine cannot run."""
    if s.kind.startswith("pysyncobj"):
        if importlib.util.find_spec("pysyncobj") is None:
            raise _Usage(f"{s.name} needs PySyncObj: pip install 'pnyx[bench]'")
        _script("pysyncobj_server.py", s.name)
    elif s.kind == "trivial":
        _script("trivial_server.py", s.name)
    elif s.kind == "etcd" and shutil.which("etcd") is None:
        raise _Usage(f"{s.name} needs etcd on PATH (Debian: apt-get install etcd-server)")


# ------------------------------------------------------------------ processes


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


def call(address: tuple[str, int], request: wire.ClientRequest,
         timeout: float = 1.0) -> wire.ClientResponse:
    """One request over a fresh connection, blocking; raises OSError if nobody answers."""
    with socket.create_connection(address, timeout=timeout) as s:
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
        return cmd

    return _start_members(s, root, ports, procs, command)


def _start_pysyncobj(s: System, root: Path, ports: Ports, procs: Processes) -> Running:
    script = str(_script("pysyncobj_server.py", s.name))

    def command(i: int, spec: str, client: int) -> list[str]:
        cmd = [sys.executable, script, "--id", str(i), "--cluster", spec,
               "--client", f"127.0.0.1:{client}"]
        if s.kind == "pysyncobj-nobatch":
            cmd.append("--no-batch")
        return cmd

    return _start_members(s, root, ports, procs, command)


def _start_trivial(s: System, root: Path, ports: Ports, procs: Processes) -> Running:
    (port,) = ports.take(1)
    cmd = [sys.executable, str(_script("trivial_server.py", s.name)),
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


# ------------------------------------------------------------------ load generator


@dataclass
class WorkerJob:
    """What one load generator process does; plain data, so it crosses a fork or a pickle."""

    slot: int
    protocol: str
    targets: list[tuple[str, int]]
    clients: list[int]  # global client numbers
    connections: int
    value_size: int
    read_ratio: float
    read_mode: str
    keys: int
    token: str
    seed: int
    start_at: float  # time.perf_counter() values: CLOCK_MONOTONIC, the same in every process
    measure_from: float
    end_at: float
    drain: float  # seconds after end_at to wait for answers still in flight


@dataclass
class WorkerResult:
    ops: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: bytes = b""  # array("d") of seconds
    fatal: str = ""
    cpu: float = 0.0  # CPU seconds this process used in the measured window
    unanswered: int = 0


class _Client:
    __slots__ = ("cid", "conn", "key_rng", "number", "sent_at", "seq")

    def __init__(self, number: int, cid: str, conn: _Conn, seed: int) -> None:
        self.number = number
        self.cid = cid
        self.conn = conn
        self.seq = 0
        self.sent_at = 0.0
        self.key_rng = random.Random(seed * 1_000_003 + number)


class _Conn(asyncio.Protocol):
    """One connection of the generator: pipelined frames out, answers matched by id."""

    def __init__(self, gen: _LoadGen, address: tuple[str, int]) -> None:
        self.gen = gen
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.frames = wire.FrameDecoder(wire.MAX_FRAME)
        self.pending: dict[int, _Client] = {}
        self.out: list[bytes] = []
        self.next_id = 0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)
        if self.pending and not self.gen.stopping:
            self.gen.fatal = (f"the connection to {self.address[0]}:{self.address[1]} closed "
                              f"with {len(self.pending)} requests unanswered")

    def send(self, client: _Client, op: str, payload: bytes, mode: str = "linearizable") -> None:
        self.next_id += 1
        self.pending[self.next_id] = client
        self.out.append(wire.frame(wire.ClientRequest(self.next_id, op, payload, mode)))  # type: ignore[arg-type]

    def flush(self) -> None:
        if self.out and self.transport is not None:
            # One write per batch of answers: the generator's syscalls, like the
            # server's, are amortised over whatever arrived together.
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        decode = wire.response_decoder.decode
        on_answer = self.gen.on_answer
        pending = self.pending
        self.frames.feed(data)
        try:
            for payload in self.frames.frames():
                response = decode(payload)
                client = pending.pop(response.id, None)
                if client is not None:
                    on_answer(client, response.ok, response.error, response.result, now)
        except wire.FrameTooLarge as exc:
            self.gen.fatal = f"{self.address[0]}:{self.address[1]} sent {exc}"
            if self.transport is not None:
                self.transport.close()
            return
        self.flush()


class _LoadGen:
    """The closed loop of one generator process: clients, their connections, their numbers."""

    def __init__(self, job: WorkerJob, progress: Any) -> None:
        self.job = job
        self.progress = progress
        self.value = os.urandom(job.value_size // 2 + 1).hex()[:job.value_size].encode()
        self.latencies = array("d")
        self.ops = 0
        self.errors = 0
        self.first_error = ""
        self.fatal = ""
        self.stopping = False
        self.conns: list[_Conn] = []
        self.clients: list[_Client] = []
        self.in_window = 0  # answers counted since the last progress update
        self.idle = asyncio.get_running_loop().create_future()
        self.in_flight = 0

    def key(self, client: _Client) -> str:
        return f"k{client.key_rng.randrange(self.job.keys)}"

    def issue(self, client: _Client) -> None:
        job = self.job
        self.in_flight += 1
        if job.read_ratio and client.key_rng.random() < job.read_ratio:
            payload = kv.encode_query(self.key(client))
            client.sent_at = time.perf_counter()
            client.conn.send(client, "read", payload, job.read_mode)
            return
        client.seq += 1
        payload = kv.encode_request(kv.Request(client.cid, client.seq,
                                               kv.Put(self.key(client), self.value)))
        client.sent_at = time.perf_counter()
        client.conn.send(client, "submit", payload)

    def on_answer(self, client: _Client, ok: bool, error: str, result: bytes,
                  now: float) -> None:
        self.in_flight -= 1
        job = self.job
        # A KV-level refusal (stale seq, too large...) is an error too. Results are
        # msgpack arrays tagged by their first element; looking for the tag avoids
        # decoding every result in the generator's hot path.
        failed = not ok or result[1:7] == b"\xa5error"
        if client.sent_at >= job.measure_from and now <= job.end_at:
            if failed:
                self.errors += 1
                if not self.first_error:
                    self.first_error = error or _describe(result)
            else:
                self.ops += 1
                self.in_window += 1
                self.latencies.append(now - client.sent_at)
        if now < job.end_at:
            self.issue(client)
        elif self.in_flight == 0 and not self.idle.done():
            self.idle.set_result(None)

    def report_progress(self) -> None:
        if self.progress is not None:
            self.progress[self.job.slot] += self.in_window
        self.in_window = 0
        if not self.stopping:
            asyncio.get_running_loop().call_later(0.1, self.report_progress)

    async def run(self) -> WorkerResult:
        job = self.job
        loop = asyncio.get_running_loop()
        for k in range(job.connections):
            address = job.targets[k % len(job.targets)]
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda a=address: _Conn(self, a), *address),
                    max(0.1, job.start_at - time.perf_counter()) + 1.0)
            except (OSError, TimeoutError) as exc:
                return WorkerResult(fatal=f"cannot connect to {address[0]}:{address[1]} "
                                    f"({getattr(exc, 'strerror', None) or exc})")
            self.conns.append(conn)
        for n, number in enumerate(job.clients):
            self.clients.append(_Client(number, f"{job.token}-c{number}",
                                        self.conns[n % len(self.conns)], job.seed))
        await asyncio.sleep(max(0.0, job.start_at - time.perf_counter()))
        self.report_progress()
        cpu_start: float | None = None
        for client in self.clients:
            self.issue(client)
        for conn in self.conns:
            conn.flush()
        await asyncio.sleep(max(0.0, job.measure_from - time.perf_counter()))
        cpu_start = time.process_time()
        while time.perf_counter() < job.end_at and not self.fatal:
            await asyncio.sleep(min(0.1, max(0.0, job.end_at - time.perf_counter())))
        cpu = time.process_time() - cpu_start
        if not self.fatal and self.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.idle), job.drain)
        self.stopping = True
        unanswered = self.in_flight
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()
        if self.progress is not None:
            self.progress[job.slot] += self.in_window
        return WorkerResult(self.ops, self.errors, self.first_error,
                            self.latencies.tobytes(), self.fatal, cpu, unanswered)


async def _etcd_load(job: WorkerJob, progress: Any) -> WorkerResult:
    """The same closed loop against etcd's JSON gateway (HTTP/1.1, one request per client).

    etcd does not speak pnyx's protocol, so its numbers include HTTP and JSON
    on both sides; compare it with that in mind.
    """
    import base64

    import aiohttp

    value = base64.b64encode(os.urandom(job.value_size // 2 + 1).hex()[:job.value_size]
                             .encode()).decode()
    latencies = array("d")
    counts = {"ops": 0, "errors": 0, "window": 0}
    first_error = ""
    connector = aiohttp.TCPConnector(limit=max(job.connections, len(job.clients)))

    async def client(number: int, session: aiohttp.ClientSession) -> None:
        nonlocal first_error
        rng = random.Random(job.seed * 1_000_003 + number)
        base = "http://{}:{}".format(*job.targets[number % len(job.targets)])
        while (started := time.perf_counter()) < job.end_at:
            key = base64.b64encode(f"k{rng.randrange(job.keys)}".encode()).decode()
            if job.read_ratio and rng.random() < job.read_ratio:
                url, body = f"{base}/v3/kv/range", {"key": key}
                if job.read_mode == "stale":
                    body["serializable"] = True  # type: ignore[assignment]
            else:
                url, body = f"{base}/v3/kv/put", {"key": key, "value": value}
            try:
                async with session.post(url, json=body) as r:
                    await r.read()
                    ok = r.status == 200
                    error = f"HTTP {r.status}"
            except aiohttp.ClientError as exc:
                ok, error = False, str(exc)
            now = time.perf_counter()
            if started >= job.measure_from and now <= job.end_at:
                if ok:
                    counts["ops"] += 1
                    counts["window"] += 1
                    latencies.append(now - started)
                else:
                    counts["errors"] += 1
                    first_error = first_error or error

    async def report() -> None:
        while True:
            await asyncio.sleep(0.1)
            if progress is not None:
                progress[job.slot] += counts["window"]
            counts["window"] = 0

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.sleep(max(0.0, job.start_at - time.perf_counter()))
        reporter = asyncio.ensure_future(report())
        cpu_start = time.process_time()
        await asyncio.gather(*(client(n, session) for n in job.clients))
        cpu = time.process_time() - cpu_start
        reporter.cancel()
    return WorkerResult(counts["ops"], counts["errors"], first_error, latencies.tobytes(),
                        "", cpu, 0)


def _describe(result: bytes) -> str:
    try:
        decoded = kv.decode_result(result)
    except kv.MalformedResult:
        return f"unexpected result {result[:40]!r}"
    return getattr(decoded, "message", type(decoded).__name__)


def _worker_main(job: WorkerJob, progress: Any, pipe: Any) -> None:  # pragma: no cover
    # Ctrl-C goes to the whole terminal group; the benchmark stops its workers
    # itself, so they must not die with a traceback first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(ImportError):
        import uvloop  # type: ignore[import-not-found]

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def go() -> WorkerResult:
        if job.protocol == "etcd":
            return await _etcd_load(job, progress)
        return await _LoadGen(job, progress).run()

    try:
        result = asyncio.run(go())
    except Exception as exc:
        result = WorkerResult(fatal=f"load generator failed: {type(exc).__name__}: {exc}")
    pipe.send(result)
    pipe.close()


# ------------------------------------------------------------------ measuring


@dataclass
class Measurement:
    """One system at one point in one round."""

    system: str
    kind: str
    nodes: int
    round: int
    clients: int
    value_size: int
    read_ratio: float
    probe: bool
    seconds: float
    ops: int
    errors: int
    first_error: str
    unanswered: int
    loadgen_cpu: float  # share of one core, summed over the generator's processes
    server_cpu: dict[str, float]  # node id -> share of one core in the measured window
    leader: int
    latencies: array = field(default_factory=lambda: array("d"), repr=False)  # type: ignore[type-arg]

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB (Linux), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def measure_fsync(directory: Path, count: int = 100) -> list[float]:
    """Seconds per 4 KiB append + fdatasync in `directory`: the disk the nodes write to."""
    path = directory / "fsync-probe"
    block = os.urandom(4096)
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return samples


def prefill(running: Running, keys: int, value_size: int, token: str) -> None:
    """Write every key once, so reads find values; pipelined, blocking, from this process."""
    if running.protocol != "wire":
        return
    value = b"v" * value_size
    address = running.targets("leader")[0]
    with socket.create_connection(address, timeout=30) as s:
        for start in range(0, keys, 256):
            batch = range(start, min(keys, start + 256))
            s.sendall(b"".join(
                wire.frame(wire.ClientRequest(k + 1, "submit", kv.encode_request(
                    kv.IdempotentRequest(f"{token}-fill-{k}", kv.Put(f"k{k}", value)))))
                for k in batch))
            for _ in batch:
                response = wire.response_decoder.decode(wire.read_frame(s, wire.MAX_FRAME))
                if not response.ok:
                    raise BenchError(f"{running.system.name}: prefill failed: {response.error}")


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per run otherwise."""

    def __init__(self, total_seconds: float, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = max(total_seconds, 1e-9)
        self.done = 0.0
        self.started = time.monotonic()
        self.drawn = False

    def show(self, label: str, fraction: float, rate: float, phase: str) -> None:
        if not self.tty:
            return
        overall = min(1.0, (self.done + fraction) / self.total)
        width = 24
        filled = int(width * overall)
        elapsed = time.monotonic() - self.started
        eta = elapsed / overall - elapsed if overall > 0.01 else 0.0
        line = (f"  [{'#' * filled}{'.' * (width - filled)}] {overall:4.0%}  {label}  "
                f"{phase} {rate:>9,.0f} ops/s  ETA {_duration(eta)} ")
        self.stream.write("\r" + line[:shutil.get_terminal_size().columns - 1])
        self.stream.flush()
        self.drawn = True

    def note(self, line: str, tty_only: bool = False) -> None:
        if tty_only and not self.tty:
            return
        if self.drawn:
            self.stream.write("\r\033[K")
            self.drawn = False
        self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def measure(running: Running, point: Point, cfg: Config, procs: Processes, rnd: int,
            progress: Progress, label: str, duration: float, warmup: float,
            token: str) -> Measurement:
    """Drive `running` at `point` with the generator processes; one `Measurement`."""
    s = running.system
    nprocs = min(cfg.procs, point.clients)
    shares = [list(range(k, point.clients, nprocs)) for k in range(nprocs)]
    targets = running.targets(cfg.target)
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    counter = ctx.Array("q", nprocs, lock=False)
    start_at = time.perf_counter() + CONNECT_GRACE
    measure_from = start_at + warmup
    end_at = measure_from + duration
    drain = 5.0
    pipes = []
    for slot, share in enumerate(shares):
        connections = cfg.connections or min(len(share), DEFAULT_CONNECTIONS)
        job = WorkerJob(
            slot=slot, protocol=running.protocol, targets=targets, clients=share,
            connections=max(1, min(connections, len(share))), value_size=point.value_size,
            read_ratio=point.read_ratio, read_mode=cfg.read_mode, keys=cfg.keys,
            token=f"{token}-{slot}", seed=cfg.seed, start_at=start_at,
            measure_from=measure_from, end_at=end_at, drain=drain)
        reader, writer = ctx.Pipe(duplex=False)
        worker = ctx.Process(target=_worker_main, args=(job, counter, writer), daemon=True)
        procs.workers.append(worker)
        worker.start()
        procs.started.append(worker.pid)
        writer.close()
        pipes.append(reader)
    results: dict[int, WorkerResult] = {}
    cpu_from: dict[int, int | None] = {}
    cpu_to: dict[int, int | None] = {}
    last_count, last_time, rate = 0, time.perf_counter(), 0.0
    deadline = end_at + drain + 10.0
    while len(results) < len(pipes):
        ready = multiprocessing.connection.wait(
            [p for k, p in enumerate(pipes) if k not in results], timeout=0.2)
        for p in ready:
            k = pipes.index(p)  # type: ignore[arg-type]
            try:
                results[k] = p.recv()  # type: ignore[union-attr]
            except EOFError:
                results[k] = WorkerResult(fatal="a load generator process died")
            if results[k].fatal:
                raise BenchError(f"{s.name}: {results[k].fatal}{_node_deaths(running)}")
        now = time.perf_counter()
        if not cpu_from and now >= measure_from:
            cpu_from = {i: _cpu_ticks(p.pid) for i, p in running.procs.items()}
        if not cpu_to and now >= end_at:
            cpu_to = {i: _cpu_ticks(p.pid) for i, p in running.procs.items()}
        for i, proc in running.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"{s.name}: node {i} exited during the run: "
                                 f"{running.last_line(i)}")
        count = sum(counter)
        if now - last_time >= 0.5:
            rate = (count - last_count) / (now - last_time)
            last_count, last_time = count, now
        phase = "warm-up  " if now < measure_from else "measuring"
        fraction = min(1.0, max(0.0, now - start_at) / (warmup + duration))
        progress.show(label, fraction * (warmup + duration), rate, phase)
        if now > deadline:
            raise BenchError(f"{s.name}: the load generator did not finish")
    for worker in procs.workers:
        worker.join(2)
    procs.stop_workers()
    progress.done += warmup + duration
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    server_cpu = {}
    for i in running.procs:
        a, b = cpu_from.get(i), cpu_to.get(i)
        if a is not None and b is not None:
            server_cpu[str(i)] = round((b - a) / ticks / duration, 3)
    latencies = array("d")
    for r in results.values():
        chunk = array("d")
        chunk.frombytes(r.latencies)
        latencies.extend(chunk)
    first_error = next((r.first_error for r in results.values() if r.first_error), "")
    return Measurement(
        system=s.name, kind=s.kind, nodes=s.nodes, round=rnd, clients=point.clients,
        value_size=point.value_size, read_ratio=point.read_ratio, probe=point.probe,
        seconds=duration, ops=sum(r.ops for r in results.values()),
        errors=sum(r.errors for r in results.values()), first_error=first_error,
        unanswered=sum(r.unanswered for r in results.values()),
        loadgen_cpu=round(sum(r.cpu for r in results.values()) / duration, 3),
        server_cpu=server_cpu, leader=running.leader, latencies=latencies)


def _node_deaths(running: Running) -> str:
    dead = [i for i, p in running.procs.items() if p.poll() is not None]
    if not dead:
        return ""
    return f" (node {dead[0]} exited: {running.last_line(dead[0])})"


# ------------------------------------------------------------------ the run


@dataclass
class Summary:
    """A system at a point, over every round: pooled latencies, total ops over total time."""

    system: str
    kind: str
    nodes: int
    clients: int
    value_size: int
    read_ratio: float
    probe: bool
    rounds: int
    throughput: float
    round_throughputs: list[float]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: int
    first_error: str
    unanswered: int
    loadgen_cpu: float
    leader_cpu: float | None
    servers_cpu: float | None
    rss_mib: dict[str, float] = field(default_factory=dict)
    commands: int | None = None

    @property
    def spread(self) -> float:
        """(max − min) / mean of the per-round throughputs."""
        t = self.round_throughputs
        mean = sum(t) / len(t) if t else 0.0
        return (max(t) - min(t)) / mean if len(t) > 1 and mean > 0 else 0.0


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def summarize(measurements: list[Measurement],
              memory: dict[str, dict[str, float]],
              commands: dict[str, int]) -> list[Summary]:
    groups: dict[tuple[Any, ...], list[Measurement]] = {}
    for m in measurements:
        key = (m.system, m.clients, m.value_size, m.read_ratio, m.probe)
        groups.setdefault(key, []).append(m)
    out = []
    for ms in groups.values():
        first = ms[0]
        pooled = sorted(x for m in ms for x in m.latencies)
        seconds = sum(m.seconds for m in ms)
        leader_cpu = [m.server_cpu.get(str(m.leader)) for m in ms]
        all_cpu = [sum(m.server_cpu.values()) for m in ms if m.server_cpu]
        out.append(Summary(
            system=first.system, kind=first.kind, nodes=first.nodes, clients=first.clients,
            value_size=first.value_size, read_ratio=first.read_ratio, probe=first.probe,
            rounds=len(ms), throughput=sum(m.ops for m in ms) / seconds,
            round_throughputs=[round(m.throughput, 1) for m in ms],
            p50_ms=percentile(pooled, 50) * 1e3, p90_ms=percentile(pooled, 90) * 1e3,
            p99_ms=percentile(pooled, 99) * 1e3, max_ms=(pooled[-1] if pooled else 0) * 1e3,
            mean_ms=(sum(pooled) / len(pooled) * 1e3) if pooled else 0.0,
            errors=sum(m.errors for m in ms),
            first_error=next((m.first_error for m in ms if m.first_error), ""),
            unanswered=sum(m.unanswered for m in ms),
            loadgen_cpu=sum(m.loadgen_cpu for m in ms) / len(ms),
            leader_cpu=(sum(c for c in leader_cpu if c is not None) / len(leader_cpu)
                        if all(c is not None for c in leader_cpu) and leader_cpu else None),
            servers_cpu=sum(all_cpu) / len(all_cpu) if all_cpu else None,
            rss_mib=memory.get(first.system, {}), commands=commands.get(first.system),
        ))
    return out


def run_benchmark(cfg: Config, procs: Processes, progress_stream: Any = None) -> dict[str, Any]:
    """Run every round; the report as a JSON-able dict. Raises `BenchError`."""
    systems = list(cfg.systems)
    if cfg.ceiling and not any(s.kind == "trivial" for s in systems):
        systems.insert(0, System("trivial", "trivial"))
        _check_available(systems[0])
    points = cfg.points()
    probe_kinds = {"pnyx", "trivial"} if cfg.probe else set()
    probe_point = Point(1, cfg.value_sizes[0], 0.0, probe=True)
    probe_duration, probe_warmup = min(cfg.duration, 3.0), min(cfg.warmup, 0.5)
    needs_probe = cfg.probe and any(s.kind == "pnyx" for s in systems) and not (
        1 in cfg.clients and 0.0 in cfg.read_ratios)
    per_round = sum(len(points) * (cfg.warmup + cfg.duration)
                    + ((probe_warmup + probe_duration)
                       if needs_probe and s.kind in probe_kinds else 0)
                    for s in systems)
    progress = Progress(per_round * cfg.rounds, progress_stream)
    # Before the scratch directory exists, so that a refusal leaves nothing behind.
    _check_before_starting(cfg, systems)
    root = (Path(tempfile.mkdtemp(prefix="pnyx-bench-", dir=cfg.data_dir))
            if cfg.data_dir is None or cfg.data_dir.exists()
            else _mkdir(cfg.data_dir))
    ports = Ports(cfg.port_base)
    token = f"b{os.getpid()}-{random.getrandbits(32):08x}"
    measurements: list[Measurement] = []
    memory: dict[str, dict[str, float]] = {}
    commands: dict[str, int] = {}
    fsync: list[float] = []
    started = time.time()
    try:
        for rnd in range(cfg.rounds):
            if cfg.probe:
                fsync.extend(measure_fsync(root))
            # Rotate the order each round, so no system always runs first (cold) or last.
            order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
            for s in order:
                where = root / f"round{rnd + 1}-{s.name}"
                progress.note(f"  round {rnd + 1}/{cfg.rounds}: starting {s.name}", tty_only=True)
                running = start_system(s, where, ports, procs, cfg.start_timeout)
                try:
                    filled: set[int] = set()
                    runs = [(p, cfg.duration, cfg.warmup) for p in points]
                    if needs_probe and s.kind in probe_kinds:
                        runs.append((probe_point, probe_duration, probe_warmup))
                    for point, duration, warmup in runs:
                        if point.read_ratio > 0 and point.value_size not in filled:
                            prefill(running, cfg.keys, point.value_size, token)
                            filled.add(point.value_size)
                        label = (f"round {rnd + 1}/{cfg.rounds} {s.name:<14} "
                                 f"{_point_label(point)}")
                        # Fresh client ids for every measurement: a client id whose seq
                        # started over would be refused as stale by de-duplication.
                        m = measure(running, point, cfg, procs, rnd + 1, progress, label,
                                    duration, warmup, f"{token}-m{len(measurements)}")
                        measurements.append(m)
                        progress.note(f"  {label}  {m.throughput:>10,.0f} ops/s  "
                                      f"p50 {percentile(sorted(m.latencies), 50) * 1e3:.2f} ms  "
                                      f"p99 {percentile(sorted(m.latencies), 99) * 1e3:.2f} ms"
                                      + (f"  {m.errors} errors" if m.errors else ""))
                    _note_memory(running, memory, commands)
                finally:
                    procs.stop(list(running.procs.values()))
                    if not cfg.keep:
                        shutil.rmtree(where, ignore_errors=True)
    finally:
        progress.finish()
        if not cfg.keep:
            shutil.rmtree(root, ignore_errors=True)
    summaries = summarize(measurements, memory, commands)
    fsync.sort()
    report: dict[str, Any] = {
        "config": _config_json(cfg),
        "machine": machine_info(cfg.data_dir or Path(tempfile.gettempdir())),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "fsync_ms": {"p50": percentile(fsync, 50) * 1e3, "p90": percentile(fsync, 90) * 1e3,
                     "samples": len(fsync)} if fsync else None,
        "summaries": [{**asdict(x), "spread": round(x.spread, 4)} for x in summaries],
        "measurements": [{k: v for k, v in asdict(m).items() if k != "latencies"}
                         for m in measurements],
    }
    report["pids"] = list(procs.started)
    report["ratios"] = ratios(summaries)
    report["targets"] = targets(summaries, report["fsync_ms"])
    if cfg.keep:
        report["data_dir"] = str(root)  # logs and data of every node, for a post-mortem
    return report


def _ports_needed(s: System) -> int:
    return {"wire": 0, "trivial": 1}.get(s.kind, 2 * s.nodes)


def _check_before_starting(cfg: Config, systems: list[System]) -> None:
    """Find a port in use or a server that is not there before anything starts."""
    if cfg.port_base is not None:
        last = cfg.port_base + cfg.rounds * sum(_ports_needed(s) for s in systems)
        if last > 65536:
            raise BenchError(f"--port-base {cfg.port_base} leaves too few ports "
                             f"({last - cfg.port_base} needed)")
        for port in range(cfg.port_base, last):
            if not _port_free(port):
                raise BenchError(f"port {port} on 127.0.0.1 is in use "
                                 "(choose another --port-base)")
    for s in systems:
        if s.kind == "wire":
            assert s.address is not None
            try:
                node_status(s.address)
            except OSError as exc:
                raise BenchError(f"{s.name}: nothing answers at {s.address[0]}:"
                                 f"{s.address[1]} ({getattr(exc, 'strerror', None) or exc})"
                                 ) from None


def _mkdir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--data-dir {path} cannot be made: {exc.strerror}") from None
    return path


def _note_memory(running: Running, memory: dict[str, dict[str, float]],
                 commands: dict[str, int]) -> None:
    """Resident memory per node and commands applied, at the end of the system's run."""
    name = running.system.name
    for i, proc in running.procs.items():
        mib = rss_mib(proc.pid)
        if mib is not None:
            # The largest seen over the rounds: what a node needed at worst.
            memory.setdefault(name, {})[str(i)] = max(memory.get(name, {}).get(str(i), 0), mib)
    if running.protocol == "wire":
        with contextlib.suppress(OSError, ValueError):
            status = node_status(running.clients[running.leader])
            if status and isinstance(status.get("applied_index"), int):
                commands[name] = max(commands.get(name, 0), status["applied_index"])


def _point_label(p: Point) -> str:
    reads = "writes" if p.read_ratio == 0 else f"{p.read_ratio:.0%} reads"
    return f"{p.clients:>3} clients {_size(p.value_size):>6} {reads}" + (" (probe)" if p.probe
                                                                         else "")


def _size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def _config_json(cfg: Config) -> dict[str, Any]:
    d = asdict(cfg)
    d["systems"] = [s.name for s in cfg.systems]
    d["data_dir"] = str(cfg.data_dir) if cfg.data_dir else None
    return d


def _filesystem(path: Path) -> str:
    """The filesystem type holding `path` (from /proc/mounts), or "unknown"."""
    try:
        target = path.resolve()
        best, kind = "", "unknown"
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1] if len(parts) >= 3 else ""
                if mount and str(target).startswith(mount) and len(mount) > len(best):
                    best, kind = parts[1], parts[2]
        return kind
    except OSError:
        return "unknown"


def machine_info(data: Path) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "data_filesystem": _filesystem(data),
        "note": "servers and the load generator share these CPUs",
    }


# ------------------------------------------------------------------ ratios and targets


def _find(summaries: list[Summary], name: str, **at: Any) -> Summary | None:
    for x in summaries:
        if x.system == name and not x.probe and all(getattr(x, k) == v for k, v in at.items()):
            return x
    return None


def ratios(summaries: list[Summary]) -> list[dict[str, Any]]:
    """Throughput ratios between systems at the same point, with the issue's targets."""
    out = []
    names = {x.system for x in summaries}
    for x in summaries:
        if x.probe or x.kind not in ("pnyx", "pnyx-nofsync"):
            continue
        at = {"clients": x.clients, "value_size": x.value_size, "read_ratio": x.read_ratio}
        if x.kind == "pnyx-nofsync":
            # Like for like: PySyncObj never fsyncs, and this setting of it does not wait
            # to batch either.
            pairs = [(f"pysyncobj{x.nodes}-nobatch", "neither fsyncs (like for like)", None)]
        else:
            # The issue's target is against PySyncObj as it comes (its defaults); its
            # low-latency setting is shown beside it.
            pairs = [
                (f"pysyncobj{x.nodes}", "pnyx / PySyncObj (defaults)", 3.0),
                (f"pysyncobj{x.nodes}-nobatch", "pnyx / PySyncObj (no batching)", None),
                ("pnyx1-direct", "replicated / unreplicated", 0.5),
                (f"pnyx{x.nodes}-nofsync", "fsync on / off", None),
                ("trivial", "share of the generator's ceiling", None),
            ]
        for other, what, goal in pairs:
            if other not in names:
                continue
            y = _find(summaries, other, **at)
            if y is None or y.throughput <= 0:
                continue
            value = x.throughput / y.throughput
            out.append({"ratio": f"{x.system} / {other}", "what": what, **at,
                        "value": round(value, 3), "target": goal,
                        "met": None if goal is None else value >= goal})
    return out


def targets(summaries: list[Summary], fsync_ms: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's latency and read targets, where this run measured what they need."""
    out: list[dict[str, Any]] = []
    rtt = next((x for x in summaries if x.system == "trivial" and x.clients == 1
                and x.read_ratio == 0), None)
    for x in summaries:
        if x.kind != "pnyx" or x.clients != 1 or x.read_ratio != 0:
            continue
        if x.probe is False and any(y.system == x.system and y.probe for y in summaries):
            continue
        if fsync_ms is None or rtt is None:
            continue
        bound = 2 * (fsync_ms["p50"] + rtt.p50_ms)
        out.append({"target": f"{x.system}: p50 write latency at 1 client "
                              "<= 2 x (fsync + loopback round trip)",
                    "measured_ms": round(x.p50_ms, 3), "bound_ms": round(bound, 3),
                    "fsync_p50_ms": round(fsync_ms["p50"], 3),
                    "round_trip_p50_ms": round(rtt.p50_ms, 3), "met": x.p50_ms <= bound})
    for x in summaries:
        if x.kind != "pnyx" or x.probe or x.read_ratio != 1.0:
            continue
        w = _find(summaries, x.system, clients=x.clients, value_size=x.value_size, read_ratio=0.0)
        if w is None or w.throughput <= 0:
            continue
        value = x.throughput / w.throughput
        out.append({"target": f"{x.system}: reads ({x.clients} clients) >= 3 x writes",
                    "value": round(value, 3), "goal": 3.0, "met": value >= 3.0})
    return out


# ------------------------------------------------------------------ output


def format_report(report: dict[str, Any]) -> str:
    cfg, machine = report["config"], report["machine"]
    lines = []
    reads = sorted(set(cfg["read_ratios"]))
    lines.append(
        f"pnyx bench: {cfg['rounds']} round(s) of {cfg['duration']:g} s after "
        f"{cfg['warmup']:g} s warm-up; clients -> {cfg['target']}; "
        f"{cfg['procs']} load generator process(es); "
        f"reads {'/'.join(f'{r:.0%}' for r in reads)} ({cfg['read_mode']})")
    lines.append(
        f"machine: {machine['cpus']} CPUs shared by every server and the load generator; "
        f"{machine['platform']}; Python {machine['python']}; data on {machine['data_filesystem']}")
    if report.get("fsync_ms"):
        f = report["fsync_ms"]
        lines.append(f"disk: 4 KiB append + fdatasync p50 {f['p50']:.3f} ms, "
                     f"p90 {f['p90']:.3f} ms ({f['samples']} samples, same run)")
    lines.append("")
    width = max([len("system")] + [len(_row_name(x)) for x in report["summaries"]]) + 1
    header = (f"{'system':<{width}}{'nodes':>5}{'clients':>8}{'value':>8}{'reads':>6}"
              f"{'ops/s':>11}{'±':>5}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}"
              f"{'err':>5}{'CPU lead/all':>14}{'gen CPU':>8}{'RSS MiB':>9}")
    lines.append(header)
    lines.append("-" * len(header))
    for x in report["summaries"]:
        name = _row_name(x)
        cpu = "-"
        if x["leader_cpu"] is not None and x["servers_cpu"] is not None:
            cpu = f"{x['leader_cpu']:.0%}/{x['servers_cpu']:.0%}"
        rss = max(x["rss_mib"].values()) if x["rss_mib"] else None
        lines.append(
            f"{name:<{width}}{x['nodes']:>5}{x['clients']:>8}{_size(x['value_size']):>8}"
            f"{x['read_ratio']:>6.0%}{x['throughput']:>11,.0f}{x['spread']:>5.0%}"
            f"{x['p50_ms']:>8.2f}{x['p90_ms']:>8.2f}{x['p99_ms']:>8.2f}{x['max_ms']:>8.1f}"
            f"{x['errors'] + x['unanswered']:>5}{cpu:>14}{x['loadgen_cpu']:>8.0%}"
            f"{(f'{rss:.0f}' if rss is not None else '-'):>9}")
    lines.append("")
    lines.append("  * trivial: a server that answers every request at once; its row is the load "
                 "generator's ceiling at that load.")
    if any(x["probe"] for x in report["summaries"]):
        lines.append("  probe: one client for a few seconds, for the latency target below.")
    lines.append("  ± is the spread of throughput between rounds; CPU is the share of one core "
                 "(leader / all nodes) while measuring; RSS is the largest node's at the end.")
    if any(x["kind"] == "etcd" for x in report["summaries"]):
        lines.append("  etcd is driven through its JSON gateway (HTTP + JSON), the others over "
                     "pnyx's binary protocol.")
    if report.get("data_dir"):
        lines.append(f"  logs and data kept in {report['data_dir']}")
    errors = [x for x in report["summaries"] if x["first_error"]]
    for x in errors:
        lines.append(f"  {x['system']}: first error: {x['first_error'][:200]}")
    if report["ratios"]:
        lines.append("")
        lines.append(f"{'ratio (throughput)':<36}{'what':<34}{'clients':>8}{'value':>8}"
                     f"{'reads':>6}{'value':>9}{'target':>9}  ")
        for r in report["ratios"]:
            goal = f">= {r['target']:g}" if r["target"] is not None else ""
            verdict = {True: "met", False: "NOT met", None: ""}[r["met"]]
            lines.append(f"{r['ratio']:<36}{r['what']:<34}{r['clients']:>8}"
                         f"{_size(r['value_size']):>8}{r['read_ratio']:>6.0%}"
                         f"{r['value']:>8.2f}x{goal:>9}  {verdict}")
    if report["targets"]:
        lines.append("")
        for t in report["targets"]:
            verdict = "met" if t["met"] else "NOT met"
            if "bound_ms" in t:
                lines.append(f"{t['target']}: {t['measured_ms']:.3f} ms vs 2 x "
                             f"({t['fsync_p50_ms']:.3f} + {t['round_trip_p50_ms']:.3f}) = "
                             f"{t['bound_ms']:.3f} ms: {verdict}")
            else:
                lines.append(f"{t['target']}: {t['value']:.2f}x: {verdict}")
    return "\n".join(lines)


def _row_name(x: dict[str, Any]) -> str:
    return x["system"] + ("*" if x["kind"] == "trivial" else "") + (" probe" if x["probe"] else "")


def plot(report: dict[str, Any], path: str) -> None:
    """Throughput and p99 against the curve's dimension (clients when there is none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dim = report["config"].get("curve") or "clients"
    rows = [x for x in report["summaries"] if not x["probe"]]
    xkey = "nodes" if dim == "nodes" else dim
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_system: dict[str, list[dict[str, Any]]] = {}
    for x in rows:
        base = re.sub(r"\d+", "N", x["system"]) if dim == "nodes" else x["system"]
        by_system.setdefault(base, []).append(x)
    for name, xs in by_system.items():
        xs.sort(key=lambda x: x[xkey])
        ax1.plot([x[xkey] for x in xs], [x["throughput"] for x in xs], marker="o", label=name)
        ax2.plot([x[xkey] for x in xs], [x["p99_ms"] for x in xs], marker="o", label=name)
    label = {"clients": "clients", "value_size": "value size (bytes)",
             "read_ratio": "read ratio", "nodes": "nodes"}[xkey]
    for ax, what in ((ax1, "throughput (ops/s)"), (ax2, "p99 latency (ms)")):
        ax.set_xlabel(label)
        ax.set_ylabel(what)
        if xkey in ("clients", "value_size"):
            ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
    # Log scales: the systems differ by orders of magnitude, and a linear axis would
    # flatten every replicated system against zero next to the trivial server.
    ax1.set_yscale("log")
    ax2.set_yscale("log")
    ax1.legend(fontsize="small")
    machine = report["machine"]
    fig.suptitle(f"pnyx bench ({machine['cpus']} CPUs shared by servers and load generator)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ entry points


def run(args: argparse.Namespace) -> int:
    """Carry out `pnyx bench`; never raises for bad flags, errors or Ctrl-C."""
    try:
        cfg = config_from(args)
    except _Usage as exc:
        print(f"pnyx bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    procs = Processes()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        report = run_benchmark(cfg, procs)
        report["config"]["curve"] = cfg.curve
    except BenchError as exc:
        print(f"pnyx bench: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\npnyx bench: interrupted; stopped every process it started", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave servers behind.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            procs.stop_all()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    text = format_report(report)
    try:
        if cfg.json_path == "-":
            print(text, file=sys.stderr)
            print(json.dumps(report, indent=2))
        else:
            print(text)
            if cfg.json_path:
                Path(cfg.json_path).write_text(json.dumps(report, indent=2) + "\n")
                print(f"\nJSON written to {cfg.json_path}")
        if cfg.plot_path:
            plot(report, cfg.plot_path)
            print(f"plot written to {cfg.plot_path}")
    except OSError as exc:
        print(f"pnyx bench: cannot write the report: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    """`python bench/pnyxbench.py ...`: the same as `pnyx bench ...`."""
    parser = _Parser(
        prog="pnyx bench",
        description="Benchmark pnyx against PySyncObj and against itself unreplicated: start "
        "each system on 127.0.0.1, drive it with a closed-loop load, and report throughput and "
        "latency side by side. Give one of --clients, --value-size, --read-ratio or --nodes as "
        "a comma-separated list for a scaling curve.")
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
