"""`DirectNode`: the NodeAPI with consensus bypassed, the benchmark's cost floor."""

from __future__ import annotations

import asyncio

from pnyx.api.node_api import NodeAPI
from pnyx.node.direct import DirectNode
from pnyx.protocol.multipaxos import Code
from pnyx.statemachine import ERROR_PREFIX, kv


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def put(client: str, seq: int, key: str, value: bytes) -> bytes:
    return kv.encode_request(kv.Request(client, seq, kv.Put(key, value)))


def test_is_a_node_api() -> None:
    assert isinstance(DirectNode(), NodeAPI)


def test_submit_applies_at_once_and_reads_see_it() -> None:
    async def go() -> None:
        node = DirectNode()
        first = await node.submit(put("c", 1, "k", b"v1"), timeout=1)
        second = await node.submit(put("c", 2, "k", b"v2"), timeout=1)
        assert (first.ok, first.index, second.index) == (True, 1, 2)
        assert kv.decode_result(second.result) == kv.Ok(2)
        for mode in ("linearizable", "quorum", "stale"):
            read = await node.read(kv.encode_query("k"), mode, timeout=1)
            assert read.ok and read.index == 2
            assert kv.decode_result(read.result) == kv.Ok(2, b"v2")
    run(go())


def test_retries_are_deduplicated_like_the_replica() -> None:
    async def go() -> None:
        node = DirectNode()
        command = put("c", 1, "k", b"v")
        a = await node.submit(command, timeout=1)
        b = await node.submit(command, timeout=1)
        assert a.result == b.result  # the remembered answer, not a second write
        read = await node.read(kv.encode_query("k"), "stale", timeout=1)
        assert kv.decode_result(read.result) == kv.Ok(1, b"v")
    run(go())


def test_bad_and_oversized_commands() -> None:
    async def go() -> None:
        node = DirectNode(max_command=100)
        big = await node.submit(put("c", 1, "k", b"x" * 200), timeout=1)
        assert not big.ok and not big.unknown and "too large" in big.error
        assert big.code == Code.TOO_LARGE  # the replica's code, mapped by the APIs alike
        bad = await node.submit(b"not msgpack", timeout=1)
        result = kv.decode_result(bad.result)
        assert bad.ok and isinstance(result, kv.Error) and result.code == "malformed"
    run(go())


def test_status_has_the_node_shape() -> None:
    async def go() -> None:
        node = DirectNode(node_id=4, address="127.0.0.1:9000")
        await node.start()
        await node.submit(put("c", 1, "k", b"v"), timeout=1)
        status = node.status()
        assert {"id", "role", "leader", "ballot", "commit_index", "applied_index",
                "members"} <= set(status)
        assert (status["id"], status["role"], status["leader"]) == (4, "leader", 4)
        assert status["commit_index"] == status["applied_index"] == 1
        assert status["members"] == {"4": {"address": "127.0.0.1:9000", "reachable": True}}
        assert status["consensus"] is False
        await node.stop()
        stopped = await node.submit(put("c", 2, "k", b"w"), timeout=1)
        assert not stopped.ok and not stopped.unknown
    run(go())


def test_counts_like_a_node_in_metrics() -> None:
    async def go() -> None:
        node = DirectNode()
        await node.submit(put("c", 1, "k", b"v"), timeout=1)
        text = node.metrics.render().decode()
        assert "pnyx_proposals_total 1.0" in text
        assert "pnyx_chosen_commands_total 1.0" in text
        assert 'pnyx_role{role="leader"} 1.0' in text
    run(go())


def test_a_machine_whose_apply_raises_answers_an_error_result_as_a_replica_does() -> None:
    class Raising:
        def apply(self, command: bytes, index: int) -> bytes:
            raise ValueError("boom")

        def query(self, query: bytes) -> bytes:
            return b""

    async def go() -> None:
        node = DirectNode(machine=Raising())  # type: ignore[arg-type]
        outcome = await node.submit(b"x", timeout=1)
        assert outcome.ok and outcome.result == ERROR_PREFIX + b"ValueError: boom"
        assert (await node.submit(b"y", timeout=1)).index == 2
    run(go())
