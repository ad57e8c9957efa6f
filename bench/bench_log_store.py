"""Log store benchmark: group commits per second, and what SQLite adds to an fsync.

Run by hand (not a test):  .venv/bin/python bench/bench_log_store.py [--seconds 2] [--dir DIR]

1. Appends of 1, 10 and 100 records per transaction (each an `AcceptRecord`
   holding one ~100-byte command, in a new slot), with fsync on
   (`synchronous=FULL`) and off (`synchronous=OFF`, unsafe): appends/s,
   records/s, median and p99 latency of one append.
2. The raw cost of durability on the same file system: a 4 KiB append to a
   plain file followed by `os.fsync` (and by `os.fdatasync`). Then the ratio
   of a durable 1-record append to a raw fsync, measured *paired* (one of
   each, alternately), so both see the same disk: shared virtual disks vary
   by 10x from minute to minute, and the ratio shows what SQLite adds to the
   fsync it cannot avoid.
3. Recovery: open (with its quick_check) and `load()` of a log of 100,000
   slots, each accepted and chosen.
4. Compaction: the time of one `CompactRecord` over ~15 MB of full slots, with
   the store's `secure_delete = FAST` and with the zeroing of freed bytes that
   SQLite's SECURE_DELETE builds do by default.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos.messages import Batch, Command, Entry
from pnyx.protocol.multipaxos.records import AcceptRecord, ChosenRecord, CompactRecord, LogRecord
from pnyx.storage import SqliteLogStore

BALLOT = Ballot(1, 1)
PAYLOAD = b"x" * 92  # with origin, id and framing: a ~100-byte command


def accept(slot: int) -> AcceptRecord:
    return AcceptRecord(Entry(slot, BALLOT, Batch((Command(1, slot, PAYLOAD),))))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_loop(seconds: float, step: Callable[[], None]) -> list[float]:
    """Run `step` for about `seconds`; the latency of each call."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while True:
        started = time.perf_counter()
        step()
        done = time.perf_counter()
        latencies.append(done - started)
        if done > end:
            return latencies


def bench_appends(directory: Path, seconds: float) -> None:
    print("appends: records per transaction, fsync, appends/s, records/s, "
          "append median / p99, mean COMMIT")
    for fsync in (True, False):
        for per in (1, 10, 100):
            path = directory / f"append-{fsync}-{per}.db"
            slot = 0
            with SqliteLogStore.open(path, node_id=1, cluster_id="bench", fsync=fsync) as store:

                def step(store: SqliteLogStore = store, per: int = per) -> None:
                    nonlocal slot
                    store.append([accept(slot + k) for k in range(1, per + 1)])
                    slot += per

                latencies = timed_loop(seconds, step)
                stats = store.stats
            total = sum(latencies)
            print(f"  {per:>3}  fsync {'on ' if fsync else 'off'}  "
                  f"{len(latencies) / total:>9,.0f} appends/s  "
                  f"{len(latencies) * per / total:>10,.0f} records/s  "
                  f"{statistics.median(latencies) * 1e6:>7,.0f} / "
                  f"{percentile(latencies, 0.99) * 1e6:>7,.0f} µs  "
                  f"commit {stats.commit_seconds / stats.appends * 1e6:>6,.0f} µs")
            path.unlink()


def bench_raw_fsync(directory: Path, seconds: float) -> None:
    print("raw: append 4 KiB to a plain file, then sync")
    block = b"\0" * 4096
    for name, sync in (("fsync", os.fsync), ("fdatasync", os.fdatasync)):
        path = directory / f"raw-{name}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:

            def step(fd: int = fd, sync: Callable[[int], None] = sync) -> None:
                os.write(fd, block)
                sync(fd)

            latencies = timed_loop(seconds, step)
        finally:
            os.close(fd)
            path.unlink()
        median, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        print(f"  {name:<9}  {len(latencies) / sum(latencies):>9,.0f} /s  median "
              f"{median * 1e6:>6,.0f} µs  p99 {p99 * 1e6:>6,.0f} µs")


def bench_paired(directory: Path, seconds: float) -> None:
    block = b"\0" * 4096
    path = directory / "paired.db"
    raw_path = directory / "paired.bin"
    sqlite_times: list[float] = []
    raw_times: list[float] = []
    fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with SqliteLogStore.open(path, node_id=1, cluster_id="bench") as store:
            slot = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                slot += 1
                started = time.perf_counter()
                store.append([accept(slot)])
                appended = time.perf_counter()
                os.write(fd, block)
                os.fsync(fd)
                synced = time.perf_counter()
                sqlite_times.append(appended - started)
                raw_times.append(synced - appended)
    finally:
        os.close(fd)
        raw_path.unlink()
        path.unlink()
    print(f"paired, {len(raw_times)} of each: durable 1-record append median "
          f"{statistics.median(sqlite_times) * 1e6:,.0f} µs (min "
          f"{min(sqlite_times) * 1e6:,.0f}), raw 4 KiB fsync median "
          f"{statistics.median(raw_times) * 1e6:,.0f} µs (min {min(raw_times) * 1e6:,.0f})")
    by_median = statistics.median(sqlite_times) / statistics.median(raw_times)
    print(f"ratio append / raw fsync: {by_median:.2f}x by median, "
          f"{min(sqlite_times) / min(raw_times):.2f}x by minimum")


def bench_load(directory: Path, slots: int) -> None:
    path = directory / "load.db"
    with SqliteLogStore.open(path, node_id=1, cluster_id="bench", fsync=False) as store:
        for first in range(1, slots + 1, 1000):
            records: list[LogRecord] = []
            for slot in range(first, min(first + 1000, slots + 1)):
                record = accept(slot)
                records += [record, ChosenRecord(slot, record.entry.value)]
            store.append(records)
    size = path.stat().st_size
    started = time.perf_counter()
    store = SqliteLogStore.open(path, node_id=1, cluster_id="bench")
    opened = time.perf_counter()
    state = store.load()
    loaded = time.perf_counter()
    store.close()
    assert len(state.accepted) == len(state.chosen) == slots
    print(f"recovery: {slots:,} slots accepted and chosen, {size / 2**20:.1f} MiB: "
          f"open + quick_check {(opened - started) * 1e3:.0f} ms, "
          f"load {(loaded - opened) * 1e3:.0f} ms")


def bench_compaction(directory: Path, slots: int = 1000, per_slot: int = 100) -> None:
    """One compaction of `slots` full slots (`per_slot` ~120-byte commands each: ~15 MB,
    a snapshot's worth at 256 clients) in one step, as the store makes it, and with the
    zeroing of freed bytes (`secure_delete = ON`) of SQLite's SECURE_DELETE builds."""
    print(f"compaction of {slots - 10:,} slots of {per_slot} commands in one CompactRecord "
          "(fsync on):")
    for zeroing in ("FAST", "ON"):
        path = directory / f"compact-{zeroing}.db"
        with SqliteLogStore.open(path, node_id=1, cluster_id="bench") as store:
            store._conn.execute(f"PRAGMA secure_delete = {zeroing}")
            previous: Batch | None = None
            for slot in range(1, slots + 1):
                value = Batch(tuple(Command(1, slot * 1000 + k, b"x" * 120)
                                    for k in range(per_slot)))
                records: list[LogRecord] = [AcceptRecord(Entry(slot, BALLOT, value))]
                if previous is not None:
                    records.append(ChosenRecord(slot - 1, previous, accepted=True))
                previous = value
                store.append(records)
            started = time.perf_counter()
            store.append([CompactRecord(slots - 10)])
            took = time.perf_counter() - started
        note = "as the store sets it" if zeroing == "FAST" else "freed bytes zeroed"
        print(f"  secure_delete {zeroing:<4}  {took * 1e3:7.1f} ms  ({note})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--load-slots", type=int, default=100_000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="pnyx-bench-", dir=args.dir))
    try:
        print(f"in {directory}, {args.seconds:g} s per measurement")
        bench_appends(directory, args.seconds)
        bench_raw_fsync(directory, args.seconds)
        bench_paired(directory, args.seconds)
        bench_load(directory, args.load_slots)
        bench_compaction(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
