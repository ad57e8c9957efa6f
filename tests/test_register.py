"""The write-once register and its durable record: Basic Paxos you can use."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.synod.messages import Proposal
from pnyx.protocol.synod.node import DurableState
from pnyx.register import LocalRegister
from pnyx.storage.record import CorruptRecord, FileRecord, MemoryRecord


def test_racing_clients_through_different_members_all_get_one_value(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalRegister(nodes=5, data_dir=tmp_path, seed=1) as register:
            told = await asyncio.gather(
                *(register.propose(f"v{i}".encode(), via=i) for i in range(1, 6))
            )
            assert len(set(told)) == 1
            assert told[0] in {f"v{i}".encode() for i in range(1, 6)}
            learned = [await register.learn(via=i) for i in range(1, 6)]
            assert learned == [told[0]] * 5

    asyncio.run(scenario())


def test_a_second_proposal_learns_the_first_value(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalRegister(nodes=3, data_dir=tmp_path) as register:
            assert await register.propose(b"first", via=1) == b"first"
            assert await register.propose(b"second", via=3) == b"first"

    asyncio.run(scenario())


def test_a_restarted_process_remembers_the_chosen_value(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalRegister(nodes=3, data_dir=tmp_path) as register:
            await register.propose(b"kept", via=1)
            await register.learn(via=2)
            register.restart(2)
            assert register.peek(2) == b"kept"

    asyncio.run(scenario())


def test_a_majority_decides_while_one_process_is_down(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with LocalRegister(nodes=3, data_dir=tmp_path) as register:
            register.stop(3)
            assert await register.propose(b"two-of-three", via=1, timeout=5) == b"two-of-three"
            register.start(3)
            assert await register.learn(via=3, timeout=5) == b"two-of-three"

    asyncio.run(scenario())


class SlowRecord(MemoryRecord):
    """A record whose writes take a while, counting those begun and ended."""

    def __init__(self) -> None:
        super().__init__()
        self.begun = self.ended = 0

    def save(self, state: DurableState) -> None:
        self.begun += 1
        time.sleep(0.2)
        super().save(state)
        self.ended += 1


def test_a_stopped_process_has_no_write_still_landing() -> None:
    """A crash ends the process's writes: once `stop` returns, none of its writes is
    still running (one that lands later could undo what the restarted process wrote,
    or put a file back into a directory being removed)."""
    async def scenario() -> None:
        async with LocalRegister(nodes=1) as register:
            slow = SlowRecord()
            driver = register.drivers[1]
            driver.record = slow
            proposing = asyncio.ensure_future(register.propose(b"v", via=1))
            while slow.begun == 0:
                await asyncio.sleep(0.01)
            register.stop(1)
            assert slow.ended == slow.begun == 1
            proposing.cancel()

    asyncio.run(scenario())


def test_file_record_round_trips_the_durable_state(tmp_path: Path) -> None:
    record = FileRecord(tmp_path / "r")
    assert record.load() is None
    state = DurableState(Ballot(4, 2), Proposal(Ballot(3, 1), b"x"), 4, None)
    record.save(state)
    assert FileRecord(tmp_path / "r").load() == state


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:5], "truncated"),
        (lambda data: b"NOTPNYX!" + data[8:], "bad magic"),
        (lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]), "checksum"),
        (lambda data: data[:-3], "checksum"),
    ],
)
def test_damaged_record_is_refused_naming_the_file(tmp_path: Path, damage, reason: str) -> None:
    path = tmp_path / "node-1.record"
    FileRecord(path).save(DurableState(Ballot(2, 1), None, 2, b"v"))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptRecord, match=reason) as info:
        FileRecord(path).load()
    assert str(path) in str(info.value)
