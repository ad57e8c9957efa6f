"""`pnyx sim` and `pnyx sim-kv`: the deterministic simulator from the command line.

`pnyx sim` runs single-decree Paxos and `pnyx sim-kv` the replicated key-value
store (Multi-Paxos): one seed with a readable summary, or a sweep of seeds
with a progress bar. The same seed replays the same run exactly.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from typing import IO, Any

from pnyx.cli import see
from pnyx.cli.common import UsageError
from pnyx.protocol.synod.proposer import RetryPolicy
from pnyx.sim import shrink
from pnyx.sim.cluster import DRIVER_MUTANTS, ClusterConfig, ClusterResult, simulate_cluster
from pnyx.sim.faults import FaultConfig
from pnyx.sim.mutants import CLUSTER_MUTANTS, MEMBERSHIP_MUTANTS, MUTANTS
from pnyx.sim.network import NetworkConfig
from pnyx.sim.report import cluster_summary, cluster_sweep_summary, summary, sweep_summary
from pnyx.sim.simulation import SimConfig, SimResult, simulate


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
    p.add_argument("--late", type=_probability, default=0.0,
                   help="share of messages held back and delivered 0.2-1 s late")
    p.add_argument("--reboots", action="store_true",
                   help="crash the leader and restart it at once from its disk, mid-ballot")
    p.add_argument("--faults-until", type=_positive_ms, default=until_ms / 1000, metavar="MS",
                   help=f"no new faults after this time (default {until_ms:g} ms)")
    p.add_argument("--max-time", type=_positive_ms, default=60.0, metavar="MS",
                   help="stop after this much virtual time (default 60000 ms)")
    p.add_argument("--trace", metavar="FILE", help="write every event as JSON lines")
    p.add_argument("--html", metavar="FILE",
                   help="write a replay of the run as one self-contained HTML page")
    p.add_argument("--shrink", action="store_true",
                   help="if the run fails a check (with --seeds: the first that does), "
                   "reduce it to a smallest run failing the same rule, print and save it")
    p.add_argument("--shrink-out", metavar="FILE",
                   help="where --shrink saves the run (default shrunk-<mutant>-<seed>.json)")
    p.add_argument("--shrink-runs", type=_non_negative_int, default=400, metavar="N",
                   help="most simulations one shrink runs (default 400)")
    p.add_argument("--shrink-seconds", type=float, default=60.0, metavar="S",
                   help="most wall-clock seconds one shrink takes (default 60)")
    p.add_argument("--replay", metavar="FILE",
                   help="run the configuration a --shrink saved (the other run flags are "
                   "ignored)")


def add_parsers(sub: Any) -> None:
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
    sim.add_argument("--narrate", action="store_true",
                     help="tell the run step by step in words before the summary")

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
    # No defaults here: the simulator's own (ClusterConfig) apply unless given.
    kv.add_argument("--window", type=int,
                    help=f"slots in flight (default {ClusterConfig().window})")
    kv.add_argument("--max-batch", type=int,
                    help="commands per slot; 1 turns batching off "
                    f"(default {ClusterConfig().max_batch})")
    kv.add_argument("--no-prevote", action="store_true",
                    help="start elections without asking whether others miss the leader")
    kv.add_argument("--read-lease", type=_positive_ms, default=0.0, metavar="MS",
                    help="leader leases for linearizable reads, below the election timeout "
                    f"({ClusterConfig().election_timeout * 1000:g} ms; default 0: off)")
    kv.add_argument("--no-invariants", action="store_true",
                    help="do not assert every replica's unit invariants after each event "
                    "(rule I1; the run is about a third faster)")
    kv.add_argument("--mutant", choices=sorted([*CLUSTER_MUTANTS, *MEMBERSHIP_MUTANTS,
                                                *DRIVER_MUTANTS]),
                    help="run a deliberately broken variant")
    kv.add_argument("--history", metavar="FILE", help="write the clients' history as JSON")
    kv.add_argument("--snapshot-every", type=_non_negative_int, default=8, metavar="N",
                    help="take a snapshot every N commands applied, and compact the log "
                    "below it (default 8; 0: never)")
    kv.add_argument("--snapshot-phases", action="store_true",
                    help="each replica snapshots in the phase `pnyx serve` gives its id, "
                    "so replicas compact at different slots (default: all at the same)")
    kv.add_argument("--snapshot-failures", type=_probability, default=0.0, metavar="P",
                    help="share of snapshot writes that fail, as on a full disk")
    kv.add_argument("--wipes", type=_non_negative_int, default=0, metavar="N",
                    help="replicas that lose their disk and restart empty (with --faults-until)")
    kv.add_argument("--changes", type=_non_negative_int, default=0, metavar="N",
                    help="membership operations during the run (add, remove, replace, two "
                    "at once; the leader crashed or old and new members partitioned "
                    "mid-change) before --faults-until; 0: the members never change")

    sim.set_defaults(run=run)
    kv.set_defaults(run=run)
    see.add_parsers(sub)


def run(args: argparse.Namespace) -> int:
    config_from(args, 0)  # validate the flags together before running anything
    return run_sim(args)


def _network(args: argparse.Namespace) -> NetworkConfig:
    return NetworkConfig(args.min_delay, args.max_delay, args.jitter, args.drop, args.dup,
                         late=args.late)


def config_from(args: argparse.Namespace, seed: int) -> SimConfig | ClusterConfig:
    if args.command == "sim-kv":
        tuning = {k: v for k, v in (("window", args.window), ("max_batch", args.max_batch))
                  if v is not None}
        return ClusterConfig(
            seed=seed, nodes=args.nodes, clients=args.clients, ops=args.ops, keys=args.keys,
            network=_network(args),
            faults=FaultConfig(partitions=args.partitions, crashes=args.crashes,
                               reboots=args.reboots, until=args.faults_until,
                               partition_rate=2.0, crash_rate=3.0, max_outage=0.3,
                               wipes=args.wipes),
            prevote=not args.no_prevote, read_lease=args.read_lease,
            max_time=args.max_time, mutant=args.mutant,
            check_invariants=not args.no_invariants, snapshot_every=args.snapshot_every,
            snapshot_failures=args.snapshot_failures, snapshot_phases=args.snapshot_phases,
            changes=args.changes, **tuning,
        )
    return SimConfig(
        seed=seed,
        nodes=args.nodes,
        proposers=args.proposers,
        network=_network(args),
        faults=FaultConfig(partitions=args.partitions, crashes=args.crashes,
                           reboots=args.reboots, until=args.faults_until),
        linger=NetworkConfig().late_max if args.late else 0.0,  # late messages still land
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


def _shrink(args: argparse.Namespace, config: SimConfig | ClusterConfig) -> None:
    """Shrink a failing run, print the result and save it as a replayable file."""
    print(f"\nshrinking seed {config.seed} ...", flush=True)
    shrunk = shrink.shrink(config, max_runs=args.shrink_runs, max_seconds=args.shrink_seconds)
    if shrunk is None:
        print("  the run fails no check: nothing to shrink")
        return
    print(shrink.report(shrunk))
    out = args.shrink_out or f"shrunk-{config.mutant or 'run'}-{config.seed}.json"
    shrink.save_run(out, shrunk.config, shrunk.rule, str(shrunk.violation))
    print(f"\n  saved to {out}; replay: pnyx {args.command} --replay {out}")


def _load_replay(args: argparse.Namespace, path: str) -> SimConfig | ClusterConfig:
    try:
        config = shrink.load_run(path)
    except OSError as e:
        raise UsageError(f"pnyx {args.command}: cannot read {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"pnyx {args.command}: {path} is not a saved run: {e}") from None
    if isinstance(config, ClusterConfig) != (args.command == "sim-kv"):
        other = "sim-kv" if isinstance(config, ClusterConfig) else "sim"
        raise UsageError(f"pnyx {args.command}: {path} is a run of pnyx {other}")
    return config


def run_sim(args: argparse.Namespace) -> int:
    replay = args.replay
    if replay and (args.seeds is not None or args.shrink):
        raise UsageError(f"pnyx {args.command}: --replay runs one saved run: not with --seeds "
                         "or --shrink")
    if args.seeds is None:
        config = _load_replay(args, replay) if replay else config_from(args, args.seed or 0)
        narrate = getattr(args, "narrate", False)
        html_sink = io.BytesIO() if (args.html or narrate) and not args.trace else None
        if args.trace:
            with open(args.trace, "wb") as sink:
                result = _run(config, sink)
        else:
            result = _run(config, html_sink, trace=True)
        if isinstance(result, ClusterResult):
            print(cluster_summary(result))
            if args.history and result.history is not None:
                result.history.dump(args.history)
                print(f"\n  history written to {args.history}")
        else:
            if narrate:
                trace = html_sink.getvalue() if html_sink else see.read_file(args.trace)
                see.print_narration(args, trace, result)
            print(summary(result))
            if result.trace_digest:
                print(f"\n  trace digest {result.trace_digest[:16]}")
        if args.trace:
            print(f"  trace written to {args.trace}")
        if args.html:
            trace = html_sink.getvalue() if html_sink else see.read_file(args.trace)
            text = summary(result) if isinstance(result, SimResult) else cluster_summary(result)
            see.write_run_html(args, trace, text, history=getattr(result, "history", None))
        if args.shrink and not result.safe:
            _shrink(args, config)
        return 0 if result.safe else 1
    if args.trace or args.html or getattr(args, "history", None) \
            or getattr(args, "narrate", False):
        raise UsageError(f"pnyx {args.command}: --trace, --html, --narrate and --history "
                         "record one run: use them with --seed, not --seeds")
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
    failed = next((r for r in results if not r.safe), None)
    if args.shrink and failed is not None:
        _shrink(args, failed.config)
    return 0 if bad == 0 else 1
