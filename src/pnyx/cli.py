"""The `pnyx` command.

`pnyx sim` runs the deterministic simulator: one seed with a readable
summary, or a sweep of seeds with a progress bar. Every wrong flag gives a
one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from pnyx.protocol.proposer import RetryPolicy
from pnyx.protocol.quorum import QuorumError
from pnyx.sim.faults import FaultConfig
from pnyx.sim.mutants import MUTANTS
from pnyx.sim.network import NetworkConfig
from pnyx.sim.report import summary, sweep_summary
from pnyx.sim.simulation import SimConfig, SimResult, simulate


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pnyx", description="Multi-Paxos for Python.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sim = sub.add_parser(
        "sim",
        help="run Paxos in the deterministic simulator",
        description="Run single-decree Paxos in a simulated, faulty network and check "
        "the seed's safety requirements. The same seed replays the same run exactly.",
    )
    which = sim.add_mutually_exclusive_group()
    which.add_argument("--seed", type=_non_negative_int, default=0, help="one run (default 0)")
    which.add_argument("--seeds", type=_seed_range, metavar="A..B", help="sweep seeds A to B")
    sim.add_argument("--nodes", type=int, default=5, help="processes (default 5)")
    sim.add_argument("--proposers", type=int, default=3, help="competing proposers (default 3)")
    sim.add_argument("--drop", type=_probability, default=0.0, help="message loss probability")
    sim.add_argument("--dup", type=_probability, default=0.0, help="duplication probability")
    sim.add_argument("--min-delay", type=_positive_ms, default=0.001, metavar="MS")
    sim.add_argument("--max-delay", type=_positive_ms, default=0.005, metavar="MS")
    sim.add_argument("--jitter", type=_positive_ms, default=0.003, metavar="MS",
                     help="random extra delay per message, which reorders them")
    sim.add_argument("--partitions", action="store_true", help="partitions that come and heal")
    sim.add_argument("--crashes", action="store_true", help="crash and restart processes")
    sim.add_argument("--faults-until", type=_positive_ms, default=0.25, metavar="MS",
                     help="no new faults after this time (default 250 ms)")
    sim.add_argument("--phase1", type=int, help="phase-1 quorum size (Flexible Paxos)")
    sim.add_argument("--phase2", type=int, help="phase-2 quorum size (Flexible Paxos)")
    sim.add_argument("--distinguished", type=int, metavar="NODE",
                     help="the only proposer; the others forward their values to it")
    sim.add_argument("--no-backoff", action="store_true",
                     help="retry at once instead of after a random backoff (livelocks)")
    sim.add_argument("--max-time", type=_positive_ms, default=30.0, metavar="MS",
                     help="stop after this much virtual time (default 30000 ms)")
    sim.add_argument("--mutant", choices=sorted(MUTANTS), help="run a deliberately broken variant")
    sim.add_argument("--trace", metavar="FILE", help="write every event as JSON lines")
    return parser


def config_from(args: argparse.Namespace, seed: int) -> SimConfig:
    return SimConfig(
        seed=seed,
        nodes=args.nodes,
        proposers=args.proposers,
        network=NetworkConfig(args.min_delay, args.max_delay, args.jitter, args.drop, args.dup),
        faults=FaultConfig(partitions=args.partitions, crashes=args.crashes,
                           until=args.faults_until),
        retry=RetryPolicy(randomized=not args.no_backoff),
        phase1=args.phase1,
        phase2=args.phase2,
        distinguished=args.distinguished,
        max_time=args.max_time,
        mutant=args.mutant,
    )


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
        config = config_from(args, args.seed)
        if args.trace:
            with open(args.trace, "wb") as sink:
                result = simulate(config, trace_sink=sink)
        else:
            result = simulate(config, trace=True)
        print(summary(result))
        if result.trace_digest:
            print(f"\n  trace digest {result.trace_digest[:16]}"
                  + (f", written to {args.trace}" if args.trace else ""))
        return 0 if result.safe else 1
    if args.trace:
        raise UsageError("pnyx sim: --trace records one run: use it with --seed, not --seeds")
    seeds = args.seeds
    results: list[SimResult] = []
    bad = 0
    started = time.perf_counter()
    tty = sys.stderr.isatty()
    show = tty or len(seeds) >= 50
    step = max(1, len(seeds) // (200 if tty else 10))
    for n, seed in enumerate(seeds, 1):
        result = simulate(config_from(args, seed))
        bad += not result.safe
        results.append(result)
        if show and (n % step == 0 or n == len(seeds)):
            _progress(n, len(seeds), bad, started, tty)
    if show and tty:
        sys.stderr.write("\n")
    print(sweep_summary(results, time.perf_counter() - started))
    return 0 if bad == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "sim":
            config_from(args, 0)  # validate the flags together before running anything
            return run_sim(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (ValueError, QuorumError) as exc:
        print(f"pnyx {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pnyx: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
