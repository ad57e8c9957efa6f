"""A write-once register: Basic Paxos you can use.

Every process of the cluster may be asked to set the register; exactly one
value is ever chosen, and every process learns the same one. This module
runs single-decree Paxos (`pnyx.protocol.synod.node`) on an asyncio event loop:
`SynodDriver` carries out what the pure core asks for (durable writes before
the messages that report them, timers, sending), and `LocalRegister` wires
several drivers together in one process over an in-memory network that still
encodes every message to bytes and back.

    async with LocalRegister(nodes=3, data_dir="reg") as register:
        chosen = await register.propose(b"blue", via=2)
        assert await register.learn(via=3) == chosen
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from pnyx.protocol.synod.messages import Value, encode
from pnyx.protocol.synod.node import DurableState, Ready, SynodConfig, SynodNode
from pnyx.storage.record import FileRecord, MemoryRecord, Record


class SynodDriver:
    """Runs one `SynodNode` on the running asyncio loop."""

    def __init__(
        self,
        node_id: int,
        config: SynodConfig,
        record: Record,
        send: Callable[[int, bytes], None],
        rng: random.Random | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.record = record
        self._send = send
        self.node = SynodNode(node_id, config, rng or random.Random(), record.load())
        self._learned: asyncio.Future[Value] = self.loop.create_future()
        if self.node.chosen is not None:
            self._learned.set_result(self.node.chosen)
        self._pending: tuple[int, DurableState] | None = None
        self._writer: asyncio.Task[None] | None = None
        # One thread of its own for the record's writes, so that `close` can wait for the
        # one in flight: a write of this process must never land after it stopped (a
        # restarted process would lose what it wrote since, and a removed directory
        # would get a file back).
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"synod-{node_id}")
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def learned(self) -> Value | None:
        return self.node.chosen

    async def propose(self, value: Value) -> Value:
        self._handle(self.node.propose(value, self.loop.time()))
        return await asyncio.shield(self._learned)

    async def wait_learned(self) -> Value:
        return await asyncio.shield(self._learned)

    def receive(self, data: bytes) -> None:
        if not self.closed:
            self._handle(self.node.receive(data, self.loop.time()))

    def close(self) -> None:
        """Stop as a crash would: nothing more is written or sent. A write already in
        its thread is waited for (at most one fsync), as if it landed just before."""
        self.closed = True
        if self._timer:
            self._timer.cancel()
        if self._writer:
            self._writer.cancel()
        self._disk.shutdown(wait=True, cancel_futures=True)

    def _handle(self, ready: Ready) -> None:
        if self.closed:
            return
        if ready.persist is not None:
            # Records are whole states: a newer one replaces any still waiting (group commit).
            self._pending = (ready.persist_seq, ready.persist)
            if self._writer is None or self._writer.done():
                self._writer = self.loop.create_task(self._write())
        for dst, message in ready.send:
            self._send(dst, encode(message))
        if self._timer:
            self._timer.cancel()
            self._timer = None
        if ready.wake_at is not None:
            self._timer = self.loop.call_at(ready.wake_at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._handle(self.node.tick(self.loop.time()))

    async def _write(self) -> None:
        while self._pending is not None:
            seq, state = self._pending
            self._pending = None
            try:
                await self.loop.run_in_executor(self._disk, self.record.save, state)
            except Exception as exc:
                # As `Driver.disk_failed`: a disk that cannot keep promises stops the
                # process, never retried; whoever waits on it hears why.
                self.close()
                if not self._learned.done():
                    self._learned.set_exception(exc)
                return
            # A waiter hears of the chosen value once this process durably knows it.
            if state.chosen is not None and not self._learned.done():
                self._learned.set_result(state.chosen)
            self._handle(self.node.persisted(seq))


class LocalRegister:
    """A write-once register replicated over `nodes` processes in this event loop.

    With `data_dir`, each process keeps its durable record in a file there
    (fsynced), and `restart(i)` brings a process back from it; without, records
    live in memory for the life of the object.
    """

    def __init__(
        self,
        nodes: int = 3,
        data_dir: str | Path | None = None,
        config: SynodConfig | None = None,
        seed: int | None = None,
    ) -> None:
        ids = tuple(range(1, nodes + 1))
        self.config = config or SynodConfig.majority(ids)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._rng = random.Random(seed)
        self._memory: dict[int, MemoryRecord] = {i: MemoryRecord() for i in ids}
        self.drivers: dict[int, SynodDriver] = {}

    async def __aenter__(self) -> LocalRegister:
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        for i in self.config.members:
            self.start(i)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for i in list(self.drivers):
            self.stop(i)

    def _record(self, i: int) -> Record:
        if self.data_dir is None:
            return self._memory[i]
        return FileRecord(self.data_dir / f"node-{i}.record")

    def start(self, i: int) -> None:
        rng = random.Random(self._rng.random())
        self.drivers[i] = SynodDriver(i, self.config, self._record(i), self._deliver, rng)

    def stop(self, i: int) -> None:
        """Crash process `i`: it stops at once, keeping only what is durable."""
        self.drivers.pop(i).close()

    def restart(self, i: int) -> None:
        self.stop(i)
        self.start(i)

    def _deliver(self, dst: int, data: bytes) -> None:
        driver = self.drivers.get(dst)
        if driver is not None:
            driver.loop.call_soon(driver.receive, data)

    async def propose(self, value: Value, via: int = 1, timeout: float = 10.0) -> Value:
        """Ask process `via` to set the register; return the value that was chosen."""
        return await asyncio.wait_for(self.drivers[via].propose(value), timeout)

    async def learn(self, via: int = 1, timeout: float = 10.0) -> Value:
        """Wait until process `via` knows the chosen value, and return it."""
        return await asyncio.wait_for(self.drivers[via].wait_learned(), timeout)

    def peek(self, via: int) -> Value | None:
        """What process `via` knows right now, without waiting."""
        return self.drivers[via].learned


__all__ = ["LocalRegister", "SynodDriver"]
