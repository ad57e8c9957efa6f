"""The picture of a client history (`pnyx check HISTORY --html`, and beside
`pnyx sim-kv --html`), checked in headless Chromium: a non-linearizable history
opens on its failing part, highlighted as the checker explains it; bad history
files give one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pnyx.check import Get, History, Put, Recorder, check
from pnyx.check.html import history_data
from pnyx.cli import main
from viz_browser import browser, console_errors, open_page, screenshot


def _stale_read() -> History:
    """c1 writes 1 (slowly); c2 reads 1; then c3 reads absent: not linearizable.
    Key "y" has a harmless history beside it."""
    h = History()
    h.add("c1", Put("x", 1), 0, 10)
    h.add("c2", Get("x"), 1, 2, result=1)
    h.add("c3", Get("x"), 3, 4, result=None)
    h.add("c2", Put("y", 7), 3, 5)
    h.add("c1", Get("y"), 6, 8, result=7)
    return h


@pytest.fixture(scope="module")
def chromium() -> Any:
    with browser() as driver:
        yield driver


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_history_view_of_a_stale_read_highlights_the_ops_the_checker_names(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = _stale_read()
    result = check(history)
    assert not result.ok and result.op is not None
    path = tmp_path / "h.json"
    history.dump(path)
    page = tmp_path / "h.html"
    code, out, _ = _run(capsys, "check", str(path), "--html", str(page))
    assert code == 1 and "not linearizable" in out
    open_page(chromium, page)
    assert chromium.find_element("id", "verdict").text == "not linearizable"
    failing = chromium.execute_script(
        "return [...document.querySelectorAll('.op.fail')].map(g => +g.dataset.op)")
    concurrent = chromium.execute_script(
        "return [...document.querySelectorAll('.op.concurrent')].map(g => +g.dataset.op)")
    assert failing == [result.op.id]
    assert sorted(concurrent) == sorted(o.id for o in result.concurrent)
    assert result.op.client == "c3"
    # The failing key opens first, the explanation is on the page, the other key stays shut.
    opened = chromium.execute_script(
        "return [...document.querySelectorAll('details')].map(d => [d.dataset.key, d.open])")
    assert opened == [["'x'", True], ["'y'", False]]
    assert "not linearizable: key 'x'" in chromium.find_element("id", "explanation").text
    chromium.find_element("css selector", f'.op[data-op="{result.op.id}"]').click()
    assert "c3: get('x') -> None" in chromium.find_element("id", "detail").text
    screenshot(chromium, "history-stale-read.png")
    assert console_errors(chromium) == []


def test_a_linearizable_history_highlights_nothing(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder()
    for n in range(20):
        h = rec.invoke(f"c{n % 3}", Put("k", n))
        rec.complete(h)
        h = rec.invoke(f"c{(n + 1) % 3}", Get("k"))
        rec.complete(h, n)
    path = tmp_path / "ok.json"
    rec.history().dump(path)
    page = tmp_path / "ok.html"
    code, _, _ = _run(capsys, "check", str(path), "--html", str(page))
    assert code == 0
    open_page(chromium, page)
    assert chromium.find_element("id", "verdict").text == "linearizable"
    assert chromium.execute_script("return document.querySelectorAll('.op').length") == 40
    assert chromium.execute_script(
        "return document.querySelectorAll('.op.fail, .op.concurrent').length") == 0


def test_a_sim_kv_run_with_a_stale_read_mutant_writes_its_history_view_beside_the_replay(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "run.html"
    # Seed 242 of these settings catches this mutant (an L4 violation: a stale read).
    code, out, _ = _run(capsys, "sim-kv", "--seed", "242", "--nodes", "5", "--drop", "0.1",
                        "--dup", "0.05", "--partitions", "--crashes",
                        "--mutant", "linearizable-read-from-local-state", "--html", str(page))
    assert code == 1 and "history view written" in out, out
    assert out.rstrip().endswith("violation"), out
    view = tmp_path / "run-history.html"
    open_page(chromium, view)
    assert chromium.find_element("id", "verdict").text == "not linearizable"
    assert chromium.execute_script("return document.querySelectorAll('.op.fail').length") == 1
    screenshot(chromium, "history-sim-kv-mutant-seed38.png")


def test_the_failing_part_keeps_only_the_failing_op_its_concurrent_ops_and_the_order() -> None:
    h = _stale_read()
    data = history_data(h, check(h))
    x = data["keys"][0]
    assert x["key"] == "'x'" and x["fail"]["op"] == 2
    assert x["fail"]["concurrent"] == [0]
    assert x["fail"]["order"] == [0, 1]


@pytest.mark.parametrize(("content", "says"), [
    ("", "is empty"),
    ('{"format": "pnyx-history/1", "ops": [{"id": 0, "client": "c1", "f": "put"', "cut short"),
    ("this is not json", "not JSON"),
    ('{"ops": 3}', 'no "ops" list'),
    ('{"ops": [{"id": 0}]}', "not a valid pnyx history"),
])
def test_a_bad_history_file_gives_one_line_and_status_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, out, err = _run(capsys, "check", str(path), "--html", str(tmp_path / "o.html"))
    assert code == 1 and out == ""
    assert says in err and err.count("\n") == 1 and err.startswith("pnyx check: "), err
    assert not (tmp_path / "o.html").exists()

