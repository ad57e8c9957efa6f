"""The `pnyx` command: one module per command group, wired together here.

- `pnyx.cli.serve`: `pnyx serve`, one node (its flags come from `pnyx.node.config.SETTINGS`);
- `pnyx.cli.cluster`: `pnyx cluster`, a local cluster of `serve` processes;
- `pnyx.cli.kv`: `pnyx put/get/del/cas/keys/status` against a running cluster;
- `pnyx.cli.member`: `pnyx member list/add/promote/remove/replace`, the cluster's members;
- `pnyx.cli.backup`: `pnyx backup` and `pnyx restore`, a cluster's state to a file and back;
- `pnyx.cli.sim`: `pnyx sim` and `pnyx sim-kv`, the deterministic simulator;
- `pnyx.cli.certs`: `pnyx certs init/issue`, the certificates of mutual TLS;
- `pnyx.cli.bench`: `pnyx bench`, the benchmark of a source checkout's bench/;
- `pnyx.cli.chaos`: `pnyx chaos`, a local cluster in namespaces under a nemesis, judged.

Each group adds its subcommands (`add_parsers`) and sets `run`. Every wrong
flag gives a one-line error and exit status 2; a command that cannot start
gives one line and status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pnyx.cli import backup, bench, certs, chaos, cluster, kv, member, serve, sim
from pnyx.cli.common import Parser, StartError, UsageError
from pnyx.protocol.quorum import QuorumError

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    parser = Parser(prog="pnyx", description="Multi-Paxos for Python.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for group in (sim, serve, cluster, kv, member, backup, certs, bench, chaos):
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = "pnyx"
    try:
        if argv[:1] == ["bench"]:
            # The benchmark parses its own flags: argparse cannot pass on a remainder
            # that starts with an option.
            command = "pnyx bench"
            return bench.run_argv(argv[1:])
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        command = f"pnyx {args.command}"
        return int(args.run(args))
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, QuorumError) as exc:  # ConfigError among them
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
