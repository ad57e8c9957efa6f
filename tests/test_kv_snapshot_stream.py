"""Specs of snapshots taken without stopping: `snapshot_chunks`, copy-on-write, format v2."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pnyx.sim.mutants import NoDedupMachine
from pnyx.statemachine import (
    Delete,
    Get,
    IdempotentRequest,
    KVMachine,
    Ok,
    Put,
    Request,
    Result,
    SafeApply,
    SnapshotError,
    decode_result,
    encode_keys_query,
    encode_request,
)
from pnyx.statemachine.base import StreamingStateMachine, snapshot_chunks
from pnyx.statemachine.dedup import DedupEntry, DedupTable
from pnyx.statemachine.kv import snapshot as snap

ROOT = Path(__file__).resolve().parent.parent


def _load_counter_example() -> ModuleType:
    path = ROOT / "examples" / "counter_machine.py"
    spec = importlib.util.spec_from_file_location("counter_machine", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("counter_machine", module)
    spec.loader.exec_module(module)
    return module


counter_machine = _load_counter_example()


class Driver:
    """Feeds one KVMachine a log, numbering slots from 1 like a replica would."""

    def __init__(self, machine: KVMachine | None = None) -> None:
        self.machine = machine if machine is not None else KVMachine()
        self.index = self.machine.applied_index

    def raw(self, data: bytes) -> Result:
        self.index += 1
        return decode_result(self.machine.apply(data, self.index))

    def req(self, client: str, seq: int, command: Put | Get | Delete) -> Result:
        return self.raw(encode_request(Request(client, seq, command)))

    def idem(self, key: str, command: Put | Get | Delete) -> Result:
        return self.raw(encode_request(IdempotentRequest(key, command)))


def _loaded(keys: int, max_clients: int = 64) -> Driver:
    """A machine with `keys` keys (so most shards hold some) and a busy de-dup table."""
    d = Driver(KVMachine(max_clients=max_clients))
    for i in range(keys):
        d.req(f"client-{i % 50}", i, Put(f"key/{i:06d}", b"v%d" % i))
    return d


def _state(machine: KVMachine) -> dict[str, tuple[bytes, int]]:
    return dict(machine._data.items())


def _churn(d: Driver, rounds: int, tag: str) -> None:
    """Overwrites, deletes and new keys, from old and new clients and idempotency keys."""
    for i in range(rounds):
        d.req(f"client-{i % 50}", 10**6 + d.index, Put(f"key/{i * 7 % 1000:06d}", tag.encode()))
        d.req(f"{tag}-{i % 7}", i, Delete(f"key/{i * 13 % 1000:06d}"))
        d.idem(f"{tag}-once-{i}", Put(f"{tag}/new/{i}", b"n"))


def _restored(data: bytes, max_clients: int = 64) -> KVMachine:
    machine = KVMachine(max_clients=max_clients)
    machine.restore(data)
    return machine


# --- the state at the call ------------------------------------------------------


def test_chunks_give_the_state_at_the_call_despite_later_puts_deletes_and_new_keys() -> None:
    d = _loaded(3000)
    at_call = _state(d.machine)
    eager = d.machine.snapshot()  # serialized at once, before anything else happens
    chunks = d.machine.snapshot_chunks()
    _churn(d, 1000, "after")
    later = _state(d.machine)
    assert later != at_call  # the churn did change the live state

    streamed = b"".join(chunks)
    assert streamed == eager
    restored = _restored(streamed)
    assert _state(restored) == at_call
    assert restored.applied_index == 3000
    assert restored.snapshot() == eager
    # The live machine kept every write made after the call.
    assert _state(d.machine) == later
    assert d.machine.key_count == len(later)


def test_snapshots_taken_at_different_moments_each_keep_their_own_state() -> None:
    d = _loaded(2000)
    first_state, first = _state(d.machine), d.machine.snapshot_chunks()
    _churn(d, 300, "one")
    second_state, second = _state(d.machine), d.machine.snapshot_chunks()
    _churn(d, 300, "two")
    # Iterated in the opposite order, and after a restore replaced the state.
    second_bytes = b"".join(second)
    d.machine.restore(second_bytes)
    assert _state(_restored(second_bytes)) == second_state
    assert _state(_restored(b"".join(first))) == first_state
    assert first_state != second_state


def test_iterating_in_another_thread_while_applying_gives_the_state_at_the_call() -> None:
    d = _loaded(20_000)
    at_call = _state(d.machine)
    eager = d.machine.snapshot()
    chunks = d.machine.snapshot_chunks()
    out: list[bytes] = []
    failures: list[BaseException] = []
    batch_done = threading.Semaphore(0)

    def write() -> None:
        try:
            for chunk in chunks:
                out.append(chunk)
                # Between two steps, let the main thread apply a batch for sure
                # (during a step it may too: see the switch interval).
                batch_done.acquire(timeout=10)
        except BaseException as exc:  # reported to the main thread below
            failures.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    batches = 0
    try:
        writer = threading.Thread(target=write)
        writer.start()
        while writer.is_alive() and batches < 500:
            _churn(d, 10, f"meanwhile-{batches}")
            batches += 1
            batch_done.release()
        writer.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert not writer.is_alive()
    assert failures == []
    assert len(out) >= 5 and batches >= len(out) - 1  # the writes did overlap the steps
    assert b"".join(out) == eager
    assert _state(_restored(b"".join(out))) == at_call


def test_the_dedup_table_in_the_snapshot_is_the_table_at_the_call() -> None:
    d = Driver(KVMachine(max_clients=2))
    assert d.req("a", 1, Put("k", b"a")) == Ok(1)
    assert d.req("b", 1, Put("k", b"b")) == Ok(2)
    chunks = d.machine.snapshot_chunks()
    # After the call: "a" is refreshed, then two new clients evict both "a" and "b".
    assert d.req("a", 1, Put("k", b"a")) == Ok(1)
    d.req("c", 1, Put("k", b"c"))
    d.req("e", 1, Put("k", b"e"))
    assert d.machine.dedup_size == 2

    restored = Driver(_restored(b"".join(chunks), max_clients=2))
    assert restored.machine.dedup_size == 2
    # Both retries are answered from the table (their first results), not applied again.
    assert restored.req("b", 1, Put("k", b"b")) == Ok(2)
    assert restored.req("a", 1, Put("k", b"a")) == Ok(1)
    assert restored.machine.read("k") == (b"b", 2)
    # "c" came after the call: unknown to the snapshot, so applied.
    assert restored.req("c", 1, Put("k", b"c")) == Ok(5)
    # The order at the call came along too: "b" then "a" were used, so the
    # oldest is now "b", which the next new client evicts.
    restored.req("z", 1, Get("k"))
    assert restored.req("b", 1, Put("k", b"b")) == Ok(7)


def test_a_capture_lists_the_table_in_lru_order_as_at_the_call() -> None:
    table = DedupTable(3)
    for stamp, client in enumerate("abcd", start=1):  # "a" is evicted
        table.record("client", client, 1, b"d", client.encode(), stamp)
    table.check("client", "b", 1, b"d", 5)  # a retry: "b" becomes the newest
    capture = table.capture()
    table.record("client", "e", 1, b"d", b"e", 6)  # after the call: evicts "c"
    assert [e.ident for e in capture] == ["c", "d", "b"]
    assert len(capture) == 3
    assert [e.ident for e in table.capture()] == [e.ident for e in table.entries()]


def test_a_rebuilt_table_keeps_its_order_whatever_log_index_comes_next() -> None:
    # A restored table's entries rank below every later use, even one stamped
    # with a log index no larger than their number.
    entries = [DedupEntry("client", c, 1, b"d", b"r") for c in "abc"]
    table = DedupTable.from_entries(8, entries)
    table.record("client", "z", 1, b"d", b"r", 1)
    table.check("client", "a", 1, b"d", 2)
    assert [e.ident for e in table.entries()] == ["b", "c", "z", "a"]
    assert list(table.capture()) == table.entries()


_keys = st.sampled_from([f"k{i}" for i in range(12)])
_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from("pqrs"), _keys, st.binary(max_size=3)),
    st.tuples(st.just("delete"), st.sampled_from("pqrs"), _keys, st.just(b"")),
    st.tuples(st.just("retry"), st.sampled_from("pqrs"), _keys, st.just(b"")),
    st.tuples(st.just("snapshot"), st.just(""), st.just(""), st.just(b"")),
    st.tuples(st.just("restart"), st.just(""), st.just(""), st.just(b"")),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_every_deferred_snapshot_equals_the_one_taken_at_its_call(
    ops: list[tuple[str, str, str, bytes]],
) -> None:
    # A table of 3 for 4 clients, so entries are evicted and refreshed after calls.
    d = Driver(KVMachine(max_clients=3))
    seqs = {client: 0 for client in "pqrs"}
    last: dict[str, Put | Delete] = {}
    deferred: list[tuple[bytes, Iterator[bytes]]] = []
    for op, client, key, value in ops:
        if op == "snapshot":
            deferred.append((d.machine.snapshot(), d.machine.snapshot_chunks()))
        elif op == "restart":  # the state, de-dup order included, from its own snapshot
            d.machine.restore(d.machine.snapshot())
        elif op == "retry":
            if client in last:
                d.req(client, seqs[client], last[client])
        else:
            seqs[client] += 1
            last[client] = Put(key, value) if op == "put" else Delete(key)
            d.req(client, seqs[client], last[client])
    for eager, chunks in deferred:
        assert b"".join(chunks) == eager


# --- canonical bytes --------------------------------------------------------------

_SCRIPT = """
import hashlib, sys
from pnyx.statemachine import KVMachine, Put, Delete, Request, IdempotentRequest, encode_request
m = KVMachine(max_clients=100)
index = 0
def apply(request):
    global index
    index += 1
    m.apply(encode_request(request), index)
for i in range(3000):
    apply(Request(f"c{i % 150}", i, Put(f"k{(i * 7919) % 2000}/é日{i % 3}", b"%d" % i)))
for i in range(0, 2000, 3):
    apply(IdempotentRequest(f"once{i}", Delete(f"k{i}/é日{i % 3}")))
if sys.argv[1] == "snapshot-first":
    chunks = m.snapshot_chunks()  # copies shards on the writes below
    apply(Request("late", 1, Put("k1/é日1", b"late")))
    apply(Request("late", 2, Delete("k1/é日1")))
    b"".join(chunks)
    apply(Request("late", 3, Put("k1/é日1", b"late")))
else:
    apply(Request("late", 1, Put("k1/é日1", b"late")))
    apply(Request("late", 2, Delete("k1/é日1")))
    apply(Request("late", 3, Put("k1/é日1", b"late")))
print(hashlib.blake2b(m.snapshot()).hexdigest())
"""


def test_equal_states_give_equal_bytes_in_processes_with_different_hash_seeds() -> None:
    digests = set()
    for seed, mode in [("0", "snapshot-first"), ("1", "plain"), ("4242", "plain"),
                       ("random", "snapshot-first")]:
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", _SCRIPT, mode], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=True)
        digests.add(done.stdout.strip())
    assert len(digests) == 1


def test_equal_states_reached_differently_give_equal_bytes() -> None:
    keys = [f"key-{i}" for i in range(2000)]
    one, two = Driver(), Driver()
    for key in keys:  # created in one order...
        one.req("c", one.index + 1, Put(key, b"old"))
    for key in reversed(keys):  # ...or in the other
        two.req("c", two.index + 1, Put(key, b"older"))
    pending = two.machine.snapshot_chunks()  # so the writes below copy shards in `two`
    for driver in (one, two):
        for key in keys:
            driver.req("c", driver.index + 1, Put(key, key.encode()))
    assert _state(one.machine) == _state(two.machine)
    assert one.machine.snapshot() == two.machine.snapshot()
    assert _restored(one.machine.snapshot()).snapshot() == one.machine.snapshot()
    assert b"".join(pending) != one.machine.snapshot()


# --- bounded steps ------------------------------------------------------------------


def test_chunks_are_bounded_in_size_and_a_big_value_stays_one_record() -> None:
    d = Driver(KVMachine(command_limit=2 << 20))
    for i in range(20_000):
        d.idem(f"i{i}", Put(f"key{i}", b"x" * 40))
    d.idem("big", Put("big", b"B" * (1 << 20)))  # one value larger than a chunk
    chunks = list(d.machine.snapshot_chunks())
    assert len(chunks) > 10
    biggest_record = (1 << 20) + 100
    for chunk in chunks:
        assert len(chunk) <= snap._CHUNK_BYTES + snap._FRAME_BYTES + biggest_record
    assert sum(len(c) > snap._CHUNK_BYTES + snap._FRAME_BYTES for c in chunks) == 1
    assert _restored(b"".join(chunks)).read("big") == (b"B" * (1 << 20), 20_001)


def test_the_call_encodes_nothing_until_the_first_step() -> None:
    chunks = _loaded(100).machine.snapshot_chunks()
    assert inspect.isgenerator(chunks)
    assert inspect.getgeneratorstate(chunks) == inspect.GEN_CREATED


# --- the helper, SafeApply and machines without chunks --------------------------------


@pytest.mark.parametrize("wrap", [False, True])
def test_the_helper_falls_back_to_one_snapshot_taken_at_the_call(wrap: bool) -> None:
    counter = counter_machine.CounterMachine()
    machine = SafeApply(counter) if wrap else counter
    assert not isinstance(machine, StreamingStateMachine)
    assert not hasattr(machine, "snapshot_chunks")
    machine.apply(b"add 41", 1)
    chunks = snapshot_chunks(machine)
    machine.apply(b"inc", 2)
    assert list(chunks) == [b"counter/v1 41"]


def test_the_helper_streams_a_kv_machine_even_through_safe_apply() -> None:
    d = _loaded(500)
    wrapped = SafeApply(d.machine)
    assert isinstance(d.machine, StreamingStateMachine)
    assert isinstance(wrapped, StreamingStateMachine)
    eager = d.machine.snapshot()
    chunks = snapshot_chunks(wrapped)
    _churn(d, 100, "later")
    assert b"".join(chunks) == eager
    assert b"".join(wrapped.snapshot_chunks()) == wrapped.snapshot() == d.machine.snapshot()


def test_a_machine_with_a_stand_in_dedup_table_still_snapshots() -> None:
    d = Driver(NoDedupMachine())
    d.req("c", 1, Put("k", b"v"))
    restored = _restored(d.machine.snapshot())
    assert restored.read("k") == (b"v", 1) and restored.dedup_size == 0


def test_reads_and_listings_work_after_copy_on_write() -> None:
    d = _loaded(1000)
    d.machine.query(encode_keys_query())  # builds the sorted index
    chunks = d.machine.snapshot_chunks()
    d.req("x", 1, Delete("key/000001"))
    d.req("x", 2, Put("key/000001a", b"new"))
    d.req("x", 3, Put("key/000002", b"two"))
    listing = decode_result(d.machine.query(encode_keys_query("key/00000", limit=4)))
    assert [k for k, _ in listing.items] == [  # type: ignore[union-attr]
        "key/000000", "key/000001a", "key/000002", "key/000003"]
    assert d.machine.read("key/000002") == (b"two", 1003)
    assert d.machine.read("key/000001") is None and d.machine.key_count == 1000
    assert _restored(b"".join(chunks)).read("key/000001") == (b"v1", 2)


# --- format version 2: refusals ------------------------------------------------------


def _payloads(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (size,) = snap._LENGTH.unpack_from(data, pos)
        out.append(data[pos + 4: pos + 4 + size])
        pos += 4 + size
    assert pos == len(data)
    return out


def _reframe(payloads: list[bytes], records: int | None = None) -> bytes:
    """Frames and a valid end frame (count and checksum): a forgery the checksum won't catch."""
    if records is None:
        frames = [snap._frame_decoder.decode(p) for p in payloads]
        records = sum(len(f.records) for f in frames if isinstance(f, snap._Records))
    body = b"".join(snap._LENGTH.pack(len(p)) + p for p in payloads)
    end = msgspec.msgpack.encode(snap._End(records, hashlib.blake2b(body, digest_size=16).digest()))
    return body + snap._LENGTH.pack(len(end)) + end


def _encode(frame: object) -> bytes:
    return msgspec.msgpack.encode(frame)


def _small() -> Driver:
    d = Driver(KVMachine(max_clients=8))
    for i in range(40):
        d.req(f"c{i % 4}", i, Put(f"k{i}", b"v"))
    d.idem("once", Delete("k3"))
    return d


def _forgeries(good: bytes) -> dict[str, bytes]:
    payloads = _payloads(good)
    frames = [snap._frame_decoder.decode(p) for p in payloads]
    header, sessions, body = payloads[0], payloads[1], payloads[2:-1]
    records = [f for f in frames if isinstance(f, snap._Records)]
    first = records[0]
    key, item = first.records[0]
    other = next(r for r in records if r.shard != first.shard)
    return {
        "frames reordered": _reframe([header, sessions, *reversed(body)]),
        "records frame twice": _reframe([header, sessions, body[0], *body]),
        "sessions frame twice": _reframe([header, sessions, sessions, *body]),
        "sessions after records": _reframe([header, *body, sessions]),
        "header twice": _reframe([header, header, sessions, *body]),
        "no header": _reframe([sessions, *body]),
        "end frame in the middle": _reframe([header, sessions, payloads[-1], *body]),
        "key in the wrong shard": _reframe([header, sessions, _encode(
            snap._Records(other.shard, [(key, item), *other.records]))]),
        "mod_index after the applied index": _reframe([header, sessions, _encode(
            snap._Records(first.shard, [(key, snap.Item(item.value, 10**6))]))]),
        "mod_index zero": _reframe([header, sessions, _encode(
            snap._Records(first.shard, [(key, snap.Item(item.value, 0))]))]),
        "a record without its mod_index": _reframe([header, sessions, _encode(
            ["records", first.shard, [[key, [item.value]]]])], records=1),
        "empty records frame": _reframe([header, sessions, _encode(
            snap._Records(first.shard, [])), *body]),
        "shard out of range": _reframe([header, sessions, *body, _encode(
            snap._Records(snap.SHARDS, [("zz", snap.Item(b"", 1))]))]),
        "wrong record count": _reframe([header, sessions, *body], records=len(records) + 1),
        "wrong session count": _reframe([_encode(snap._Header(2, 41, snap.SHARDS, 1)),
                                         sessions, *body]),
        "version 3": _reframe([_encode(snap._Header(3, 41, snap.SHARDS, 5)), sessions, *body]),
        "other shard count": _reframe([_encode(snap._Header(2, 41, 1024, 5)), sessions, *body]),
        "negative applied index": _reframe([_encode(snap._Header(2, -1, snap.SHARDS, 5)),
                                            sessions, *body]),
        "bytes after the end": good + snap._LENGTH.pack(1) + b"\xc0",
        "checksum of other bytes": good[:-3] + bytes(b ^ 0xFF for b in good[-3:]),
        "v1 envelope of version 2": msgspec.msgpack.encode(["pnyx.kv", 2, b"", b""]),
        "counter snapshot": counter_machine.CounterMachine().snapshot(),
        "nothing": b"",
        "zeros": bytes(64),
    }


def test_the_forgeries_are_well_formed_but_for_their_one_defect() -> None:
    # So each refusal below is owed to the check it names, not to a broken frame.
    good = _small().machine.snapshot()
    assert _reframe(_payloads(good)[:-1]) == good
    assert len(_payloads(good)) >= 4  # header, sessions, records..., end


@pytest.mark.parametrize("name", sorted(_forgeries(_small().machine.snapshot())))
def test_restore_refuses_a_forged_v2_snapshot_and_keeps_its_state(name: str) -> None:
    d = _small()
    before = d.machine.snapshot()
    bad = _forgeries(before)[name]
    with pytest.raises(SnapshotError):
        d.machine.restore(bad)
    assert d.machine.snapshot() == before
    assert d.req("c1", 1000, Get("k1")) == Ok(2, b"v")


def test_restore_refuses_every_truncation_and_every_flipped_byte() -> None:
    d = _small()
    good = d.machine.snapshot()
    damaged = [good[:cut] for cut in range(len(good))]
    damaged += [good[:i] + bytes([good[i] ^ 0x10]) + good[i + 1:] for i in range(len(good))]
    for data in damaged:
        with pytest.raises(SnapshotError):
            d.machine.restore(data)
    assert d.machine.snapshot() == good


def test_a_version_1_snapshot_is_still_accepted() -> None:
    d = _small()
    state = _state(d.machine)
    body = msgspec.msgpack.encode(snap._SnapshotBody(
        d.machine.applied_index,
        [snap._KeyRecord(k, v, i) for k, (v, i) in sorted(state.items())],
        d.machine._dedup.entries(),
    ))
    v1 = msgspec.msgpack.encode(
        snap._SnapshotEnvelope("pnyx.kv", 1, snap._checksum(body), body))
    restored = _restored(v1, max_clients=8)
    assert _state(restored) == state
    assert restored.snapshot() == d.machine.snapshot()  # written back as version 2


def test_sessions_keep_their_order_through_v2() -> None:
    d = _small()
    d.req("c1", 1000, Get("k1"))  # c1 becomes the most recently used
    entries = d.machine._dedup.entries()
    assert [e.ident for e in entries] == ["c0", "c2", "c3", "once", "c1"]
    restored = _restored(d.machine.snapshot(), max_clients=8)
    assert restored._dedup.entries() == entries
    assert all(isinstance(e, DedupEntry) for e in entries)


def test_a_shard_sorted_in_runs_gives_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    d = _loaded(3000)  # ~12 keys a shard: runs of 5 make several per shard
    whole = d.machine.snapshot()
    monkeypatch.setattr(snap, "_SORT_RUN", 5)
    assert not isinstance(snap._sorted_items(d.machine._shards[0]), list)
    assert d.machine.snapshot() == whole
