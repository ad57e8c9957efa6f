"""The examples in `examples/` run and say what their docstrings promise."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from pnyx.testing import free_ports

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(name: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout


def test_replicated_counter_applies_every_increment_once_on_every_node(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        example = importlib.import_module("replicated_counter")
    finally:
        sys.path.remove(str(EXAMPLES))
    a, b, c = free_ports(3)
    values = asyncio.run(example.main((a, b, c)))
    out = capsys.readouterr().out
    assert values == [10, 10, 10]
    assert "each increment saw: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" in out
    for i in (1, 2, 3):
        assert f"node {i} reads 10" in out


def test_write_once_register_chooses_one_value_for_every_client() -> None:
    out = run("write_once_register.py")
    told = out.splitlines()[0]
    values = {v for v in ("red", "green", "blue") if v in told}
    assert len(values) == 1
    (value,) = values
    assert out.count(f"learned: {value}") == 3
    assert f"after a crash: {value}" in out
