"""The entry points: `run(args)` for `pnyx bench`, `main(argv)` for `python -m pnyxbench`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pnyxbench.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    BenchError,
    UsageError,
)
from pnyxbench.config import add_arguments, config_from
from pnyxbench.openrun import format_open_report, run_open_loop
from pnyxbench.processes import Processes
from pnyxbench.report import format_report, plot
from pnyxbench.run import run_benchmark


def run(args: argparse.Namespace) -> int:
    """Carry out `pnyx bench`; never raises for bad flags, errors or Ctrl-C."""
    try:
        cfg = config_from(args)
    except UsageError as exc:
        print(f"pnyx bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    procs = Processes()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Started in the background by a non-interactive shell, a process inherits SIGINT
    # ignored, and Python then installs no handler: Ctrl-C (or a SIGINT sent to it) must
    # still stop the benchmark and every process it started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        if cfg.open_loop:
            report = run_open_loop(cfg, procs)
        else:
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
    text = format_open_report(report) if cfg.open_loop else format_report(report)
    try:
        if cfg.json_path == "-":
            print(text, file=sys.stderr)
            print(json.dumps(report, indent=2))
        else:
            print(text)
            if cfg.json_path:
                Path(cfg.json_path).write_text(json.dumps(report, indent=2) + "\n")
                print(f"\nJSON written to {cfg.json_path}")
        if cfg.plot_path and not cfg.open_loop:
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
        "each system on 127.0.0.1, drive it with a closed-loop load (or, with --open-loop, "
        "offered rates and a search for each system's max-rate), and report throughput and "
        "latency side by side. Give one of --clients, --value-size, --read-ratio or --nodes as "
        "a comma-separated list for a scaling curve.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
