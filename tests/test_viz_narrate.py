"""`pnyx sim --narrate`: the run told in words, each step with its reason."""

from __future__ import annotations

import re

import pytest

from pnyx.cli import main


def _narrate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["sim", "--narrate", *argv])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out


def test_the_story_gives_check_one_with_both_ballots_and_the_value_rule_with_what_was_reported(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _narrate(capsys, "--seed", "1", "--drop", "0.05")
    assert code == 0
    story, summary = out.split("\npnyx sim: seed 1", 1)
    assert "node 1 promises 1.3 to node 3 (check one: 1.3 > 1.1)" in story
    assert "node 3 refuses 1.1 from node 1: it promised 1.3 (check one: 1.1 ≤ 1.3)" in story
    # Node 3 proposed v3, but the value rule makes it carry node 1's v1 (the higher ballot).
    assert ("the value rule: reported 1.3:v3 by 3, 3.1:v1 by 1; the highest-numbered is 3.1, "
            "so v1; it asks 1, 2, 3, 4, 5 to accept 4.3=v1") in story
    chosen = re.search(r"chosen\s+(v\d) at ([\d.]+) ms", summary)
    assert chosen
    assert f"*** {chosen.group(1)} is CHOSEN" in story
    told = re.search(r"Chosen at ([\d.]+) ms\.", story)
    assert told and f"{float(told.group(1)):.1f}" == chosen.group(2)
    # One unit of time throughout: every step starts with milliseconds.
    steps = [line for line in story.splitlines() if line.strip() and line[0] == " "]
    assert steps and all(re.match(r"\s+\d+\.\d{3} ms  ", line) for line in steps)
    assert "the network drops the copy to" in story


def test_a_livelock_is_named_with_the_ballots_that_kept_pre_empting_each_other(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _narrate(capsys, "--seed", "0", "--proposers", "5", "--no-backoff",
                         "--max-time", "200")
    assert code == 0
    prepares = len(re.findall(r"prepares with ballot", out))
    refusals = len(re.findall(r" refuses ", out))
    m = re.search(r"LIVELOCK: nothing chosen in [\d.]+ ms\. 5 proposers started (\d+) ballots "
                  r"\(node 1: \d+, .*\) and kept pre-empting each other: (\d+) refusals", out)
    assert m, out[-800:]
    assert int(m.group(1)) == prepares > 50
    assert int(m.group(2)) == refusals
    assert "--distinguished 1" in out


def test_a_run_that_decides_is_not_called_a_livelock(capsys: pytest.CaptureFixture[str]) -> None:
    _, out = _narrate(capsys, "--seed", "0", "--proposers", "5")
    assert "LIVELOCK" not in out and "Chosen at" in out


def test_a_mutant_that_survives_its_seed_says_a_sweep_is_needed(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _narrate(capsys, "--seed", "0", "--mutant", "learner-trusts-minority")
    assert code == 0
    assert ("The mutant 'learner-trusts-minority' did not break this seed" in out
            and "A sweep is needed to see it fail: pnyx sim --seeds 0..999 "
            "--mutant learner-trusts-minority" in out)
    code, out = _narrate(capsys, "--seed", "1", "--mutant", "learner-trusts-minority")
    assert code == 1
    assert "did not break" not in out and "broke a safety rule on this seed" in out


def test_a_crash_says_what_it_lost_and_the_restart_what_the_disk_kept(
        capsys: pytest.CaptureFixture[str]) -> None:
    _, out = _narrate(capsys, "--seed", "1", "--crashes", "--partitions")
    assert re.search(r"CRASH node 5: whatever it had not yet made durable is gone; "
                     r"\d+ messages sent to it are lost while it is down", out)
    assert re.search(r"node 5 restarts from its disk \(promised \d+\.\d+, accepted ", out)
    assert "PARTITION: node 1 is cut off from the rest" in out


def test_narrate_is_for_one_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--seeds", "0..3", "--narrate"]) == 2
    assert "use them with --seed" in capsys.readouterr().err
