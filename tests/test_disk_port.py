"""Where the node's disk port writes: a follower on the loop; the leader in a thread only
when its loop has other work during the write, or its disk is slow (`AsyncioDisk`)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from pnyx.node.config import Address, NodeConfig
from pnyx.node.runtime import SLOW_WRITE, AsyncioDisk, Node
from pnyx.statemachine import kv
from pnyx.storage.log_store import MemoryLogStore
from pnyx.testing import free_ports


class ThreadRecordingStore:
    """A store whose appends say which thread made them, and take `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.threads: list[int] = []
        self.delay = delay

    def append(self, records: list[object]) -> None:
        self.threads.append(threading.get_ident())
        if self.delay:
            time.sleep(self.delay)


def _writes(in_thread: bool, overlap: bool, store: ThreadRecordingStore,
            count: int = 1) -> list[bool]:
    """For each of `count` writes: True if it ran on the loop's thread."""
    async def run() -> list[bool]:
        loop = asyncio.get_running_loop()
        disk = AsyncioDisk(store, loop, lambda: in_thread, overlap=lambda: overlap)
        for _ in range(count):
            done = loop.create_future()
            disk.write([], done.set_result)
            assert await asyncio.wait_for(done, 5) is None
        return [t == threading.get_ident() for t in store.threads]
    return asyncio.run(run())


def test_a_leader_with_nothing_else_in_flight_writes_on_the_loop() -> None:
    assert _writes(in_thread=True, overlap=False, store=ThreadRecordingStore()) == [True]


def test_a_leader_with_other_work_in_flight_writes_in_a_thread() -> None:
    assert _writes(in_thread=True, overlap=True, store=ThreadRecordingStore()) == [False]


def test_a_leader_whose_last_write_was_slow_writes_in_a_thread_even_with_nothing_in_flight(
) -> None:
    store = ThreadRecordingStore(delay=SLOW_WRITE * 3)
    # The first write runs on the loop and is timed slow; the next goes to a thread.
    assert _writes(in_thread=True, overlap=False, store=store, count=2) == [True, False]


def test_a_follower_writes_on_the_loop_even_when_slow_or_busy() -> None:
    store = ThreadRecordingStore(delay=SLOW_WRITE * 3)
    assert _writes(in_thread=False, overlap=True, store=store, count=2) == [True, True]


class RecordingMemoryStore(MemoryLogStore):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_loop: list[bool] = []
        self.loop_thread = threading.get_ident()

    def append(self, records: Any) -> None:
        self.on_loop.append(threading.get_ident() == self.loop_thread)
        super().append(records)


def test_a_solo_leader_writes_one_request_on_the_loop_and_a_crowd_of_them_in_a_thread(
        tmp_path: Path) -> None:
    async def run() -> tuple[list[bool], list[bool]]:
        config = NodeConfig(1, {1: Address("127.0.0.1", free_ports(1)[0])}, tmp_path / "solo",
                            heartbeat_interval=0.02, election_timeout=0.05)
        store = RecordingMemoryStore(node_id=1, cluster_id=config.cluster_id)
        node = Node(config, store, kv.KVMachine())
        await node.start()
        try:
            deadline = time.monotonic() + 5
            while not (node.replica is not None and node.replica.is_leader):
                assert time.monotonic() < deadline, "the solo node never led"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            store.on_loop.clear()
            for seq in range(1, 4):  # one at a time: nothing else in flight
                command = kv.encode_request(kv.Request("one", seq, kv.Put("k", b"v")))
                assert (await node.submit(command, timeout=5)).ok
            alone = list(store.on_loop)
            store.on_loop.clear()
            outcomes = await asyncio.gather(*(
                node.submit(kv.encode_request(kv.Request(f"c{i}", 1, kv.Put("k", b"v"))),
                            timeout=5) for i in range(50)))
            assert all(o.ok for o in outcomes)
            crowd = list(store.on_loop)
        finally:
            await node.stop()
        return alone, crowd

    alone, crowd = asyncio.run(run())
    assert alone and all(alone), alone
    assert crowd and not any(crowd), crowd
