"""`pnyx certs`: make a cluster's CA and its members' and clients' certificates.

    pnyx certs init DIR [--cluster-id pnyx]          the CA: DIR/ca.pem, DIR/ca-key.pem
    pnyx certs issue DIR --node-id N --host NAME...  member N: DIR/node-N.pem, -key.pem
    pnyx certs issue DIR --client NAME               a client: DIR/client-NAME.pem, -key.pem

The files are `pnyx.certs`'s; each command prints what it made and the flags
that use it. The CA's key stays in DIR: copy to each host only its own
certificate and key and ca.pem.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pnyx.certs import CA_CERT, CertError, init_ca, issue_client, issue_member
from pnyx.cli.common import StartError, UsageError


def add_parsers(sub: Any) -> None:
    group = sub.add_parser(
        "certs", help="make a cluster's CA and its members' and clients' certificates",
        description="Make the certificates of mutual TLS: a CA per cluster (`init`), then a "
        "certificate per member naming its node id, and per client (`issue`).")
    certs_sub = group.add_subparsers(dest="certs_command", metavar="COMMAND",
                                     parser_class=type(group))
    init = certs_sub.add_parser(
        "init", help="make the cluster's CA in DIR",
        description="Make the cluster's CA in DIR (ca.pem, and ca-key.pem, owner-only: keep "
        "it off the nodes). Refused if DIR holds one, unless --force.")
    init.add_argument("dir", metavar="DIR", type=Path)
    init.add_argument("--cluster-id", default="pnyx", metavar="NAME",
                      help="the cluster's name, as `pnyx serve --cluster-id` (default pnyx)")
    init.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    init.add_argument("--force", action="store_true",
                      help="replace the CA there (every certificate it issued stops working)")
    init.set_defaults(run=run_init)
    issue = certs_sub.add_parser(
        "issue", help="make a member's (--node-id) or a client's (--client) certificate",
        description="Make a key and a certificate signed by the CA in DIR: for member "
        "--node-id N, reached at every --host (DNS names or IP addresses its peers and "
        "clients use), or for client --client NAME.")
    issue.add_argument("dir", metavar="DIR", type=Path)
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--node-id", type=int, metavar="N", help="the member's node id")
    who.add_argument("--client", metavar="NAME", help="a client's name")
    issue.add_argument("--host", action="extend", nargs="+", default=[], metavar="NAME",
                       help="a name or address the member is reached at (repeatable; default "
                       "localhost and 127.0.0.1)")
    issue.add_argument("--days", type=int, default=825, help="validity (default 825)")
    issue.set_defaults(run=run_issue)
    group.set_defaults(run=lambda args: _no_command(group))


def _no_command(group: argparse.ArgumentParser) -> int:
    group.print_help()
    return 2


def run_init(args: argparse.Namespace) -> int:
    if args.days < 1:
        raise UsageError(f"pnyx certs init: --days must be at least 1, not {args.days}")
    try:
        made = init_ca(args.dir, args.cluster_id, days=args.days, force=args.force)
    except CertError as exc:
        raise StartError(str(exc)) from None
    print(f"made the CA of cluster {args.cluster_id!r}: {made.cert} (give it to every member "
          f"and client) and {made.key} (keep it off the nodes)")
    print(f"next: pnyx certs issue {args.dir} --node-id N --host NAME  (one per member)")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    if args.days < 1:
        raise UsageError(f"pnyx certs issue: --days must be at least 1, not {args.days}")
    if args.client is not None and args.host:
        raise UsageError("pnyx certs issue: --host is for a member (--node-id), not a client")
    ca = args.dir / CA_CERT
    try:
        if args.node_id is not None:
            made = issue_member(args.dir, args.node_id, args.host, days=args.days)
            hosts = ", ".join(args.host) or "localhost, 127.0.0.1"
            print(f"made member {args.node_id}'s certificate {made.cert} (for {hosts}) and its "
                  f"key {made.key}")
            print(f"serve with: --peer-cert-file {made.cert} --peer-key-file {made.key} "
                  f"--peer-trusted-ca-file {ca}")
        else:
            made = issue_client(args.dir, args.client, days=args.days)
            print(f"made client {args.client}'s certificate {made.cert} and its key {made.key}")
            print(f"connect with: --cacert {ca} --cert {made.cert} --key {made.key}")
    except CertError as exc:
        raise StartError(str(exc)) from None
    return 0
