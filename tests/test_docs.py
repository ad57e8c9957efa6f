"""The documentation names only what exists: every test and function the multipaxos
cheat-sheet and the README's seed table point a reader to can be found."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pnyx.protocol.multipaxos as multipaxos

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def _test_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for path in TESTS.glob("test_*.py"):
        tree = ast.parse(path.read_text())
        names[path.stem] = {n.name for n in ast.walk(tree)
                            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return names


def test_every_test_the_cheat_sheet_names_exists() -> None:
    doc = multipaxos.__doc__ or ""
    cited = re.findall(r"\b(test_\w+)::(test_\w+)", doc)
    assert len(cited) > 20
    names = _test_names()
    missing = [f"{f}::{t}" for f, t in cited if t not in names.get(f, set())]
    assert not missing, f"the cheat-sheet names tests that do not exist: {missing}"


def test_every_unit_function_the_cheat_sheet_names_exists() -> None:
    doc = multipaxos.__doc__ or ""
    cited = set(re.findall(
        r"\b(acceptor|election|pipeline|log|reads|transfer|standing)\.(\w+)(?:\.(\w+))?",
        doc))
    assert cited
    missing = []
    for module, first, second in cited:
        if first == "py":  # a file name in the list of units
            continue
        mod = __import__(f"pnyx.protocol.multipaxos.{module}", fromlist=["_"])
        obj = getattr(mod, first, None)
        if obj is None or (second and getattr(obj, second, None) is None):
            missing.append(".".join(p for p in (module, first, second) if p))
    assert not missing, f"the cheat-sheet names functions that do not exist: {missing}"


def test_every_test_file_the_readme_seed_table_names_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    files = set(re.findall(r"`tests/(test_\w+\.py)`", readme))
    assert files
    missing = sorted(f for f in files if not (TESTS / f).exists())
    assert not missing, f"README names test files that do not exist: {missing}"
