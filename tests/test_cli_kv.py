"""Specs of `pnyx put/get/del/cas/keys/status` (`pnyx.cli.kv`) against a real HTTP server."""

from __future__ import annotations

import argparse
import base64
import io
import json
from collections.abc import Iterator

import pytest

from fake_node import ServerThread, dead_address
from pnyx.cli import kv as cli_kv
from pnyx.cli import main as pnyx_main
from pnyx.statemachine import kv


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(request_timeout=0.3) as s:
        yield s


@pytest.fixture
def ep(server: ServerThread) -> Iterator[str]:
    """`--endpoints` for a server whose node starts empty."""
    server.node.machine = kv.KVMachine()
    server.node.index = 0
    server.node.submitted.clear()
    yield server.address


def parse(*argv: str) -> argparse.Namespace:
    # A parser like the one `pnyx.cli` builds, but stdlib's.
    parser = argparse.ArgumentParser(prog="pnyx")
    cli_kv.add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def cli(*argv: str, stdin: bytes = b"") -> tuple[int, str, bytes, str]:
    """Exit status, text output, raw byte output, error output."""
    out, err, out_bytes = io.StringIO(), io.StringIO(), io.BytesIO()
    code = cli_kv.run(parse(*argv), stdout=out, stderr=err, stdin=io.BytesIO(stdin),
                      stdout_bytes=out_bytes)
    return code, out.getvalue(), out_bytes.getvalue(), err.getvalue()


def test_put_get_del(ep: str) -> None:
    code, out, _, err = cli("put", "greeting", "hello", "--endpoints", ep)
    assert (code, out, err) == (0, "OK index=1\n", "")
    code, _, raw, err = cli("get", "greeting", "--endpoints", ep)
    assert (code, raw, err) == (0, b"hello", "")
    code, out, _, _ = cli("del", "greeting", "--endpoints", ep)
    assert (code, out) == (0, "OK index=2\n")
    code, out, raw, err = cli("get", "greeting", "--endpoints", ep)
    assert code == 1 and out == "" and raw == b""
    assert err.startswith("pnyx get: not found:") and err.count("\n") == 1


def test_json_output(ep: str) -> None:
    code, out, _, _ = cli("put", "k", "v", "--endpoints", ep, "--json")
    assert code == 0 and json.loads(out) == {"key": "k", "index": 1}
    code, out, _, _ = cli("get", "k", "--endpoints", ep, "--json", "--consistency", "stale")
    assert json.loads(out) == {"key": "k", "index": 1, "value": "v",
                               "value_base64": base64.b64encode(b"v").decode()}
    code, out, _, _ = cli("status", "--endpoints", ep, "--json")
    status = json.loads(out)
    assert status["id"] == 1 and "members" in status


def test_binary_value_from_stdin(ep: str) -> None:
    value = b"\x00\xffbinary\n"
    assert cli("put", "bin", "-", "--endpoints", ep, stdin=value)[0] == 0
    assert cli("get", "bin", "--endpoints", ep)[2] == value
    out = cli("get", "bin", "--endpoints", ep, "--json")[1]
    doc = json.loads(out)
    assert doc["value"] is None and base64.b64decode(doc["value_base64"]) == value


def test_conditions(ep: str) -> None:
    assert cli("put", "k", "a", "--prev-exist", "false", "--endpoints", ep)[0] == 0
    code, _, _, err = cli("put", "k", "b", "--prev-exist", "false", "--endpoints", ep)
    assert code == 1 and err == "pnyx put: precondition failed: the key is at index 1\n"
    assert cli("put", "k", "b", "--prev-index", "1", "--endpoints", ep)[0] == 0
    assert cli("put", "k", "c", "--prev-value", "b", "--endpoints", ep)[0] == 0
    assert cli("del", "k", "--prev-value", "nope", "--endpoints", ep)[0] == 1
    # Failed writes take log slots too: "c" went in at index 4.
    assert cli("del", "k", "--prev-index", "4", "--endpoints", ep)[0] == 0
    code, _, _, err = cli("put", "k", "v", "--prev-exist", "true", "--endpoints", ep)
    assert code == 1 and "not found" in err


def test_cas(ep: str) -> None:
    cli("put", "k", "old", "--endpoints", ep)
    code, out, _, _ = cli("cas", "k", "old", "new", "--endpoints", ep)
    assert (code, out) == (0, "OK index=2\n")
    code, out, _, err = cli("cas", "k", "old", "newer", "--endpoints", ep)
    assert code == 1 and out == "" and "index 2" in err
    code, _, _, err = cli("cas", "missing", "a", "b", "--endpoints", ep)
    assert code == 1 and "not found" in err


def test_keys(ep: str) -> None:
    for key in ["app/b", "app/a", "other", "app/c"]:
        cli("put", key, "v", "--endpoints", ep)
    code, out, _, _ = cli("keys", "app/", "--endpoints", ep)
    assert (code, out) == (0, "app/a\t2\napp/b\t1\napp/c\t4\n")
    code, out, _, _ = cli("keys", "--limit", "2", "--endpoints", ep, "--json")
    assert json.loads(out) == [{"key": "app/a", "index": 2}, {"key": "app/b", "index": 1}]
    code, out, _, _ = cli("keys", "--limit", "0", "--endpoints", ep)
    assert out.count("\n") == 4
    assert cli("keys", "zzz", "--endpoints", ep)[1] == ""


def test_status_readable(ep: str) -> None:
    code, out, _, _ = cli("status", "--endpoints", ep)
    assert code == 0
    assert out.splitlines()[0] == "node 1: leader, leader 1, ballot [1, 1]"
    assert "member 1 at 127.0.0.1:0: reachable" in out


def test_endpoints_from_the_environment(ep: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli_kv.ENDPOINTS_ENV, f"{dead_address()},{ep}")
    assert cli("put", "k", "v")[0] == 0


def test_fails_over_to_a_live_endpoint(ep: str) -> None:
    code, out, _, _ = cli("put", "k", "v", "--endpoints", f"{dead_address()},{ep}")
    assert (code, out) == (0, "OK index=1\n")


@pytest.mark.parametrize("argv", [
    ["put", "k", "v", "--endpoints", "nope"],
    ["put", "k", "v", "--endpoints", ""],
    ["put", "k", "v", "--endpoints", "host:99999"],
    ["put", "k", "v", "--timeout", "abc"],
    ["put", "k", "v", "--timeout", "0"],
    ["put", "k", "v", "--timeout", "-1"],
    ["put", "k", "v", "--timeout", "nan"],
    ["put", "k", "v", "--prev-index", "-1"],
    ["put", "k", "v", "--prev-index", "x"],
    ["put", "k", "v", "--prev-exist", "maybe"],
    ["put", "", "v"],
    ["put", "a\x00b", "v"],
    ["del", "k", "--prev-index", "1.5"],
    ["get", "k", "--consistency", "strong"],
    ["keys", "--limit", "-3"],
    ["keys", "--limit", "ten"],
    ["keys", "--consistency", ""],
])
def test_bad_flags_are_one_line_and_exit_2(ep: str, server: ServerThread,
                                           argv: list[str]) -> None:
    if "--endpoints" not in argv:
        argv = [*argv, "--endpoints", ep]
    code, out, raw, err = cli(*argv)
    assert code == 2 and out == "" and raw == b""
    assert err.startswith(f"pnyx {argv[0]}: ") and err.count("\n") == 1, err
    assert server.node.submitted == []


def test_unreachable_nodes_are_one_line_and_exit_1() -> None:
    code, out, _, err = cli("get", "k", "--endpoints", f"{dead_address()},{dead_address()}",
                            "--timeout", "0.3")
    assert code == 1 and out == ""
    assert err.startswith("pnyx get: unavailable: ") and err.count("\n") == 1


def test_bad_request_from_the_node_is_exit_1(ep: str) -> None:
    code, _, _, err = cli("get", "k" * 2000, "--endpoints", ep)
    assert code == 1 and err.startswith("pnyx get: bad key: ")


def test_main_reports_parse_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert pnyx_main(["put"]) == 2
    assert pnyx_main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2


def test_main_runs_a_command(ep: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert pnyx_main(["put", "k", "v", "--endpoints", ep]) == 0
    assert capsys.readouterr().out == "OK index=1\n"


class _Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True


def test_get_ends_the_value_with_a_newline_on_a_terminal_only(ep: str) -> None:
    assert cli("put", "k", "v", "--endpoints", ep)[0] == 0
    out, err, terminal = io.StringIO(), io.StringIO(), _Terminal()
    code = cli_kv.run(parse("get", "k", "--endpoints", ep), stdout=out, stderr=err,
                      stdin=io.BytesIO(), stdout_bytes=terminal)
    assert (code, terminal.getvalue()) == (0, b"v\n")
    assert cli("get", "k", "--endpoints", ep)[2] == b"v"  # piped: exactly as stored


def test_status_with_several_endpoints_shows_each_and_which_node_answered(ep: str) -> None:
    dead = dead_address()
    code, out, _, err = cli("status", "--endpoints", f"{ep},{dead}", "--timeout", "1")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == (f"{ep}  node 1: leader, leader 1, ballot [1, 1], commit index 0, "
                        "applied index 0")
    assert lines[1].startswith(f"{dead}  no answer: ")
    assert len(lines) == 2


def test_status_json_is_one_object_per_endpoint(ep: str) -> None:
    dead = dead_address()
    code, out, _, _ = cli("status", "--endpoints", f"{ep},{dead}", "--timeout", "1", "--json")
    first, second = (json.loads(line) for line in out.splitlines())
    assert code == 0 and first["endpoint"] == ep and first["id"] == 1
    assert second["endpoint"] == dead and second["error"]


def test_status_with_no_node_answering_is_one_line_and_exit_1() -> None:
    a, b = dead_address(), dead_address()
    code, out, _, err = cli("status", "--endpoints", f"{a},{b}", "--timeout", "1")
    assert code == 1 and out == ""
    assert err.startswith("pnyx status: unavailable: no node answered: ")
    assert f"{a}: " in err and f"{b}: " in err and err.count("\n") == 1
    code, out, _, err = cli("status", "--endpoints", a, "--timeout", "1")
    assert code == 1 and out == "" and err.startswith("pnyx status: unavailable: ")
