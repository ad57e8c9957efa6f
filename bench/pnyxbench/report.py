"""Ratios, the issue's targets, the table and the plot."""

from __future__ import annotations

import re
from typing import Any

from pnyxbench.summary import Summary, size_text


def _find(summaries: list[Summary], name: str, **at: Any) -> Summary | None:
    for x in summaries:
        if x.system == name and not x.probe and all(getattr(x, k) == v for k, v in at.items()):
            return x
    return None


def ratios(summaries: list[Summary]) -> list[dict[str, Any]]:
    """Throughput ratios between systems at the same point, with the issue's targets."""
    out = []
    names = {x.system for x in summaries}
    for x in summaries:
        if x.probe or x.kind not in ("pnyx", "pnyx-nofsync"):
            continue
        at = {"clients": x.clients, "value_size": x.value_size, "read_ratio": x.read_ratio}
        if x.kind == "pnyx-nofsync":
            # Like for like: PySyncObj never fsyncs, and this setting of it does not wait
            # to batch either.
            pairs = [(f"pysyncobj{x.nodes}-nobatch", "neither fsyncs (like for like)", None)]
        else:
            # The target is against PySyncObj as it comes (its defaults); its
            # low-latency setting is shown beside it.
            pairs = [
                (f"pysyncobj{x.nodes}", "pnyx / PySyncObj (defaults)", 3.0),
                (f"pysyncobj{x.nodes}-nobatch", "pnyx / PySyncObj (no batching)", None),
                ("pnyx1-direct", "replicated / unreplicated", 0.5),
                (f"pnyx{x.nodes}-nofsync", "fsync on / off", None),
                ("trivial", "share of the generator's ceiling", None),
            ]
        for other, what, goal in pairs:
            if other not in names:
                continue
            y = _find(summaries, other, **at)
            if y is None or y.throughput <= 0:
                continue
            value = x.throughput / y.throughput
            out.append({"ratio": f"{x.system} / {other}", "what": what, **at,
                        "value": round(value, 3), "target": goal,
                        "met": None if goal is None else value >= goal})
    return out


def targets(summaries: list[Summary], fsync_ms: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's latency and read targets, where this run measured what they need."""
    out: list[dict[str, Any]] = []
    rtt = next((x for x in summaries if x.system == "trivial" and x.clients == 1
                and x.read_ratio == 0), None)
    for x in summaries:
        if x.kind != "pnyx" or x.clients != 1 or x.read_ratio != 0:
            continue
        if x.probe is False and any(y.system == x.system and y.probe for y in summaries):
            continue
        if fsync_ms is None or rtt is None:
            continue
        bound = 2 * (fsync_ms["p50"] + rtt.p50_ms)
        out.append({"target": f"{x.system}: p50 write latency at 1 client "
                              "<= 2 x (fsync + loopback round trip)",
                    "measured_ms": round(x.p50_ms, 3), "bound_ms": round(bound, 3),
                    "fsync_p50_ms": round(fsync_ms["p50"], 3),
                    "round_trip_p50_ms": round(rtt.p50_ms, 3), "met": x.p50_ms <= bound})
    for x in summaries:
        if x.kind not in ("pnyx", "pnyx-lease") or x.probe or x.read_ratio != 1.0:
            continue
        w = _find(summaries, x.system, clients=x.clients, value_size=x.value_size, read_ratio=0.0)
        if w is None or w.throughput <= 0:
            continue
        value = x.throughput / w.throughput
        out.append({"target": f"{x.system}: reads ({x.clients} clients) >= 3 x writes",
                    "value": round(value, 3), "goal": 3.0, "met": value >= 3.0})
    return out


# ------------------------------------------------------------------ output


def format_report(report: dict[str, Any]) -> str:
    cfg, machine = report["config"], report["machine"]
    lines = []
    reads = sorted(set(cfg["read_ratios"]))
    lines.append(
        f"pnyx bench: {cfg['rounds']} round(s) of {cfg['duration']:g} s after "
        f"{cfg['warmup']:g} s warm-up; clients -> {cfg['target']}; "
        f"{cfg['procs']} load generator process(es); "
        f"reads {'/'.join(f'{r:.0%}' for r in reads)} ({cfg['read_mode']})")
    lines.append(
        f"machine: {machine['cpus']} CPUs shared by every server and the load generator; "
        f"{machine['platform']}; Python {machine['python']}; data on {machine['data_filesystem']}")
    if report.get("fsync_ms"):
        f = report["fsync_ms"]
        lines.append(f"disk: 4 KiB append + fdatasync p50 {f['p50']:.3f} ms, "
                     f"p90 {f['p90']:.3f} ms ({f['samples']} samples, same run)")
    lines.append("")
    width = max([len("system")] + [len(_row_name(x)) for x in report["summaries"]]) + 1
    header = (f"{'system':<{width}}{'nodes':>5}{'clients':>8}{'value':>8}{'reads':>6}"
              f"{'ops/s':>11}{'±':>5}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}"
              f"{'err':>5}{'CPU lead/all':>14}{'gen CPU':>8}{'RSS MiB':>9}")
    lines.append(header)
    lines.append("-" * len(header))
    for x in report["summaries"]:
        name = _row_name(x)
        cpu = "-"
        if x["leader_cpu"] is not None and x["servers_cpu"] is not None:
            cpu = f"{x['leader_cpu']:.0%}/{x['servers_cpu']:.0%}"
        rss = max(x["rss_mib"].values()) if x["rss_mib"] else None
        lines.append(
            f"{name:<{width}}{x['nodes']:>5}{x['clients']:>8}{size_text(x['value_size']):>8}"
            f"{x['read_ratio']:>6.0%}{x['throughput']:>11,.0f}{x['spread']:>5.0%}"
            f"{x['p50_ms']:>8.2f}{x['p90_ms']:>8.2f}{x['p99_ms']:>8.2f}{x['max_ms']:>8.1f}"
            f"{x['errors'] + x['unanswered']:>5}{cpu:>14}{x['loadgen_cpu']:>8.0%}"
            f"{(f'{rss:.0f}' if rss is not None else '-'):>9}")
    lines.append("")
    lines.append("  * trivial: a server that answers every request at once; its row is the load "
                 "generator's ceiling at that load.")
    if any(x["probe"] for x in report["summaries"]):
        lines.append("  probe: one client for a few seconds, for the latency target below.")
    lines.append("  ± is the spread of throughput between rounds; CPU is the share of one core "
                 "(leader / all nodes) while measuring; RSS is the largest node's at the end.")
    if any(x["kind"] == "etcd" for x in report["summaries"]):
        lines.append("  etcd is driven through its JSON gateway (HTTP + JSON), the others over "
                     "pnyx's binary protocol.")
    if report.get("data_dir"):
        lines.append(f"  logs and data kept in {report['data_dir']}")
    errors = [x for x in report["summaries"] if x["first_error"]]
    for x in errors:
        lines.append(f"  {x['system']}: first error: {x['first_error'][:200]}")
    if report["ratios"]:
        lines.append("")
        lines.append(f"{'ratio (throughput)':<36}{'what':<34}{'clients':>8}{'value':>8}"
                     f"{'reads':>6}{'value':>9}{'target':>9}  ")
        for r in report["ratios"]:
            goal = f">= {r['target']:g}" if r["target"] is not None else ""
            verdict = {True: "met", False: "NOT met", None: ""}[r["met"]]
            lines.append(f"{r['ratio']:<36}{r['what']:<34}{r['clients']:>8}"
                         f"{size_text(r['value_size']):>8}{r['read_ratio']:>6.0%}"
                         f"{r['value']:>8.2f}x{goal:>9}  {verdict}")
    if report["targets"]:
        lines.append("")
        for t in report["targets"]:
            verdict = "met" if t["met"] else "NOT met"
            if "bound_ms" in t:
                lines.append(f"{t['target']}: {t['measured_ms']:.3f} ms vs 2 x "
                             f"({t['fsync_p50_ms']:.3f} + {t['round_trip_p50_ms']:.3f}) = "
                             f"{t['bound_ms']:.3f} ms: {verdict}")
            else:
                lines.append(f"{t['target']}: {t['value']:.2f}x: {verdict}")
    return "\n".join(lines)


def _row_name(x: dict[str, Any]) -> str:
    return x["system"] + ("*" if x["kind"] == "trivial" else "") + (" probe" if x["probe"] else "")


def plot(report: dict[str, Any], path: str) -> None:
    """Throughput and p99 against the curve's dimension (clients when there is none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dim = report["config"].get("curve") or "clients"
    rows = [x for x in report["summaries"] if not x["probe"]]
    xkey = "nodes" if dim == "nodes" else dim
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_system: dict[str, list[dict[str, Any]]] = {}
    for x in rows:
        base = re.sub(r"\d+", "N", x["system"]) if dim == "nodes" else x["system"]
        by_system.setdefault(base, []).append(x)
    for name, xs in by_system.items():
        xs.sort(key=lambda x: x[xkey])
        ax1.plot([x[xkey] for x in xs], [x["throughput"] for x in xs], marker="o", label=name)
        ax2.plot([x[xkey] for x in xs], [x["p99_ms"] for x in xs], marker="o", label=name)
    label = {"clients": "clients", "value_size": "value size (bytes)",
             "read_ratio": "read ratio", "nodes": "nodes"}[xkey]
    for ax, what in ((ax1, "throughput (ops/s)"), (ax2, "p99 latency (ms)")):
        ax.set_xlabel(label)
        ax.set_ylabel(what)
        if xkey in ("clients", "value_size"):
            ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
    # Log scales: the systems differ by orders of magnitude, and a linear axis would
    # flatten every replicated system against zero next to the trivial server.
    ax1.set_yscale("log")
    ax2.set_yscale("log")
    ax1.legend(fontsize="small")
    machine = report["machine"]
    fig.suptitle(f"pnyx bench ({machine['cpus']} CPUs shared by servers and load generator)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


