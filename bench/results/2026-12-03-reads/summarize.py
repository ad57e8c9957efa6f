"""Tables of the reads sitting: per configuration, before and after, reads/s over writes/s
(each run's two rounds pooled, then the three runs pooled and their spread), and the
CPU per operation (leader, and all three nodes) from the benchmark's /proc readings.

    python bench/results/2026-12-03-reads/summarize.py DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def runs(directory: Path, label: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob(f"{label}-*.json"))]


def per_run(doc: dict) -> dict[str, float]:
    """ops/s, leader and all-node CPU microseconds per op, for writes (0) and reads (1)."""
    out: dict[str, float] = {}
    for ratio, name in ((0.0, "w"), (1.0, "r")):
        ms = [m for m in doc["measurements"] if m["read_ratio"] == ratio and not m["probe"]]
        ops = sum(m["ops"] for m in ms)
        secs = sum(m["seconds"] for m in ms)
        lead = sum(m["server_cpu"][str(m["leader"])] * m["seconds"] for m in ms)
        every = sum(sum(m["server_cpu"].values()) * m["seconds"] for m in ms)
        out[name] = ops / secs
        out[name + "_lead_us"] = lead / ops * 1e6
        out[name + "_all_us"] = every / ops * 1e6
    out["ratio"] = out["r"] / out["w"]
    return out


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    print("| reads | clients to | code | writes/s | reads/s | reads / writes, per run "
          "| pooled | CPU µs per write (leader / all) | per read (leader / all) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in ("linearizable", "quorum", "stale"):
        for target in ("leader", "all"):
            for code in ("before", "after"):
                docs = runs(directory, f"{code}-{mode}-{target}")
                if not docs:
                    continue
                rs = [per_run(d) for d in docs]
                w = statistics.mean(r["w"] for r in rs)
                rd = statistics.mean(r["r"] for r in rs)
                ratios = ", ".join(f"{r['ratio']:.2f}" for r in rs)
                cpu = {k: statistics.mean(r[k] for r in rs)
                       for k in ("w_lead_us", "w_all_us", "r_lead_us", "r_all_us")}
                print(f"| {mode} | {target} | {code} | {w:,.0f} | {rd:,.0f} | {ratios} "
                      f"| **{rd / w:.2f}** | {cpu['w_lead_us']:.1f} / {cpu['w_all_us']:.1f} "
                      f"| {cpu['r_lead_us']:.1f} / {cpu['r_all_us']:.1f} |")


if __name__ == "__main__":
    main()
