"""`pnyx member`: list and change the members of a running cluster.

`add_parsers(subparsers)` adds `member` with its subcommands and `run(args)`
carries one out with `pnyx.Client` (its membership calls, `pnyx.api.members`
on the nodes). The rule the changes follow is
`pnyx.protocol.multipaxos.membership`'s: a new node joins as a learner and
votes only once it has caught up. Flags as the key-value commands have them
(`--endpoints`, `--timeout`, `--json`, TLS: `pnyx.cli.kv`); a wrong flag is one
line and exit status 2, a refused or failed change one line and status 1.

    pnyx member list
    pnyx member add 4 127.0.0.1:7004 --http 127.0.0.1:8004      # promoted once caught up
    pnyx member add 5 127.0.0.1:7005 --learner                   # stays a learner
    pnyx member promote 5
    pnyx member remove 3
    pnyx member replace 3 6 127.0.0.1:7006 --http 127.0.0.1:8006

`replace OLD NEW PEER` is one safe sequence: add NEW as a learner, wait (up to
`--wait` seconds) until the leader reports it caught up, then one change that
promotes NEW and removes OLD (against the version the add made, so a change
made meanwhile by someone else is a conflict, not a surprise). Each step is
printed; run it again to resume after a timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any, Final

from pnyx.cli.kv import (
    _add_common,
    _endpoints,
    _one_line,
    _timeout,
    _tls,
    _Usage,
    report_failure,
)
from pnyx.client import Client
from pnyx.client.members import DEFAULT_REPLACE_TIMEOUT, find, leads, newest
from pnyx.errors import Conflict, PnyxError

COMMANDS: Final = ("list", "add", "promote", "remove", "move", "replace")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


def add_parsers(subparsers: Any) -> None:
    """Add `member` (list, add, promote, remove, replace) to `pnyx`'s subparsers."""
    member = subparsers.add_parser(
        "member", help="list or change the cluster's members",
        description="List or change the members of a running cluster. A new member joins "
        "as a learner (it does not vote) and is made a voter once it has caught up, so "
        "adding one never costs the cluster its quorum.")
    sub = member.add_subparsers(dest="member_command", metavar="SUBCOMMAND",
                                parser_class=type(member))
    member.set_defaults(run=run, member_command=None)

    p = sub.add_parser("list", help="the members, their roles and progress",
                       description="Print the configuration: each member's id, role, "
                       "addresses and applied slot (as the leader sees it; '-' where no "
                       "endpoint answered as the leader).")
    _add_common(p)

    p = sub.add_parser("add", help="add a node (as a learner, then a voter)",
                       description="Add node ID, which its peers reach at PEER (its --listen "
                       "address), as a learner; the leader makes it a voter once it has "
                       "caught up, unless --learner.")
    p.add_argument("id")
    p.add_argument("peer", metavar="PEER")
    p.add_argument("--http", metavar="HOST:PORT", help="where it serves the HTTP API")
    p.add_argument("--learner", action="store_true",
                   help="keep it a learner until `pnyx member promote`")
    _add_base(p)
    _add_common(p)

    p = sub.add_parser("promote", help="make a learner a voter",
                       description="Make learner ID a voter (refused until it has caught up).")
    p.add_argument("id")
    _add_base(p)
    _add_common(p)

    p = sub.add_parser("remove", help="remove a member",
                       description="Remove member ID (refused if it would leave no voter, or "
                       "no live quorum). The removed node stops serving.")
    p.add_argument("id")
    _add_base(p)
    _add_common(p)

    p = sub.add_parser("move", help="a member moved to another host",
                       description="Member ID moved (with its data directory) to another "
                       "host: its peers reach it at PEER (and clients at --http) once the "
                       "change is applied. Start it there with the new --listen address.")
    p.add_argument("id")
    p.add_argument("peer", metavar="PEER")
    p.add_argument("--http", metavar="HOST:PORT", help="where it serves the HTTP API now")
    _add_base(p)
    _add_common(p)

    p = sub.add_parser("replace", help="replace a member by a new node, safely",
                       description="Replace member OLD by node NEW at PEER: add NEW as a "
                       "learner, wait until the leader reports it caught up, then one change "
                       "that promotes NEW and removes OLD.")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("peer", metavar="PEER")
    p.add_argument("--http", metavar="HOST:PORT", help="where NEW serves the HTTP API")
    p.add_argument("--wait", metavar="SECONDS", default=str(DEFAULT_REPLACE_TIMEOUT),
                   help=f"how long NEW may take to catch up (default "
                   f"{DEFAULT_REPLACE_TIMEOUT:g})")
    _add_common(p)


def _add_base(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", metavar="VERSION",
                   help="only if the configuration is still at this version (else a conflict)")


# --- checking flags -----------------------------------------------------------


def _id(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > (1 << 31) - 1:
        raise _Usage(f"{what}: {text!r} is not a node id (an integer from 0)")
    return int(text)


def _base(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise _Usage(f"--base: {text!r} is not a configuration version (an integer from 0)")
    return int(text)


def _wait(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Usage(f"--wait: {text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise _Usage(f"--wait: {text} must be more than 0 and at most 86400")
    return value


# --- output -------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return " ".join(str(value).split())  # one line, whatever a node put there


def table(view: Mapping[str, Any]) -> list[str]:
    """The view as lines: a heading, then one row per member (id, role, peer, http,
    applied), then the changes chosen but not yet in force."""
    genesis = view.get("genesis") if isinstance(view.get("genesis"), dict) else {}
    lines = [f"configuration version {_cell(view.get('version'))} (in force from slot "
             f"{_cell(view.get('start'))}), leader {_cell(view.get('leader'))}, commit "
             f"{_cell(view.get('commit'))}"]
    rows = [("ID", "ROLE", "PEER", "HTTP", "APPLIED")]
    for m in view.get("members") or ():
        if not isinstance(m, dict):
            continue
        role = str(m.get("role"))
        if role == "learner" and m.get("promote"):
            role = "learner (promoted once caught up)"
        peer = m.get("peer") or genesis.get(str(m.get("id")))
        rows.append((_cell(m.get("id")), _cell(role), _cell(peer), _cell(m.get("http")),
                     _cell(m.get("applied"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    for pending in view.get("pending") or ():
        if isinstance(pending, dict):
            ids = ", ".join(f"{m.get('id')} {m.get('role')}" for m in pending.get("members") or ()
                            if isinstance(m, dict))
            lines.append(f"pending: version {_cell(pending.get('version'))} from slot "
                         f"{_cell(pending.get('start'))}: {ids}")
    return lines


def _best_view(views: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The leader's view if one endpoint gave it (it has each member's progress), else the
    newest."""
    def rank(view: dict[str, Any]) -> tuple[bool, int]:
        version = newest(view).get("version")
        return leads(view), version if isinstance(version, int) else -1

    return max(views, key=rank) if views else None


# --- running ------------------------------------------------------------------


def _run(args: argparse.Namespace, out: IO[str], make_client: Callable[..., Client]) -> int:
    command = args.member_command
    if command not in COMMANDS:
        raise _Usage(f"give a subcommand: {', '.join(COMMANDS)}")
    endpoints = _endpoints(args)
    tls = _tls(args, endpoints)
    timeout = _timeout(args)
    as_json = bool(args.json)
    base = _base(getattr(args, "base", None))
    node = _id(args.id, "ID") if command in ("add", "promote", "remove", "move") else None
    wait = _wait(args.wait) if command == "replace" else 0.0
    old = _id(args.old, "OLD") if command == "replace" else None
    new = _id(args.new, "NEW") if command == "replace" else None
    if command == "replace" and old == new:
        raise _Usage("OLD and NEW must be different nodes")

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    hint = ""
    with make_client(endpoints, timeout=timeout, connect_timeout=min(2.0, timeout),
                     retry_timeout=timeout, **tls) as client:
        if command == "list":
            view = _best_view(client.member_views()) or client.members()
            if as_json:
                say(json.dumps(view))
            else:
                for line in table(view):
                    say(line)
            return EXIT_OK
        if command == "add":
            assert node is not None
            view = client.add_member(node, args.peer, http=args.http, learner=args.learner,
                                     base=base)
            what = ("as a learner (promote it with `pnyx member promote`)" if args.learner
                    else "as a learner; the leader makes it a voter once it has caught up")
            added = find(view, node) or {}
            done = f"added node {node} {what}"
            hint = (f"start it (if it is not running) with: pnyx serve --id {node} --join "
                    f"{','.join(endpoints)} --incarnation {added.get('incarnation')} --listen "
                    f"{args.peer}" + (f" --http {args.http}" if args.http else "")
                    + " --data-dir DIR")
        elif command == "promote":
            assert node is not None
            view = client.promote_member(node, base=base)
            done = f"promoted node {node}: it votes"
        elif command == "remove":
            assert node is not None
            view = client.remove_member(node, base=base)
            done = f"removed node {node}"
        elif command == "move":
            assert node is not None
            view = client.move_member(node, args.peer, http=args.http, base=base)
            done = f"node {node} is now reached at {args.peer}"
        else:
            assert old is not None and new is not None
            view = client.replace_member(old, new, args.peer, http=args.http, timeout=wait,
                                         on_step=None if as_json else say)
            done = f"replaced node {old} by node {new}"
        if as_json:
            say(json.dumps(view))
        else:
            latest = newest(view)
            say(f"{done}; configuration version {_cell(latest.get('version'))} (in force "
                f"from slot {_cell(latest.get('start'))})")
            if command == "add":
                say(hint)
    return EXIT_OK


def run(args: argparse.Namespace, *, stdout: IO[str] | None = None,
        stderr: IO[str] | None = None, make_client: Callable[..., Client] = Client) -> int:
    """Carry out one `pnyx member` command; the exit status (0 done, 1 failed, 2 bad flags)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    prog = f"pnyx member {getattr(args, 'member_command', '') or ''}".strip()
    try:
        return _run(args, out, make_client)
    except _Usage as exc:
        err.write(f"{prog}: {_one_line(str(exc))}\n")
        return EXIT_USAGE
    except Conflict as exc:
        err.write(f"{prog}: {exc.code or 'conflict'}: {_one_line(exc.message)}\n")
        return EXIT_FAILED
    except (PnyxError, ValueError, TypeError, OSError) as exc:
        return report_failure(prog, exc, err)
