"""The `pnyx` command.

`pnyx sim` runs single-decree Paxos in the deterministic simulator and
`pnyx sim-kv` the replicated key-value store: one seed with a readable
summary, or a sweep of seeds with a progress bar. Every wrong flag gives a
one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from pnyx import benchmark, server
from pnyx.node.config import Address, ConfigError, NodeConfig, parse_cluster
from pnyx.protocol.quorum import QuorumError
from pnyx.protocol.synod.proposer import RetryPolicy
from pnyx.sim.cluster import ClusterConfig, ClusterResult, simulate_cluster
from pnyx.sim.faults import FaultConfig
from pnyx.sim.mutants import CLUSTER_MUTANTS, MUTANTS
from pnyx.sim.network import NetworkConfig
from pnyx.sim.report import cluster_summary, cluster_sweep_summary, summary, sweep_summary
from pnyx.sim.simulation import SimConfig, SimResult, simulate

try:  # the client commands (put/get/...) live in their own module
    from pnyx import cli_kv as _kv_commands
except ImportError:  # pragma: no cover - only while that module is being written
    _kv_commands = None  # type: ignore[assignment]


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= p < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1)")
    return p


def _positive_ms(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return v / 1000.0


def _seed_range(text: str) -> range:
    a, sep, b = text.partition("..")
    try:
        lo, hi = int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range like 0..999") from None
    if not sep or hi < lo:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range like 0..999")
    return range(lo, hi + 1)


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return v


def _add_run_flags(p: argparse.ArgumentParser, nodes: int, until_ms: float) -> None:
    """Flags both simulations share: which seeds, the network and the faults."""
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=_non_negative_int, help="one run (default 0)")
    which.add_argument("--seeds", type=_seed_range, metavar="A..B", help="sweep seeds A to B")
    p.add_argument("--nodes", type=int, default=nodes, help=f"processes (default {nodes})")
    p.add_argument("--drop", type=_probability, default=0.0, help="message loss probability")
    p.add_argument("--dup", type=_probability, default=0.0, help="duplication probability")
    p.add_argument("--min-delay", type=_positive_ms, default=0.001, metavar="MS")
    p.add_argument("--max-delay", type=_positive_ms, default=0.005, metavar="MS")
    p.add_argument("--jitter", type=_positive_ms, default=0.003, metavar="MS",
                   help="random extra delay per message, which reorders them")
    p.add_argument("--partitions", action="store_true", help="partitions that come and heal")
    p.add_argument("--crashes", action="store_true", help="crash and restart processes")
    p.add_argument("--faults-until", type=_positive_ms, default=until_ms / 1000, metavar="MS",
                   help=f"no new faults after this time (default {until_ms:g} ms)")
    p.add_argument("--max-time", type=_positive_ms, default=60.0, metavar="MS",
                   help="stop after this much virtual time (default 60000 ms)")
    p.add_argument("--trace", metavar="FILE", help="write every event as JSON lines")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pnyx", description="Multi-Paxos for Python.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sim = sub.add_parser(
        "sim",
        help="run single-decree Paxos in the deterministic simulator",
        description="Run single-decree Paxos in a simulated, faulty network and check "
        "the seed's safety requirements. The same seed replays the same run exactly.",
    )
    _add_run_flags(sim, nodes=5, until_ms=250)
    sim.add_argument("--proposers", type=int, default=3, help="competing proposers (default 3)")
    sim.add_argument("--phase1", type=int, help="phase-1 quorum size (Flexible Paxos)")
    sim.add_argument("--phase2", type=int, help="phase-2 quorum size (Flexible Paxos)")
    sim.add_argument("--distinguished", type=int, metavar="NODE",
                     help="the only proposer; the others forward their values to it")
    sim.add_argument("--no-backoff", action="store_true",
                     help="retry at once instead of after a random backoff (livelocks)")
    sim.add_argument("--mutant", choices=sorted(MUTANTS), help="run a deliberately broken variant")

    kv = sub.add_parser(
        "sim-kv",
        help="run the replicated key-value store (Multi-Paxos) in the simulator",
        description="Run Multi-Paxos replicas of the key-value store with clients doing "
        "put/get/cas/delete under faults; check log agreement, lost writes and "
        "linearizability. The same seed replays the same run exactly.",
    )
    _add_run_flags(kv, nodes=3, until_ms=3000)
    kv.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    kv.add_argument("--ops", type=_non_negative_int, default=200,
                    help="operations in all (default 200)")
    kv.add_argument("--keys", type=int, default=3, help="keys the clients share (default 3)")
    kv.add_argument("--window", type=int, default=32, help="slots in flight (default 32)")
    kv.add_argument("--max-batch", type=int, default=256,
                    help="commands per slot; 1 turns batching off (default 256)")
    kv.add_argument("--no-prevote", action="store_true",
                    help="start elections without asking whether others miss the leader")
    kv.add_argument("--mutant", choices=sorted(CLUSTER_MUTANTS),
                    help="run a deliberately broken variant")
    kv.add_argument("--history", metavar="FILE", help="write the clients' history as JSON")

    serve = sub.add_parser(
        "serve",
        help="run one node of a cluster",
        description="Run one node: its peers reach it at its --cluster address (or --listen), "
        "clients at --http. Settings may also come from a TOML file (--config); flags win.",
    )
    serve.add_argument("--config", metavar="FILE", help="read settings from a TOML file")
    serve.add_argument("--id", type=int, dest="node_id", help="this node's id in --cluster")
    serve.add_argument("--cluster", metavar="ID=HOST:PORT,...",
                       help="every member and the address its peers reach it at")
    serve.add_argument("--http", metavar="HOST:PORT", help="serve the HTTP API here")
    serve.add_argument("--client", metavar="HOST:PORT",
                       help="serve the binary client protocol here (the fast path)")
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="listen for peers here instead of at our --cluster address "
                       "(for NAT and containers)")
    serve.add_argument("--data-dir", metavar="DIR", help="where the node keeps its log")
    serve.add_argument("--cluster-id", help="a name for the cluster (default pnyx)")
    serve.add_argument("--election-timeout", type=_positive_ms, metavar="MS",
                       help="default 300 ms")
    serve.add_argument("--heartbeat", type=_positive_ms, metavar="MS", help="default 50 ms")
    serve.add_argument("--request-timeout", type=_positive_ms, metavar="MS",
                       help="default 5000 ms")
    serve.add_argument("--unsafe-no-fsync", action="store_true",
                       help="do not fsync: fast, and loses acknowledged writes on power loss "
                       "(benchmarks only)")
    serve.add_argument("--no-consensus", action="store_true",
                       help="apply commands directly, with no log, no peers and no fsync: "
                       "the cost floor of the stack (benchmarks only; one member)")

    cl = sub.add_parser(
        "cluster",
        help="start a local cluster on 127.0.0.1 and keep it running until Ctrl-C",
    )
    cl.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    cl.add_argument("--data-dir", default="pnyx-data", metavar="DIR",
                    help="where the nodes keep their logs (default ./pnyx-data)")
    cl.add_argument("--peer-port", type=int, default=7001,
                    help="first peer port (default 7001)")
    cl.add_argument("--http-port", type=int, default=8001,
                    help="first HTTP port (default 8001)")
    cl.add_argument("--client-port", type=int, default=9001,
                    help="first port of the binary client protocol, for pnyx.FastClient "
                    "(default 9001; 0 to serve none)")
    cl.add_argument("--unsafe-no-fsync", action="store_true",
                    help="do not fsync (benchmarks only)")
    if _kv_commands is not None:
        _kv_commands.add_parsers(sub)
    benchmark.add_parsers(sub)
    return parser


def node_config_from(args: argparse.Namespace) -> NodeConfig:
    members = parse_cluster(args.cluster) if args.cluster else None
    http = Address.parse(args.http, "--http") if args.http else None
    client = Address.parse(args.client, "--client") if args.client else None
    listen = Address.parse(args.listen, "--listen") if args.listen else None
    values = dict(
        node_id=args.node_id, members=members, http=http, client=client, listen=listen,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        cluster_id=args.cluster_id,
        election_timeout=args.election_timeout, heartbeat_interval=args.heartbeat,
        request_timeout=args.request_timeout,
        fsync=False if args.unsafe_no_fsync else None,
        consensus=False if args.no_consensus else None,
    )
    if args.config:
        return NodeConfig.from_toml(args.config, **values)
    for flag, key in (("--id", "node_id"), ("--cluster", "members"), ("--data-dir", "data_dir")):
        if values[key] is None:
            raise ConfigError(f"{flag} is required (or give --config)")
    return NodeConfig(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]


def _network(args: argparse.Namespace) -> NetworkConfig:
    return NetworkConfig(args.min_delay, args.max_delay, args.jitter, args.drop, args.dup)


def config_from(args: argparse.Namespace, seed: int) -> SimConfig | ClusterConfig:
    if args.command == "sim-kv":
        return ClusterConfig(
            seed=seed, nodes=args.nodes, clients=args.clients, ops=args.ops, keys=args.keys,
            network=_network(args),
            faults=FaultConfig(partitions=args.partitions, crashes=args.crashes,
                               until=args.faults_until, partition_rate=2.0, crash_rate=3.0,
                               max_outage=0.3),
            prevote=not args.no_prevote, window=args.window, max_batch=args.max_batch,
            max_time=args.max_time, mutant=args.mutant,
        )
    return SimConfig(
        seed=seed,
        nodes=args.nodes,
        proposers=args.proposers,
        network=_network(args),
        faults=FaultConfig(partitions=args.partitions, crashes=args.crashes,
                           until=args.faults_until),
        retry=RetryPolicy(randomized=not args.no_backoff),
        phase1=args.phase1,
        phase2=args.phase2,
        distinguished=args.distinguished,
        max_time=args.max_time,
        mutant=args.mutant,
    )


def _run(config: SimConfig | ClusterConfig, sink: IO[bytes] | None = None,
         trace: bool = False) -> SimResult | ClusterResult:
    if isinstance(config, ClusterConfig):
        return simulate_cluster(config, trace_sink=sink, trace=trace)
    return simulate(config, trace_sink=sink, trace=trace)


def _progress(done: int, total: int, bad: int, started: float, tty: bool) -> None:
    width = 30
    filled = width * done // total
    rate = done / max(time.perf_counter() - started, 1e-9)
    bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} seeds"
    line = f"  {bar}  {bad} violations  {rate:,.0f} seeds/s "
    # On a terminal the bar redraws in place; in a log it prints a line now and then.
    sys.stderr.write("\r" + line if tty else line + "\n")
    sys.stderr.flush()


def run_sim(args: argparse.Namespace) -> int:
    if args.seeds is None:
        config = config_from(args, args.seed or 0)
        if args.trace:
            with open(args.trace, "wb") as sink:
                result = _run(config, sink)
        else:
            result = _run(config, trace=True)
        if isinstance(result, ClusterResult):
            print(cluster_summary(result))
            if args.history and result.history is not None:
                result.history.dump(args.history)
                print(f"\n  history written to {args.history}")
        else:
            print(summary(result))
            if result.trace_digest:
                print(f"\n  trace digest {result.trace_digest[:16]}")
        if args.trace:
            print(f"  trace written to {args.trace}")
        return 0 if result.safe else 1
    if args.trace or getattr(args, "history", None):
        raise UsageError(f"pnyx {args.command}: --trace and --history record one run: "
                         "use them with --seed, not --seeds")
    seeds = args.seeds
    results: list[Any] = []
    bad = 0
    started = time.perf_counter()
    tty = sys.stderr.isatty()
    show = tty or len(seeds) >= 50
    step = max(1, len(seeds) // (200 if tty else 10))
    for n, seed in enumerate(seeds, 1):
        result = _run(config_from(args, seed))
        bad += not result.safe
        results.append(result)
        if show and (n % step == 0 or n == len(seeds)):
            _progress(n, len(seeds), bad, started, tty)
    if show and tty:
        sys.stderr.write("\n")
    wall = time.perf_counter() - started
    if args.command == "sim-kv":
        print(cluster_sweep_summary(results, wall))
    else:
        print(sweep_summary(results, wall))
    return 0 if bad == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command in ("sim", "sim-kv"):
            config_from(args, 0)  # validate the flags together before running anything
            return run_sim(args)
        if args.command == "serve":
            return server.serve(node_config_from(args))
        if args.command == "cluster":
            if not 1 <= args.nodes <= 15:
                raise UsageError(f"pnyx cluster: --nodes must be in 1..15, got {args.nodes}")
            ports = [("--peer-port", args.peer_port), ("--http-port", args.http_port)]
            if args.client_port:
                ports.append(("--client-port", args.client_port))
            for flag, port in ports:
                if not 1024 <= port <= 65535 - args.nodes:
                    raise UsageError(f"pnyx cluster: {flag} {port} is outside 1024..65535")
            return server.cluster(args.nodes, Path(args.data_dir), args.peer_port,
                                  args.http_port, fsync=not args.unsafe_no_fsync,
                                  client_port=args.client_port or None)
        if args.command == "bench":
            return benchmark.run(args)
        if _kv_commands is not None and args.command in _kv_commands.COMMANDS:
            return _kv_commands.run(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except server.StartError as exc:
        print(f"pnyx {args.command}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, QuorumError) as exc:
        print(f"pnyx {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pnyx: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
