"""The golden scenarios of `tests/scenarios/`: each step's printed effects must match.

See `tests/scenario.py` for the language. A mismatch shows the step, the line
and both outputs; `--rewrite-scenarios` writes the new outputs into the files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scenario import SCENARIOS, Scenario, parse, render

FILES = sorted(SCENARIOS.glob("*.txt"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    text = path.read_text()
    scenario = Scenario()
    results = [(block, scenario.run(block.command)) for block in parse(text)]
    if request.config.getoption("--rewrite-scenarios"):
        path.write_text(render(results, text))
        return
    for block, got in results:
        assert got == block.expected, (
            f"{path.name}:{block.line}: {block.command}\n--- expected\n{block.expected}\n"
            f"--- got\n{got}")


def test_scenario_files_exist() -> None:
    assert len(FILES) >= 5
