"""Membership over HTTP, the clients and `pnyx member` on a real 3-node cluster.

`pnyx serve` processes (`pnyx.testing.Cluster`): the view with the leader's
progress, a learner that cannot be reached costing nothing, the core's refusals
through the API, two changes against one base at once (one wins, one is a
conflict), and `pnyx member replace` swapping a joined node for an old one.
Every process a test starts is stopped when it ends.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

import pnyx
from fake_node import dead_address
from pnyx.cli import build_parser
from pnyx.cli import main as pnyx_main
from pnyx.client.members import newest
from pnyx.testing import Cluster, Response, free_ports, request


def members_of(c: Cluster, i: int) -> dict[str, Any]:
    """The configuration as member `i` knows it (`GET /v1/members`)."""
    return dict(request("GET", c.url(i, "/v1/members"), timeout=5.0).json())


def by_id(view: Any) -> dict[int, dict[str, Any]]:
    return {m["id"]: m for m in view["members"]}



@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    for attempt in range(3):
        root = tmp_path / f"cluster-{attempt}"
        root.mkdir()
        c = Cluster(root)
        try:
            c.start_all()
            break
        except RuntimeError as exc:
            # The free ports `Cluster` picked were taken before a node bound them (other
            # processes on this machine start servers too): pick others.
            c.stop_everything()
            if "address already in use" not in str(exc) or attempt == 2:
                raise
    try:
        c.leader()
        yield c
    finally:
        c.stop_everything()


def post(c: Cluster, i: int, path: str, body: dict[str, Any]) -> Response:
    return request("POST", c.url(i, path), json.dumps(body).encode(), timeout=10.0,
                   headers={"Content-Type": "application/json"})


def asked_until_answered(ask: Callable[[], Response], timeout: float = 10.0) -> Response:
    """`ask()` again while no leader answers (503)."""
    deadline = time.monotonic() + timeout
    while True:
        r = ask()
        if r.status != 503 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_real_cluster_lists_adds_and_removes_while_writes_go_on(cluster: Cluster) -> None:
    c = cluster
    leader = c.leader()
    endpoints = [c.http_endpoint(i) for i in c.ids]
    with pnyx.Client(endpoints) as client:
        views = client.member_views()
        assert len(views) == 3
        # Only the leader tracks progress: its view has its own applied slot at least.
        lead = [v for v in views if any(m["applied"] is not None for m in v["members"])]
        assert len(lead) == 1 and lead[0]["leader"] == leader
        assert isinstance(by_id(lead[0])[leader]["applied"], int)
        assert {m["id"]: m["role"] for m in lead[0]["members"]} == {1: "voter", 2: "voter",
                                                                   3: "voter"}
        # Node 4 never starts: a learner nobody can reach costs the cluster nothing.
        view = client.add_member(4, dead_address(), learner=True)
        assert by_id(newest(view))[4]["role"] == "learner"
        for n in range(5):
            client.put(f"k{n}", b"v")
        assert client.get("k4")[0] == b"v"
        with pytest.raises(pnyx.Conflict, match="has not caught up") as refused:
            client.promote_member(4)
        assert refused.value.code == "refused"
        view = client.remove_member(4)
        assert 4 not in by_id(newest(view))
        with pytest.raises(pnyx.BadRequest, match="ids are never reused"):
            client.add_member(4, dead_address())


def test_real_cluster_refuses_unknown_ids_the_last_voters_and_bad_input(
        cluster: Cluster) -> None:
    c = cluster
    r = asked_until_answered(lambda: request("DELETE", c.url(1, "/v1/members/9"), timeout=10))
    assert (r.status, r.json()["error"]) == (400, {"code": "invalid",
                                                   "message": "node 9 is not a member"})
    r = asked_until_answered(lambda: post(c, 2, "/v1/members/change", {"remove": [1, 2, 3]}))
    assert (r.status, r.json()["error"]["message"]) == (400, "the change would leave no voter")
    r = post(c, 3, "/v1/members", {"id": "4", "peer": "127.0.0.1:1"})
    assert (r.status, r.json()["error"]["code"]) == (400, "bad_field")
    r = request("POST", c.url(3, "/v1/members"), b"{nope", timeout=5)
    assert (r.status, r.json()["error"]["code"]) == (400, "bad_json")
    r = request("PUT", c.url(3, "/v1/members"), b"{}", timeout=5)
    assert r.status == 405 and r.headers["Allow"] == "GET,POST"
    assert request("GET", c.url(3, "/v1/members/x"), timeout=5).status == 404
    assert {m["role"] for m in members_of(c, 1)["members"]} == {"voter"}
    assert members_of(c, 1)["version"] == 0 and not members_of(c, 1)["pending"]


def test_real_cluster_two_changes_against_one_base_at_once_one_wins_one_conflicts(
        cluster: Cluster) -> None:
    c = cluster
    base = members_of(c, 1)["version"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(
            lambda i: asked_until_answered(lambda: post(
                c, i, "/v1/members", {"id": 10 + i, "peer": dead_address(), "learner": True,
                                      "base": base})),
            (1, 2)))
    statuses = sorted(r.status for r in answers)
    assert statuses == [200, 409], [r.body for r in answers]
    loser = next(r for r in answers if r.status == 409).json()["error"]
    assert loser["code"] == "conflict" and f"against {base}" in loser["message"]
    view = members_of(c, 3)
    ids = {m["id"] for config in (view, *view["pending"]) for m in config["members"]}
    assert len(ids & {11, 12}) == 1
    # Made later against the same old version: a conflict too, whichever member is asked.
    r = asked_until_answered(lambda: request(
        "DELETE", c.url(3, f"/v1/members/{(ids & {11, 12}).pop()}?base={base}"), timeout=10))
    assert (r.status, r.json()["error"]["code"]) == (409, "conflict")


def test_pnyx_member_replace_swaps_a_new_node_for_an_old_one_on_a_real_cluster(
        cluster: Cluster) -> None:
    c = cluster
    endpoints = ",".join(c.http_endpoint(i) for i in c.ids)
    for n in range(20):
        assert c.put(1 + n % 3, f"before-{n}", b"x").status == 200
    # Node 4 joins as a learner the leader does not promote by itself; replace does it.
    c.join(4, learner=True)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = pnyx_main(["member", "replace", "3", "4", f"127.0.0.1:{c.peer_ports[4]}",
                          "--wait", "30", "--endpoints", endpoints])
    assert (code, err.getvalue()) == (0, ""), out.getvalue()
    text = out.getvalue()
    assert "1/3 node 4 is a learner already" in text and "3/3 one change against" in text
    view = c.wait_role(3, "gone", via=1)
    assert {m["id"]: m["role"] for m in view["members"]} == {1: "voter", 2: "voter",
                                                             4: "voter"}
    assert c.procs[3].wait(10) == 0  # a removed node says so and exits
    deadline = time.monotonic() + 10
    while members_of(c, 1)["leader"] not in (1, 2, 4):  # 3 may have led until it went
        assert time.monotonic() < deadline, members_of(c, 1)
        time.sleep(0.05)
    out = io.StringIO()
    with redirect_stdout(out):
        assert pnyx_main(["member", "list", "--endpoints", endpoints]) == 0
    rows = [line.split() for line in out.getvalue().splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("1", "voter"), ("2", "voter"), ("4", "voter")]
    heading = out.getvalue().splitlines()[0]
    leader = heading.split("leader ")[1].split(",")[0]
    # The leader's view is the one listed: its own applied slot is in its row.
    assert [r[-1].isdigit() for r in rows if r[0] == leader] == [True], out.getvalue()
    assert c.get(4, "before-19", consistency="stale").body == b"x"


def test_pnyx_member_replace_puts_a_new_node_in_place_of_a_killed_one(
        cluster: Cluster) -> None:
    c = cluster
    endpoints = ",".join(c.http_endpoint(i) for i in c.ids)
    for n in range(20):
        assert c.put(1 + n % 2, f"before-{n}", b"x").status == 200
    c.kill(3)
    peer, http, client = free_ports(3)
    args = build_parser().parse_args([
        "member", "replace", "3", "4", f"127.0.0.1:{peer}", "--http", f"127.0.0.1:{http}",
        "--wait", "40", "--timeout", "20", "--endpoints", endpoints])
    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(args.run(args, stdout=out,
                                                                    stderr=err)))
    runner.start()
    try:
        # The replace added node 4 and says how to start it: the incarnation the add used.
        deadline = time.monotonic() + 20
        while (m := re.search(r"--incarnation (\d+)", out.getvalue())) is None:
            assert time.monotonic() < deadline and runner.is_alive(), (out.getvalue(),
                                                                       err.getvalue())
            time.sleep(0.05)
        c.join(4, via=[1, 2], incarnation=int(m.group(1)), ports=(peer, http, client))
    finally:
        runner.join(60)
    assert result == [0], (out.getvalue(), err.getvalue())
    assert "3/3 one change against version 1: promote node 4, remove node 3" in out.getvalue()
    view = c.wait_role(3, "gone", via=1)
    assert {m["id"]: m["role"] for m in view["members"]} == {1: "voter", 2: "voter",
                                                             4: "voter"}
    assert c.put(4, "after", b"y").status == 200
    assert c.get(4, "before-19", consistency="stale").body == b"x"
