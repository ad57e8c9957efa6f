"""Run `pnyx serve` under cProfile; the profile is dumped at exit to $PROF_DIR/node-<id>.prof.

The profiles behind README.md (from bench/):
    PROF_DIR=/tmp/prof \
    PNYX_BENCH_SERVE="../.venv/bin/python results/2026-12-03-reads/prof_serve.py" \
        ../.venv/bin/python -m pnyxbench --systems pnyx3 --clients 256 --read-ratio 1 \
        --duration 8 --warmup 1 --rounds 1 --no-ceiling --no-probe
"""
import atexit
import cProfile
import os
import sys

args = sys.argv[1:]
node = args[args.index("--id") + 1] if "--id" in args else "x"
prof = cProfile.Profile()


def dump() -> None:
    prof.disable()
    prof.dump_stats(os.path.join(os.environ.get("PROF_DIR", "/tmp/prof"), f"node-{node}.prof"))


atexit.register(dump)
sys.argv = ["pnyx", *args]
from pnyx.cli import main  # noqa: E402

prof.enable()
main()
