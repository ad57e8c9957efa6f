"""The node's peer port under bad input: it closes the offending connection, logs why,
and keeps serving. Also: a node on real TCP with a real store survives a restart, and
an outbound link queues a bounded number of bytes and reconnects until the peer listens."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pnyx.node import Address, Node, NodeConfig
from pnyx.node.transport import Hello, PeerTransport
from pnyx.statemachine import kv
from pnyx.storage import SqliteLogStore
from pnyx.testing import free_ports


def make_nodes(tmp_path: Path, ports: list[int]) -> list[Node]:
    members = {i: Address("127.0.0.1", ports[i - 1]) for i in (1, 2, 3)}
    nodes = []
    for i in members:
        config = NodeConfig(i, members, tmp_path / f"n{i}", heartbeat_interval=0.02,
                            election_timeout=0.15)
        store = SqliteLogStore.open(config.data_dir / "log.db", node_id=i,
                                    cluster_id=config.cluster_id)
        nodes.append(Node(config, store, kv.KVMachine()))
    return nodes


def put(key: str, value: bytes, seq: int) -> bytes:
    return kv.encode_request(kv.Request("test", seq, kv.Put(key, value)))


async def send_raw(port: int, data: bytes) -> bool:
    """Send bytes to a peer port; True if the node closed the connection on us."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        closed = await asyncio.wait_for(reader.read(1), 6.0) == b""
    except TimeoutError:
        closed = False
    writer.close()
    return closed


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


HELLO_FROM_1 = frame(msgspec.msgpack.encode(Hello("pnyx", 1)))


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "over the limit"),
        (frame(b"\xc1garbage"), "not a pnyx hello"),
        (frame(msgspec.msgpack.encode(Hello("other-cluster", 1))), "not ours"),
        (frame(msgspec.msgpack.encode(Hello("pnyx", 9))), "not a peer"),
        (HELLO_FROM_1 + struct.pack(">I", 1 << 31), "over the limit"),
    ],
)
def test_bad_bytes_on_the_peer_port_close_that_connection_and_nothing_else(
    tmp_path: Path, attack: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        nodes = make_nodes(tmp_path, free_ports(3))
        for n in nodes:
            await n.start()
        try:
            await write(nodes[0], "k", b"1", 1)
            with caplog.at_level(logging.WARNING, logger="pnyx.transport"):
                assert await send_raw(nodes[1].config.peer_listen.port, attack)
            assert any(reason in r.getMessage() for r in caplog.records), caplog.text
            await write(nodes[1], "k", b"2", 2)
            read = await nodes[2].read(kv.encode_query("k"), "linearizable", timeout=5)
            # The value, not its index: `write` may have retried the first put while the
            # first election settled, and the copy its de-duplication answered still
            # took an index of the log (a fresh clone saw k=2 at index 3).
            result = kv.decode_result(read.result)
            assert isinstance(result, kv.Ok) and result.value == b"2", result
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(scenario())


def test_a_malformed_message_inside_a_good_connection_is_dropped_and_counted(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        nodes = make_nodes(tmp_path, free_ports(3))
        for n in nodes:
            await n.start()
        try:
            await write(nodes[0], "k", b"1", 1)
            port = nodes[1].config.peer_listen.port
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HELLO_FROM_1 + frame(b"\x93\xa7nonsense\x01") + frame(b"\xff" * 10))
            await writer.drain()
            await asyncio.sleep(0.2)
            assert nodes[1].replica is not None and nodes[1].replica.dropped >= 2
            writer.close()
            await write(nodes[1], "k", b"2", 2)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(scenario())


def test_a_node_restarted_from_its_store_keeps_the_log(tmp_path: Path) -> None:
    ports = free_ports(3)

    async def first() -> None:
        nodes = make_nodes(tmp_path, ports)
        for n in nodes:
            await n.start()
        for seq in range(1, 11):
            await write(nodes[seq % 3], f"k{seq}", b"v", seq)
        for n in nodes:
            await n.stop()

    async def second() -> None:
        nodes = make_nodes(tmp_path, ports)
        for n in nodes:
            await n.start()
        try:
            for seq in range(1, 11):
                read = await nodes[0].read(kv.encode_query(f"k{seq}"), "linearizable",
                                           timeout=5)
                assert isinstance(kv.decode_result(read.result), kv.Ok), seq
            await write(nodes[2], "after", b"x", 11)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(first())
    asyncio.run(second())


def test_frames_arriving_in_pieces_reach_the_node_whole_and_in_order() -> None:
    """Frames split anywhere (a 3 MiB one in 1 KiB pieces, small ones cut mid-header)
    are each handed over once, intact, in the order they were sent."""
    from pnyx.node.transport import PeerTransport

    big = bytes(range(256)) * (3 * 4096)  # 3 MiB
    payloads = [b"first", big, b"x", b"", b"last" * 100]

    async def scenario() -> list[tuple[int, bytes]]:
        (port,) = free_ports(1)
        got: list[tuple[int, bytes]] = []
        transport = PeerTransport(1, "pnyx", {1: Address("127.0.0.1", port),
                                              2: Address("127.0.0.1", 1)},
                                  Address("127.0.0.1", port),
                                  lambda src, data: got.append((src, data)))
        await transport.start()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            stream = frame(msgspec.msgpack.encode(Hello("pnyx", 2))) + b"".join(
                frame(p) for p in payloads)
            for at in range(0, len(stream), 1021):  # pieces that straddle every boundary
                writer.write(stream[at:at + 1021])
                await writer.drain()
            for _ in range(100):
                if len(got) == len(payloads):
                    break
                await asyncio.sleep(0.02)
            writer.close()
            return got
        finally:
            await transport.close()

    got = asyncio.run(scenario())
    assert [src for src, _ in got] == [2] * len(payloads)
    assert [data for _, data in got] == payloads


# ------------------------------------------------------------ outbound links


def test_the_outbound_queue_to_a_dead_peer_is_bounded_in_bytes() -> None:
    async def scenario() -> int:
        transport = PeerTransport(1, "c", {1: Address("127.0.0.1", 1),
                                           2: Address("127.0.0.1", 2)},
                                  Address("127.0.0.1", 0), lambda src, data: None)
        payload = b"a" * (1 << 20)  # one Accept of a 1 MiB batch
        for _ in range(96):  # never started: peer 2 is unreachable
            transport.send(2, payload)
        return sum(len(f) for f in transport.peers[2].queue)

    queued = asyncio.run(scenario())
    assert queued <= 64 << 20, f"{queued >> 20} MiB queued for a dead peer, and growing"


@pytest.fixture
def uvloop_runner() -> Any:
    uvloop = pytest.importorskip("uvloop")
    return lambda main: asyncio.Runner(loop_factory=uvloop.new_event_loop).run(main)


class _HangUp(asyncio.Protocol):
    """A listener that closes every connection as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


def test_an_outbound_link_the_peer_closes_while_it_is_set_up_is_retried_until_it_works(
        uvloop_runner: Any) -> None:
    """A peer that closes the connection before `create_connection` has returned (a peer
    shutting down or restarting does; under uvloop, `pnyx serve`'s loop, it shows at
    once) costs that attempt only: the transport keeps reconnecting, and the messages
    queued meanwhile reach the peer once it listens again. (The outbound task died of an
    AssertionError, and the node never again reached that peer.)"""

    async def main() -> None:
        p1, p2 = free_ports(2)
        members = {1: Address("127.0.0.1", p1), 2: Address("127.0.0.1", p2)}
        loop = asyncio.get_running_loop()
        hang_up = await loop.create_server(_HangUp, "127.0.0.1", p2)
        sender = PeerTransport(1, "c", members, members[1], lambda src, data: None)
        await sender.start()
        try:
            await asyncio.sleep(0.5)  # several attempts, each closed at once
            task = sender.peers[2].task
            assert task is not None and not task.done(), task
            hang_up.close()
            await hang_up.wait_closed()
            got: list[bytes] = []
            receiver = PeerTransport(2, "c", members, members[2],
                                     lambda src, data: got.append(data))
            await receiver.start()
            try:
                sender.send(2, b"hello after all")
                for _ in range(60):
                    if got:
                        break
                    await asyncio.sleep(0.05)
                assert got == [b"hello after all"]
            finally:
                await receiver.close()
        finally:
            await sender.close()

    uvloop_runner(main())


def test_a_hello_without_the_advertised_addresses_still_decodes_and_advertises_none() -> None:
    old = msgspec.msgpack.encode(("hello", "pnyx", 1))  # as it was: cluster and node only
    hello = msgspec.msgpack.decode(old, type=Hello)
    assert (hello.node_id, hello.http, hello.client) == (1, "", "")
    new = msgspec.msgpack.encode(Hello("pnyx", 2, "https://h:8002", "h:9002"))
    assert msgspec.msgpack.decode(new, type=Hello).http == "https://h:8002"


def test_each_member_learns_where_its_peers_serve_clients_from_their_hello(
        tmp_path: Path) -> None:
    ports = free_ports(9)
    members = {i: Address("127.0.0.1", ports[i - 1]) for i in (1, 2, 3)}

    async def scenario() -> None:
        nodes = []
        for i in members:
            config = NodeConfig(i, members, tmp_path / f"n{i}", heartbeat_interval=0.02,
                                election_timeout=0.15,
                                http=Address("0.0.0.0", ports[2 + i]),
                                client=Address("127.0.0.1", ports[5 + i]))
            store = SqliteLogStore.open(config.data_dir / "log.db", node_id=i,
                                        cluster_id=config.cluster_id)
            nodes.append(Node(config, store, kv.KVMachine()))
        for n in nodes:
            await n.start()
        try:
            await write(nodes[0], "k", b"1", 1)
            for n in nodes:
                for _ in range(100):
                    seen = n.status()["members"]
                    if all(m["http"] for m in seen.values()):
                        break
                    await asyncio.sleep(0.02)
                # A wildcard bind is advertised under the host the peers dial.
                assert {pid: (m["http"], m["client"]) for pid, m in seen.items()} == {
                    str(i): (f"http://127.0.0.1:{ports[2 + i]}", f"127.0.0.1:{ports[5 + i]}")
                    for i in members}
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(scenario())


def test_with_client_tls_the_advertised_http_address_is_https(tmp_path: Path) -> None:
    from pnyx.node.runtime import advertised

    members = {1: Address("db1.example", 7001), 2: Address("db2.example", 7002)}
    plain = NodeConfig(1, members, tmp_path, http=Address("0.0.0.0", 8001))
    assert advertised(plain) == ("http://db1.example:8001", "")
    secure = NodeConfig(1, members, tmp_path, http=Address("10.0.0.1", 8001),
                        client=Address("::", 9001), cert_file=tmp_path / "c.pem",
                        key_file=tmp_path / "k.pem")
    assert advertised(secure) == ("https://10.0.0.1:8001", "db1.example:9001")


# ------------------------------------------------------- dead peers, found by silence

DEAD_AFTER = 0.4  # the transports' `dead_after` in the bare-transport tests below


def test_an_idle_healthy_cluster_never_has_its_links_closed(tmp_path: Path) -> None:
    """The node judges peers by their silence (two election timeouts, 0.3 s here): over
    four idle seconds no link of a healthy cluster is judged dead, none is made again,
    not even between the two followers, which send each other nothing."""

    async def scenario() -> None:
        nodes = make_nodes(tmp_path, free_ports(3))
        for n in nodes:
            await n.start()
        try:
            await write(nodes[0], "k", b"1", 1)
            transports = [n.transport for n in nodes]
            assert all(t is not None and t.dead_after == 0.3 for t in transports)
            await asyncio.sleep(0.5)  # every link up
            links = {(t.node_id, p.node_id): p.links for t in transports if t
                     for p in t.peers.values()}
            assert all(count >= 1 for count in links.values()), links
            await asyncio.sleep(4.0)
            assert [t.silences for t in transports if t] == [0, 0, 0]
            assert {(t.node_id, p.node_id): p.links for t in transports if t
                    for p in t.peers.values()} == links
            await write(nodes[2], "k", b"2", 2)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(scenario())


async def write(node: Node, key: str, value: bytes, seq: int) -> None:
    """Put through `node`, asked again while the first election settles (a leader deposed
    at start aborts the write; the retry is the same request, applied once)."""
    for _ in range(20):
        outcome = await node.submit(put(key, value, seq), timeout=5)
        if outcome.ok:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"put {key} through node {node.node_id}: {outcome.error}")


def _pair(on_two: Any = None) -> tuple[PeerTransport, PeerTransport, list[bytes]]:
    """Transports 1 and 2 that judge silence after DEAD_AFTER; what 1 receives."""
    p1, p2 = free_ports(2)
    members = {1: Address("127.0.0.1", p1), 2: Address("127.0.0.1", p2)}
    got: list[bytes] = []
    one = PeerTransport(1, "c", members, members[1], lambda src, data: got.append(data),
                        dead_after=DEAD_AFTER)
    two = PeerTransport(2, "c", members, members[2], on_two or (lambda src, data: None),
                        dead_after=DEAD_AFTER)
    return one, two, got


def test_a_peer_whose_node_never_answers_is_not_judged_dead() -> None:
    """Not every message is answered (a Forward, a CatchUp with nothing to send): node 1
    sends to node 2 for three seconds and node 2's node sends nothing back. Node 2's
    transport answers node 1's pings, so the link is not closed."""

    async def scenario() -> None:
        one, two, _ = _pair()
        await one.start()
        await two.start()
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 3.0
            while loop.time() < end:
                one.send(2, b"unanswered")
                await asyncio.sleep(0.05)
            assert (one.silences, two.silences) == (0, 0)
            assert one.peers[2].links == 1
        finally:
            await one.close()
            await two.close()

    asyncio.run(scenario())


def test_time_the_loop_was_blocked_is_not_counted_as_the_peers_silence() -> None:
    """A callback blocks the loop for 1 s (over twice `dead_after`): the peer's answers
    were waiting, unread, so it is not judged dead when the loop runs again."""

    async def scenario() -> None:
        one, two, got = _pair(on_two=lambda src, data: two.send(src, data))
        await one.start()
        await two.start()
        try:
            for i in range(20):
                one.send(2, b"%d" % i)
                await asyncio.sleep(0.05)
            assert got
            one.send(2, b"just before")
            time.sleep(1.0)  # the whole process stalls (a long fsync, a GC pause)
            await asyncio.sleep(DEAD_AFTER)
            assert (one.silences, two.silences) == (0, 0)
            assert b"just before" in got
        finally:
            await one.close()
            await two.close()

    asyncio.run(scenario())


_ECHO = """
import asyncio, sys
from pathlib import Path
from pnyx.node import Address
from pnyx.node.transport import PeerTransport
from pnyx.tls import TlsFiles

async def main() -> None:
    p1, p2, dead_after = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    tls = None if sys.argv[4] == "-" else TlsFiles(
        Path(sys.argv[4]) / "node-2.pem", Path(sys.argv[4]) / "node-2-key.pem",
        Path(sys.argv[4]) / "ca.pem")
    members = {1: Address("127.0.0.1", p1), 2: Address("127.0.0.1", p2)}
    echo = PeerTransport(2, "pnyx", members, members[2], lambda src, data: echo.send(src, data),
                         dead_after=dead_after, tls=tls)
    await echo.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await echo.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_a_peer_process_that_stops_is_judged_dead_and_reconnected_once_it_resumes(
        tmp_path: Path, tls: bool) -> None:
    """Node 2 (another process, echoing what it gets) is stopped (SIGSTOP) for 2 s: node 1
    judges it dead within about `dead_after` and closes its connections; once it resumes
    (SIGCONT), node 1 hears it again within `dead_after` plus a connect."""
    import os
    import signal
    import subprocess
    import sys

    from pnyx import certs
    from pnyx.tls import TlsFiles

    files: TlsFiles | None = None
    tls_arg = "-"
    if tls:
        d = tmp_path / "certs"
        certs.init_ca(d)
        for i in (1, 2):
            certs.issue_member(d, i, ["127.0.0.1"])
        files = TlsFiles(d / "node-1.pem", d / "node-1-key.pem", d / "ca.pem")
        tls_arg = str(d)
    p1, p2 = free_ports(2)
    proc = subprocess.Popen([sys.executable, "-c", _ECHO, str(p1), str(p2), str(DEAD_AFTER),
                             tls_arg], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    timings: dict[str, float] = {}

    async def scenario() -> None:
        members = {1: Address("127.0.0.1", p1), 2: Address("127.0.0.1", p2)}
        got: list[bytes] = []
        one = PeerTransport(1, "pnyx", members, members[1],
                            lambda src, data: got.append(data), dead_after=DEAD_AFTER,
                            tls=files)
        await one.start()
        loop = asyncio.get_running_loop()
        sent = 0

        async def echoed_within(seconds: float) -> float | None:
            """Send a numbered message every 20 ms until one sent now comes back."""
            nonlocal sent
            start = loop.time()
            first = sent
            while loop.time() - start < seconds:
                one.send(2, b"%d" % sent)
                sent += 1
                await asyncio.sleep(0.02)
                if any(int(m) >= first for m in got):
                    return loop.time() - start
            return None

        try:
            assert await echoed_within(10.0) is not None  # the process is up
            assert one.silences == 0
            links = one.peers[2].links
            os.kill(proc.pid, signal.SIGSTOP)
            stopped = loop.time()
            try:
                while one.silences == 0 and loop.time() - stopped < 2.0:
                    one.send(2, b"%d" % sent)
                    sent += 1
                    await asyncio.sleep(0.02)
                timings["judged"] = loop.time() - stopped
                await asyncio.sleep(max(0.0, 2.0 - (loop.time() - stopped)))
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            got.clear()
            back = await echoed_within(5.0)
            assert back is not None, "never heard again"
            timings["heard again"] = back
            assert one.peers[2].links > links
        finally:
            await one.close()

    try:
        ready = proc.stdout.readline() if proc.stdout else b""
        assert ready.strip() == b"ready"
        asyncio.run(scenario())
    finally:
        proc.communicate(timeout=10)
    print(timings)
    # Judged within dead_after and the watcher's quarter-period checks (plus slack for
    # a loaded machine); heard again within dead_after plus a connect.
    assert timings["judged"] <= DEAD_AFTER + 0.5, timings
    assert timings["heard again"] <= DEAD_AFTER + 1.0, timings


@pytest.mark.parametrize("pings", [False, True], ids=["older-member", "member"])
def test_pings_go_only_to_a_peer_whose_hello_says_it_answers_them(pings: bool) -> None:
    """An older member hands a PING to its node as a malformed message, so it gets none:
    node 2 here is a bare listener that records what node 1 sends, and its Hello says
    (or not) that it answers pings; node 1 sends nothing of its own."""
    from pnyx.node.transport import PING

    async def scenario() -> bytes:
        p1, p2 = free_ports(2)
        members = {1: Address("127.0.0.1", p1), 2: Address("127.0.0.1", p2)}
        received = bytearray()

        class Record(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                received.extend(data)

        listener = await asyncio.get_running_loop().create_server(Record, "127.0.0.1", p2)
        one = PeerTransport(1, "c", members, members[1], lambda src, data: None,
                            dead_after=DEAD_AFTER)
        await one.start()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", p1)
            writer.write(frame(msgspec.msgpack.encode(Hello("c", 2, pings=pings))))
            await asyncio.sleep(1.5)
            assert one.peers[2].pings is pings
            writer.close()
            return bytes(received)
        finally:
            await one.close()
            listener.close()

    received = asyncio.run(scenario())
    assert (frame(PING) in received) is pings
    old_member = msgspec.msgpack.decode(  # an older member still reads our Hello
        msgspec.msgpack.encode(Hello("c", 2, "http://h:1", "h:2", pings=True)),
        type=_OldHello)
    assert old_member == _OldHello("c", 2, "http://h:1", "h:2")


class _OldHello(msgspec.Struct, frozen=True, array_like=True, tag="hello"):
    """The Hello before `pings`."""

    cluster_id: str
    node_id: int
    http: str = ""
    client: str = ""
