"""The live view of a real cluster (`/ui` on any member, fed by server-sent events),
checked in headless Chromium against three `pnyx serve` processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Net, accept_for, accepted_for
from pnyx.node.runtime import recent_slots
from pnyx.testing import Cluster, request
from viz_browser import browser, console_errors, screenshot


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_everything()


def _wait(driver: Any, script: str, timeout: float, show: str | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    seen = f"; the page showed {driver.execute_script(show)}" if show else ""
    raise AssertionError(f"not within {timeout} s: {script}{seen}")


def test_the_page_and_its_stream_are_served_by_every_member(cluster: Cluster) -> None:
    for i in cluster.ids:
        page = request("GET", cluster.url(i, "/ui"))
        assert page.status == 200 and b"pnyx cluster, live" in page.body


def test_the_live_view_shows_a_new_leader_within_seconds_of_the_old_one_being_killed(
        cluster: Cluster) -> None:
    members = ",".join(f"127.0.0.1:{cluster.http_ports[i]}" for i in cluster.ids)
    leader = cluster.leader()
    watch = next(i for i in cluster.ids if i != leader)  # the page is served by a follower
    with browser() as driver:
        driver.get(cluster.url(watch, f"/ui?members={members}"))
        shown = _wait(driver, "return document.body.dataset.leader", 10)
        assert int(shown) == leader
        _wait(driver, "return document.querySelectorAll('.card:not(.down)').length === 3", 5)
        for n in range(20):
            cluster.put(watch, f"k{n}", b"v")
        screenshot(driver, "live-3-nodes.png")
        cluster.kill(leader)
        killed = time.monotonic()
        new = _wait(driver, f"const l = document.body.dataset.leader; "
                            f"return l && l !== '{leader}' ? l : null", 10)
        took = time.monotonic() - killed
        assert int(new) != leader and took < 5, took
        # The killed member shows as unreachable; the others keep answering.
        down = _wait(driver, "return [...document.querySelectorAll('.card.down')]"
                             ".map(c => c.dataset.addr)", 5)
        assert down == [f"127.0.0.1:{cluster.http_ports[leader]}"]
        print(f"new leader shown {took:.2f} s after SIGKILL")
        screenshot(driver, "live-after-leader-killed.png")
        errors = [e for e in console_errors(driver) if "ui/events" not in e]
        assert errors == []  # the killed member's stream failing is expected


def test_status_names_every_members_http_address_and_the_log_shows_the_recent_slots(
        cluster: Cluster) -> None:
    leader = cluster.leader()
    for n in range(12):
        cluster.put(leader, f"k{n}", b"v")
    want = {str(i): f"http://127.0.0.1:{cluster.http_ports[i]}" for i in cluster.ids}
    deadline = time.monotonic() + 5
    while True:  # a member learns a peer's address from the Hello of the peer's own link
        seen = {i: {p: m["http"] for p, m in cluster.status(i)["members"].items()}
                for i in cluster.ids}
        if all(s == want for s in seen.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert all(s == want for s in seen.values()), seen
    recent = request("GET", cluster.url(leader, "/v1/log?recent=5")).json()
    commit = recent["commit_slot"]
    assert commit >= 12 and recent["in_flight"] == []
    assert [s["slot"] for s in recent["slots"]] == list(range(commit - 4, commit + 1))
    assert all(s["state"] == "chosen" and s["commands"] >= 1 and s["ballot"]
               for s in recent["slots"]), recent
    capped = request("GET", cluster.url(leader, "/v1/log?recent=100000")).json()
    assert len(capped["slots"]) == min(commit, 256)
    assert request("GET", cluster.url(leader, "/v1/log?recent=x")).status == 400


_CARDS = ("return [...document.querySelectorAll('.card')].map(c => ({node: c.dataset.node, "
          "down: c.classList.contains('down'), role: c.querySelector('.role').textContent, "
          "chosen: Number(c.dataset.chosen || 0), top: Number(c.dataset.top || 0), "
          "seq: Number(c.dataset.seq || 0)}))")


def test_one_member_s_page_shows_every_member_its_slots_and_a_killed_one_as_down(
        cluster: Cluster) -> None:
    leader = cluster.leader()
    watch, other = (i for i in cluster.ids if i != leader)
    with browser() as driver:
        driver.get(cluster.url(watch, "/ui"))  # one member's page, told of no other
        _wait(driver, "return document.querySelectorAll('.card:not(.down)').length === 3", 10)
        cards = {int(c["node"]): c for c in driver.execute_script(_CARDS)}
        assert sorted(cards) == cluster.ids
        assert [i for i, c in cards.items() if c["role"] == "leader"] == [leader]
        assert all(c["role"].startswith("follower") for i, c in cards.items() if i != leader)
        for n in range(20):
            cluster.put(watch, f"k{n}", b"v")
        # Every member's slot strip shows the 20 writes chosen.
        _wait(driver, "return [...document.querySelectorAll('.card')]"
                      ".every(c => Number(c.dataset.chosen) >= 20)", 5, _CARDS)
        screenshot(driver, "live-one-member-slots.png")
        cluster.kill(other)
        _wait(driver, f"const c = document.querySelector('.card[data-node=\"{other}\"]'); "
                      "return c && c.classList.contains('down')", 5)
        before = {int(c["node"]): c for c in driver.execute_script(_CARDS)}
        for n in range(5):
            cluster.put(leader, f"after{n}", b"v")
        # The two left keep updating: new samples, and the writes after the kill in the strip.
        _wait(driver, "return [...document.querySelectorAll('.card:not(.down)')]"
                      f".every(c => Number(c.dataset.top) >= {before[leader]['top'] + 5})", 5)
        after = {int(c["node"]): c for c in driver.execute_script(_CARDS)}
        assert [i for i, c in after.items() if c["down"]] == [other]
        assert all(after[i]["seq"] > before[i]["seq"] for i in (leader, watch))
        assert after[other]["seq"] == before[other]["seq"]
        screenshot(driver, "live-one-member-after-kill.png")
        errors = [e for e in console_errors(driver) if "ui/events" not in e]
        assert errors == []


def test_the_recent_log_names_each_slot_chosen_in_flight_with_its_votes_accepted_or_a_gap(
        ) -> None:
    net = Net()
    leader = net.elect(1)
    net.submit(1, 1, b"a=1")
    net.deliver()  # slot 1 chosen
    net.submit(1, 2, b"b=2")  # slot 2: only the leader's own acceptor accepts it
    net.submit(1, 3, b"c=3")  # slot 3: only node 3 accepts it, and its vote is lost
    net.deliver(lambda d, m: accept_for(2, dst=1)(d, m) or accepted_for(2, src=1)(d, m)
                or accept_for(3, dst=3)(d, m))
    ballot = str(leader.ballot)
    assert recent_slots(net.nodes[1], 10) == {
        "commit_slot": 1, "applied_slot": 1,
        "slots": [
            {"slot": 1, "state": "chosen", "ballot": ballot, "commands": 1},
            {"slot": 2, "state": "in_flight", "ballot": ballot, "votes": [1], "commands": 1},
            {"slot": 3, "state": "in_flight", "ballot": ballot, "votes": [], "commands": 1},
        ],
        "in_flight": [{"slot": 2, "ballot": ballot, "votes": [1]},
                      {"slot": 3, "ballot": ballot, "votes": []}],
    }
    # Node 3 heard slot 3's Accept (which told it slot 1 is chosen) but not slot 2's.
    assert [(s["slot"], s["state"]) for s in recent_slots(net.nodes[3], 10)["slots"]] == [
        (1, "chosen"), (2, "gap"), (3, "accepted")]
    assert [s["slot"] for s in recent_slots(net.nodes[1], 2)["slots"]] == [2, 3]
    assert recent_slots(net.nodes[1], 0)["slots"] == []


def test_a_member_no_one_has_heard_from_shows_as_down_until_it_starts(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    try:
        c.start(1, wait=False)
        c.start(2, wait=False)
        c.wait_ready(1)
        c.wait_ready(2)
        with browser() as driver:
            driver.get(c.url(1, "/ui"))
            _wait(driver, "return document.querySelectorAll('.card:not(.down)').length === 2",
                  10, _CARDS)
            cards = {int(x["node"]): x for x in driver.execute_script(_CARDS)}
            assert sorted(cards) == [1, 2, 3] and cards[3]["down"]
            assert "no member knows where it serves" in cards[3]["role"]
            c.start(3)  # its Hello tells the others where it serves: the page follows it
            _wait(driver, "return document.querySelectorAll('.card:not(.down)').length === 3",
                  10, _CARDS)
            assert console_errors(driver) == []
    finally:
        c.stop_everything()
