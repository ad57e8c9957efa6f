"""Specs of `pnyx member list|add|promote|remove|replace` (`pnyx.cli.member`) against a real
HTTP server whose fake node has the protocol core's membership (tests/test_members_api.py)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout

import pytest

from fake_node import ServerThread, dead_address
from pnyx.cli import main as pnyx_main
from pnyx.protocol.multipaxos import Code, Outcome
from test_members_api import FakeMembersNode, by_id


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with ServerThread(FakeMembersNode(), request_timeout=0.3) as s:
        yield s


@pytest.fixture
def node(server: ServerThread) -> FakeMembersNode:
    assert isinstance(server.node, FakeMembersNode)
    return server.node


def cli(*argv: str, endpoint: str | None = None) -> tuple[int, str, str]:
    """Exit status, output and error output of `pnyx member ...`."""
    out, err = io.StringIO(), io.StringIO()
    extra = ["--endpoints", endpoint] if endpoint is not None else []
    with redirect_stdout(out), redirect_stderr(err):
        code = pnyx_main(["member", *argv, *extra])
    return code, out.getvalue(), err.getvalue()


def test_list_prints_a_table_of_id_role_peer_http_applied(server: ServerThread,
                                                           node: FakeMembersNode) -> None:
    assert cli("add", "4", "127.0.0.1:7004", "--http", "127.0.0.1:8004",
               endpoint=server.address)[0] == 0
    code, out, err = cli("list", endpoint=server.address)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "configuration version 1 (in force from slot 65), leader 1, commit 65"
    assert lines[1].split() == ["ID", "ROLE", "PEER", "HTTP", "APPLIED"]
    assert lines[2].split() == ["1", "voter", "-", "-", "65"]
    assert lines[5].split() == ["4", "learner", "(promoted", "once", "caught", "up)",
                                "127.0.0.1:7004", "127.0.0.1:8004", "65"]
    code, out, _ = cli("list", "--json", endpoint=server.address)
    assert code == 0 and json.loads(out) == node.membership_view()


def test_add_promote_remove_say_what_they_did(server: ServerThread,
                                             node: FakeMembersNode) -> None:
    ep = server.address
    code, out, err = cli("add", "4", "127.0.0.1:7004", "--learner", endpoint=ep)
    assert (code, err) == (0, "")
    incarnation = by_id(node.membership_view())[4]["incarnation"]
    assert incarnation > 0
    assert out == ("added node 4 as a learner (promote it with `pnyx member promote`); "
                   "configuration version 1 (in force from slot 65)\n"
                   f"start it (if it is not running) with: pnyx serve --id 4 --join {ep} "
                   f"--incarnation {incarnation} --listen 127.0.0.1:7004 --data-dir DIR\n")
    assert cli("promote", "4", "--base", "1", endpoint=ep)[1] == (
        "promoted node 4: it votes; configuration version 2 (in force from slot 130)\n")
    code, out, _ = cli("remove", "3", "--json", endpoint=ep)
    assert code == 0 and 3 not in by_id(json.loads(out))
    assert {i: m["role"] for i, m in by_id(node.membership_view()).items()} == {
        1: "voter", 2: "voter", 4: "voter"}


def test_move_names_a_members_new_addresses_in_one_change(server: ServerThread,
                                                         node: FakeMembersNode) -> None:
    ep = server.address
    code, out, err = cli("move", "2", "10.0.0.2:7002", "--http", "10.0.0.2:8002",
                         endpoint=ep)
    assert (code, err) == (0, "")
    assert out.startswith("node 2 is now reached at 10.0.0.2:7002; configuration version 1")
    assert [(m.id, m.peer, m.http) for m in node.changes[-1]["move"]] == [
        (2, "10.0.0.2:7002", "10.0.0.2:8002")]
    moved = by_id(node.membership_view())[2]
    assert (moved["peer"], moved["http"], moved["role"]) == (
        "10.0.0.2:7002", "10.0.0.2:8002", "voter")
    assert cli("move", "9", "h:1", endpoint=ep) == (
        1, "", "pnyx member move: invalid: node 9 is not a member\n")


def test_refusals_exit_1_with_the_error_text(server: ServerThread,
                                             node: FakeMembersNode) -> None:
    ep = server.address
    assert cli("remove", "9", endpoint=ep) == (
        1, "", "pnyx member remove: invalid: node 9 is not a member\n")
    code, _, err = cli("remove", "1", "--base", "7", endpoint=ep)
    assert code == 1 and err.startswith("pnyx member remove: conflict: the configuration "
                                        "changed: it is version 0")
    node.refuse_change = Outcome.failed(Code.REFUSED, "node 4 has not caught up yet")
    assert cli("promote", "4", endpoint=ep) == (
        1, "", "pnyx member promote: refused: node 4 has not caught up yet\n")
    assert node.membership.latest.version == 0


def test_removing_the_last_voter_exits_1_with_the_cores_words() -> None:
    with ServerThread(FakeMembersNode(voters=(1,))) as s:
        assert cli("remove", "1", endpoint=s.address) == (
            1, "", "pnyx member remove: invalid: the change would leave no voter\n")


def test_bad_flags_exit_2_before_asking_anyone(server: ServerThread,
                                               node: FakeMembersNode) -> None:
    ep = server.address
    for argv, words in ((["add", "x", "h:1"], "ID: 'x' is not a node id"),
                        (["add", "-1", "h:1"], "ID: '-1' is not a node id"),
                        (["remove", "3", "--base", "x"], "--base: 'x'"),
                        (["replace", "3", "3", "h:1"], "OLD and NEW must be different"),
                        (["replace", "3", "4", "h:1", "--wait", "0"], "--wait"),
                        (["list", "--timeout", "no"], "--timeout")):
        code, out, err = cli(*argv, endpoint=ep)
        assert code == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert words in err, (argv, err)
    assert cli() == (2, "", "pnyx member: give a subcommand: list, add, promote, remove, "
                     "move, replace\n")
    assert node.changes == []
    code, _, err = cli("add", "4", "nohostport", endpoint=ep)  # the node checks addresses
    assert code == 1 and 'bad field: peer "nohostport" is not host:port' in err


def test_no_node_reachable_exits_1_unavailable() -> None:
    code, out, err = cli("list", "--timeout", "0.5", endpoint=dead_address())
    assert code == 1 and out == "" and err.startswith("pnyx member list: unavailable: ")


def test_a_change_whose_outcome_is_unknown_is_asked_once(server: ServerThread,
                                                         node: FakeMembersNode) -> None:
    node.change_outcome = Outcome.failed(Code.NO_LEADER, "no quorum in time", unknown=True)
    code, _, err = cli("remove", "3", "--timeout", "2", endpoint=server.address)
    assert code == 1 and "unavailable" in err and "may still take effect" in err
    assert len(node.changes) == 1


def test_replace_prints_each_step_and_makes_one_change(server: ServerThread,
                                                       node: FakeMembersNode) -> None:
    code, out, err = cli("replace", "3", "4", "127.0.0.1:7004", "--http", "127.0.0.1:8004",
                         endpoint=server.address)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "1/3 adding node 4 at 127.0.0.1:7004 as a learner"
    assert lines[2].startswith("2/3 waiting (up to 300 s) until the leader reports node 4")
    assert "3/3 one change against version 1: promote node 4, remove node 3" in lines
    assert lines[-1] == ("replaced node 3 by node 4; configuration version 2 (in force from "
                         "slot 130)")
    add, swap = node.changes
    assert add["add"][0].promote is False
    assert (swap["promote"], swap["remove"], swap["base"]) == ((4,), (3,), 1)


def test_replace_times_out_with_a_clear_message_and_leaves_old_a_member(
        server: ServerThread, node: FakeMembersNode) -> None:
    node.follower = True  # nobody reports the new member's progress
    code, out, err = cli("replace", "3", "4", "h:7004", "--wait", "1",
                         endpoint=server.address)
    assert code == 1 and "1/3 adding node 4" in out
    assert err.startswith("pnyx member replace: timeout: node 4 did not catch up within 1 s")
    assert "pnyx member remove 4" in err and err.count("\n") == 1
    view = by_id(node.membership_view())
    assert view[3]["role"] == "voter" and view[4]["role"] == "learner"


def test_a_change_just_chosen_is_shown_pending_and_the_next_is_made_against_it(
        server: ServerThread, node: FakeMembersNode) -> None:
    node.fill = False  # a change stays pending: its start is ALPHA slots on
    ep = server.address
    code, out, _ = cli("add", "4", "127.0.0.1:7004", endpoint=ep)
    assert code == 0 and "configuration version 1 (in force from slot 65)" in out
    code, out, _ = cli("list", endpoint=ep)
    assert out.splitlines()[0].startswith("configuration version 0 (in force from slot 1)")
    assert out.splitlines()[-1] == "pending: version 1 from slot 65: 1 voter, 2 voter, " \
        "3 voter, 4 learner"
    code, out, err = cli("replace", "3", "5", "h:7005", endpoint=ep)
    assert (code, err) == (0, ""), err
    assert "3/3 one change against version 2: promote node 5, remove node 3" in out
    assert node.changes[-1]["base"] == 2 and node.membership.latest.version == 3
