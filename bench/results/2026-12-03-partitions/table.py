"""Print the before/after table of README.md here from the JSON reports of run.sh."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent
SHAPES = ("minority", "leader-alone", "bridge", "flapping")


def row(label: str, name: str) -> str:
    path = HERE / label / f"{name}.json"
    if not path.exists():
        return "–"
    r = json.loads(path.read_text())
    shape = r["plan"]["nemesis"]
    rate = r["fault_rate"].get(shape, 0.0)
    ratio = rate / r["calm_rate"] if r["calm_rate"] else 0.0
    heal = r["heal_to_serving"]
    verdict = "pass" if r["passed"] else "FAIL"
    return (f"{rate:.0f}/{r['calm_rate']:.0f} = **{100 * ratio:.0f} %**; heal "
            f"{statistics.median(heal):.2f}/{max(heal):.2f} s; {verdict}")


def main() -> None:
    labels = sys.argv[1:] or ["before", "after"]
    print("| workload | cut | shape | " + " | ".join(labels) + " |")
    print("|---" * (3 + len(labels)) + "|")
    for balance in ("", "-balanced"):
        for cut in ("blackhole", "loss"):
            for shape in SHAPES:
                name = f"{shape}-{cut}{balance}"
                cells = " | ".join(row(label, name) for label in labels)
                print(f"| {'balanced' if balance else 'sticky'} | {cut} | {shape} | {cells} |")


if __name__ == "__main__":
    main()
