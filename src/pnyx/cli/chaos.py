"""`pnyx chaos`: break a local cluster on purpose, and judge what its clients saw.

It starts a local cluster of `pnyx serve` processes, each in a network namespace of
its own (`pnyx.netns`; root only — without root, `kill` and `pause` run on
127.0.0.1 and partitions are refused with the reason), runs concurrent
clients against it while a nemesis strikes in fault windows, then checks the
history with `pnyx.check` and every acknowledged write on every member, and
prints a verdict with availability figures (`pnyx.chaos` does the work).
Exit status 0 when the run passes, 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from pnyx.cli.common import StartError, UsageError

DESCRIPTION = (
    "Start a local cluster with each node in its own network namespace, run concurrent "
    "clients against it while a nemesis strikes (kill, pause, or a partition: minority, "
    "leader-alone, bridge, flapping; by blackhole routes or silent loss), then check the "
    "clients' history for linearizability and every acknowledged write for durability, and "
    "print a verdict with operations per second during faults and without. Partitions need "
    "root and `ip netns`. Exit status 0 if the run passes, 1 if not.")


def add_parsers(sub: Any) -> None:
    from pnyx.chaos import NEMESES
    from pnyx.netns import CUT_KINDS

    ch = sub.add_parser("chaos", help="run clients against a local cluster under a nemesis, "
                        "and check what they saw", description=DESCRIPTION)
    ch.add_argument("--nemesis", choices=NEMESES, default="bridge",
                    help="what breaks in each fault window (default bridge)")
    ch.add_argument("--cut", choices=CUT_KINDS, default="blackhole",
                    help="how partitions cut: blackhole routes, or silent packet loss "
                    "(default blackhole)")
    ch.add_argument("--nodes", type=int, default=3, help="cluster size, 1..9 (default 3)")
    ch.add_argument("--time", type=float, default=30.0, metavar="SECONDS",
                    help="how long the clients run (default 30)")
    ch.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ch.add_argument("--keys", type=int, default=8, help="keys they share (default 8)")
    ch.add_argument("--fault", type=float, default=3.0, metavar="SECONDS",
                    help="how long each fault lasts (default 3)")
    ch.add_argument("--calm", type=float, default=2.0, metavar="SECONDS",
                    help="calm before the first fault and between faults (default 2)")
    ch.add_argument("--balance", action="store_true",
                    help="each call starts at a member drawn at random, as behind a load "
                    "balancer (default: each client keeps to the member that answers it)")
    ch.add_argument("--seed", type=int, default=0, help="seed of the nemesis and clients")
    ch.add_argument("--election-timeout", type=int, default=300, metavar="MS",
                    help="the nodes' election timeout (default 300)")
    ch.add_argument("--heartbeat", type=int, default=50, metavar="MS",
                    help="the nodes' heartbeat interval (default 50)")
    ch.add_argument("--data-dir", metavar="DIR",
                    help="keep the nodes' data and logs here (default: a temporary "
                    "directory, removed after a passing run)")
    ch.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    ch.add_argument("--quiet", action="store_true", help="print the verdict only")
    ch.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pnyx import netns
    from pnyx.chaos import PARTITIONS, Plan
    from pnyx.chaos import run as run_chaos
    from pnyx.testing import Cluster

    if not 1 <= args.nodes <= 9:
        raise UsageError("pnyx chaos: --nodes must be 1 to 9")
    try:
        plan = Plan(nemesis=args.nemesis, kind=args.cut, duration=args.time,
                    clients=args.clients, keys=args.keys, fault=args.fault, calm=args.calm,
                    seed=args.seed, balance=args.balance)
    except ValueError as exc:
        raise UsageError(f"pnyx chaos: {exc}") from None
    why = netns.unavailable()
    if why is not None and args.nemesis in PARTITIONS:
        raise StartError(f"nemesis {args.nemesis} cuts the network between namespaces, "
                         f"and {why}")
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="pnyx-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    say = (lambda _: None) if args.quiet else (lambda line: print(f"  .. {line}", flush=True))
    cluster = Cluster(root, nodes=args.nodes, election_ms=args.election_timeout,
                      heartbeat_ms=args.heartbeat, namespaces=why is None)
    try:
        try:
            cluster.start_all()
        except (RuntimeError, TimeoutError) as exc:
            raise StartError(f"the cluster did not start: {exc}") from None
        where = "namespaces" if cluster.net is not None else "127.0.0.1 (no namespaces: " \
            f"{why})"
        say(f"{args.nodes} nodes up in {where}; data and logs in {root}")
        report = run_chaos(cluster, plan, log=say)
    finally:
        cluster.stop_everything()
    print("\n".join(report.lines()))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    if report.passed and not args.data_dir:
        shutil.rmtree(root, ignore_errors=True)
    elif not report.passed:
        print(f"the nodes' data and logs are in {root}", file=sys.stderr)
    return 0 if report.passed else 1
