"""Time from a partition's heal to every member serving, for clean cuts and silent loss.

Issue 14's target: a healed partition has every member serving within about one
election timeout. A 3-node `pnyx serve` cluster runs in network namespaces
(`pnyx.testing.Cluster(namespaces=True)`, root only); each trial cuts one partition
shape (`pnyx.chaos`'s: minority, leader-alone, bridge) by blackhole routes or by silent
loss, holds it for `--hold` seconds with no client load, heals it, and measures the
time until every member has answered a write of its own (each probed alone, as
`pnyx chaos` measures it). Between trials the cluster rests `--calm` seconds.

    sudo .venv/bin/python bench/heal_time.py [--trials 5] [--hold 3] [--kinds blackhole,loss]

Prints one line per trial and, per cut kind and shape, the median and max against
the cluster's election timeout.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pnyx import netns
from pnyx.chaos import SHAPES, _cut_shape, _every_member_serves
from pnyx.netns import CUT_KINDS, CutKind
from pnyx.testing import Cluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="per cut kind and shape")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds each cut lasts")
    parser.add_argument("--calm", type=float, default=1.5, help="seconds between trials")
    parser.add_argument("--kinds", default=",".join(CUT_KINDS))
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--election-ms", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    why = netns.unavailable()
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    kinds: list[CutKind] = [k for k in CUT_KINDS if k in args.kinds.split(",")]
    shapes = [s for s in SHAPES if s in args.shapes.split(",")]
    rng = random.Random(args.seed)
    timeout = args.election_ms / 1000
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="heal-time-") as root:
        cluster = Cluster(Path(root), election_ms=args.election_ms, namespaces=True)
        try:
            cluster.start_all()
            cluster.leader()
            for trial in range(args.trials):
                for kind in kinds:
                    for shape in shapes:
                        what = _cut_shape(cluster, shape, kind, rng)
                        time.sleep(args.hold)
                        cluster.heal()
                        healed = time.monotonic()
                        seconds, ok = _every_member_serves(cluster, healed, bound=10.0)
                        results.setdefault((kind, shape), []).append(seconds)
                        print(f"trial {trial + 1} {kind:9} {what:24} every member serving "
                              f"{seconds:.3f} s after the heal"
                              + ("" if ok else " (NOT within 10 s)"), flush=True)
                        time.sleep(args.calm)
        finally:
            cluster.stop_everything()
    print(f"\nheal to every member serving ({args.trials} trials each, cuts held "
          f"{args.hold:g} s; election timeout {timeout:g} s, waits drawn in "
          f"[{timeout:g}, {2 * timeout:g}) s)")
    for kind in kinds:
        every = [s for (k, _), times in results.items() if k == kind for s in times]
        for shape in shapes:
            times = results[(kind, shape)]
            print(f"  {kind:9} {shape:12} median {statistics.median(times):.3f} s "
                  f"({statistics.median(times) / timeout:.2f} ET), max {max(times):.3f} s "
                  f"({max(times) / timeout:.2f} ET)")
        print(f"  {kind:9} {'all':12} median {statistics.median(every):.3f} s, "
              f"max {max(every):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
