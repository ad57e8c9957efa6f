"""The Python clients move on at once from a member that says it is cut off, and keep
to members that answer: a member cut off costs one quick attempt, not one per call."""

from __future__ import annotations

import time

from fake_node import FakeNode, ServerThread
from pnyx.client.common import FAILED_MEMORY
from pnyx.client.http import Client
from pnyx.protocol.multipaxos import Code, Outcome


def cut_off_node() -> FakeNode:
    node = FakeNode()
    node.refuse = Outcome.failed(Code.CUT_OFF, "node 1 has heard from no leader; ask another")
    node.refuse_reads = node.refuse
    return node


def test_a_client_asks_a_cut_off_member_once_then_keeps_to_those_that_answer() -> None:
    with ServerThread(cut_off_node(), request_timeout=5.0) as cut, \
            ServerThread(request_timeout=5.0) as good, ServerThread(request_timeout=5.0) as other:
        with Client([cut.address, good.address, other.address], timeout=2.0) as kv:
            kv._current = 0  # start at the member cut off
            started = time.monotonic()
            for n in range(20):
                kv.put(f"k{n}", b"v")
            took = time.monotonic() - started
        # Answered at once (not the 5 s request timeout), and asked once: the client
        # went on to a member that answers and stayed with it.
        assert len(cut.node.submitted) == 1
        assert took < 2.0, took
        assert len(good.node.submitted) + len(other.node.submitted) == 20


def test_a_member_that_failed_is_tried_after_the_others_then_again_once_forgotten(
) -> None:
    with ServerThread(cut_off_node(), request_timeout=5.0) as cut, \
            ServerThread(request_timeout=5.0) as good, \
            Client([cut.address, good.address], timeout=2.0) as kv:
        kv._current = 0
        kv.put("a", b"1")
        assert len(cut.node.submitted) == 1 and kv._current == 1
        # The member that answered fails now: the client goes back to the one that
        # failed (the only other), whatever it remembers.
        kv._failed_at[1] = kv._failed_at[0] = time.monotonic() - FAILED_MEMORY - 1
        kv._move_on(1)
        assert kv._current == 0


def test_moving_on_skips_a_member_that_failed_lately_for_one_that_did_not() -> None:
    kv = Client(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    kv._current = 1
    kv._move_on(1)  # member 1 (say, cut off) failed a moment ago
    kv._current = 0
    kv._move_on(0)  # now member 0 fails: on to member 2, not back to member 1
    assert kv._current == 2
    kv._answered_by(1)  # member 1 answered since: it is preferred again
    kv._move_on(2)
    assert kv._current == 1
