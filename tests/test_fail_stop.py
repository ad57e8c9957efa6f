"""Fail-stop on storage faults: a node whose durable write fails — full disk, I/O error,
read-only file system, failed fsync — stops, and the rest of the cluster keeps every
write it acknowledged.

- In one process: three `Node`s on real TCP, one of whose stores fails its next
  append (as SQLite reports each fault); the node stops, closes its peer port, answers
  every held request, reports itself `stopped` (never leader, nothing reachable).
- For real: a `pnyx serve` process whose data directory is a 2 MiB tmpfs fills it and
  exits — one line naming the cause, exit status 74, its ports released. Needs root
  (to mount the tmpfs); skipped with the reason otherwise. Every mount is unmounted,
  and every process stopped, in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from pnyx.cli.serve import EXIT_DISK_FAULT, FAULT_GRACE
from pnyx.node import Address, Node, NodeConfig
from pnyx.node.requests import SHUTTING_DOWN
from pnyx.protocol.multipaxos import Outcome
from pnyx.protocol.multipaxos.records import LogRecord
from pnyx.protocol.synod.node import DurableState
from pnyx.register import LocalRegister
from pnyx.statemachine import kv
from pnyx.storage import MemoryLogStore, MemoryRecord, StoreError
from pnyx.testing import Cluster, free_ports

VALUE = b"v" * 16384  # 2 MiB of tmpfs holds about a hundred of these, WAL and all
EXIT_BOUND = FAULT_GRACE + 3.0  # from the failed write to the process gone


def _mount_refusal() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount command"
    return None


needs_tmpfs = pytest.mark.skipif(_mount_refusal() is not None,
                                 reason=f"fail-stop test skipped: {_mount_refusal()}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    path.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"fail-stop test skipped: cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)  # still busy


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def fill_until_exit(c: Cluster, victim: int, writer: int) -> tuple[dict[str, bytes], float]:
    """Write distinct 16 KiB values through `writer` until `victim` exits; the writes
    acknowledged, and the wall-clock time the victim's process ended."""
    acked: dict[str, bytes] = {}
    proc = c.procs[victim]
    exited_at: list[float] = []
    watcher = threading.Thread(target=lambda: (proc.wait(), exited_at.append(time.time())),
                               daemon=True)
    watcher.start()
    deadline = time.monotonic() + 60
    n = 0
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the node on the full disk never exited"
        n += 1
        key, value = f"fill-{n}", VALUE[:-8] + b"%08d" % n
        try:
            r = c.put(writer, key, value, timeout=3.0, idempotency_key=key)
        except (OSError, ValueError):
            r = None
        if r is not None and r.status == 200:
            acked[key] = value
        elif writer == victim:
            break  # our writer is the victim: stop sending, just watch it go
    watcher.join(EXIT_BOUND + 10)
    assert exited_at, "the node on the full disk never exited"
    return acked, exited_at[0]


def logged_at(line: str) -> float:
    """The wall-clock time of a `pnyx serve` log line (its asctime, local time)."""
    stamp = " ".join(line.split()[:2])
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def assert_fail_stopped(c: Cluster, victim: int, exited_at: float) -> float:
    """The victim stopped as fail-stop demands; the seconds from its fault to its exit."""
    proc = c.procs[victim]
    assert proc.returncode == EXIT_DISK_FAULT, c.log(victim)[-3000:]
    log = c.log(victim)
    assert "Traceback" not in log, log[-3000:]
    fault_lines = [line for line in log.splitlines() if "CRITICAL" in line]
    assert len(fault_lines) == 1, log[-3000:]
    line = fault_lines[0]
    assert "disk failed a durable write" in line and "pnyx.db" in line, line
    assert "database or disk is full" in line, line
    assert log.rstrip().splitlines()[-1] == line, "the fault is the last word"
    # The line is logged in the turn of the event loop in which the write failed.
    took = exited_at - logged_at(line)
    assert took < EXIT_BOUND, f"{took:.2f}s from the failing write to exit"
    assert not port_open(c.peer_ports[victim]) and not port_open(c.http_ports[victim])
    return took


def assert_survivors_serve(c: Cluster, victim: int, acked: dict[str, bytes]) -> None:
    survivors = [i for i in c.ids if i != victim]
    deadline = time.monotonic() + 10
    # The survivors may still name the dead leader until their election timeout.
    while (leader := c.leader(timeout=10)) == victim:
        assert time.monotonic() < deadline, "the survivors never elected another leader"
        time.sleep(0.05)
    r = c.put(leader, "after", b"still serving", idempotency_key="after")
    assert r.status == 200, r.body
    for i in survivors:
        status = c.status(i)
        assert status["members"][str(victim)]["reachable"] is False, status
        for key, value in acked.items():
            r = c.get(i, key)
            assert r.status == 200 and r.body == value, (i, key, r.status)
        assert c.get(i, "after").body == b"still serving"


def make_leader(c: Cluster, want: int) -> int:
    """Kill and restart whoever leads until `want` does: each election after a kill is a
    race between the two members left, so this takes two rounds on average."""
    deadline = time.monotonic() + 60
    while (leader := c.leader()) != want:
        assert time.monotonic() < deadline, f"node {want} never led"
        c.kill(leader)
        c.start(leader)
    return leader


@needs_tmpfs
@pytest.mark.parametrize("victim_role", ["follower", "leader"])
def test_a_node_whose_disk_fills_exits_in_one_line_and_the_rest_keep_every_acked_write(
        tmp_path: Path, victim_role: str) -> None:
    c = Cluster(tmp_path)
    victim = 3
    mount = tmp_path / f"node-{victim}"
    try:
        with tmpfs(mount):
            c.start_all()
            leader = make_leader(c, victim) if victim_role == "leader" else c.leader()
            if victim_role == "follower" and leader == victim:
                c.kill(victim)
                c.start(victim)
                leader = c.leader()
                assert leader != victim
            writer = victim if victim_role == "leader" else leader
            acked, exited_at = fill_until_exit(c, victim, writer)
            took = assert_fail_stopped(c, victim, exited_at)
            print(f"\n{victim_role} on a full tmpfs: exited {took:.3f}s after its write "
                  f"failed; {len(acked)} writes acknowledged\n"
                  f"{c.log(victim).rstrip().splitlines()[-1]}")
            assert_survivors_serve(c, victim, acked)
    finally:
        c.stop_everything()


# ------------------------------------------------------------------ in one process

# What SQLite says for each fault, as the log store reports it (`StoreError`), and the
# bare OSError a disk port might raise.
FAULTS = {
    "disk full": StoreError(Path("pnyx.db"), "append failed: database or disk is full"),
    "I/O error": StoreError(Path("pnyx.db"), "append failed: disk I/O error"),
    "read-only": StoreError(Path("pnyx.db"),
                            "append failed: attempt to write a readonly database"),
    "fsync": OSError(5, "Input/output error (fsync)"),
}


class FailingStore(MemoryLogStore):
    """An in-memory store whose appends fail with `fault` once `fail` is set."""

    def __init__(self, node_id: int, cluster_id: str) -> None:
        super().__init__(node_id=node_id, cluster_id=cluster_id)
        self.fault: BaseException | None = None
        self.refused = 0

    def append(self, records: Sequence[LogRecord]) -> None:
        if self.fault is not None:
            self.refused += 1
            raise self.fault
        super().append(records)


def put(key: str, value: bytes, seq: int) -> bytes:
    return kv.encode_request(kv.Request("fail-stop", seq, kv.Put(key, value)))


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def elected(nodes: list[Node], among: list[int], timeout: float = 5.0) -> Node:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while loop.time() < give_up:
        for i in among:
            if nodes[i - 1].replica is not None and nodes[i - 1].replica.is_leader:
                return nodes[i - 1]
        await asyncio.sleep(0.02)
    raise TimeoutError("no leader")


async def submit_until_ok(node: Node, command: bytes) -> Outcome:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 5
    while True:
        outcome = await node.submit(command, timeout=2)
        if outcome.ok or not outcome.unknown or loop.time() > give_up:
            return outcome
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("victim_role", ["follower", "leader"])
def test_a_failed_durable_write_stops_the_node_and_the_rest_keep_every_acked_write(
        tmp_path: Path, victim_role: str, fault: str) -> None:
    async def main() -> None:
        ports = free_ports(3)
        members = {i: Address("127.0.0.1", ports[i - 1]) for i in (1, 2, 3)}
        stores = [FailingStore(i, "pnyx") for i in (1, 2, 3)]
        nodes = [Node(NodeConfig(i, members, tmp_path / f"n{i}", heartbeat_interval=0.02,
                                 election_timeout=0.15), stores[i - 1], kv.KVMachine())
                 for i in (1, 2, 3)]
        for node in nodes:
            await node.start()
        try:
            leader = await elected(nodes, [1, 2, 3])
            for n in range(20):
                assert (await submit_until_ok(leader, put(f"k{n}", b"v", n))).ok
            victim = leader if victim_role == "leader" else next(
                node for node in nodes if node is not leader)
            rest = [node for node in nodes if node is not victim]
            stores[victim.node_id - 1].fault = FAULTS[fault]
            loop = asyncio.get_running_loop()
            began = loop.time()
            # The write that meets the fault: through the leader, whoever is the victim.
            outcome = await leader.submit(put("k-last", b"v", 100), timeout=2)
            error = await asyncio.wait_for(victim.stopped_by_fault(), 2.0)
            took = loop.time() - began
            assert error is FAULTS[fault] and victim.fault is error
            assert stores[victim.node_id - 1].refused == 1, "a failed write is never retried"
            status = victim.status()
            assert status["role"] == "stopped" and status["leader"] is None, status
            assert not any(m["reachable"] for m in status["members"].values()), status
            # Its peer links are closed at once, not when its process ends.
            await asyncio.sleep(0.1)
            assert await refused(ports[victim.node_id - 1])
            # Anything asked of it now is refused at once, as shutting down.
            assert await victim.submit(put("late", b"v", 101), timeout=1) == SHUTTING_DOWN
            late = await victim.read(kv.encode_query("k0"), "stale",
                                     timeout=1)
            assert late == SHUTTING_DOWN
            # The others go on, with every write acknowledged before.
            new_leader = await elected(nodes, [n.node_id for n in rest])
            assert (await submit_until_ok(new_leader, put("after", b"v", 102))).ok
            acked = [f"k{n}" for n in range(20)] + (["k-last"] if outcome.ok else [])
            for key in acked:
                got = await new_leader.read(kv.encode_query(key),
                                            "linearizable", timeout=2)
                assert got.ok and kv.decode_result(got.result).value == b"v", (key, got)
            assert took < 1.0, f"{took:.2f}s from the failing write to the stop"
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


class FailingRecord(MemoryRecord):
    """A register process's record whose saves fail once `fault` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fault: BaseException | None = None
        self.refused = 0

    def save(self, state: DurableState) -> None:
        if self.fault is not None:
            self.refused += 1
            raise self.fault
        super().save(state)


def test_a_register_process_whose_record_cannot_be_saved_stops_and_the_rest_choose() -> None:
    async def main() -> None:
        async with LocalRegister(nodes=3, seed=7) as register:
            failing = FailingRecord()
            failing.fault = OSError(28, "No space left on device")
            register._memory[1] = failing  # type: ignore[assignment]
            register.restart(1)
            with pytest.raises(OSError, match="No space left"):
                await register.propose(b"blue", via=1, timeout=5)
            assert register.drivers[1].closed and failing.refused == 1
            assert await register.propose(b"green", via=2, timeout=5) == b"green"
            assert await register.learn(via=3, timeout=5) == b"green"

    asyncio.run(main())


# ------------------------------------------------------- the asyncio disk port


def test_a_cancelled_write_in_a_thread_is_reported_failed_not_durable() -> None:
    """A write the loop stopped waiting for may or may not be on disk: the disk port
    must never report it done, or messages waiting for it could leave."""
    import threading

    from pnyx.node.runtime import AsyncioDisk

    release = threading.Event()

    class SlowStore:
        def append(self, records: list[object]) -> None:
            release.wait(5)

    async def run() -> list[BaseException | None]:
        heard: list[BaseException | None] = []
        disk = AsyncioDisk(SlowStore(), asyncio.get_running_loop(), lambda: True)
        disk.write([], heard.append)
        assert disk.pending is not None
        disk.pending.cancel()
        await asyncio.sleep(0.05)
        release.set()
        return heard

    heard = asyncio.run(run())
    assert len(heard) == 1 and heard[0] is not None


def test_a_write_the_executor_cannot_take_is_reported_failed_not_raised() -> None:
    from pnyx.node.runtime import AsyncioDisk

    class Store:
        def append(self, records: list[object]) -> None:
            raise AssertionError("never reached")

    async def run() -> list[BaseException | None]:
        loop = asyncio.get_running_loop()
        await loop.shutdown_default_executor()
        heard: list[BaseException | None] = []
        AsyncioDisk(Store(), loop, lambda: True).write([], heard.append)
        return heard

    heard = asyncio.run(run())
    assert len(heard) == 1 and isinstance(heard[0], RuntimeError)
