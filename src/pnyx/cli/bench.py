"""`pnyx bench`: runs the benchmark that lives in a source checkout's bench/ directory.

The benchmark (the `pnyxbench` package in bench/, with the PySyncObj and
trivial servers beside it) is not part of the installed package. `pnyx bench` finds it, in
this order, at $PNYX_BENCH_DIR, or in the bench/ directory of the checkout
this package runs from (an editable install, as ./dev.sh makes), or as an
importable `pnyxbench` module; the `bench` extra adds what it compares with
(PySyncObj) and plots with (matplotlib). If none is there, one line says how
to get it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pnyx
from pnyx.cli.common import StartError

BENCH_DIR_ENV = "PNYX_BENCH_DIR"
MODULE = "pnyxbench"
MISSING = ("the benchmark is not part of the installed package: run `pnyx bench` from a "
           "source checkout (git clone the pnyx repository, then `./dev.sh run bench ...`), "
           f"or set {BENCH_DIR_ENV} to a checkout's bench/ directory")


def add_parsers(sub: Any) -> None:
    # The benchmark parses its own flags (and --help), once it is found.
    p = sub.add_parser("bench", add_help=False,
                       help="benchmark pnyx against PySyncObj and against itself unreplicated "
                       "(from a source checkout)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(run=run)


def bench_dir() -> Path | None:
    """The bench/ directory holding the benchmark, or None if there is none to be found."""
    env = os.environ.get(BENCH_DIR_ENV)
    candidates = [Path(env)] if env else []
    # src/pnyx/__init__.py -> the checkout's root.
    candidates.append(Path(pnyx.__file__).resolve().parents[2] / "bench")
    for directory in candidates:
        if (directory / MODULE / "__init__.py").is_file():
            return directory
    return None


def load() -> ModuleType:
    """The benchmark module; StartError (one line) if it cannot be found."""
    directory = bench_dir()
    if directory is not None:
        if str(directory) not in sys.path:
            # On sys.path, not loaded from a file spec: the load generator's worker
            # processes import it by name.
            sys.path.insert(0, str(directory))
    elif importlib.util.find_spec(MODULE) is None:
        raise StartError(MISSING)
    return importlib.import_module(MODULE)


def run(args: argparse.Namespace) -> int:
    return run_argv(args.bench_args)


def run_argv(argv: list[str]) -> int:
    """`pnyx bench ARGV...`: the benchmark's own flags, parsed by the benchmark."""
    module = load()
    try:
        return int(module.main(argv))
    except SystemExit as exc:  # its parser's --help, or a wrong flag (already printed)
        return exc.code if isinstance(exc.code, int) else 2
