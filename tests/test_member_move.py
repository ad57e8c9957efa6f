"""A member that moves to another host keeps its id and its data: one change names its
new addresses (`Change.move`), every replica applies it in its slot's turn, and the
peers dial it there. Scenario tests of the pure replica, the API's reading of a move,
and real processes: a follower restarted on a new port is what the quorum relies on."""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Net
from pnyx.api.http_errors import ApiError
from pnyx.api.members import parse_change
from pnyx.protocol.multipaxos import Code, Member
from pnyx.testing import Cluster, free_ports, request


def _settle(net: Net, rounds: int = 40) -> None:
    for _ in range(rounds):
        net.settle(1)


def test_a_move_changes_a_members_addresses_and_nothing_else() -> None:
    net = Net()
    leader = net.elect(1)
    net.obey(1, leader.change_members(7, 0, move=(Member(2, "10.0.0.2:7002", "10.0.0.2:8002"),),
                                       now=net.now))
    _settle(net)
    assert net.outcomes[1][7].ok, net.outcomes[1][7]
    for node in net.nodes.values():
        latest = node.membership.latest
        assert latest.version == 1
        moved = {m.id: m for m in latest.members}[2]
        assert (moved.peer, moved.http, moved.voter) == ("10.0.0.2:7002", "10.0.0.2:8002", True)
        assert [m.id for m in latest.members] == [1, 2, 3]
    # Writes go on as before: the move changed no quorum.
    net.submit(2, 8, b"k=v")
    _settle(net, 5)
    assert net.outcomes[2][8].ok


@pytest.mark.parametrize(("move", "why"), [
    (Member(9, "h:1"), "node 9 is not a member"),
    (Member(2, ""), "node 2 moves to no address"),
])
def test_a_move_of_a_non_member_or_to_no_address_is_refused_when_applied(
        move: Member, why: str) -> None:
    net = Net()
    leader = net.elect(1)
    net.obey(1, leader.change_members(7, 0, move=(move,), now=net.now))
    _settle(net, 10)
    outcome = net.outcomes[1][7]
    assert (outcome.ok, outcome.code, outcome.error) == (False, Code.BAD_REQUEST, why)
    assert all(n.membership.latest.version == 0 for n in net.nodes.values())


def test_a_move_and_a_removal_of_the_same_node_is_refused() -> None:
    net = Net()
    leader = net.elect(1)
    net.obey(1, leader.change_members(7, 0, remove=(3,), move=(Member(3, "h:1"),),
                                       now=net.now))
    _settle(net, 10)
    assert net.outcomes[1][7].code is Code.BAD_REQUEST


def test_the_api_reads_a_move_and_refuses_a_bad_one() -> None:
    change = parse_change(json.dumps(
        {"move": [{"id": 2, "peer": "10.0.0.2:7002", "http": "10.0.0.2:8002"}],
         "base": 3}).encode())
    assert change.base == 3
    assert [(m.id, m.peer, m.http) for m in change.move] == [(2, "10.0.0.2:7002",
                                                              "10.0.0.2:8002")]
    for body, words in [
        ({"move": [{"id": 2}]}, "peer"),
        ({"move": [{"id": 2, "peer": "nowhere"}]}, "peer"),
        ({"move": [{"id": 2, "peer": "h:1", "voter": True}]}, "unknown field"),
        ({"move": {"id": 2}}, "array"),
        ({"move": [{"id": 2, "peer": "h:1"}], "remove": [2]}, "named twice"),
    ]:
        with pytest.raises(ApiError) as caught:
            parse_change(json.dumps(body).encode())
        assert caught.value.status == 400 and words in caught.value.message, (
            body, caught.value.message)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_everything()


def _put(c: Cluster, i: int, key: str, value: bytes, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = request("PUT", c.url(i, f"/v1/kv/{key}"), value, 5.0,
                    {"Idempotency-Key": f"move-{key}"})
        if r.status == 200:
            return
        assert time.monotonic() < deadline, (r.status, r.body)
        time.sleep(0.1)


def test_a_follower_moved_to_a_new_port_is_dialled_there_and_counts_in_the_quorum(
        cluster: Cluster) -> None:
    c = cluster
    leader = c.leader()
    moved, other = [i for i in c.ids if i != leader]
    _put(c, leader, "before", b"1")
    c.signal(moved, signal.SIGTERM)
    c.procs[moved].wait(20)
    new_port = free_ports(1)[0]
    body = {"move": [{"id": moved, "peer": f"127.0.0.1:{new_port}"}]}
    r = c.change(leader, body, timeout=20.0)
    assert r.status == 200, r.body
    # The same data directory, on the new port (as if its disk went to another host).
    extra = c.extra_args
    c.extra_args = (*extra, "--listen", f"127.0.0.1:{new_port}")
    try:
        c.start(moved)
    finally:
        c.extra_args = extra
    # With the other follower gone, every write needs the moved one: the leader must
    # reach it at its new address.
    c.signal(other, signal.SIGKILL)
    c.procs[other].wait(20)
    value = str(random.random()).encode()
    _put(c, leader, "after", value)
    deadline = time.monotonic() + 20
    while True:
        r = c.get(moved, "after", consistency="stale")
        if r.status == 200 and r.body == value:
            break
        assert time.monotonic() < deadline, (r.status, r.body)
        time.sleep(0.1)
    view = c.members(leader)
    assert {m["id"]: m["peer"] for m in view["members"]}[moved] == f"127.0.0.1:{new_port}"
