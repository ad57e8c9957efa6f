"""The simulator: deterministic replay, safety under every fault, and its command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pnyx.cli import main
from pnyx.sim import SimConfig, simulate
from pnyx.sim.faults import FaultConfig
from pnyx.sim.network import NetworkConfig

ALL_FAULTS = FaultConfig(partitions=True, crashes=True)


def faulty(seed: int, nodes: int = 5, drop: float = 0.2) -> SimConfig:
    return SimConfig(
        seed=seed,
        nodes=nodes,
        proposers=min(3, nodes),
        network=NetworkConfig(drop=drop, duplicate=0.1),
        faults=ALL_FAULTS,
    )


def test_same_seed_gives_the_same_trace_byte_for_byte(tmp_path: Path) -> None:
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    digests = []
    for path in paths:
        with path.open("wb") as sink:
            digests.append(simulate(faulty(11), trace_sink=sink).trace_digest)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert digests[0] == digests[1]
    assert len(paths[0].read_bytes().splitlines()) > 50


def test_different_seeds_give_different_runs() -> None:
    digests = {simulate(faulty(seed), trace=True).trace_digest for seed in range(5)}
    assert len(digests) == 5


def test_replay_does_not_depend_on_python_hash_randomization() -> None:
    """Set iteration order changes with PYTHONHASHSEED; the run must not."""
    code = (
        "from tests.test_sim import faulty; from pnyx.sim import simulate;"
        "print(simulate(faulty(3), trace=True).trace_digest)"
    )
    outputs = set()
    for hash_seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent.parent,
        )
        outputs.add(out.stdout.strip())
    assert len(outputs) == 1


def test_trace_records_every_kind_of_event(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    with path.open("wb") as sink:
        simulate(faulty(5), trace_sink=sink)
    text = path.read_text()
    for event in ('"ev":"propose"', '"ev":"send"', '"ev":"deliver"', '"ev":"durable"',
                  '"ev":"chosen"', '"ev":"learn"'):
        assert event in text


@pytest.mark.parametrize("nodes", [3, 4, 5, 6, 7])
def test_no_invariant_breaks_under_drops_duplicates_partitions_and_crashes(nodes: int) -> None:
    for seed in range(300):
        result = simulate(faulty(seed, nodes=nodes, drop=0.3))
        assert result.safe, (seed, result.violations)
        assert result.decided, f"seed {seed}: no value chosen within {result.config.max_time}s"
        assert result.all_learned_at is not None, f"seed {seed}: not every node learned"


def test_faults_actually_happen_while_deciding() -> None:
    """A fault schedule that fires only after the decision would test nothing."""
    hit = 0
    for seed in range(100):
        result = simulate(faulty(seed))
        assert result.chosen_at is not None
        if any(f.time < result.chosen_at for f in result.faults):
            hit += 1
    assert hit >= 50


def test_flexible_quorums_are_safe() -> None:
    for seed in range(200):
        config = SimConfig(seed=seed, nodes=5, proposers=3, phase1=4, phase2=2,
                           network=NetworkConfig(drop=0.2, duplicate=0.1), faults=ALL_FAULTS)
        result = simulate(config)
        assert result.safe, (seed, result.violations)


def test_cli_runs_one_seed_readably(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--seed", "7", "--drop", "0.2", "--partitions", "--crashes"])
    out = capsys.readouterr().out
    assert code == 0
    assert "chosen    v" in out
    assert "ok    S1 only one value is chosen" in out
    assert "trace digest" in out


def test_cli_sweeps_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--seeds", "0..49", "--drop", "0.1", "--crashes"]) == 0
    out = capsys.readouterr().out
    assert "50 seeds" in out and "violations  0" in out


def test_cli_exits_non_zero_when_a_mutant_is_caught(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--seed", "0", "--nodes", "5", "--drop", "0.2", "--dup", "0.05",
                 "--partitions", "--crashes", "--mutant", "learner-trusts-minority"])
    assert code == 1
    assert "FAIL  S3" in capsys.readouterr().out


def test_cli_writes_the_trace_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    assert main(["sim", "--seed", "2", "--trace", str(path)]) == 0
    assert path.read_bytes().count(b"\n") > 10


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "--drop", "1.5"],
        ["sim", "--drop", "lots"],
        ["sim", "--nodes", "0"],
        ["sim", "--proposers", "9", "--nodes", "3"],
        ["sim", "--seeds", "9..3"],
        ["sim", "--seeds", "abc"],
        ["sim", "--seed", "1", "--seeds", "1..2"],
        ["sim", "--phase1", "2", "--phase2", "2", "--nodes", "5"],
        ["sim", "--mutant", "nonsense"],
        ["sim", "--distinguished", "9"],
        ["sim", "--seeds", "0..3", "--trace", "x.jsonl"],
        ["sim", "--bogus"],
        ["sim", "--min-delay", "-1"],
        ["sim", "--late", "2"],
    ],
)
def test_cli_wrong_flags_give_one_line_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pnyx"), err


def test_cli_runs_the_replicated_store(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim-kv", "--seed", "3", "--drop", "0.1", "--partitions", "--crashes"])
    out = capsys.readouterr().out
    assert code == 0
    assert "linearizability: ok" in out and "ok    L1 replicas agree" in out


def test_cli_sweeps_the_replicated_store_and_reports_a_mutant(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["sim-kv", "--seeds", "0..4", "--crashes", "--partitions"]) == 0
    assert "violations  0" in capsys.readouterr().out
    assert main(["sim-kv", "--seeds", "0..9", "--crashes", "--partitions", "--drop", "0.1",
                 "--mutant", "no-dedup"]) == 1


def test_cli_runs_the_replicated_store_with_leader_leases(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim-kv", "--seeds", "0..4", "--crashes", "--partitions",
                 "--read-lease", "80"]) == 0
    assert "violations  0" in capsys.readouterr().out


def test_cli_writes_the_history(tmp_path: Path) -> None:
    from pnyx.check import History

    path = tmp_path / "h.json"
    assert main(["sim-kv", "--seed", "1", "--ops", "50", "--history", str(path)]) == 0
    assert len(History.load(path)) == 50


@pytest.mark.parametrize(
    "argv",
    [
        ["sim-kv", "--nodes", "0"],
        ["sim-kv", "--clients", "0"],
        ["sim-kv", "--ops", "-5"],
        ["sim-kv", "--mutant", "acceptor-ignores-promise"],
        ["sim-kv", "--seeds", "0..3", "--history", "h.json"],
        ["sim-kv", "--window", "0"],
        ["sim-kv", "--seed", "0", "--seeds", "1..3"],
        ["sim-kv", "--read-lease", "100"],
        ["sim-kv", "--read-lease", "-5"],
    ],
)
def test_cli_sim_kv_wrong_flags_give_one_line_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pnyx"), err


def test_cli_holds_messages_back_and_reboots_the_leader(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["sim", "--seed", "0", "--drop", "0.2", "--late", "0.05", "--reboots", "--crashes",
            "--partitions"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "late 5%" in out and "leader reboots" in out and "held back" in out
    assert main([*argv, "--mutant", "round-not-saved-before-use"]) == 1
    assert "FAIL  B1" in capsys.readouterr().out
