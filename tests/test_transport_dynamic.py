"""`PeerTransport.set_peers`: the peers change while the transport runs (membership
changes). Real sockets on 127.0.0.1, plaintext and mutual TLS (certificates made by
`pnyx.certs`): a peer added is dialled, a peer dropped loses its link, its queue and its
connections and is refused as a stranger afterwards, a peer that moved is dialled at its
new address, and our own id is ignored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pnyx import certs
from pnyx.node import Address
from pnyx.node.transport import PeerTransport
from pnyx.testing import free_ports
from pnyx.tls import TlsFiles

IDS = (1, 2, 3, 4)


@pytest.fixture(params=["plaintext", "tls"])
def tls_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path | None:
    if request.param == "plaintext":
        return None
    d = tmp_path / "certs"
    certs.init_ca(d)
    for i in IDS:
        certs.issue_member(d, i, ["127.0.0.1", "localhost"])
    return d


class Member:
    """A transport and what it received: (sender, payload) in order."""

    def __init__(self, node_id: int, peers: dict[int, Address], listen: Address,
                 tls_dir: Path | None) -> None:
        self.got: list[tuple[int, bytes]] = []
        self.states: list[tuple[int, bool]] = []
        tls = None if tls_dir is None else TlsFiles(
            tls_dir / f"node-{node_id}.pem", tls_dir / f"node-{node_id}-key.pem",
            tls_dir / "ca.pem")
        self.transport = PeerTransport(
            node_id, "pnyx", peers, listen, lambda src, data: self.got.append((src, data)),
            tls=tls, on_peer_state=lambda pid, up: self.states.append((pid, up)))

    def received(self, src: int) -> list[bytes]:
        return [data for s, data in self.got if s == src]


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def delivered(sender: Member, dst: int, receiver: Member, payload: bytes,
                    seconds: float = 5.0) -> bool:
    """Send `payload` until `receiver` has it (the link may be coming up)."""
    src = sender.transport.node_id

    async def go() -> bool:
        while payload not in receiver.received(src):
            sender.transport.send(dst, payload)
            await asyncio.sleep(0.05)
        return True

    try:
        return await asyncio.wait_for(go(), seconds)
    except TimeoutError:
        return False


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def addresses(count: int = len(IDS)) -> dict[int, Address]:
    return {i: Address("127.0.0.1", p) for i, p in zip(IDS[:count], free_ports(count), strict=True)}


def test_a_peer_added_while_running_is_dialled_and_messages_flow_both_ways(
        tls_dir: Path | None) -> None:
    async def scenario() -> None:
        where = addresses()
        one = Member(1, {1: where[1], 2: where[2]}, where[1], tls_dir)
        two = Member(2, {1: where[1], 2: where[2]}, where[2], tls_dir)
        three = Member(3, {1: where[1], 3: where[3]}, where[3], tls_dir)
        for m in (one, two, three):
            await m.transport.start()
        try:
            assert await delivered(one, 2, two, b"1->2")
            one.transport.send(3, b"before 3 is a peer")  # not a peer yet: dropped
            assert not await delivered(three, 1, one, b"3->1 refused", seconds=0.5)
            one.transport.set_peers({1: where[1], 2: where[2], 3: where[3]})
            assert await delivered(one, 3, three, b"1->3")
            assert await delivered(three, 1, one, b"3->1")
            assert await delivered(one, 2, two, b"1->2 still")
            assert b"before 3 is a peer" not in three.received(1)
            assert one.transport.reachable(3) and (3, True) in one.states
        finally:
            for m in (one, two, three):
                await m.transport.close()

    run(scenario)


def test_a_peer_dropped_loses_its_link_its_queue_and_its_connections_and_is_refused(
        tls_dir: Path | None, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        where = addresses(3)
        everyone = {i: where[i] for i in (1, 2, 3)}
        one, two, three = (Member(i, everyone, where[i], tls_dir) for i in (1, 2, 3))
        for m in (one, two, three):
            await m.transport.start()
        try:
            assert await delivered(one, 3, three, b"1->3")
            assert await delivered(three, 1, one, b"3->1")
            task = one.transport.peers[3].task
            assert task is not None
            with caplog.at_level(logging.WARNING, logger="pnyx.transport"):
                one.transport.set_peers({1: where[1], 2: where[2]})
                assert 3 not in one.transport.peers and not one.transport.reachable(3)
                assert (3, False) in one.states
                await asyncio.sleep(0)
                assert task.cancelled() or task.done()
                # Node 3's connection to us is closed, and every new one is refused on its
                # Hello: node 3 is outside the configuration now.
                refused = one.transport.refused
                assert await until(lambda: one.transport.refused > refused)
                count = len(one.received(3))
                for i in range(5):
                    three.transport.send(1, b"3->1 after %d" % i)
                    await asyncio.sleep(0.1)
                assert len(one.received(3)) == count
                # Nothing we send to it goes anywhere, and nothing is queued for it.
                one.transport.send(3, b"1->3 after")
                await asyncio.sleep(0.3)
                assert b"1->3 after" not in three.received(1)
                # Node 2 is unaffected.
                assert await delivered(one, 2, two, b"1->2")
                assert await delivered(two, 1, one, b"2->1")
            lines = [r.getMessage() for r in caplog.records]
            assert any("hello from node 3, which is not a peer" in line for line in lines), lines
        finally:
            for m in (one, two, three):
                await m.transport.close()

    run(scenario)


def test_messages_queued_for_a_peer_dropped_are_not_delivered_if_it_comes_back(
        tls_dir: Path | None) -> None:
    async def scenario() -> None:
        where = addresses(2)
        one = Member(1, dict(where), where[1], tls_dir)
        await one.transport.start()
        two: Member | None = None
        try:
            one.transport.send(2, b"queued while 2 is down")  # 2 not listening yet
            assert one.transport.peers[2].queue
            one.transport.set_peers({1: where[1]})
            one.transport.set_peers(dict(where))
            assert not one.transport.peers[2].queue
            two = Member(2, dict(where), where[2], tls_dir)
            await two.transport.start()
            assert await delivered(one, 2, two, b"after the return")
            assert b"queued while 2 is down" not in two.received(1)
        finally:
            await one.transport.close()
            if two is not None:
                await two.transport.close()

    run(scenario)


def test_a_peer_that_moved_is_dialled_at_its_new_address(tls_dir: Path | None) -> None:
    async def scenario() -> None:
        p1, p2, p2_new = free_ports(3)
        old = {1: Address("127.0.0.1", p1), 2: Address("127.0.0.1", p2)}
        new = {1: old[1], 2: Address("127.0.0.1", p2_new)}
        one = Member(1, old, old[1], tls_dir)
        two = Member(2, old, old[2], tls_dir)
        await one.transport.start()
        await two.transport.start()
        moved: Member | None = None
        try:
            assert await delivered(one, 2, two, b"to the old address")
            await two.transport.close()  # node 2 restarts elsewhere
            moved = Member(2, new, new[2], tls_dir)
            await moved.transport.start()
            links = one.transport.peers[2].links
            one.transport.set_peers(new)
            assert one.transport.peers[2].address == new[2]
            assert await delivered(one, 2, moved, b"to the new address")
            assert await delivered(moved, 1, one, b"from the new address")
            assert one.transport.peers[2].links == links + 1
        finally:
            await one.transport.close()
            if moved is not None:
                await moved.transport.close()

    run(scenario)


def test_a_peer_whose_address_changed_under_a_live_link_is_reconnected() -> None:
    """The link to the old address is up when the address changes: it is closed, and
    the next connection goes to the new address (two listeners, both alive)."""

    async def scenario() -> None:
        p1, p2, p3 = free_ports(3)
        a = Address("127.0.0.1", p2)
        b = Address("127.0.0.1", p3)
        one = Member(1, {1: Address("127.0.0.1", p1), 2: a}, Address("127.0.0.1", p1), None)
        at_a = Member(2, {1: one.transport.listen, 2: a}, a, None)
        at_b = Member(2, {1: one.transport.listen, 2: b}, b, None)
        for m in (one, at_a, at_b):
            await m.transport.start()
        try:
            assert await delivered(one, 2, at_a, b"to a")
            one.transport.set_peers({1: one.transport.listen, 2: b})
            assert await delivered(one, 2, at_b, b"to b")
            await asyncio.sleep(0.2)
            one.transport.send(2, b"only to b")
            assert await until(lambda: b"only to b" in at_b.received(1))
            assert b"only to b" not in at_a.received(1)
        finally:
            for m in (one, at_a, at_b):
                await m.transport.close()

    run(scenario)


def test_our_own_id_in_the_peers_is_ignored_and_set_peers_works_before_start(
        tls_dir: Path | None) -> None:
    async def scenario() -> None:
        where = addresses(2)
        one = Member(1, {1: where[1]}, where[1], tls_dir)
        one.transport.set_peers(dict(where))  # before start: dialled by start
        assert set(one.transport.peers) == {2}
        two = Member(2, dict(where), where[2], tls_dir)
        await one.transport.start()
        await two.transport.start()
        try:
            assert await delivered(one, 2, two, b"1->2")
            one.transport.set_peers({1: Address("127.0.0.1", 1), 2: where[2]})
            assert set(one.transport.peers) == {2}
            assert one.transport.peers[2].links == 1  # unchanged: not reconnected
            one.transport.set_peers(dict(where))  # the same again: nothing happens
            assert await delivered(one, 2, two, b"1->2 again")
            assert one.transport.peers[2].links == 1
        finally:
            await one.transport.close()
            await two.transport.close()

    run(scenario)


def test_close_after_peers_were_dropped_leaves_no_task_running(tls_dir: Path | None) -> None:
    async def scenario() -> None:
        where = addresses(3)
        one = Member(1, {1: where[1], 2: where[2], 3: where[3]}, where[1], tls_dir)
        await one.transport.start()  # 2 and 3 never listen: their tasks keep retrying
        await asyncio.sleep(0.1)
        one.transport.set_peers({1: where[1]})
        one.transport.set_peers({1: where[1], 2: where[2]})
        await one.transport.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == []

    run(scenario)
