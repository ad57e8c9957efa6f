"""Specs of the membership routes (`pnyx.api.members`) on both HTTP servers.

Against a fake node whose membership is the protocol core's own
(`pnyx.protocol.multipaxos.membership.Membership`, so a refusal reads as the
core words it), every spec runs on both servers as tests/test_api_http.py's do;
the real cluster's specs are tests/test_members_cluster.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import pnyx
from fake_node import FakeNode, ServerThread
from pnyx.api import members as api_members
from pnyx.protocol.multipaxos import Code, Outcome
from pnyx.protocol.multipaxos.membership import ALPHA, Membership, genesis
from pnyx.protocol.multipaxos.messages import Change, Member
from test_api_http import aio, error_of, raw, serve, server_kind  # noqa: F401 (the fixture)


class FakeMembersNode(FakeNode):
    """A `FakeNode` with a membership: changes are applied at once by the core's
    `Membership.apply` (as every replica applies a chosen change), so its checks and
    words are the real ones. Switches: `gate` (an `asyncio.Event`: changes wait for
    it, so two can be in flight at once), `refuse_change` (the leader's refusal, an
    `Outcome`), `change_outcome` (the answer to every change, e.g. no leader),
    `follower` (its view has no member's progress, as a follower's), `fill` (False: a
    change stays pending, as one just chosen whose start is ALPHA slots on)."""

    def __init__(self, node_id: int = 1, voters: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__(node_id)
        self.membership = Membership(node_id, genesis(voters))
        self.slot = 0
        self.gate: asyncio.Event | None = None
        self.refuse_change: Outcome | None = None
        self.change_outcome: Outcome | None = None
        self.changes: list[dict[str, Any]] = []
        self.follower = False  # its view has no progress (only the leader tracks it)
        self.fill = True  # a change is in force at once (else pending, as just chosen)
        self.leader = node_id  # the leader its view names

    async def change_members(self, *, add: tuple[Member, ...] = (), remove: tuple[int, ...] = (),
                             promote: tuple[int, ...] = (), move: tuple[Member, ...] = (),
                             base: int | None = None,
                             timeout: float | None = None) -> Outcome:
        version = self.membership.latest.version if base is None else base
        self.changes.append({"add": add, "remove": remove, "promote": promote, "base": base,
                             **({"move": move} if move else {})})
        if self.gate is not None:
            await self.gate.wait()
        if self.change_outcome is not None:
            return self.change_outcome
        if self.refuse_change is not None:
            return self.refuse_change
        self.slot += 1
        code, why = self.membership.apply(self.slot, Change(self.node_id, len(self.changes),
                                                            version, add, remove, promote,
                                                            move))
        if code is not Code.NONE:
            return Outcome.failed(code, why)
        index = self.slot
        if self.fill:
            self.slot += ALPHA  # the leader fills the slots below the change's start
            self.membership.trim(self.slot)
        return Outcome(True, b"", index)

    def membership_view(self) -> dict[str, Any]:
        # As `Node.membership_view`: the configuration in force at the next slot at the top,
        # those chosen but not yet in force in `pending`.
        in_force = self.membership.at(self.slot + 1)

        def view_of(config: Any) -> dict[str, Any]:
            return {"version": config.version, "start": config.start, "members": [
                {"id": m.id, "peer": m.peer, "http": m.http,
                 "role": "voter" if m.voter else "learner", "promote": m.promote,
                 "applied": None if self.follower else self.slot, "incarnation": m.incarnation}
                for m in config.members]}

        return {
            "cluster_id": "fake", **view_of(in_force),
            "pending": [view_of(c) for c in self.membership.configs if c.start > in_force.start],
            "genesis": {}, "alpha": ALPHA, "leader": self.leader, "commit": self.slot,
        }


def by_id(view: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {m["id"]: m for m in view["members"]}


# --- the view and the changes ------------------------------------------------------


@aio
async def test_get_members_answers_the_view() -> None:
    async with serve(FakeMembersNode()) as (c, _):
        r = await c.get("/v1/members")
        assert r.status == 200 and r.content_type == "application/json"
        view = await r.json()
        assert view["version"] == 0 and view["alpha"] == ALPHA
        assert {i: m["role"] for i, m in by_id(view).items()} == {
            1: "voter", 2: "voter", 3: "voter"}


@aio
async def test_add_makes_a_learner_the_leader_promotes_unless_asked_to_keep_it() -> None:
    async with serve(FakeMembersNode()) as (c, node):
        r = await c.post("/v1/members", json={"id": 4, "peer": "127.0.0.1:7004",
                                              "http": "127.0.0.1:8004"})
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["ok"] is True and body["version"] == 1
        four = by_id(body)[4]
        assert (four["role"], four["promote"], four["peer"], four["http"]) == (
            "learner", True, "127.0.0.1:7004", "127.0.0.1:8004")
        r = await c.post("/v1/members", json={"id": 5, "peer": "[::1]:7005", "learner": True})
        assert r.status == 200, await r.text()
        five = by_id(await r.json())[5]
        assert (five["role"], five["promote"], five["http"]) == ("learner", False, "")
        added = node.changes[1]["add"][0]
        assert added.voter is False and added.promote is False


@aio
async def test_promote_remove_and_change_apply_as_one_change_each() -> None:
    async with serve(FakeMembersNode()) as (c, node):
        await c.post("/v1/members", json={"id": 4, "peer": "h:7004", "learner": True})
        r = await c.post("/v1/members/4/promote")
        assert r.status == 200, await r.text()
        assert by_id(await r.json())[4]["role"] == "voter"
        r = await c.delete("/v1/members/3?base=2")
        assert r.status == 200, await r.text()
        view = await r.json()
        assert 3 not in by_id(view) and view["version"] == 3
        assert node.changes[-1]["base"] == 2
        await c.post("/v1/members", json={"id": 5, "peer": "h:7005", "learner": True})
        r = await c.post("/v1/members/change", json={"base": 4, "promote": [5],
                                                     "remove": [2]})
        assert r.status == 200, await r.text()
        view = await r.json()
        assert {i: m["role"] for i, m in by_id(view).items()} == {
            1: "voter", 4: "voter", 5: "voter"}
        assert view["version"] == 5 and len(node.changes) == 5


@aio
async def test_promote_takes_a_base_in_its_body() -> None:
    async with serve(FakeMembersNode()) as (c, node):
        await c.post("/v1/members", json={"id": 4, "peer": "h:7004", "learner": True})
        r = await c.post("/v1/members/4/promote", json={"base": 0})
        await error_of(r, 409, "conflict")
        assert node.changes[-1]["base"] == 0


@aio
async def test_a_join_retried_under_the_same_incarnation_is_answered_as_added() -> None:
    async with serve(FakeMembersNode()) as (c, node):
        join = {"id": 4, "peer": "h:7004", "incarnation": 77}
        first = await c.post("/v1/members", json=join)
        second = await c.post("/v1/members", json=join)
        assert (first.status, second.status) == (200, 200)
        assert len(node.changes) == 1  # the retry changed nothing
        assert by_id(await second.json())[4]["incarnation"] == 77
        # Another incarnation is another process under the same id: refused.
        err = await error_of(await c.post("/v1/members", json={**join, "incarnation": 78}),
                             400, "invalid")
        assert "node 4 is already a member" in err["message"]


# --- refused by the core or the leader ----------------------------------------------


@aio
async def test_an_unknown_id_is_a_clear_400() -> None:
    async with serve(FakeMembersNode()) as (c, _):
        err = await error_of(await c.delete("/v1/members/9"), 400, "invalid")
        assert err["message"] == "node 9 is not a member"
        err = await error_of(await c.post("/v1/members/9/promote"), 400, "invalid")
        assert err["message"] == "node 9 is not a member"


@aio
async def test_removing_the_last_voter_is_refused_with_the_cores_words() -> None:
    async with serve(FakeMembersNode(voters=(1,))) as (c, node):
        err = await error_of(await c.delete("/v1/members/1"), 400, "invalid")
        assert err["message"] == "the change would leave no voter"
        assert node.membership.latest.version == 0
    async with serve(FakeMembersNode()) as (c, _):
        r = await c.post("/v1/members/change", json={"remove": [1, 2, 3]})
        err = await error_of(r, 400, "invalid")
        assert err["message"] == "the change would leave no voter"


@aio
async def test_two_changes_against_the_same_base_one_wins_the_other_is_a_conflict() -> None:
    node = FakeMembersNode()
    node.gate = asyncio.Event()
    async with serve(node) as (c, _):
        first = asyncio.ensure_future(c.post("/v1/members", json={
            "id": 4, "peer": "h:7004", "base": 0}))
        second = asyncio.ensure_future(c.post("/v1/members", json={
            "id": 5, "peer": "h:7005", "base": 0}))
        while len(node.changes) < 2:
            await asyncio.sleep(0.01)
        node.gate.set()  # both are in flight: now apply them, one after the other
        answers = [await first, await second]
        statuses = sorted(r.status for r in answers)
        assert statuses == [200, 409], statuses
        loser = next(r for r in answers if r.status == 409)
        err = await error_of(loser, 409, "conflict")
        assert "version 1" in err["message"] and "against 0" in err["message"]
        assert node.membership.latest.version == 1


@aio
async def test_a_change_the_leader_will_not_propose_is_409_refused() -> None:
    node = FakeMembersNode()
    node.refuse_change = Outcome.failed(Code.REFUSED, "node 4 has not caught up yet")
    async with serve(node) as (c, _):
        err = await error_of(await c.post("/v1/members/4/promote"), 409, "refused")
        assert err["message"] == "node 4 has not caught up yet"


@aio
async def test_no_leader_is_503_with_retry_after_and_says_the_change_may_take_effect() -> None:
    node = FakeMembersNode()
    node.change_outcome = Outcome.failed(Code.NO_LEADER, "no quorum in time", unknown=True)
    async with serve(node) as (c, _):
        r = await c.post("/v1/members", json={"id": 4, "peer": "h:7004"})
        err = await error_of(r, 503, "unavailable")
        assert r.headers["Retry-After"] == "1"
        assert err["unknown"] is True and "may still take effect" in err["message"]
        assert len(node.changes) == 1  # not retried: a second attempt could be refused


@aio
async def test_a_cut_off_member_names_the_leader_as_the_kv_api_does() -> None:
    node = FakeMembersNode()
    node.change_outcome = Outcome.failed(Code.CUT_OFF, "node 1 has heard from no leader")
    node.leader_hint = lambda: {"leader": 2, "leader_http": "127.0.0.1:8002"}  # type: ignore[attr-defined]
    async with serve(node) as (c, _):
        r = await c.delete("/v1/members/3")
        err = await error_of(r, 503, "unavailable")
        assert r.headers["Retry-After"] == "1"
        assert (err["leader"], err["leader_http"], err["unknown"]) == (2, "127.0.0.1:8002",
                                                                       False)


# --- bad input ------------------------------------------------------------------


BAD_ADDS = [
    (b"{", "bad_json", "not JSON"),
    (b"", "bad_json", "not JSON"),
    (b"[1]", "bad_json", "must be a JSON object, not an array"),
    (b'"x"', "bad_json", "not a string"),
    (b'{"id": 4, "peer": "h:1", "voter": true}', "bad_field", "unknown field 'voter'"),
    (b'{"peer": "h:1"}', "bad_field", "id is missing"),
    (b'{"id": "4", "peer": "h:1"}', "bad_field", "id must be an integer"),
    (b'{"id": true, "peer": "h:1"}', "bad_field", "id must be an integer"),
    (b'{"id": 4.5, "peer": "h:1"}', "bad_field", "id must be an integer"),
    (b'{"id": -1, "peer": "h:1"}', "bad_field", "id must be an integer"),
    (b'{"id": 2147483648, "peer": "h:1"}', "bad_field", "id must be an integer"),
    (b'{"id": 4}', "bad_field", "peer is missing"),
    (b'{"id": 4, "peer": 7004}', "bad_field", "peer must be a string"),
    (b'{"id": 4, "peer": "h"}', "bad_field", "is not host:port"),
    (b'{"id": 4, "peer": "h:0"}', "bad_field", "is not host:port"),
    (b'{"id": 4, "peer": "h:70000"}', "bad_field", "is not host:port"),
    (b'{"id": 4, "peer": "h:1", "http": "x y:1"}', "bad_field", "http"),
    (b'{"id": 4, "peer": "h:1", "learner": "yes"}', "bad_field", "learner must be true"),
    (b'{"id": 4, "peer": "h:1", "base": -1}', "bad_field", "base must be an integer"),
    (b'{"id": 4, "peer": "h:1", "incarnation": "1"}', "bad_field", "incarnation must be"),
]


@aio
async def test_bad_add_bodies_are_400_with_what_is_wrong() -> None:
    async with serve(FakeMembersNode()) as (c, node):
        for body, code, words in BAD_ADDS:
            r = await c.post("/v1/members", data=body,
                             headers={"Content-Type": "application/json"})
            err = await error_of(r, 400, code)
            assert words in err["message"], (body, err)
        assert node.changes == []  # none reached the node


BAD_CHANGES = [
    (b"{}", "changes nothing"),
    (b'{"remove": []}', "changes nothing"),
    (b'{"remove": 3}', "remove must be an array"),
    (b'{"remove": ["3"]}', "remove[0] must be an integer"),
    (b'{"promote": [4, 4]}', "names a node twice"),
    (b'{"remove": [3], "promote": [3]}', "node 3 is named twice"),
    (b'{"add": {"id": 4}}', "add must be an array"),
    (b'{"add": [4]}', "add[0] must be an object"),
    (b'{"add": [{"id": 4, "peer": "h:1", "base": 1}]}', "add[0]: unknown field 'base'"),
    (b'{"add": [{"id": 4}]}', "add[0].peer is missing"),
    (b'{"remove": [3], "extra": 1}', "unknown field 'extra'"),
]


@aio
async def test_bad_change_bodies_are_400_bad_field() -> None:
    async with serve(FakeMembersNode()) as (c, node):
        for body, words in BAD_CHANGES:
            r = await c.post("/v1/members/change", data=body)
            err = await error_of(r, 400, "bad_field")
            assert words in err["message"], (body, err)
        err = await error_of(await c.post("/v1/members/4/promote", data=b'{"bas": 1}'),
                             400, "bad_field")
        assert "unknown field 'bas'" in err["message"]
        assert node.changes == []


@aio
async def test_bad_query_and_path_params_are_400() -> None:
    async with serve(FakeMembersNode()) as (c, node):
        err = await error_of(await c.delete("/v1/members/3?base=x"), 400, "bad_param")
        assert "base" in err["message"]
        await error_of(await c.delete("/v1/members/3?force=1"), 400, "bad_param")
        await error_of(await c.get("/v1/members?x=1"), 400, "bad_param")
        err = await error_of(await c.delete("/v1/members/99999999999"), 400, "bad_param")
        assert "node id" in err["message"]
        assert node.changes == []


@aio
async def test_unknown_member_paths_are_404_and_wrong_methods_405() -> None:
    async with serve(FakeMembersNode()) as (c, _):
        for path in ("/v1/members/abc", "/v1/members/1/demote", "/v1/members/1/promote/x",
                     "/v1/members/-1", "/v1/members/"):
            await error_of(await c.delete(raw(path)), 404, "no_route")
        for method, path, allow in (("PUT", "/v1/members", "GET,POST"),
                                    ("DELETE", "/v1/members", "GET,POST"),
                                    ("GET", "/v1/members/change", "POST"),
                                    ("DELETE", "/v1/members/change", "POST"),
                                    ("GET", "/v1/members/3", "DELETE"),
                                    ("GET", "/v1/members/3/promote", "POST")):
            r = await c.request(method, path)
            await error_of(r, 405, "method_not_allowed")
            assert set(r.headers["Allow"].split(",")) >= set(allow.split(",")), (path, r.headers)


@aio
async def test_a_node_without_a_membership_says_so() -> None:
    async with serve(FakeNode()) as (c, _):
        await error_of(await c.get("/v1/members"), 404, "no_members")
        await error_of(await c.post("/v1/members", json={"id": 4, "peer": "h:1"}), 404,
                       "no_members")
        await error_of(await c.delete("/v1/members/3"), 404, "no_members")


@aio
async def test_a_body_over_the_limit_is_413() -> None:
    async with serve(FakeMembersNode()) as (c, node):
        body = json.dumps({"remove": [1], "pad": "x" * api_members.MAX_BODY}).encode()
        await error_of(await c.post("/v1/members/change", data=body), 413, "value_too_large")
        assert node.changes == []


@aio
async def test_changes_are_counted_under_their_route_labels() -> None:
    async with serve(FakeMembersNode()) as (c, node):
        await c.delete("/v1/members/3")
        await c.get("/v1/members")
        text = node.metrics.render().decode()
        assert 'route="/v1/members/{id}"' in text and 'route="/v1/members"' in text


# --- the Python clients ------------------------------------------------------------


@pytest.fixture
def served(server_kind: str) -> Iterator[ServerThread]:  # noqa: F811 (the fixture above)
    """A `FakeMembersNode` over real TCP, on the server `server_kind` names."""
    kwargs: dict[str, Any] = ({"serve_kwargs": {"request_timeout": 0.5}} if server_kind == "h1"
                              else {"request_timeout": 0.5})
    with ServerThread(FakeMembersNode(), **kwargs) as s:
        yield s


def test_the_blocking_client_lists_adds_promotes_removes_and_changes(
        served: ServerThread) -> None:
    node = served.node
    assert isinstance(node, FakeMembersNode)
    with pnyx.Client([served.address], retry_timeout=2) as client:
        assert client.members()["version"] == 0
        view = client.add_member(4, "127.0.0.1:7004", http="127.0.0.1:8004", learner=True)
        assert by_id(view)[4]["role"] == "learner" and by_id(view)[4]["promote"] is False
        assert by_id(client.promote_member(4))[4]["role"] == "voter"
        assert 3 not in by_id(client.remove_member(3, base=2))
        view = client.change_members(add=[{"id": 5, "peer": "h:7005"}], remove=[2], base=3)
        assert by_id(view)[5]["promote"] is True and 2 not in by_id(view)
        with pytest.raises(pnyx.Conflict) as conflict:
            client.remove_member(1, base=0)
        assert conflict.value.code == "conflict" and conflict.value.status == 409
        with pytest.raises(pnyx.BadRequest, match="node 9 is not a member"):
            client.promote_member(9)
        with pytest.raises(TypeError):
            client.remove_member("3")  # type: ignore[arg-type]
        node.refuse_change = Outcome.failed(Code.REFUSED, "node 5 has not caught up yet")
        with pytest.raises(pnyx.Conflict, match="not caught up") as refused:
            client.promote_member(5)
        assert refused.value.code == "refused"


def test_a_change_whose_outcome_is_unknown_is_not_sent_again(served: ServerThread) -> None:
    node = served.node
    assert isinstance(node, FakeMembersNode)
    node.change_outcome = Outcome.failed(Code.NO_LEADER, "no quorum in time", unknown=True)
    with pnyx.Client([served.address, served.address], retry_timeout=3) as client:
        with pytest.raises(pnyx.Unavailable, match="may still take effect") as failed:
            client.remove_member(3)
        assert failed.value.unknown is True
        assert len(node.changes) == 1
    # A change that surely never took is sent again; an add is the same join on every
    # attempt (one incarnation), so even a retry of one that took is answered as added.
    node.change_outcome = Outcome.failed(Code.NO_LEADER, "no leader yet")
    with (pnyx.Client([served.address], retry_timeout=0.5) as client,
          pytest.raises(pnyx.Unavailable)):
        client.add_member(4, "h:7004")
    incarnations = {c["add"][0].incarnation for c in node.changes[1:]}
    assert len(node.changes) > 2 and len(incarnations) == 1 and 0 not in incarnations


def test_replace_adds_a_learner_waits_then_promotes_and_removes_in_one_change(
        served: ServerThread) -> None:
    node = served.node
    assert isinstance(node, FakeMembersNode)
    steps: list[str] = []
    with pnyx.Client([served.address]) as client:
        view = client.replace_member(3, 4, "127.0.0.1:7004", http="127.0.0.1:8004",
                                     timeout=5, on_step=steps.append)
    assert {i: m["role"] for i, m in by_id(view).items()} == {1: "voter", 2: "voter",
                                                              4: "voter"}
    add, swap = node.changes
    assert add["add"][0].promote is False and add["add"][0].voter is False
    assert (swap["promote"], swap["remove"], swap["base"]) == ((4,), (3,), 1)
    assert [s[:3] for s in steps if s[0].isdigit()] == ["1/3", "2/3", "3/3"]


def test_async_replace_waits_for_the_leaders_word_and_times_out_clearly(
        served: ServerThread) -> None:
    node = served.node
    assert isinstance(node, FakeMembersNode)
    node.follower = True  # no endpoint answers with the new member's progress

    async def replace() -> None:
        async with pnyx.AsyncClient([served.address]) as client:
            assert (await client.members())["version"] == 0
            await client.replace_member(3, 4, "h:7004", timeout=1.0)

    with pytest.raises(pnyx.PnyxError, match="did not catch up within 1 s") as failed:
        asyncio.run(replace())
    assert "run the same replace again" in failed.value.message
    assert len(node.changes) == 1  # the add; 3 stays a member, 4 a learner
    assert by_id(node.membership_view())[4]["role"] == "learner"
    assert 3 in by_id(node.membership_view())
    node.follower = False  # the leader answers now: the same replace resumes

    async def resume() -> dict[str, Any]:
        async with pnyx.AsyncClient([served.address]) as client:
            return await client.replace_member(3, 4, "h:7004", timeout=5)

    view = asyncio.run(resume())
    assert 3 not in by_id(view) and by_id(view)[4]["role"] == "voter"
    assert len(node.changes) == 2


def test_replace_of_a_node_that_joined_by_itself_resumes_and_removes_old_alone_if_promoted(
        served: ServerThread) -> None:
    node = served.node
    assert isinstance(node, FakeMembersNode)
    # Node 4 joined (`pnyx serve --join`): a learner the leader promotes once caught up.
    with pnyx.Client([served.address]) as client:
        client.add_member(4, "h:7004", incarnation=9)
        steps: list[str] = []
        view = client.replace_member(3, 4, "h:7004", timeout=5, on_step=steps.append)
        assert steps[0].startswith("1/3 node 4 is a learner already")
        assert (node.changes[-1]["promote"], node.changes[-1]["remove"]) == ((4,), (3,))
        assert 3 not in by_id(view) and by_id(view)[4]["role"] == "voter"
        # Node 5 joined and the leader promoted it before the replace looked: 2 goes alone.
        client.add_member(5, "h:7005", incarnation=10)
        client.promote_member(5)
        steps.clear()
        view = client.replace_member(2, 5, "h:7005", timeout=5, on_step=steps.append)
    assert "3/3 the leader made node 5 a voter already" in steps[3]
    assert (node.changes[-1]["promote"], node.changes[-1]["remove"]) == ((), (2,))
    assert {i: m["role"] for i, m in by_id(view).items()} == {1: "voter", 4: "voter",
                                                              5: "voter"}


def test_member_views_ask_the_leader_the_views_name_when_no_endpoint_leads() -> None:
    with ServerThread(FakeMembersNode()) as leader, \
            ServerThread(FakeMembersNode(node_id=2)) as follower:
        node = follower.node
        assert isinstance(node, FakeMembersNode)
        node.follower = True
        with pnyx.Client([follower.address]) as client:
            client.add_member(4, "h:7004", http=leader.address)
            assert len(client.member_views()) == 1  # it leads, says the follower: nobody else
            node.leader = 4  # node 4 leads now, and it is not among the endpoints

            async def views() -> list[dict[str, Any]]:
                async with pnyx.AsyncClient([follower.address]) as async_client:
                    return await async_client.member_views()

            for found in (client.member_views(), asyncio.run(views())):
                assert len(found) == 2 and found[1]["leader"] == 1  # the leader fake's view
                assert all(m["applied"] is not None for m in found[1]["members"])
