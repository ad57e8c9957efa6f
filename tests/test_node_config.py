"""The one configuration path: SETTINGS -> flags / TOML -> NodeConfig -> ReplicaConfig."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from pnyx.cli import build_parser
from pnyx.cli.serve import node_config_from
from pnyx.node.config import (
    DEPLOYMENT_SNAPSHOTS,
    DEPLOYMENT_TIMING,
    MAX_MESSAGE_BYTES,
    SETTINGS,
    VALUE_HEADROOM,
    Address,
    ConfigError,
    NodeConfig,
    settings_table,
)
from pnyx.node.transport import DEFAULT_MAX_FRAME
from pnyx.protocol.multipaxos import ReplicaConfig

README = Path(__file__).resolve().parents[1] / "README.md"
ONE = {1: Address("127.0.0.1", 7001)}


def config(**kw: object) -> NodeConfig:
    return NodeConfig(1, ONE, Path("d"), **kw)  # type: ignore[arg-type]


def test_a_node_uses_replicaconfigs_defaults_except_the_deployment_timing() -> None:
    built = config().replica_config()
    plain = ReplicaConfig.majority([1])
    for f in fields(ReplicaConfig):
        if f.name in DEPLOYMENT_TIMING:
            assert getattr(built, f.name) == DEPLOYMENT_TIMING[f.name]
        elif f.name in DEPLOYMENT_SNAPSHOTS:  # a node snapshots; a bare replica does not
            assert getattr(built, f.name) == DEPLOYMENT_SNAPSHOTS[f.name] > 0
            assert getattr(plain, f.name) == 0 or f.name == "snapshot_tail"
        elif f.name == "snapshot_phase":  # each member its own (the next test)
            assert 0 <= built.snapshot_phase < 1 and plain.snapshot_phase == 0
        else:
            assert getattr(built, f.name) == getattr(plain, f.name), f.name


def test_members_of_a_cluster_snapshot_in_phases_far_apart() -> None:
    # Their compactions (long writes) must not fall together: of any seven consecutive
    # ids, no two phases are within a tenth of a threshold of each other.
    for first in (1, 100):
        ids = range(first, first + 7)
        members = {i: Address("127.0.0.1", 7000 + i) for i in ids}
        phases = [NodeConfig(i, members, Path("d")).replica_config().snapshot_phase
                  for i in ids]
        for i, a in enumerate(phases):
            for b in phases[i + 1:]:
                gap = abs(a - b)
                assert min(gap, 1 - gap) > 0.09, phases


@pytest.mark.parametrize("lease", [0.3, 0.5, -0.01])
def test_a_read_lease_must_be_shorter_than_the_election_timeout(lease: float) -> None:
    with pytest.raises(ConfigError, match="read lease"):
        config(election_timeout=0.3, read_lease=lease)


def test_every_replica_setting_reaches_the_replica_config() -> None:
    values = {"heartbeat_interval": 0.07, "election_timeout": 0.9, "prevote": False,
              "read_timeout": 0.8, "window": 7, "max_batch": 9, "max_batch_bytes": 300_000,
              "max_command": 200_000, "catchup_chunk": 11, "catchup_bytes": 400_000,
              "snapshot_every": 13, "snapshot_bytes": 5000, "snapshot_tail": 3,
              "read_lease": 0.4}
    assert {s.name for s in SETTINGS if s.replica} == set(values)
    built = config(**values).replica_config()
    assert {k: getattr(built, k) for k in values} == values


def test_flags_and_toml_give_the_same_config(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('id = 1\ncluster = "1=127.0.0.1:7001"\ndata_dir = "d"\n'
                    'http = "127.0.0.1:8001"\nelection_timeout = 0.5\nheartbeat_interval = 0.1\n'
                    'prevote = false\nwindow = 8\nmax_batch = 4\nmax_batch_bytes = 65536\n'
                    'max_command = 65536\nread_timeout = 0.25\ncatchup_chunk = 3\n'
                    'catchup_bytes = 100000\nfsync = false\nrequest_timeout = 2\n'
                    'snapshot_every = 7\nsnapshot_bytes = 9000\nsnapshot_tail = 2\n')
    flags = ["serve", "--id", "1", "--cluster", "1=127.0.0.1:7001", "--data-dir", "d",
             "--http", "127.0.0.1:8001", "--election-timeout", "500", "--heartbeat", "100",
             "--no-prevote", "--window", "8", "--max-batch", "4", "--max-batch-bytes", "65536",
             "--max-command", "65536", "--read-timeout", "250", "--catchup-chunk", "3",
             "--catchup-bytes", "100000", "--unsafe-no-fsync", "--request-timeout", "2000",
             "--snapshot-every", "7", "--snapshot-every-bytes", "9000", "--snapshot-tail", "2"]
    from_flags = node_config_from(build_parser().parse_args(flags))
    from_toml = node_config_from(build_parser().parse_args(["serve", "--config", str(toml)]))
    assert from_flags == from_toml
    assert from_flags.max_command == 65536 and from_flags.prevote is False
    assert (from_flags.snapshot_every, from_flags.snapshot_tail) == (7, 2)


def test_flags_win_over_the_toml_file(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('id = 1\ncluster = "1=127.0.0.1:7001"\ndata_dir = "d"\nwindow = 8\n')
    args = build_parser().parse_args(["serve", "--config", str(toml), "--window", "16"])
    assert node_config_from(args).window == 16


def test_max_value_is_max_command_less_the_headroom() -> None:
    assert config(max_command=100_000).max_value == 100_000 - VALUE_HEADROOM


@pytest.mark.parametrize(("kw", "needle"), [
    ({"max_command": VALUE_HEADROOM}, "leaves no room for a value"),
    ({"max_command": 0}, "max_command must be"),
    ({"max_command": 2 << 20}, "must not exceed max_batch_bytes"),
    ({"max_batch_bytes": MAX_MESSAGE_BYTES + 1}, "must fit a peer frame"),
    ({"window": 0}, "window must be at least 1"),
    ({"catchup_chunk": 0}, "catchup_chunk must be at least 1"),
    ({"read_timeout": 0.0}, "read timeout must be positive"),
    ({"heartbeat_interval": 0.3, "election_timeout": 0.3}, "heartbeat interval"),
])
def test_a_config_that_cannot_work_is_one_line(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(**kw)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("text", "needle"), [
    ("window = \"eight\"\n", "window: 'eight' is not an integer"),
    ("prevote = 1\n", "prevote: 1 is not true or false"),
    ("election_timeout = \"300ms\"\n", "not a number of seconds"),
    ("max_command = 10\n", "leaves no room for a value"),
    ("frobnicate = 1\n", "unknown setting 'frobnicate'"),
])
def test_a_bad_toml_setting_is_one_line(tmp_path: Path, text: str, needle: str) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('id = 1\ncluster = "1=127.0.0.1:7001"\ndata_dir = "d"\n' + text)
    with pytest.raises(ConfigError) as err:
        NodeConfig.from_toml(toml)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_message_of_the_largest_settings_fits_a_peer_frame() -> None:
    assert 2 * MAX_MESSAGE_BYTES <= DEFAULT_MAX_FRAME


def test_the_readme_documents_every_setting_as_settings_table_makes_it() -> None:
    assert settings_table() in README.read_text(), (
        "README's settings table is stale: paste pnyx.node.config.settings_table() into it")


def test_serve_help_names_every_flag() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices["serve"].format_help()  # type: ignore[attr-defined]
    for s in SETTINGS:
        assert s.flag in text
