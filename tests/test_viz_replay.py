"""The replay page of a simulated run (`pnyx sim --html`, `pnyx sim-kv --html`,
`pnyx replay`), checked in headless Chromium: it tells the same story as the
terminal, steps back and forth to the same picture, names the seed's rules;
and bad trace files give one line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pnyx.cli import main
from pnyx.viz.replay import TraceError, replay_html
from viz_browser import browser, console_errors, open_page, screenshot


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def chromium() -> Any:
    with browser() as driver:
        yield driver


def _key(driver: Any, key: str) -> None:
    driver.find_element("css selector", "body").send_keys(key)


def _text(driver: Any, id_: str) -> str:
    return str(driver.find_element("id", id_).text)


def _picture(driver: Any) -> str:
    return str(driver.execute_script(
        "return ['stage','stats','log','clock'].map(i => document.getElementById(i).outerHTML)"
        ".join('\\n')"))


END, LEFT, RIGHT, SPACE = "\ue010", "\ue012", "\ue014", " "


def test_replay_of_a_seed_ends_with_the_chosen_value_and_message_counts_pnyx_sim_prints(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "run.html"
    code, out, _ = _run(capsys, "sim", "--seed", "1", "--drop", "0.05", "--html", str(page))
    assert code == 0, out
    chosen = re.search(r"chosen\s+(\S+) at", out)
    counts = re.search(r"messages\s+(\d+) sent, (\d+) delivered, (\d+) lost", out)
    assert chosen and counts, out
    open_page(chromium, page)
    assert _text(chromium, "chosen") == "—"  # nothing chosen before the first event
    _key(chromium, END)
    assert _text(chromium, "chosen") == chosen.group(1)
    assert (_text(chromium, "stat-sent"), _text(chromium, "stat-delivered"),
            _text(chromium, "stat-lost")) == counts.groups()
    assert int(counts.group(3)) > 0  # the run did lose messages, and the page counted them
    screenshot(chromium, "replay-sim-seed1-end.png")
    assert console_errors(chromium) == []


def test_replay_of_a_kv_run_ends_with_the_message_counts_pnyx_sim_kv_prints(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "kv.html"
    code, out, _ = _run(capsys, "sim-kv", "--seed", "3", "--ops", "60", "--crashes",
                        "--html", str(page))
    assert code == 0, out
    counts = re.search(r"messages\s+(\d+) sent, (\d+) delivered, (\d+) lost", out)
    assert counts, out
    open_page(chromium, page)
    _key(chromium, END)
    assert (_text(chromium, "stat-sent"), _text(chromium, "stat-delivered"),
            _text(chromium, "stat-lost")) == counts.groups()
    assert chromium.find_element("id", "log").is_displayed()
    chromium.execute_script("pnyxReplay.seek(Math.floor(pnyxReplay.events / 2))")
    screenshot(chromium, "replay-sim-kv-seed3-middle.png")
    assert console_errors(chromium) == []


def test_stepping_back_then_forward_returns_to_the_same_picture(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "run.html"
    _run(capsys, "sim", "--seed", "4", "--html", str(page))
    open_page(chromium, page)
    chromium.execute_script("pnyxReplay.seek(120)")
    before = _picture(chromium)
    for _ in range(7):
        _key(chromium, LEFT)
    assert chromium.execute_script("return pnyxReplay.index") == 113
    assert _picture(chromium) != before
    for _ in range(7):
        _key(chromium, RIGHT)
    assert chromium.execute_script("return pnyxReplay.index") == 120
    # The same DOM, node for node (pixels can differ by a few anti-aliased bytes:
    # Chromium re-rasters only the tiles that changed).
    assert _picture(chromium) == before
    screenshot(chromium, "replay-sim-seed4-event120-after-back-and-forth.png")


def test_clicking_a_prepare_arriving_names_check_one_with_the_ballots_and_may_promise(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "run.html"
    _run(capsys, "sim", "--seed", "1", "--html", str(page))
    open_page(chromium, page)
    # The first Prepare that reaches an acceptor which promised a higher ballot.
    rows = chromium.execute_script("""
        const out = [];
        for (let i = 0; i < 400 && out.length < 2; i++) {
          const x = pnyxReplay.explain(i);
          if (/check one: .* ≤ /.test(x.why) || /check one: .* > /.test(x.why)) out.push(i);
        }
        return out;""")
    assert rows, "no prepare delivered in the run"
    chromium.execute_script(f"pnyxReplay.seek({rows[0] - 3})")
    item = chromium.find_element("css selector", f'#events li[data-i="{rows[0]}"]')
    item.click()
    text = _text(chromium, "explain")
    assert re.search(r"check one: (nothing promised yet|\d+\.\d+ [>≤] \d+\.\d+), so", text), text
    assert "Check one: promise only a sequence number higher than any seen" in text
    assert "pnyx.protocol.synod.acceptor.may_promise" in text
    screenshot(chromium, "replay-sim-explain-check-one.png")


def test_the_value_rule_is_named_where_a_proposer_sends_accept(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "run.html"
    _run(capsys, "sim", "--seed", "1", "--html", str(page))
    open_page(chromium, page)
    whys = chromium.execute_script("""
        const out = [];
        for (let i = 0; i < pnyxReplay.events; i++) {
          const x = pnyxReplay.explain(i);
          if (x.fn.includes("choose_value")) out.push(x.rule + " | " + x.why);
        }
        return out;""")
    assert whys
    for why in whys:
        assert why.startswith("Phase 1 result: v is the value of the highest-numbered"), why
    # Seed 1: node 3's value v3, accepted in 1.3, is reported to node 1 and wins its ballot.
    reported = [w for w in whys if "reported: " in w]
    own = [w for w in whys if "reported a value, so the proposer's own" in w]
    assert reported and own
    for why in reported:
        assert re.search(r"the highest-numbered is [\d.]+:(\S+), so the value is \1$", why), why


def test_space_plays_and_pauses_and_the_clock_moves(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "run.html"
    _run(capsys, "sim", "--seed", "1", "--html", str(page))
    open_page(chromium, page)
    chromium.execute_script("document.getElementById('speed').value = '20'")
    _key(chromium, SPACE)
    chromium.implicitly_wait(0)
    import time

    time.sleep(0.6)
    _key(chromium, SPACE)
    at = chromium.execute_script("return pnyxReplay.index")
    assert at > 0
    time.sleep(0.3)
    assert chromium.execute_script("return pnyxReplay.index") == at  # paused stays put


def test_a_trace_longer_than_a_page_is_paged_and_the_page_says_which_part(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.jsonl"
    _run(capsys, "sim", "--seed", "2", "--trace", str(trace))
    page = tmp_path / "p.html"
    page.write_text(replay_html(trace.read_bytes(), title="paged", start=100, limit=150))
    open_page(chromium, page)
    banner = _text(chromium, "banner")
    assert "events 101–250 of" in banner and "--from" in banner
    _key(chromium, END)
    assert "event 250 / 250" in _text(chromium, "clock")


@pytest.mark.parametrize(("content", "says"), [
    (b"", "is empty"),
    (b"   \n\n", "is empty"),
    (b'{"t":0.1,"ev":"propose","node":1,"value":"v1"}\n{"t":0.2,"ev":"se', "cut short"),
    (b"<html>not a trace</html>\n", "not JSON"),
    (b'[1, 2, 3]\n', "not a trace event"),
])
def test_a_bad_trace_gives_one_line_and_status_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, says: str) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_bytes(content)
    code, _, err = _run(capsys, "replay", str(trace), "--html", str(tmp_path / "o.html"))
    assert code == 1
    assert says in err and err.count("\n") == 1 and err.startswith("pnyx replay: "), err
    assert not (tmp_path / "o.html").exists()


def test_a_missing_trace_file_gives_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "replay", str(tmp_path / "nope"), "--html", "o.html")
    assert code == 1 and err.count("\n") == 1 and "cannot read" in err


def test_paging_past_the_end_of_a_trace_is_refused_with_its_length() -> None:
    trace = b'{"t":0.1,"ev":"propose","node":1,"value":"v1"}\n'
    with pytest.raises(TraceError, match="has 1 events"):
        replay_html(trace, title="x", start=5)


def _readme_scenarios() -> dict[str, list[str]]:
    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("## See it work", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        if line.startswith(".venv/bin/pnyx sim") and "--html" in line:
            argv = line.split("#")[0].split()[1:]
            out[argv[argv.index("--html") + 1]] = argv
    return out


def test_the_readme_scenario_commands_show_what_the_readme_says(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _readme_scenarios()
    assert set(runs) == {"duel.html", "backoff.html", "distinguished.html", "gaps.html",
                         "window32.html", "window1.html"}
    pages = {}
    for name, argv in runs.items():
        argv = [str(tmp_path / a) if a == name else a for a in argv]
        _, out, _ = _run(capsys, *argv)
        pages[name] = (out, (tmp_path / name).read_text(encoding="utf-8"))
    assert "chosen    nothing within" in pages["duel.html"][0]
    assert re.search(r"chosen\s+v\d at", pages["backoff.html"][0])
    assert re.search(r"chosen\s+v\d at", pages["distinguished.html"][0])
    # The gap-filling leader sends Accepts whose value is a no-op.
    assert re.search(r'"y":"accept"[^}]*"v":"no-op"', pages["gaps.html"][1])

    def most_in_flight(page: str) -> int:
        """The most slots the leader proposed beyond what it knew chosen (from Accepts)."""
        data = msgspec.json.decode(page.split('id="data">', 1)[1].split("</script>", 1)[0])
        worst = 0
        for m in data["msgs"]:
            if m["y"] == "accept":
                worst = max(worst, m["n"] - m.get("x", {}).get("commit", 0))
        return worst

    assert most_in_flight(pages["window32.html"][1]) > 2  # 142 went out before 141 was chosen
    assert most_in_flight(pages["window1.html"][1]) == 1


def test_html_and_trace_together_write_the_same_run_to_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace, page = tmp_path / "t.jsonl", tmp_path / "p.html"
    code, _, err = _run(capsys, "sim", "--seed", "1", "--trace", str(trace), "--html", str(page))
    assert code == 0, err
    events = len(trace.read_bytes().splitlines())
    assert f'"total":{events},' in page.read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_million_event_trace_is_paged_and_each_page_opens_in_seconds(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """10^6 events: `pnyx replay` writes a page of the first MAX_EVENTS and says so;
    `--from` gives the others; the browser opens a full page within seconds."""
    import time

    from pnyx.viz.replay import MAX_EVENTS

    one = tmp_path / "one.jsonl"
    _run(capsys, "sim-kv", "--seed", "1", "--ops", "1000", "--no-invariants",
         "--trace", str(one))
    lines = one.read_bytes().splitlines()
    span = msgspec.json.decode(lines[-1])["t"] + 0.001
    big = tmp_path / "big.jsonl"
    with big.open("wb") as sink:
        n = 0
        while n < 1_000_000:
            for line in lines[: 1_000_000 - n]:
                record = msgspec.json.decode(line)
                record["t"] = round(record["t"] + span * (n // len(lines)), 9)
                sink.write(msgspec.json.encode(record) + b"\n")
            n += min(len(lines), 1_000_000 - n)
    for start in (0, 900_000):
        page = tmp_path / f"page{start}.html"
        started = time.perf_counter()
        code, _, err = _run(capsys, "replay", str(big), "--html", str(page),
                              "--from", str(start))
        assert code == 0, err
        assert time.perf_counter() - started < 30
        seconds = open_page(chromium, page)
        assert seconds < 10
        shown = min(MAX_EVENTS, 1_000_000 - start)
        assert chromium.execute_script("return pnyxReplay.events") == shown
        banner = _text(chromium, "banner")
        assert f"events {start + 1:,}".replace(",", "") in banner.replace(",", "")
        assert "of 1000000" in banner
        print(f"page from {start}: {page.stat().st_size / 1e6:.1f} MB, open in {seconds:.2f} s")
        _key(chromium, END)
        assert console_errors(chromium) == []


def _resolve(dotted: str) -> object:
    """`pnyx.a.b.C.f` -> the object, importing the longest module prefix."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("argv", [
    ("sim", "--seed", "1", "--crashes", "--partitions", "--drop", "0.05"),
    ("sim", "--seed", "1", "--distinguished", "2"),
    ("sim-kv", "--seed", "3", "--ops", "80", "--crashes", "--partitions", "--drop", "0.05"),
])
def test_every_event_names_a_seed_rule_and_functions_that_exist(
        chromium: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        argv: tuple[str, ...]) -> None:
    page = tmp_path / "run.html"
    _run(capsys, *argv, "--html", str(page))
    open_page(chromium, page)
    found = chromium.execute_script("""
        const missing = [], fns = new Set();
        for (let i = 0; i < pnyxReplay.events; i++) {
          const x = pnyxReplay.explain(i);
          if (!x.rule || !x.fn || !x.why) missing.push(i + ": " + JSON.stringify(x));
          fns.add(x.fn);
        }
        return [missing.slice(0, 5), [...fns]];""")
    missing, fns = found
    assert missing == []
    names = {m for fn in fns for m in re.findall(r"pnyx(?:\.\w+)+", fn)}
    assert len(names) > 5
    for name in sorted(names):
        _resolve(name)  # raises if the page names a function that is not there
