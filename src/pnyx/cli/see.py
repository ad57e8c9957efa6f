"""`pnyx replay` and `pnyx check`, and the `--html` output of `pnyx sim` / `pnyx sim-kv`.

- `pnyx replay TRACE --html out.html [--from N]`: the replay page of a trace
  written with `--trace` (a trace longer than one page is paged with `--from`);
- `pnyx check HISTORY [--html out.html]`: the linearizability verdict of a
  history written with `pnyx sim-kv --history`, and its picture.

A file that is empty, truncated or not JSON gives a one-line error (status 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pnyx.cli.common import StartError


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartError(f"cannot read {path}: {exc.strerror or exc}") from None


def add_parsers(sub: Any) -> None:
    rp = sub.add_parser(
        "replay",
        help="write the replay page (HTML) of a simulator trace",
        description="Turn a trace written by `pnyx sim --trace` or `pnyx sim-kv --trace` "
        "into one self-contained HTML page: play, pause, step, jump; click an event "
        "for the seed's rule it follows.",
    )
    rp.add_argument("trace", metavar="TRACE", help="a JSON-lines trace")
    rp.add_argument("--html", metavar="FILE", required=True, help="the page to write")
    rp.add_argument("--from", dest="start", type=int, default=0, metavar="N",
                    help="first event of the page (for traces longer than one page)")
    rp.add_argument("--title", help="the page's title")
    rp.set_defaults(run=run_replay)

    ck = sub.add_parser(
        "check",
        help="check a client history for linearizability (and draw it)",
        description="Check a history written by `pnyx sim-kv --history` for "
        "linearizability; with --html, draw it: per key, each client's operations as "
        "bars on a time axis, the failing part highlighted.",
    )
    ck.add_argument("history", metavar="HISTORY", help="a history file (JSON)")
    ck.add_argument("--html", metavar="FILE", help="write the picture of the history")
    ck.add_argument("--budget", type=float, default=10.0, metavar="SECONDS",
                    help="time budget of the search (default 10 s)")
    ck.set_defaults(run=run_check)


def _replay(path: str, trace: bytes, **kwargs: Any) -> int:
    from pnyx.viz.replay import TraceError, write_replay

    try:
        return write_replay(path, trace, **kwargs)
    except TraceError as exc:
        raise StartError(str(exc)) from None


def run_replay(args: argparse.Namespace) -> int:
    if args.start < 0:
        raise StartError("--from must not be negative")
    trace = read_file(args.trace)
    size = _replay(args.html, trace, title=args.title or f"pnyx replay of {args.trace}",
                   start=args.start, name=args.trace)
    print(f"replay written to {args.html} ({size / 1e6:.2f} MB)")
    return 0


def write_run_html(args: argparse.Namespace, trace: bytes, summary: str,
                   history: Any = None) -> None:
    """The `--html` page of one `pnyx sim` / `pnyx sim-kv` run."""
    seed = args.seed or 0
    title = f"pnyx {args.command} --seed {seed}: " + summary.splitlines()[0].split(": ", 2)[-1]
    size = _replay(args.html, trace, title=title, summary=summary,
                   kv=args.command == "sim-kv", nodes=args.nodes, name="the run's trace")
    print(f"  replay written to {args.html} ({size / 1e6:.2f} MB)")
    if history is not None:
        # The clients' history beside it, the failing part highlighted when there is one.
        from pnyx.check import check
        from pnyx.check.html import write_history_html

        path = Path(args.html)
        path = path.with_name(path.stem + "-history.html")
        result = check(history, budget_seconds=10)
        size = write_history_html(path, history, result,
                                  title=f"pnyx sim-kv --seed {seed}: the clients' history")
        print(f"  history view written to {path} ({size / 1e6:.2f} MB): {result.verdict}")


def load_history(path: str) -> Any:
    """A history file, or a one-line `StartError` saying what is wrong with it."""
    import json

    from pnyx.check import History

    raw = read_file(path)
    if not raw.strip():
        raise StartError(f"{path} is empty: no history to check")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        what = "cut short (a truncated history?)" if exc.pos >= len(raw.rstrip()) else "not JSON"
        raise StartError(f"{path} is {what}: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict) or not isinstance(data.get("ops"), list):
        raise StartError(f"{path} is not a pnyx history (no \"ops\" list)")
    try:
        return History.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise StartError(f"{path} is not a valid pnyx history: {exc}") from None


def run_check(args: argparse.Namespace) -> int:
    from pnyx.check import check

    history = load_history(args.history)
    result = check(history, budget_seconds=args.budget)
    print(result.explanation)
    if args.html:
        from pnyx.check.html import write_history_html

        size = write_history_html(args.html, history, result, title=f"history {args.history}")
        print(f"history view written to {args.html} ({size / 1e6:.2f} MB)")
    return 0 if result.ok else 1


def print_narration(args: argparse.Namespace, trace: bytes, result: Any) -> None:
    """`pnyx sim --narrate`: the run in words, then a blank line."""
    from pnyx.viz.narrate import narrate
    from pnyx.viz.replay import TraceError, records

    try:
        recs = list(records(trace, "the run's trace"))
    except TraceError as exc:
        raise StartError(str(exc)) from None
    chosen = result.chosen.decode() if result.chosen is not None else None
    for line in narrate(recs, nodes=args.nodes, safe=result.safe, chosen=chosen,
                        mutant=args.mutant, command="pnyx sim"):
        print(line)
    print()
