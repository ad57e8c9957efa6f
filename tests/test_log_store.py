"""The replica's log store: what `ReplicaDurable.apply` says, durably, and nothing else.

Every store must load exactly what applying its records in order gives; a
promise never goes backwards; a store of another node or cluster, or a damaged
file, is refused with a one-line error naming the file (never read as an empty
state, which would break promises); and an append that returned survives the
process being killed at any moment.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pnyx.protocol.ballot import MAX_ROUND, Ballot
from pnyx.protocol.multipaxos.messages import Batch, Command, Entry
from pnyx.protocol.multipaxos.records import (
    AcceptRecord,
    ChosenRecord,
    CompactRecord,
    LogRecord,
    PromiseRecord,
    ReplicaDurable,
    RoundRecord,
    Standing,
    StandingRecord,
)
from pnyx.storage import (
    CorruptStoreError,
    LogStore,
    MemoryLogStore,
    SqliteLogStore,
    StoreError,
    StoreIdentityError,
    StoreLockedError,
)
from pnyx.storage.rows import row_crc as _row_crc
from pnyx.storage.schema import SCHEMA_VERSION

CLUSTER = "test-cluster"
U64 = 2**64 - 1


def batch(n: int, size: int = 100) -> Batch:
    return Batch((Command(1, n, bytes([n % 251]) * size),))


def applied(records: list[LogRecord]) -> ReplicaDurable:
    """What a new store loads after `records`: a store made by `open` starts NEW."""
    state = ReplicaDurable(standing=Standing.NEW)
    for record in records:
        state.apply(record)
    return state


def open_sqlite(path: Path, *, node_id: int = 1, cluster_id: str = CLUSTER,
                fsync: bool = True) -> SqliteLogStore:
    return SqliteLogStore.open(path, node_id=node_id, cluster_id=cluster_id, fsync=fsync)


EVERY_KIND: list[LogRecord] = [
    PromiseRecord(Ballot(3, 2)),
    RoundRecord(7),
    AcceptRecord(Entry(1, Ballot(3, 2), batch(1))),
    AcceptRecord(Entry(2, Ballot(4, 1), Batch())),  # a no-op; raises the promise to 4.1
    ChosenRecord(1, batch(1)),
    ChosenRecord(5, Batch((Command(0, 0, b""), Command(U64, U64, b"\x00\xff" * 50)))),
    StandingRecord(Standing.VOTER),
    AcceptRecord(Entry(3, Ballot(4, 1), batch(3))),
    CompactRecord(1),  # forgets slot 1's accepted entry and chosen value
    ChosenRecord(1, batch(1)),  # ignored: slot 1 is compacted
    ChosenRecord(3, batch(3), accepted=True),
]


@pytest.fixture(params=["sqlite", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], LogStore]]:
    """Opens the store of the test: reopening a SqliteLogStore reads the same file."""
    opened: list[LogStore] = []

    memory = MemoryLogStore(node_id=1, cluster_id=CLUSTER, standing=Standing.NEW)

    def make() -> LogStore:
        if request.param == "memory":
            return memory
        for store in opened:
            store.close()
        store = open_sqlite(tmp_path / "log.db")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


# ------------------------------------------------------------------ meaning


def test_round_trip_of_every_record_kind_equals_applying_them(make_store) -> None:
    store = make_store()
    store.append(EVERY_KIND)
    assert store.load() == applied(EVERY_KIND)
    assert make_store().load() == applied(EVERY_KIND)  # and after reopening


def test_each_record_kind_alone_round_trips(make_store) -> None:
    store = make_store()
    done: list[LogRecord] = []
    for record in EVERY_KIND:
        store.append([record])
        done.append(record)
        assert store.load() == applied(done)


def test_promise_never_goes_backwards(make_store) -> None:
    store = make_store()
    store.append([PromiseRecord(Ballot(5, 2))])
    store.append([PromiseRecord(Ballot(5, 1))])  # lower node id, same round
    store.append([PromiseRecord(Ballot(9, 1)), PromiseRecord(Ballot(6, 3))])  # within a batch
    store.append([AcceptRecord(Entry(1, Ballot(2, 2), batch(1)))])  # an older accept
    assert store.load().promised == Ballot(9, 1)
    assert make_store().load().promised == Ballot(9, 1)


def test_an_accept_raises_the_promise_to_its_ballot(make_store) -> None:
    store = make_store()
    store.append([PromiseRecord(Ballot(2, 1)), AcceptRecord(Entry(3, Ballot(4, 2), batch(3)))])
    assert make_store().load().promised == Ballot(4, 2)


def test_last_round_never_goes_backwards(make_store) -> None:
    store = make_store()
    store.append([RoundRecord(8)])
    store.append([RoundRecord(3), RoundRecord(7)])
    assert make_store().load().last_round == 8


def test_a_later_accept_replaces_the_slots_entry(make_store) -> None:
    # As in ReplicaDurable.apply: the acceptor decides what to accept; the store
    # keeps the last entry it was given for the slot, whatever its ballot.
    store = make_store()
    store.append([AcceptRecord(Entry(4, Ballot(6, 1), batch(1)))])
    store.append([AcceptRecord(Entry(4, Ballot(7, 2), batch(2))),
                  AcceptRecord(Entry(4, Ballot(5, 3), batch(3)))])
    state = make_store().load()
    assert state.accepted == {4: Entry(4, Ballot(5, 3), batch(3))}
    assert state.promised == Ballot(7, 2)


def test_node_ids_and_rounds_round_trip_at_their_limits(make_store) -> None:
    records: list[LogRecord] = [
        PromiseRecord(Ballot(MAX_ROUND, U64)),
        RoundRecord(MAX_ROUND),
        AcceptRecord(Entry(2**63 - 1, Ballot(MAX_ROUND, U64), batch(2))),
        ChosenRecord(2**63 - 1, batch(2)),
    ]
    make_store().append(records)
    assert make_store().load() == applied(records)


def test_empty_append_writes_nothing(make_store) -> None:
    store = make_store()
    store.append([])
    assert store.load() == applied([])
    assert store.stats.appends == 0


def test_something_that_is_not_a_record_is_refused_before_anything_is_written(
        make_store) -> None:
    store = make_store()
    with pytest.raises(TypeError):
        store.append([RoundRecord(1), "not a record"])  # type: ignore[list-item]
    assert store.load() == applied([])


def test_a_record_that_cannot_be_stored_fails_the_append_and_writes_nothing(
        tmp_path: Path) -> None:
    with open_sqlite(tmp_path / "log.db") as store:
        with pytest.raises(ValueError, match="not storable"):
            store.append([RoundRecord(3), ChosenRecord(2**64, batch(1))])
        with pytest.raises(ValueError, match="not storable"):
            store.append([PromiseRecord(Ballot(1, -1))])
        assert store.load() == applied([])
        store.append([RoundRecord(4)])  # the store is still usable
        assert store.load().last_round == 4


def without_accepts_in_compacted_slots(records: list[LogRecord]) -> list[LogRecord]:
    """`records` as a replica may ask for them: no accept at or below a compaction."""
    compacted, kept = 0, []
    for record in records:
        if isinstance(record, CompactRecord):
            compacted = max(compacted, record.upto)
        elif isinstance(record, AcceptRecord) and record.entry.slot <= compacted:
            continue
        kept.append(record)
    return kept


def test_a_compaction_that_cannot_be_stored_is_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    with open_sqlite(tmp_path / "log.db") as store:
        for bad in (CompactRecord(2**63), CompactRecord("7")):  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                store.append([RoundRecord(3), bad])
        assert store.load() == applied([])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_records_in_any_batch_split_load_as_applying_them_in_order(
        data: st.DataObject) -> None:
    ballots = st.builds(Ballot, st.integers(0, 4), st.one_of(st.integers(0, 3), st.just(U64)))
    commands = st.builds(Command, st.integers(0, 3), st.integers(0, 9), st.binary(max_size=12))
    batches = st.builds(Batch, st.lists(commands, max_size=3).map(tuple))
    slots = st.integers(1, 6)
    records = st.lists(st.one_of(
        st.builds(PromiseRecord, ballots),
        st.builds(RoundRecord, st.integers(0, 9)),
        st.builds(AcceptRecord, st.builds(Entry, slots, ballots, batches)),
        st.builds(ChosenRecord, slots, batches),
        st.builds(CompactRecord, st.integers(0, 5)),
        st.builds(StandingRecord, st.sampled_from(Standing)),
    ), max_size=25)
    sequence = without_accepts_in_compacted_slots(data.draw(records, label="records"))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(sequence))), label="cuts"))
    chunks = [sequence[a:b] for a, b in zip([0, *cuts], [*cuts, len(sequence)], strict=True)]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.db"
        memory = MemoryLogStore(standing=Standing.NEW)
        done: list[LogRecord] = []
        with open_sqlite(path, fsync=False) as store:
            for chunk in chunks:
                store.append(chunk)
                memory.append(chunk)
                done.extend(chunk)
                assert store.load() == applied(done)
                assert memory.load() == applied(done)
        with open_sqlite(path, fsync=False) as store:
            assert store.load() == applied(sequence)


def test_load_returns_a_copy_the_caller_may_change(make_store) -> None:
    store = make_store()
    store.append(EVERY_KIND)
    state = store.load()
    state.chosen.clear()
    state.accepted.clear()
    assert store.load() == applied(EVERY_KIND)


# ------------------------------------------------------------------ compaction, standing


def test_compaction_forgets_accepted_and_chosen_entries_up_to_it_and_never_goes_back(
        make_store) -> None:
    records: list[LogRecord] = []
    for n in range(1, 11):
        records += [AcceptRecord(Entry(n, Ballot(1, 1), batch(n))), ChosenRecord(n, batch(n))]
    records += [CompactRecord(6), CompactRecord(3)]  # the lower one changes nothing
    make_store().append(records)
    state = make_store().load()
    assert state == applied(records)
    assert state.compacted == 6
    assert sorted(state.accepted) == sorted(state.chosen) == [7, 8, 9, 10]


def test_a_chosen_value_for_a_compacted_slot_is_ignored(make_store) -> None:
    store = make_store()
    store.append([CompactRecord(5)])
    store.append([ChosenRecord(5, batch(5)), ChosenRecord(6, batch(6))])
    store.append([CompactRecord(7), ChosenRecord(7, batch(7)), ChosenRecord(8, batch(8))])
    assert sorted(make_store().load().chosen) == [8]


def test_a_compaction_in_the_same_batch_forgets_what_the_batch_accepted_before_it(
        make_store) -> None:
    records: list[LogRecord] = [
        AcceptRecord(Entry(2, Ballot(1, 1), batch(2))),
        ChosenRecord(2, batch(2), accepted=True),
        AcceptRecord(Entry(3, Ballot(1, 1), batch(3))),
        CompactRecord(2),
        ChosenRecord(3, batch(3), accepted=True),
    ]
    make_store().append(records)
    state = make_store().load()
    assert state == applied(records)
    assert (list(state.accepted), list(state.chosen), state.compacted) == ([3], [3], 2)


@pytest.mark.parametrize("batches", [
    [[CompactRecord(4)], [AcceptRecord(Entry(4, Ballot(1, 1), batch(4)))]],
    [[CompactRecord(4), AcceptRecord(Entry(3, Ballot(1, 1), batch(3)))]],
], ids=["after-the-commit", "in-the-same-batch"])
def test_an_accept_in_a_compacted_slot_is_refused_before_anything_is_written(
        make_store, batches: list[list[LogRecord]]) -> None:
    store = make_store()
    *before, refused = batches
    for records in before:
        store.append(records)
    expected = store.load()
    with pytest.raises(ValueError, match="compacted"):
        store.append([RoundRecord(9), *refused])
    assert store.load() == expected
    store.append([AcceptRecord(Entry(5, Ballot(1, 1), batch(5)))])  # still usable
    assert 5 in make_store().load().accepted


def test_compaction_deletes_the_rows_from_the_database(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    written_store(path, slots=50)
    with open_sqlite(path) as store:
        store.append([CompactRecord(40)])
    conn = sqlite3.connect(path)
    try:
        for table in ("accepted", "chosen"):
            assert conn.execute(f"SELECT min(slot), count(*) FROM {table}").fetchone() == (
                41, 10)
        assert conn.execute("SELECT upto FROM compacted").fetchall() == [(40,)]
    finally:
        conn.close()


def test_compaction_writes_a_few_pages_not_the_megabytes_it_frees(tmp_path: Path) -> None:
    # SQLite built with SECURE_DELETE (Debian's, Python's) zeroes every freed byte:
    # compacting 4 MB of values wrote 4 MB more to the WAL, in one commit a follower
    # makes on its event loop. The store frees pages without rewriting them.
    path = tmp_path / "log.db"
    with open_sqlite(path, fsync=False) as store:
        for start in range(1, 201, 50):
            records: list[LogRecord] = []
            for n in range(start, start + 50):
                value = batch(n, size=20_000)
                records += [AcceptRecord(Entry(n, Ballot(1, 1), value)),
                            ChosenRecord(n, value, accepted=True)]
            store.append(records)
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # an empty WAL to count in
        store.append([CompactRecord(190)])
        _, frames, _ = store._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    freed_pages = 190 * 20_000 // 4096
    assert frames < freed_pages // 10, (frames, freed_pages)
    assert len(open_and_load(path).accepted) == 10


def test_the_standing_round_trips_and_the_last_one_wins(make_store) -> None:
    store = make_store()
    store.append([StandingRecord(Standing.LEARNER)])
    assert make_store().load().standing == Standing.LEARNER
    make_store().append([StandingRecord(Standing.NEW), StandingRecord(Standing.VOTER)])
    assert make_store().load().standing == Standing.VOTER


def test_a_standing_that_is_none_is_refused_before_anything_is_written(make_store) -> None:
    store = make_store()
    with pytest.raises(ValueError):
        store.append([RoundRecord(3), StandingRecord(7)])  # type: ignore[arg-type]
    assert store.load() == applied([])


def test_a_store_created_by_open_is_new_and_says_so_and_a_reopened_one_is_not(
        tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with open_sqlite(path) as store:
        assert store.created
        assert store.load().standing == Standing.NEW
        store.append([StandingRecord(Standing.VOTER)])
    with open_sqlite(path) as store:
        assert not store.created
        assert store.load().standing == Standing.VOTER


def test_a_memory_store_is_a_voter_unless_given_a_standing() -> None:
    assert MemoryLogStore().load() == ReplicaDurable()
    assert MemoryLogStore().created
    assert MemoryLogStore(standing=Standing.LEARNER).load().standing == Standing.LEARNER
    assert not MemoryLogStore(created=False).created


def test_a_version_2_store_is_upgraded_as_a_voter_with_nothing_compacted(
        tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    expected = written_store(path, slots=5)
    # What a version 2 store is: no compacted or standing table.
    tamper(path, "DROP TABLE compacted")
    tamper(path, "DROP TABLE standing")
    tamper(path, "UPDATE identity SET schema_version = 2")
    with open_sqlite(path) as store:
        assert not store.created
        state = store.load()
    expected.standing = Standing.VOTER  # it has voted: it must keep its promises
    assert state == expected and state.compacted == 0
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT schema_version FROM identity").fetchone() == (3,)
    finally:
        conn.close()
    with open_sqlite(path) as store:  # and it stays one
        store.append([CompactRecord(2)])
    assert open_and_load(path).compacted == 2


def test_the_file_stays_the_size_of_the_live_log_as_compaction_frees_pages(
        tmp_path: Path) -> None:
    # 20k slots, compacted every 1k down to a tail of 200: SQLite reuses the pages
    # compaction frees, so the file (the WAL checkpointed into it at close) after
    # the second 10k is about its size after the first, not twice it.
    path = tmp_path / "log.db"

    def write(store: SqliteLogStore, first: int, last: int) -> None:
        for start in range(first, last + 1, 100):
            records: list[LogRecord] = []
            for n in range(start, start + 100):
                value = batch(n, size=200)
                records += [AcceptRecord(Entry(n, Ballot(1, 1), value)),
                            ChosenRecord(n, value, accepted=True)]
                if n % 1000 == 0:
                    records.append(CompactRecord(n - 200))
            store.append(records)

    with open_sqlite(path, fsync=False) as store:
        write(store, 1, 10_000)
    after_10k = path.stat().st_size
    with open_sqlite(path, fsync=False) as store:
        write(store, 10_001, 20_000)
    after_20k = path.stat().st_size
    assert after_20k <= 1.2 * after_10k, (after_10k, after_20k)
    assert len(open_and_load(path).accepted) == 200


# ------------------------------------------------------------------ interface


def test_stats_count_appends_records_and_time_in_commit(make_store) -> None:
    store = make_store()
    store.append(EVERY_KIND[:2])
    store.append(EVERY_KIND[2:])
    stats = store.stats
    assert (stats.appends, stats.records) == (2, len(EVERY_KIND))
    if isinstance(store, SqliteLogStore):
        assert stats.commit_seconds > 0
        assert 0 < stats.last_commit_seconds <= stats.commit_seconds


def test_appends_run_from_a_worker_thread(tmp_path: Path) -> None:
    async def main(store: SqliteLogStore) -> None:
        for n in range(1, 6):
            await asyncio.to_thread(store.append, [ChosenRecord(n, batch(n))])

    with open_sqlite(tmp_path / "log.db") as store:
        asyncio.run(main(store))
        assert list(store.load().chosen) == [1, 2, 3, 4, 5]


def test_a_closed_store_refuses_appends_and_loads(make_store) -> None:
    store = make_store()
    with store:
        store.append([RoundRecord(1)])
    store.close()  # closing twice is fine
    with pytest.raises(StoreError, match="closed"):
        store.append([RoundRecord(2)])
    with pytest.raises(StoreError, match="closed"):
        store.load()


def test_sqlite_store_commits_durably_in_wal_mode(tmp_path: Path) -> None:
    with open_sqlite(tmp_path / "log.db") as store:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone() == (b"wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


def test_unsafe_mode_does_not_fsync(tmp_path: Path) -> None:
    with open_sqlite(tmp_path / "log.db", fsync=False) as store:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA synchronous").fetchone() == (0,)  # OFF


# ------------------------------------------------------------------ identity


def test_first_open_creates_the_data_directory_and_records_the_identity(
        tmp_path: Path) -> None:
    path = tmp_path / "data" / "node-3" / "log.db"
    open_sqlite(path, node_id=3, cluster_id="prod").close()
    assert os.listdir(path.parent) == ["log.db"]  # no WAL or half-built file left behind
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT schema_version, node_id, cluster_id FROM identity"
                            ).fetchall() == [(SCHEMA_VERSION, 3, "prod")]
    finally:
        conn.close()
    open_sqlite(path, node_id=3, cluster_id="prod").close()  # the same identity reopens


def assert_one_line_naming(error: BaseException, path: Path, *parts: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert str(path) in message
    for part in parts:
        assert part in message


def test_a_store_of_another_node_is_refused_naming_the_file_and_both_identities(
        tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    open_sqlite(path, node_id=1, cluster_id="prod").close()
    with pytest.raises(StoreIdentityError) as info:
        open_sqlite(path, node_id=2, cluster_id="prod")
    assert_one_line_naming(info.value, path, "node 1", "node 2", "'prod'")


def test_a_store_of_another_cluster_is_refused_naming_the_file_and_both_identities(
        tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    open_sqlite(path, node_id=1, cluster_id="prod").close()
    with pytest.raises(StoreIdentityError) as info:
        open_sqlite(path, node_id=1, cluster_id="staging")
    assert_one_line_naming(info.value, path, "'prod'", "'staging'")


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    open_sqlite(path).close()
    tamper(path, "UPDATE identity SET schema_version = 99")
    with pytest.raises(StoreIdentityError) as info:
        open_sqlite(path)
    assert_one_line_naming(info.value, path, "version 99")


def test_a_store_already_open_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with open_sqlite(path), pytest.raises(StoreLockedError) as info:
        open_sqlite(path)
    assert_one_line_naming(info.value, path, "in use")
    open_sqlite(path).close()  # free again once closed


# ------------------------------------------------------------------ corruption


def tamper(path: Path, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def written_store(path: Path, slots: int = 300) -> ReplicaDurable:
    records: list[LogRecord] = [PromiseRecord(Ballot(2, 1)), RoundRecord(2)]
    for n in range(1, slots + 1):
        records += [AcceptRecord(Entry(n, Ballot(2, 1), batch(n))), ChosenRecord(n, batch(n))]
    with open_sqlite(path) as store:
        store.append(records)
    return applied(records)


def open_and_load(path: Path) -> ReplicaDurable:
    with open_sqlite(path) as store:
        return store.load()


def assert_refused_as_corrupt(path: Path, *parts: str) -> None:
    with pytest.raises(CorruptStoreError) as info:
        open_and_load(path)
    assert_one_line_naming(info.value, path, *parts)


def test_a_chosen_value_that_is_the_accepted_one_is_stored_once_and_loads_as_it(
        tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    value, other = batch(7, size=4000), batch(8, size=4000)
    records: list[LogRecord] = [
        AcceptRecord(Entry(7, Ballot(2, 1), value)), ChosenRecord(7, value, accepted=True),
        AcceptRecord(Entry(8, Ballot(2, 1), other)), ChosenRecord(8, other),  # no claim
    ]
    with open_sqlite(path) as store:
        store.append(records)
    conn = sqlite3.connect(path)
    try:
        sizes = dict(conn.execute("SELECT slot, length(value) FROM chosen").fetchall())
    finally:
        conn.close()
    assert sizes[7] == 0 and sizes[8] > 4000  # a reference, and a copy
    loaded = open_and_load(path)
    assert loaded == applied(records)
    assert loaded.chosen[7] is loaded.accepted[7].value  # one object in memory, too


def test_a_chosen_reference_without_its_accepted_row_is_refused_as_corrupt(
        tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with open_sqlite(path) as store:
        store.append([AcceptRecord(Entry(7, Ballot(2, 1), batch(7))),
                      ChosenRecord(7, batch(7), accepted=True)])
    tamper(path, "DELETE FROM accepted WHERE slot = 7")
    assert_refused_as_corrupt(path, "chosen slot 7", "no accepted entry")


def test_a_version_1_store_is_read_and_marked_as_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    expected = written_store(path, slots=5)
    tamper(path, "UPDATE identity SET schema_version = 1")
    assert open_and_load(path) == expected
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT schema_version FROM identity").fetchone() == (
            SCHEMA_VERSION,)
    finally:
        conn.close()


def test_random_bytes_are_refused_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    path.write_bytes(random.Random(1).randbytes(64 * 1024))
    assert_refused_as_corrupt(path, "not a database")


@pytest.mark.parametrize("keep", ["nothing", "100 bytes", "one page", "half", "all but a page",
                                  "all but a byte"])
def test_a_truncated_file_is_refused_as_corrupt(tmp_path: Path, keep: str) -> None:
    path = tmp_path / "log.db"
    written_store(path)
    size = path.stat().st_size
    length = {"nothing": 0, "100 bytes": 100, "one page": 4096, "half": size // 2,
              "all but a page": size - 4096, "all but a byte": size - 1}[keep]
    os.truncate(path, length)
    assert_refused_as_corrupt(path)


def test_a_flipped_page_in_the_middle_is_refused_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    written_store(path)
    original = path.read_bytes()
    pages = len(original) // 4096
    assert pages > 10
    middle = pages // 2
    # The middle page, and for good measure every other page too.
    for page in [middle, *range(pages)]:
        data = bytearray(original)
        data[page * 4096:(page + 1) * 4096] = bytes(b ^ 0xFF for b in original[
            page * 4096:(page + 1) * 4096])
        path.write_bytes(data)
        assert_refused_as_corrupt(path)


def test_a_flipped_bit_anywhere_never_loads_a_different_state(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    expected = written_store(path, slots=60)
    original = path.read_bytes()
    rng = random.Random(7)
    refused = 0
    for _ in range(200):
        data = bytearray(original)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(data)
        try:
            state = open_and_load(path)
        except CorruptStoreError:
            refused += 1
        else:
            assert state == expected  # the bit was in unused space
    assert refused > 0


@pytest.mark.parametrize("table", ["accepted", "chosen"])
def test_garbage_in_a_value_blob_is_refused_as_corrupt(tmp_path: Path, table: str) -> None:
    path = tmp_path / "log.db"
    written_store(path)
    tamper(path, f"UPDATE {table} SET value = ? WHERE slot = 150", b"\xc1garbage")
    assert_refused_as_corrupt(path, f"{table} slot 150", "checksum")


@pytest.mark.parametrize("table", ["accepted", "chosen"])
def test_a_value_that_does_not_decode_is_refused_even_when_its_checksum_matches(
        tmp_path: Path, table: str) -> None:
    path = tmp_path / "log.db"
    written_store(path)
    garbage = b"\x91\xc1"  # a one-element array holding the never-used MessagePack byte
    if table == "accepted":
        tamper(path, "UPDATE accepted SET value = ?, crc = ? WHERE slot = 150",
               garbage, _row_crc(150, 2, 1, garbage))
    else:
        tamper(path, "UPDATE chosen SET value = ?, crc = ? WHERE slot = 150",
               garbage, _row_crc(150, 0, 0, garbage))
    assert_refused_as_corrupt(path, f"{table} slot 150", "does not decode")


def test_a_damaged_promise_is_refused_not_read_as_a_lower_one(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    written_store(path)
    tamper(path, "UPDATE promise SET round = 1")
    assert_refused_as_corrupt(path, "promise")


@pytest.mark.parametrize(("sql", "part"), [
    ("UPDATE compacted SET upto = 2", "compacted row"),
    ("UPDATE standing SET value = 2", "standing row"),
    ("DELETE FROM compacted", "compacted row missing"),
    ("DELETE FROM standing", "standing row missing"),
], ids=["compacted-lowered", "standing-changed", "compacted-gone", "standing-gone"])
def test_a_damaged_compacted_or_standing_row_is_refused_as_corrupt(
        tmp_path: Path, sql: str, part: str) -> None:
    path = tmp_path / "log.db"
    with open_sqlite(path) as store:
        store.append([CompactRecord(5)])
    tamper(path, sql)
    assert_refused_as_corrupt(path, part)


def test_a_standing_this_pnyx_does_not_know_is_refused_even_with_its_checksum(
        tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    written_store(path, slots=2)
    tamper(path, "UPDATE standing SET value = 9, crc = ?", _row_crc(9, 0, 0))
    assert_refused_as_corrupt(path, "standing 9")


@pytest.mark.parametrize("table", ["accepted", "chosen"])
def test_a_row_at_or_below_the_compacted_slot_is_refused_as_corrupt(
        tmp_path: Path, table: str) -> None:
    # A compaction deletes them in its own transaction: one left means damage (or a
    # writer that is not pnyx), and loading it would bring back a forgotten slot.
    path = tmp_path / "log.db"
    written_store(path, slots=20)
    with open_sqlite(path) as store:
        store.append([CompactRecord(10)])
    tamper(path, "UPDATE compacted SET upto = 12, crc = ?", _row_crc(12, 0, 0))
    other = "chosen" if table == "accepted" else "accepted"
    tamper(path, f"DELETE FROM {other} WHERE slot <= 12")  # leave only `table`'s rows
    assert_refused_as_corrupt(path, f"{table} slot 11", "compacted slot 12")


def test_a_missing_table_is_refused_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    written_store(path)
    tamper(path, "DROP TABLE chosen")
    assert_refused_as_corrupt(path, "chosen")


def test_another_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    tamper(path, "CREATE TABLE t (x)")
    assert_refused_as_corrupt(path, "not a pnyx log store")


# ------------------------------------------------------------------ crashes

# Shared by the child that writes and the test that checks: append number n
# writes 4 slots of 1 KiB (so the WAL fills and checkpoints run while the child
# may be killed), promises ballot n.1 and records round n; every fifth append
# also compacts all but the last 8 slots (deleting rows, in the same transaction).
RECORDS_OF = r"""
from pnyx.protocol.ballot import Ballot
from pnyx.protocol.multipaxos.messages import Batch, Command, Entry
from pnyx.protocol.multipaxos.records import (AcceptRecord, ChosenRecord, CompactRecord,
                                             PromiseRecord, RoundRecord)

def records_of(n):
    records = [PromiseRecord(Ballot(n, 1)), RoundRecord(n)]
    for slot in range(4 * n - 3, 4 * n + 1):
        value = Batch((Command(1, slot, bytes([slot % 251]) * 1024),))
        records += [AcceptRecord(Entry(slot, Ballot(n, 1), value)), ChosenRecord(slot, value)]
    if n % 5 == 0:
        records.append(CompactRecord(4 * n - 8))
    return records
"""

CHILD = RECORDS_OF + r"""
import sys
from pnyx.storage import SqliteLogStore

store = SqliteLogStore.open(sys.argv[1], node_id=1, cluster_id="crash")
n = store.load().last_round
while True:
    n += 1
    store.append(records_of(n))
    print(n, flush=True)  # acknowledged: append returned, so it must survive
"""


def test_a_process_killed_at_a_random_moment_loses_no_acknowledged_append(
        tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    exec(RECORDS_OF, namespace)
    records_of: Callable[[int], list[LogRecord]] = namespace["records_of"]  # type: ignore[assignment]
    path = tmp_path / "log.db"
    rng = random.Random(2024)
    deadline = time.monotonic() + 12
    expected = applied([])
    kills = 0
    for _ in range(20):
        if time.monotonic() > deadline:
            break
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 10)
            assert ready, "the child acknowledged nothing within 10 s"
            time.sleep(rng.uniform(0, 0.3))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            output = child.stdout.read().decode()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            stderr = child.stderr.read().decode() if child.stderr else ""
            for stream in (child.stdout, child.stderr):
                if stream is not None:
                    stream.close()
        assert child.returncode == -signal.SIGKILL, stderr
        lines = output.split("\n")[:-1]  # a line cut short by the kill is no acknowledgment
        assert lines, stderr
        acknowledged = int(lines[-1])
        kills += 1

        with SqliteLogStore.open(path, node_id=1, cluster_id="crash") as store:
            state = store.load()
        # Every acknowledged append survived; the one in flight may or may not
        # have, but all of it or none of it (one append, one transaction).
        assert state.last_round in (acknowledged, acknowledged + 1)
        for n in range(expected.last_round + 1, state.last_round + 1):
            for record in records_of(n):
                expected.apply(record)
        assert state == expected
    assert kills >= 5


# ------------------------------------------------------------------ member list

THREE = {1: "10.0.0.1:7001", 2: "10.0.0.2:7001", 3: "10.0.0.3:7001"}


def test_the_member_list_is_recorded_at_first_use_and_the_same_list_passes(make_store) -> None:
    assert make_store().check_members(THREE) is None
    assert make_store().check_members(dict(reversed(THREE.items()))) is None


@pytest.mark.parametrize("others", [
    {**THREE, 4: "10.0.0.4:7001"},
    {1: THREE[1], 2: THREE[2]},
    {1: THREE[1], 2: THREE[2], 4: THREE[3]},
])
def test_other_member_ids_are_refused_naming_both_lists(make_store, others) -> None:
    make_store().check_members(THREE)
    with pytest.raises(StoreIdentityError) as info:
        make_store().check_members(others)
    message = str(info.value)
    assert "\n" not in message
    assert ",".join(f"{i}={a}" for i, a in sorted(THREE.items())) in message
    assert ",".join(f"{i}={a}" for i, a in sorted(others.items())) in message
    assert make_store().check_members(THREE) is None  # the recorded list is unchanged


def test_moved_addresses_are_told_and_recorded(make_store) -> None:
    make_store().check_members(THREE)
    moved = {**THREE, 2: "10.0.9.2:7002"}
    warning = make_store().check_members(moved)
    assert warning is not None and "\n" not in warning
    assert "was 2=10.0.0.2:7001" in warning and "now 2=10.0.9.2:7002" in warning
    assert make_store().check_members(moved) is None


def test_a_damaged_member_row_is_refused_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with open_sqlite(path) as store:
        store.check_members(THREE)
    tamper(path, "UPDATE members SET address = ? WHERE node_id = 2", b"10.6.6.6:7001")
    with open_sqlite(path) as store, pytest.raises(CorruptStoreError) as info:
        store.check_members(THREE)
    assert_one_line_naming(info.value, path, "member row 2")


# ------------------------------------------------------------------ a full disk


def test_a_full_disk_fails_the_append_in_one_line_and_the_store_refuses_every_later_one(
        tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        path = mount / "log.db"
        acknowledged: list[LogRecord] = []
        with open_sqlite(path) as store:
            with pytest.raises(StoreError) as info:
                for n in range(1, 1000):
                    records: list[LogRecord] = [AcceptRecord(Entry(n, Ballot(1, 1),
                                                                   batch(n, 8000)))]
                    store.append(records)
                    acknowledged += records
            assert_one_line_naming(info.value, path, "database or disk is full")
            assert acknowledged, "the disk filled before the first append"
            with pytest.raises(StoreError, match="an earlier append failed"):
                store.append([RoundRecord(1)])  # small enough to fit: refused all the same
        # Closed without an error; what was acknowledged is all there, once space is freed.
        subprocess.run(["mount", "-o", "remount,size=8m", str(mount)], check=True)
        with open_sqlite(path) as store:
            assert store.load() == applied(acknowledged)
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
