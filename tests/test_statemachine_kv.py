"""Specs of the state-machine layer: the interface, SafeApply, and the key-value machine."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pnyx.statemachine import (
    DEFAULT_COMMAND_LIMIT,
    MAX_ID_BYTES,
    MAX_KEY_BYTES,
    AnyRequest,
    Command,
    CommandError,
    Delete,
    Error,
    ErrorCode,
    Get,
    IdempotentRequest,
    KVMachine,
    LogOrderError,
    MalformedResult,
    NotFound,
    Ok,
    PreconditionFailed,
    Put,
    Request,
    Result,
    SafeApply,
    SnapshotError,
    StateMachine,
    decode_result,
    encode_request,
    error_result,
    validate,
)
from pnyx.statemachine.kv import snapshot as kv_module


def _load_counter_example() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "examples" / "counter_machine.py"
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

    def req(self, client: str, seq: int, command: Command) -> Result:
        return self.raw(encode_request(Request(client, seq, command)))

    def idem(self, key: str, command: Command) -> Result:
        return self.raw(encode_request(IdempotentRequest(key, command)))


# --- the interface and the example ------------------------------------------


def test_machines_satisfy_the_state_machine_protocol() -> None:
    assert isinstance(KVMachine(), StateMachine)
    assert isinstance(counter_machine.CounterMachine(), StateMachine)
    assert isinstance(SafeApply(KVMachine()), StateMachine)


def test_counter_example_applies_and_survives_snapshot_restore() -> None:
    counter = counter_machine.CounterMachine()
    results = [counter.apply(c, i) for i, c in enumerate([b"inc", b"add 41", b"get"], 1)]
    assert results == [b"1", b"42", b"42"]
    assert counter.apply(b"add x", 4) == b"error: add needs an integer"
    assert counter.apply(b"launch", 5).startswith(b"error: ")
    copy = counter_machine.CounterMachine()
    copy.restore(counter.snapshot())
    assert copy.apply(b"inc", 6) == counter.apply(b"inc", 6) == b"43"


def test_counter_example_refuses_a_foreign_snapshot_and_keeps_its_value() -> None:
    counter = counter_machine.CounterMachine()
    counter.apply(b"add 5", 1)
    for bad in [b"", b"counter/v1 five", KVMachine().snapshot()]:
        with pytest.raises(SnapshotError):
            counter.restore(bad)
    assert counter.value == 5


# --- SafeApply ---------------------------------------------------------------


class _Faulty:
    """A user machine with bugs, to show SafeApply keeps the replica going."""

    def __init__(self) -> None:
        self.applied = 0

    def apply(self, command: bytes, index: int) -> bytes:
        if command == b"boom":
            raise KeyError(object())  # repr holds a memory address
        if command == b"str":
            return "not bytes"  # type: ignore[return-value]
        if command == b"oom":
            raise MemoryError
        self.applied += 1
        return b"ok"

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        raise RuntimeError("cannot restore")


def test_safe_apply_turns_an_exception_into_a_deterministic_error_result() -> None:
    first, second = SafeApply(_Faulty()), SafeApply(_Faulty())
    result = first.apply(b"boom", 1)
    assert result == second.apply(b"boom", 1)  # same bytes on every replica
    assert result.startswith(b"error: KeyError: <object object at 0x?>")
    assert first.apply(b"str", 2) == b"error: TypeError: apply returned str, not bytes"
    assert first.apply(b"fine", 3) == b"ok"  # the replica goes on


def test_safe_apply_lets_environmental_failures_propagate() -> None:
    # Running out of memory is not a property of the command; answering it
    # with a result could make replicas record different results.
    with pytest.raises(MemoryError):
        SafeApply(_Faulty()).apply(b"oom", 1)


def test_safe_apply_restore_failure_is_a_snapshot_error() -> None:
    with pytest.raises(SnapshotError, match="RuntimeError: cannot restore"):
        SafeApply(_Faulty()).restore(b"x")


def test_error_result_format() -> None:
    assert error_result(ValueError("bad")) == b"error: ValueError: bad"
    assert error_result(ValueError()) == b"error: ValueError"
    assert len(error_result(ValueError("x" * 10_000))) < 1100


# --- key-value semantics -------------------------------------------------------


def test_put_then_get_returns_value_and_mod_index() -> None:
    d = Driver()
    assert d.req("c", 1, Put("k", b"v1")) == Ok(1)
    assert d.req("c", 2, Put("k", b"v2")) == Ok(2)
    assert d.req("c", 3, Get("k")) == Ok(2, b"v2")
    assert d.machine.read("k") == (b"v2", 2)


def test_get_of_a_missing_key_is_not_found() -> None:
    assert Driver().req("c", 1, Get("nope")) == NotFound()


def test_delete_removes_the_key_and_deleting_a_missing_key_is_not_found() -> None:
    d = Driver()
    d.req("c", 1, Put("k", b"v"))
    assert d.req("c", 2, Delete("k")) == Ok(2)
    assert d.machine.read("k") is None
    assert d.req("c", 3, Delete("k")) == NotFound()


def test_cas_by_value_succeeds_only_when_the_value_matches() -> None:
    d = Driver()
    d.req("c", 1, Put("k", b"old"))
    assert d.req("c", 2, Put("k", b"new", prev_value=b"other")) == PreconditionFailed(1, b"old")
    assert d.req("c", 3, Put("k", b"new", prev_value=b"old")) == Ok(3)
    assert d.machine.read("k") == (b"new", 3)


def test_cas_by_index_fails_with_current_index() -> None:
    d = Driver()
    d.req("a", 1, Put("k", b"v1"))
    seen = d.req("a", 2, Get("k"))
    assert seen == Ok(1, b"v1")
    d.req("b", 1, Put("k", b"v2"))  # someone else writes in between, at index 3
    assert d.req("a", 3, Put("k", b"mine", prev_index=1)) == PreconditionFailed(3, b"v2")
    assert d.req("a", 4, Put("k", b"mine", prev_index=3)) == Ok(5)


def test_create_only_put_fails_when_the_key_exists() -> None:
    d = Driver()
    assert d.req("c", 1, Put("lock", b"me", prev_exist=False)) == Ok(1)
    assert d.req("d", 1, Put("lock", b"you", prev_exist=False)) == PreconditionFailed(1, b"me")


def test_a_condition_on_a_missing_key_is_not_found() -> None:
    d = Driver()
    assert d.req("c", 1, Put("k", b"v", prev_exist=True)) == NotFound()
    assert d.req("c", 2, Put("k", b"v", prev_value=b"v")) == NotFound()
    assert d.req("c", 3, Put("k", b"v", prev_index=1)) == NotFound()
    assert d.machine.key_count == 0


def test_conditional_delete_checks_value_and_index() -> None:
    d = Driver()
    d.req("c", 1, Put("k", b"v"))
    assert d.req("c", 2, Delete("k", prev_value=b"w")) == PreconditionFailed(1, b"v")
    assert d.req("c", 3, Delete("k", prev_index=2)) == PreconditionFailed(1, b"v")
    assert d.req("c", 4, Delete("k", prev_value=b"v", prev_index=1, prev_exist=True)) == Ok(4)


# --- exactly-once ------------------------------------------------------------


def test_retried_request_returns_original_result_and_applies_once() -> None:
    d = Driver()
    first = d.req("c", 1, Put("k", b"v1"))
    d.req("other", 1, Put("k", b"v2"))
    again = d.req("c", 1, Put("k", b"v1"))  # the client timed out and retried
    assert again == first == Ok(1)
    assert d.machine.read("k") == (b"v2", 2)  # the retry did not overwrite


def test_retried_get_returns_the_original_read() -> None:
    d = Driver()
    d.req("c", 1, Put("k", b"v1"))
    assert d.req("r", 1, Get("k")) == Ok(1, b"v1")
    d.req("c", 2, Put("k", b"v2"))
    assert d.req("r", 1, Get("k")) == Ok(1, b"v1")


def test_a_seq_below_the_last_is_a_stale_request_error() -> None:
    d = Driver()
    d.req("c", 1, Put("k", b"a"))
    d.req("c", 5, Put("k", b"b"))  # seqs need only increase, not be consecutive
    stale = d.req("c", 1, Put("k", b"a"))
    assert isinstance(stale, Error) and stale.code == ErrorCode.STALE
    assert stale.message.startswith("stale request")
    assert d.machine.read("k") == (b"b", 2)
    assert d.req("c", 5, Put("k", b"b")) == Ok(2)  # the last one is still answered


def test_reusing_a_seq_for_a_different_command_is_refused() -> None:
    d = Driver()
    d.req("c", 1, Put("k", b"a"))
    reused = d.req("c", 1, Put("k", b"DIFFERENT"))
    assert isinstance(reused, Error) and reused.code == ErrorCode.REUSED
    assert d.machine.read("k") == (b"a", 1)


def test_idempotency_key_applies_once() -> None:
    d = Driver()
    assert d.idem("order-17", Put("stock", b"9")) == Ok(1)
    d.idem("order-18", Put("stock", b"8"))
    assert d.idem("order-17", Put("stock", b"9")) == Ok(1)
    assert d.machine.read("stock") == (b"8", 2)
    reused = d.idem("order-17", Put("stock", b"0"))
    assert isinstance(reused, Error) and reused.code == ErrorCode.REUSED
    # A client id and an idempotency key with the same spelling do not collide.
    assert d.req("order-17", 1, Get("stock")) == Ok(2, b"8")


def test_dedup_table_is_bounded_and_snapshotted() -> None:
    d = Driver(KVMachine(max_clients=2))
    d.req("b", 1, Put("k", b"b"))
    d.req("a", 1, Put("k", b"a"))  # recency order b, a: not alphabetical, on purpose
    assert d.machine.dedup_size == 2

    restored = Driver(KVMachine(max_clients=2))
    restored.machine.restore(d.machine.snapshot())
    restored.index = d.index
    for driver in (d, restored):
        driver.req("c", 1, Get("k"))  # a third client: "b" is least recently used
        assert driver.machine.dedup_size == 2
        # "a" is remembered (the table came with the snapshot, in recency
        # order), so its retry is answered, not applied again.
        assert driver.req("a", 1, Put("k", b"a")) == Ok(2)
        assert driver.machine.read("k") == (b"a", 2)
        # "b" was forgotten, so its retry is applied again: the documented
        # cost of a table smaller than the number of active clients.
        assert driver.req("b", 1, Put("k", b"b")) == Ok(5)
    assert d.machine.snapshot() == restored.machine.snapshot()


def test_eviction_forgets_the_least_recently_used_client() -> None:
    d = Driver(KVMachine(max_clients=2))
    d.req("a", 1, Put("x", b"1"))
    d.req("b", 1, Put("y", b"1"))
    d.req("a", 1, Put("x", b"1"))  # a retry counts as a use: now "b" is oldest
    d.req("c", 1, Put("z", b"1"))
    assert d.req("a", 1, Put("x", b"1")) == Ok(1)  # still remembered
    assert d.req("b", 1, Put("y", b"1")) == Ok(6)  # forgotten, so applied again


def test_a_smaller_table_on_restore_keeps_the_most_recent_clients() -> None:
    d = Driver(KVMachine(max_clients=3))
    for client in ["a", "b", "c"]:
        d.req(client, 1, Put(client, b"v"))
    small = Driver(KVMachine(max_clients=1))
    small.machine.restore(d.machine.snapshot())
    small.index = d.index
    assert small.machine.dedup_size == 1
    assert small.req("c", 1, Put("c", b"v")) == Ok(3)


# --- bad input -----------------------------------------------------------------


BAD_BYTES = [
    b"",
    b"\xc1",  # never-used MessagePack opcode
    b"\x93\xa3req",  # truncated
    msgspec.msgpack.encode(["req", "c", 1, ["explode", "k"]]),  # unknown command tag
    msgspec.msgpack.encode(["req", "c", "one", ["get", "k"]]),  # seq is not an int
    msgspec.msgpack.encode(["put", "k", b"v"]),  # a bare command, not wrapped in a request
    msgspec.msgpack.encode({"client_id": "c"}),
]


@pytest.mark.parametrize("data", BAD_BYTES)
def test_malformed_command_becomes_error_result(data: bytes) -> None:
    d, e = Driver(), Driver()
    result = d.raw(data)
    assert isinstance(result, Error) and result.code == ErrorCode.MALFORMED
    assert result == e.raw(data)  # the same on every replica
    assert d.machine.applied_index == 1 and d.machine.key_count == 0 and d.machine.dedup_size == 0


def test_oversized_command_becomes_error_result() -> None:
    d = Driver(KVMachine(command_limit=100))
    big = encode_request(Request("c", 1, Put("k", b"x" * 200)))
    result = d.raw(big)
    assert isinstance(result, Error) and result.code == ErrorCode.TOO_LARGE
    assert d.machine.read("k") is None
    assert KVMachine().command_limit == DEFAULT_COMMAND_LIMIT == 1 << 20


INVALID: list[AnyRequest] = [
    Request("c", 1, Put("", b"v")),
    Request("c", 1, Get("k" * (MAX_KEY_BYTES + 1))),
    Request("c", 1, Put("é" * (MAX_KEY_BYTES // 2 + 1), b"v")),  # bytes, not characters
    Request("", 1, Get("k")),
    Request("c" * (MAX_ID_BYTES + 1), 1, Get("k")),
    Request("c", -1, Get("k")),
    IdempotentRequest("", Get("k")),
    Request("c", 1, Put("k", b"v", prev_index=-1)),
    Request("c", 1, Put("k", b"v", prev_exist=False, prev_value=b"v")),
    Request("c", 1, Delete("k", prev_exist=False)),
]


@pytest.mark.parametrize("request_", INVALID)
def test_invalid_request_is_refused_by_validate_and_by_apply_alike(request_: AnyRequest) -> None:
    data = encode_request(request_)
    with pytest.raises(CommandError) as refused:
        validate(data)
    assert refused.value.code == ErrorCode.INVALID
    result = Driver().raw(data)
    assert result == Error(refused.value.message, ErrorCode.INVALID)


def test_a_key_of_exactly_the_limit_is_accepted() -> None:
    assert Driver().req("c", 1, Put("k" * MAX_KEY_BYTES, b"v")) == Ok(1)


def test_validate_refuses_bad_commands_before_the_log_with_a_typed_error() -> None:
    good = encode_request(Request("c", 1, Put("k", b"v")))
    assert validate(good) == Request("c", 1, Put("k", b"v"))
    with pytest.raises(CommandError, match="malformed command") as malformed:
        validate(b"\xc1")
    assert malformed.value.code == ErrorCode.MALFORMED
    with pytest.raises(CommandError, match="over the limit of 10") as large:
        validate(good, limit=10)
    assert large.value.code == ErrorCode.TOO_LARGE
    assert isinstance(large.value, ValueError)


def test_decode_result_refuses_non_results() -> None:
    with pytest.raises(MalformedResult):
        decode_result(b"\xc1")


# --- indices and local reads ----------------------------------------------------


def test_log_indices_must_increase_but_may_skip() -> None:
    machine = KVMachine()
    machine.apply(encode_request(Request("c", 1, Get("k"))), 3)
    machine.apply(encode_request(Request("c", 2, Put("k", b"v"))), 7)
    assert machine.read("k") == (b"v", 7)
    with pytest.raises(LogOrderError, match="must increase"):
        machine.apply(encode_request(Request("c", 3, Get("k"))), 7)
    # A driver bug is not a command's result: SafeApply does not hide it.
    with pytest.raises(LogOrderError):
        SafeApply(machine).apply(encode_request(Request("c", 3, Get("k"))), 2)


def test_applied_index_counts_every_entry_and_local_reads_do_not_move_it() -> None:
    d = Driver()
    assert d.machine.applied_index == 0
    d.req("c", 1, Put("k", b"v"))
    d.raw(b"junk")
    d.req("c", 1, Put("k", b"v"))  # a duplicate
    assert d.machine.applied_index == 3
    assert d.machine.read("k") == (b"v", 1)
    assert d.machine.read("missing") is None
    assert d.machine.applied_index == 3


# --- snapshots -------------------------------------------------------------------


def _busy_driver() -> Driver:
    d = Driver(KVMachine(max_clients=8))
    d.req("a", 1, Put("x", b"1"))
    d.req("b", 1, Put("y", b"2", prev_exist=False))
    d.idem("once", Put("z", b"3"))
    d.req("a", 2, Delete("x"))
    d.req("b", 2, Put("y", b"4", prev_index=2))
    return d


PROBES: list[tuple[str, int, Command]] = [
    ("a", 2, Delete("x")),  # retry of a's last request
    ("b", 2, Put("y", b"4", prev_index=2)),  # retry of b's last request
    ("a", 1, Put("x", b"1")),  # stale
    ("b", 3, Get("y")),
    ("a", 3, Put("x", b"5", prev_exist=False)),
    ("n", 1, Get("z")),
    ("n", 2, Put("y", b"6", prev_value=b"2")),
]


def test_snapshot_restore_round_trip_gives_same_answers() -> None:
    original = _busy_driver()
    copy = Driver(KVMachine(max_clients=8))
    copy.machine.restore(original.machine.snapshot())
    copy.index = original.index
    assert copy.machine.applied_index == original.machine.applied_index == 5
    assert copy.machine.read("y") == original.machine.read("y") == (b"4", 5)
    assert copy.idem("once", Put("z", b"3")) == original.idem("once", Put("z", b"3")) == Ok(3)
    for client, seq, command in PROBES:
        assert copy.req(client, seq, command) == original.req(client, seq, command)
    assert copy.machine.snapshot() == original.machine.snapshot()


def test_equal_states_give_equal_snapshot_bytes() -> None:
    # Two histories that end in the same state: keys inserted in different
    # orders, same values and mod_indices, same de-duplication entries.
    one, two = Driver(), Driver()
    one.req("c", 1, Put("b", b"old"))
    one.req("c", 2, Put("a", b"1"))
    one.req("c", 3, Put("b", b"2"))
    two.index = 1
    two.req("c", 2, Put("a", b"1"))
    two.req("c", 3, Put("b", b"2"))
    assert one.machine.snapshot() == two.machine.snapshot()


def _forged(body: kv_module._SnapshotBody) -> bytes:
    """A version-1 snapshot (still read) with a valid checksum."""
    data = msgspec.msgpack.encode(body)
    envelope = kv_module._SnapshotEnvelope("pnyx.kv", 1, kv_module._checksum(data), data)
    return msgspec.msgpack.encode(envelope)


def test_restore_rejects_corrupt_bytes_with_a_typed_error_and_keeps_state() -> None:
    d = _busy_driver()
    before = d.machine.snapshot()
    flipped = bytearray(before)
    value = before.index(b"\xc4\x014")  # y's value b"4", a MessagePack bin 8
    flipped[value + 2] ^= 0x01  # b"5": still decodes, the checksum catches it
    wrong_version = msgspec.msgpack.encode(["pnyx.kv", 2, b"", b""])
    duplicate_key = _forged(kv_module._SnapshotBody(
        5, [kv_module._KeyRecord("k", b"v", 1), kv_module._KeyRecord("k", b"w", 2)], []
    ))
    future_index = _forged(kv_module._SnapshotBody(5, [kv_module._KeyRecord("k", b"v", 9)], []))
    corrupt = [
        b"", b"\xc1", before[: len(before) // 2], bytes(flipped), wrong_version,
        duplicate_key, future_index, counter_machine.CounterMachine().snapshot(),
    ]
    for data in corrupt:
        with pytest.raises(SnapshotError):
            d.machine.restore(data)
        assert d.machine.snapshot() == before


# --- properties ---------------------------------------------------------------------

_keys = st.sampled_from(["a", "b", "c"])
_values = st.sampled_from([b"", b"0", b"1", b"22"])
_conditions = st.fixed_dictionaries({}, optional={
    "prev_value": _values,
    "prev_index": st.integers(0, 12),
    "prev_exist": st.booleans(),
})
_commands = st.one_of(
    st.builds(Get, _keys),
    st.builds(lambda k, v, c: Put(k, v, **c), _keys, _values, _conditions),
    st.builds(lambda k, c: Delete(k, **c), _keys, _conditions),
)
_entries = st.one_of(
    st.builds(
        lambda client, seq, command: encode_request(Request(client, seq, command)),
        st.sampled_from(["p", "q", "r"]), st.integers(0, 3), _commands,
    ),
    st.builds(
        lambda key, command: encode_request(IdempotentRequest(key, command)),
        st.just("i"), _commands,
    ),
    st.sampled_from([b"", b"\xc1", b"\x92\xa3get\xa1a"]),
)


@settings(max_examples=300, deadline=None)
@given(
    log=st.lists(st.tuples(st.integers(1, 3), _entries), max_size=40),
    cut=st.integers(0, 40),
)
def test_snapshot_midway_gives_identical_results(
    log: list[tuple[int, bytes]], cut: int
) -> None:
    # A replica that restarts from a snapshot must answer every later command
    # exactly as one that never stopped, de-duplication and eviction included.
    # A table of 2 for 4 identities, so eviction happens often.
    steady = KVMachine(max_clients=2)
    restarted = KVMachine(max_clients=2)
    index = 0
    for position, (gap, entry) in enumerate(log):
        if position == cut:
            fresh = KVMachine(max_clients=2)
            fresh.restore(restarted.snapshot())
            restarted = fresh
        index += gap
        assert steady.apply(entry, index) == restarted.apply(entry, index)
    assert steady.snapshot() == restarted.snapshot()
    assert steady.applied_index == restarted.applied_index == index


def _model(data: dict[str, tuple[bytes, int]], command: Command, index: int) -> Result:
    """The KV rules restated plainly, independent of KVMachine's code."""
    current = data.get(command.key)
    if isinstance(command, Get):
        return Ok(current[1], current[0]) if current else NotFound()
    wants_key = command.prev_exist or command.prev_value is not None
    wants_key = wants_key or command.prev_index is not None or isinstance(command, Delete)
    if current is None:
        if wants_key:
            return NotFound()
    elif (
        command.prev_exist is False
        or command.prev_value not in (None, current[0])
        or command.prev_index not in (None, current[1])
    ):
        return PreconditionFailed(current[1], current[0])
    if isinstance(command, Put):
        data[command.key] = (command.value, index)
    else:
        del data[command.key]
    return Ok(index)


@settings(max_examples=150, deadline=None)
@given(commands=st.lists(_commands, max_size=30))
def test_kv_rules_match_a_plain_dict_model(commands: list[Command]) -> None:
    d = Driver()
    model: dict[str, tuple[bytes, int]] = {}
    for seq, command in enumerate(commands, 1):
        result = d.req("c", seq, command)
        if isinstance(result, Error):  # refused by the rules: contradictory conditions
            assert result.code == ErrorCode.INVALID
            continue
        assert result == _model(model, command, d.index)
    assert {k: d.machine.read(k) for k in model} == model
    assert d.machine.key_count == len(model)


def test_a_query_the_node_validated_is_answered_as_one_it_did_not() -> None:
    """`validate_query` keeps what it decoded for the machine's `query` (one decode per
    read): the answer is the same as without it, the same bytes asked again are decoded
    again (the memo is used once), and the memo stays bounded."""
    from pnyx.statemachine.kv import checks, encode_query, validate_query

    m = KVMachine()
    m.apply(encode_request(Request("c", 1, Put("k", b"v"))), 1)
    query = encode_query("k")
    unvalidated = m.query(query)
    validate_query(query, 1000)
    assert query in checks._checked
    assert decode_result(unvalidated) == Ok(1, b"v")
    assert m.query(query) == unvalidated
    assert query not in checks._checked
    assert m.query(query) == unvalidated
    for i in range(checks._CHECKED_MAX + 10):
        validate_query(encode_query(f"key-{i}"))
    assert len(checks._checked) <= checks._CHECKED_MAX

