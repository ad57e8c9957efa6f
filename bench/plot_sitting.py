"""Plots of a before/after sitting: closed-loop throughput, and open-loop committed vs offered.

Run by hand (not a test), on a directory written by a sitting's `run.sh`
(`closed-{before,after}-N.json`, `open-{before,after}-N.json`, as in
`bench/results/2026-12-03-cpu/`):

    .venv/bin/python bench/plot_sitting.py bench/results/2026-12-03-cpu

Writes `closed.png` (writes/s per system and client count, each tree's
rounds as dots over their mean) and `open.png` (committed writes/s against
the offered rate, every point of every max-rate search, the overload runs
marked, and the y = x line a system would follow if it answered everything)
into that directory. Needs matplotlib (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^(closed|open)-(\w+)-(\d+)\.json$")


def load(directory: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{"closed"|"open": {tree: [run, ...]}} of every sitting file in `directory`."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"closed": defaultdict(list),
                                                         "open": defaultdict(list)}
    for path in sorted(directory.iterdir()):
        match = _NAME.match(path.name)
        if match:
            kind, tree, _ = match.groups()
            runs[kind][tree].append(json.loads(path.read_text()))
    return runs


def plot_closed(runs: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib.pyplot as plt

    # (system, tree) -> clients -> writes/s of each round. PySyncObj is not pnyx's code
    # (a sitting runs it from one tree only), so it is plotted under its own name.
    series: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for tree, files in runs.items():
        for run in files:
            for s in run["summaries"]:
                if s.get("probe") or s["read_ratio"]:
                    continue
                label = "" if _foreign(s["system"]) else tree
                series[(s["system"], label)][s["clients"]].extend(s["round_throughputs"])
    clients = sorted({c for per in series.values() for c in per})
    fig, axes = plt.subplots(1, len(clients), figsize=(4.2 * len(clients), 4.2))
    for ax, c in zip(axes if len(clients) > 1 else [axes], clients, strict=True):
        names = [k for k in sorted(series) if c in series[k]]
        for i, key in enumerate(names):
            values = series[key][c]
            ax.bar(i, statistics.mean(values), color=_colour(key), alpha=0.7)
            ax.scatter([i] * len(values), values, color="black", s=10, zorder=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f"{s}\n{t}" if t else s for s, t in names], rotation=60,
                           ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"{c} client{'s' if c != 1 else ''}")
        ax.set_ylabel("writes/s (log)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("closed loop, 100-byte writes, fsync on (bars: mean; dots: rounds)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_open(runs: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    top = 0.0
    seen: set[tuple[str, str]] = set()
    for tree, files in sorted(runs.items()):
        for run in files:
            for p in run["points"] + run["overload_runs"]:
                key = (p["system"], "" if _foreign(p["system"]) else tree)
                overload = p in run["overload_runs"]
                ax.scatter(p["rate"], p["committed"], color=_colour(key),
                           marker="x" if overload else "o", s=40 if overload else 18,
                           label=None if key in seen else " ".join(key).strip())
                seen.add(key)
                top = max(top, p["rate"])
            for m in run["max_rate"].values():
                key = (m["system"], "" if _foreign(m["system"]) else tree)
                ax.scatter(m["rate"], m["committed"], facecolors="none",
                           edgecolors=_colour(key), s=140, linewidths=1.5)
    ax.plot([0, top], [0, top], color="grey", linestyle=":", label="committed = offered")
    ax.set_xlabel("offered writes/s (Poisson arrivals)")
    ax.set_ylabel("committed writes/s")
    ax.set_title("open loop: ringed = max-rate (>= 90 % ok within 1 s); x = 2x overload")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _foreign(system: str) -> bool:
    """A system that is not pnyx's code: the same whichever tree's runner started it."""
    return not system.startswith("pnyx")


_PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:olive", "tab:cyan"]
_COLOURS: dict[tuple[str, str], str] = {}


def _colour(key: tuple[str, str]) -> str:
    if key not in _COLOURS:
        _COLOURS[key] = _PALETTE[len(_COLOURS) % len(_PALETTE)]
    return _COLOURS[key]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path, help="a sitting's results directory")
    args = p.parse_args()
    runs = load(args.directory)
    if not runs["closed"] and not runs["open"]:
        raise SystemExit(f"{args.directory}: no closed-*.json or open-*.json files")
    if runs["closed"]:
        plot_closed(runs["closed"], args.directory / "closed.png")
        print(f"wrote {args.directory / 'closed.png'}")
    if runs["open"]:
        plot_open(runs["open"], args.directory / "open.png")
        print(f"wrote {args.directory / 'open.png'}")


if __name__ == "__main__":
    main()
