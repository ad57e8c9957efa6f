"""The systems the benchmark knows, its flags, and the `Config` they make."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from pnyxbench.common import BENCH_DIR_ENV, DEFAULT_SYSTEMS, KNOWN_SYSTEMS, UsageError


@dataclass(frozen=True)
class System:
    """One thing to measure, parsed from its `--systems` name."""

    name: str
    kind: str  # pnyx, pnyx-nofsync, pnyx-tls, pnyx-lease, pnyx-direct, pysyncobj, etcd, ...
    nodes: int = 1
    address: tuple[str, int] | None = None  # wire@ only

    @property
    def replicated(self) -> bool:
        return self.kind in ("pnyx", "pnyx-nofsync", "pnyx-tls", "pnyx-lease", "pysyncobj",
                             "pysyncobj-nobatch", "etcd")

    def with_nodes(self, nodes: int) -> System:
        base, _, variant = self.kind.partition("-")
        suffix = f"-{variant}" if variant else ""
        return replace(self, name=f"{base}{nodes}{suffix}", nodes=nodes)


_SYSTEM = re.compile(r"(pnyx|pysyncobj|etcd)(\d+)(-nofsync|-direct|-nobatch|-tls|-lease)?")


def parse_system(text: str) -> System:
    """A system from its name; raises `UsageError` naming the known ones."""
    name = text.strip()
    if name == "trivial":
        return System(name, "trivial")
    if name.startswith("wire@"):
        host, sep, port = name[5:].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"{name!r} is not wire@HOST:PORT")
        return System(name, "wire", address=(host, int(port)))
    m = _SYSTEM.fullmatch(name)
    if m is None:
        raise UsageError(f"unknown system {name!r} (known: {', '.join(KNOWN_SYSTEMS)})")
    base, nodes, variant = m.group(1), int(m.group(2)), m.group(3)
    if not 1 <= nodes <= 15:
        raise UsageError(f"{name}: between 1 and 15 nodes, not {nodes}")
    if variant == "-direct":
        if base != "pnyx" or nodes != 1:
            raise UsageError(f"unknown system {name!r}: the unreplicated server is pnyx1-direct")
        return System(name, "pnyx-direct")
    if variant == "-nofsync":
        if base != "pnyx":
            raise UsageError(f"unknown system {name!r}: only pnyx has an -nofsync variant")
        return System(name, "pnyx-nofsync", nodes)
    if variant == "-lease":
        if base != "pnyx":
            raise UsageError(f"unknown system {name!r}: only pnyx has a -lease variant")
        return System(name, "pnyx-lease", nodes)
    if variant == "-tls":
        if base != "pnyx":
            raise UsageError(f"unknown system {name!r}: only pnyx has a -tls variant")
        return System(name, "pnyx-tls", nodes)
    if variant == "-nobatch":
        if base != "pysyncobj":
            raise UsageError(f"unknown system {name!r}: only pysyncobj has a -nobatch variant")
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
    # --open-loop (pnyxbench.openrun): offered rates instead of closed-loop clients.
    open_loop: bool = False
    rates: list[float] | None = None  # fixed rates; None: search for each system's max-rate
    rate_start: float = 2000.0
    rate_max: float = 1_000_000.0
    bound: float = 1.0
    success: float = 0.9
    arrivals: str = "poisson"
    overload: float = 0.0

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


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    a("--open-loop", action="store_true",
      help="offer requests at fixed rates instead of closed-loop clients: with --rate, "
      "those rates; without, search each system's max-rate (the highest rate at which "
      "--success of the requests are answered ok within --bound)")
    a("--rate", metavar="R,...", help="open loop: offered writes per second, or a list")
    a("--rate-start", default="2000", metavar="R",
      help="open-loop search: the first rate tried, doubled until it fails (default 2000)")
    a("--bound", default="1", metavar="SECONDS",
      help="open loop: a request succeeds if answered ok within this (default 1)")
    a("--success", default="0.9", metavar="F",
      help="open-loop search: the fraction that must succeed (default 0.9)")
    a("--arrivals", default="poisson", help="open loop: poisson (default) or paced")
    a("--overload", default="0", metavar="F",
      help="open-loop search: then offer F times the first pnyx system's max-rate to "
      "every system (the overload run; 0: none)")


def _ints(text: str, flag: str, lo: int, hi: int) -> list[int]:
    out = []
    for part in text.split(","):
        try:
            v = int(part)
        except ValueError:
            raise UsageError(f"{flag}: {part!r} is not an integer") from None
        if not lo <= v <= hi:
            raise UsageError(f"{flag}: {v} is outside {lo}..{hi}")
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
        raise UsageError(f"{flag}: {text!r} is not a number") from None
    if not (lo <= v <= hi) or math.isnan(v):
        raise UsageError(f"{flag}: {text} is outside {lo:g}..{hi:g}")
    return v


def config_from(args: argparse.Namespace) -> Config:
    """Every flag checked, or `UsageError` with one line saying which and why."""
    systems: list[System] = []
    for name in str(args.systems).split(","):
        if not name.strip():
            raise UsageError("--systems: an empty name")
        s = parse_system(name)
        if s.name in (x.name for x in systems):
            raise UsageError(f"--systems: {s.name} is named twice")
        systems.append(s)
    clients = _ints(args.clients, "--clients", 1, 4096)
    sizes = []
    for part in str(args.value_size).split(","):
        try:
            size = parse_size(part)
        except ValueError:
            raise UsageError(
                f"--value-size: {part!r} is not a size like 100, 1KiB or 64KiB") from None
        # Leave room in the 1 MiB command limit for the key and the envelope.
        if not 0 <= size <= (1 << 20) - 4096:
            raise UsageError(f"--value-size: {size} bytes is outside 0..{(1 << 20) - 4096}")
        sizes.append(size)
    ratios = [_number(r, "--read-ratio", 0.0, 1.0) for r in str(args.read_ratio).split(",")]
    nodes = _ints(args.nodes, "--nodes", 1, 15) if args.nodes else None
    if args.read_mode not in ("linearizable", "quorum", "stale"):
        raise UsageError(f"--read-mode: {args.read_mode!r} is not linearizable, quorum or stale")
    if args.target not in ("leader", "all"):
        raise UsageError(f"--target: {args.target!r} is not leader or all")
    lists = [flag for flag, values in (("--clients", clients), ("--value-size", sizes),
                                       ("--read-ratio", ratios), ("--nodes", nodes or []))
             if len(values) > 1]
    if len(lists) > 1:
        raise UsageError(f"one curve at a time: {' and '.join(lists)} are both lists")
    if nodes is not None and not any(s.replicated for s in systems):
        raise UsageError("--nodes: none of --systems is replicated (pnyxN, pysyncobjN, etcdN)")
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
        raise UsageError("--plot needs matplotlib: pip install 'pnyx[bench]'")
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
    if args.open_loop:
        if args.arrivals not in ("poisson", "paced"):
            raise UsageError(f"--arrivals: {args.arrivals!r} is not poisson or paced")
        if len(clients) > 1 or len(sizes) > 1 or len(ratios) > 1 or nodes:
            raise UsageError("--open-loop: no curve over clients, value size, reads or nodes")
        if ratios != [0.0]:
            raise UsageError("--open-loop offers writes only (no --read-ratio)")
        cfg.open_loop = True
        if args.rate:
            cfg.rates = [_number(r, "--rate", 1.0, 10_000_000.0) for r in args.rate.split(",")]
        cfg.rate_start = _number(args.rate_start, "--rate-start", 1.0, 10_000_000.0)
        cfg.bound = _number(args.bound, "--bound", 0.001, 600.0)
        cfg.success = _number(args.success, "--success", 0.01, 1.0)
        cfg.arrivals = args.arrivals
        cfg.overload = _number(args.overload, "--overload", 0.0, 100.0)
        if any(s.kind == "etcd" for s in systems):
            raise UsageError("--open-loop speaks pnyx's binary protocol: not etcd")
    elif args.rate:
        raise UsageError("--rate needs --open-loop")
    for s in systems:
        check_available(s)
    return cfg


def bench_dir() -> Path:
    """Where the bench/ scripts are: $PNYX_BENCH_DIR, else the directory holding this package."""
    env = os.environ.get(BENCH_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1]


def script_path(name: str, system: str) -> Path:
    path = bench_dir() / name
    if not path.is_file():
        raise UsageError(f"{system} needs bench/{name} from a pnyx source checkout "
                     f"(set {BENCH_DIR_ENV} to its bench/ directory)")
    return path


def check_available(s: System) -> None:
    """Refuse, before anything starts, a system this machine cannot run."""
    if s.kind.startswith("pysyncobj"):
        if importlib.util.find_spec("pysyncobj") is None:
            raise UsageError(f"{s.name} needs PySyncObj: pip install 'pnyx[bench]'")
        script_path("pysyncobj_server.py", s.name)
    elif s.kind == "trivial":
        script_path("trivial_server.py", s.name)
    elif s.kind == "etcd" and shutil.which("etcd") is None:
        raise UsageError(f"{s.name} needs etcd on PATH (Debian: apt-get install etcd-server)")


