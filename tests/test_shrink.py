"""Shrinking failing simulated runs (`pnyx.sim.shrink`) and replaying the saved run:
the replicated store's (`pnyx sim-kv`) and single-decree Paxos's (`pnyx sim`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pnyx.cli import main
from pnyx.protocol.synod.proposer import RetryPolicy
from pnyx.sim.cluster import simulate_cluster
from pnyx.sim.cluster_config import ClusterConfig, sweep
from pnyx.sim.faults import Fault, FaultConfig
from pnyx.sim.network import NetworkConfig
from pnyx.sim.shrink import (
    _units,
    failed_rule,
    load_rule,
    load_run,
    run,
    save_run,
    scripted,
    shrink,
)
from pnyx.sim.simulation import SimConfig, simulate

# (mutant, the first seed of the default sweep it fails), found with `sweep(seed, mutant)`.
FAILING = [
    ("leader-skips-gap-phase1", 0),
    ("no-dedup", 0),
    ("promise-hides-compaction", 7),
]


def test_the_drawn_faults_as_a_script_replay_the_same_run() -> None:
    config = sweep(1, "leader-skips-gap-phase1")
    result, events = run(config)
    again, again_events = run(scripted(config, result.faults))
    assert not again.config.faults.partitions and not again.config.faults.crashes
    assert again.faults == result.faults
    assert again_events == events
    assert again.violations == result.violations


@pytest.mark.parametrize(("mutant", "seed"), FAILING)
def test_a_shrunk_run_fails_the_same_rule_and_is_smaller(mutant: str, seed: int) -> None:
    config = sweep(seed, mutant)
    original = simulate_cluster(config)
    shrunk = shrink(config, max_runs=100, max_seconds=30.0)
    assert shrunk is not None
    assert shrunk.rule == failed_rule(original)
    assert shrunk.runs <= 100
    replayed = simulate_cluster(shrunk.config)
    assert failed_rule(replayed) == shrunk.rule
    before, after = shrunk.before, shrunk.after
    assert before.faults == len(original.faults)
    assert after.faults == len(replayed.faults)
    assert (after.events, after.faults, after.ops) <= (before.events, before.faults, before.ops)
    assert after.events <= before.events and after.faults <= before.faults
    assert after.ops <= before.ops
    assert (after.events < before.events or after.faults < before.faults
            or after.ops < before.ops)


def test_the_saved_run_replays_to_the_same_rule(tmp_path: Path) -> None:
    shrunk = shrink(sweep(0, "no-dedup"), max_runs=40, max_seconds=30.0)
    assert shrunk is not None
    path = tmp_path / "run.json"
    save_run(path, shrunk.config, shrunk.rule, str(shrunk.violation))
    loaded = load_run(path)
    assert loaded == shrunk.config
    assert load_rule(path) == shrunk.rule
    replayed = simulate_cluster(loaded)
    assert replayed.violations[0] == shrunk.violation


def test_a_correct_run_is_not_shrunk() -> None:
    assert simulate_cluster(sweep(0)).safe
    assert shrink(sweep(0), max_runs=5) is None


def test_the_shrink_stops_at_its_budget_of_runs() -> None:
    shrunk = shrink(sweep(2, "leader-skips-gap-phase1"), max_runs=4)
    assert shrunk is not None
    assert shrunk.runs == 4 and shrunk.exhausted
    assert failed_rule(simulate_cluster(shrunk.config)) == shrunk.rule


def test_a_crash_goes_with_its_restart_and_a_partition_with_its_heal() -> None:
    faults = [Fault(0.1, "crash", (2,)), Fault(0.15, "partition", (1,)),
              Fault(0.2, "crash", (3,)), Fault(0.25, "restart", (3,)),
              Fault(0.3, "restart", (2,)), Fault(0.35, "heal", ()),
              Fault(0.4, "reboot", (1,))]
    units = [[f for _, f in unit] for unit in _units(faults)]
    assert units == [[faults[0], faults[4]], [faults[1], faults[5]],
                     [faults[2], faults[3]], [faults[6]]]


def test_a_run_file_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    save_run(path, ClusterConfig(seed=3))
    assert load_run(path) == ClusterConfig(seed=3)
    doc = json.loads(path.read_text())
    doc["config"]["faults"]["bogus"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="bogus"):
        load_run(path)


def test_cli_shrinks_saves_and_replays(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shrunk.json"
    argv = ["sim-kv", "--seed", "0", "--mutant", "no-dedup", "--drop", "0.1", "--partitions",
            "--crashes", "--shrink", "--shrink-out", str(out), "--shrink-runs", "60"]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "shrunk in" in text and "before" in text and "after" in text
    rule = load_rule(out)
    assert rule is not None and rule.startswith("S1")
    assert main(["sim-kv", "--replay", str(out)]) == 1
    assert f"FAIL  {rule}" in capsys.readouterr().out
    assert simulate_cluster(replace(load_run(out), mutant=None)).safe


def test_cli_sweep_shrinks_its_first_failure(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "first.json"
    assert main(["sim-kv", "--seeds", "0..3", "--mutant", "no-dedup", "--drop", "0.1",
                 "--crashes", "--partitions", "--shrink", "--shrink-out", str(out),
                 "--shrink-runs", "30"]) == 1
    assert "shrinking seed 0" in capsys.readouterr().out
    assert load_run(out).seed == 0


def test_cli_replay_of_a_missing_file_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim-kv", "--replay", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pnyx"), err


def test_a_single_decree_run_shrinks_and_replays(tmp_path: Path) -> None:
    config = SimConfig(seed=0, network=NetworkConfig(drop=0.2),
                       faults=FaultConfig(partitions=True, crashes=True),
                       retry=RetryPolicy(timeout=0.04), mutant="acceptor-ignores-promise")
    original = simulate(config)
    shrunk = shrink(config, max_runs=60, max_seconds=20.0)
    assert shrunk is not None and shrunk.rule == failed_rule(original)
    assert shrunk.after.faults < shrunk.before.faults
    assert shrunk.after.events <= shrunk.before.events
    path = tmp_path / "sim.json"
    save_run(path, shrunk.config, shrunk.rule)
    loaded = load_run(path)
    assert loaded == shrunk.config and isinstance(loaded, SimConfig)
    assert loaded.retry == RetryPolicy(timeout=0.04)
    assert simulate(loaded).violations[0] == shrunk.violation


def test_cli_refuses_to_replay_a_single_decree_run_as_the_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sim.json"
    save_run(path, SimConfig(seed=2))
    assert main(["sim", "--replay", str(path)]) == 0
    capsys.readouterr()
    assert main(["sim-kv", "--replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a run of pnyx sim" in err, err
