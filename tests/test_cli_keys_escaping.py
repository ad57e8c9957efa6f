"""`pnyx keys` prints a key with control characters escaped: a stored key cannot drive the
operator's terminal (escape sequences) or forge lines of the listing (newline, tab)."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator

import pytest

from fake_node import ServerThread
from pnyx.cli import kv as cli_kv
from pnyx.statemachine import kv


@pytest.fixture(scope="module")
def ep() -> Iterator[str]:
    with ServerThread(request_timeout=0.3) as s:
        s.node.machine = kv.KVMachine()
        yield s.address


def cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="pnyx")
    cli_kv.add_parsers(parser.add_subparsers(dest="command"))
    out = io.StringIO()
    code = cli_kv.run(parser.parse_args(argv), stdout=out, stderr=io.StringIO(),
                      stdin=io.BytesIO(), stdout_bytes=io.BytesIO())
    return code, out.getvalue()


def test_keys_escapes_control_characters_and_the_backslash(ep: str) -> None:
    keys = ["k/\x1b[2J\x1b[31mred", "k/forged\t99\nk/line", "k/back\\slash", "k/bell\x07",
            "k/del\x7f", "k/c1\x9b", "k/plain é"]
    for key in keys:
        assert cli("put", key, "v", "--endpoints", ep)[0] == 0
    code, out = cli("keys", "k/", "--endpoints", ep)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(keys), out  # no key forged a line of its own
    listed = {line.split("\t")[0] for line in lines}
    assert listed == {"k/\\x1b[2J\\x1b[31mred", "k/forged\\t99\\nk/line", "k/back\\\\slash",
                      "k/bell\\x07", "k/del\\x7f", "k/c1\\x9b", "k/plain é"}
    assert all(line.count("\t") == 1 for line in lines)
    assert not any(ch in out for ch in "\x1b\x07\x7f\x9b")


def test_keys_json_still_gives_each_key_exactly(ep: str) -> None:
    import json

    cli("put", "j/\x1bx", "v", "--endpoints", ep)
    code, out = cli("keys", "j/", "--endpoints", ep, "--json")
    assert code == 0 and [item["key"] for item in json.loads(out)] == ["j/\x1bx"]
