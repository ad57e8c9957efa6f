"""Key-value histories: what clients asked, when, and what they were told.

This module owns the vocabulary of a history and nothing about checking it:

- the four calls a client can make on one key: `Put`, `Get`, `Delete`, `Cas`;
- `Op`, one call with its client, invocation time and outcome. The outcome
  (`Status`) is `ok` (completed, with a result), `fail` (definitely did not
  take effect, e.g. rejected before it was proposed) or `unknown` (timed out or
  the client crashed: it may take effect at any time after its invocation, or
  never);
- `History`, an ordered collection of ops with JSON (de)serialization, so the
  simulator and the node tools can dump histories and the checker can load
  them;
- `Recorder`, which tools call as operations happen:
  `invoke(client, call) -> handle`, then `complete(handle, result)`,
  `fail(handle)` or `timeout(handle)`.

Times are any non-decreasing numbers. Intervals are closed: an op that
completes at the very instant another is invoked counts as concurrent with it.
A `Recorder` with no clock stamps events with a logical counter (0, 1, 2, ...),
which is the exact real-time order in which it was told about them.

Values must be hashable; `None` means "absent" and cannot be written with
`Put` (use `Delete`). For JSON, values should be JSON scalars or lists of them
(lists come back as tuples, so they stay hashable).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeAlias

Key: TypeAlias = Hashable
Value: TypeAlias = Hashable
Client: TypeAlias = Hashable

FORMAT = "pnyx-history/1"


def _fmt(value: object) -> str:
    return repr(value)


@dataclass(frozen=True, slots=True)
class Put:
    """Set `key` to `value` (never None). The result is an acknowledgement only."""

    key: Key
    value: Value

    def __post_init__(self) -> None:
        if self.value is None:
            raise ValueError("Put value must not be None (None means absent; use Delete)")

    def __str__(self) -> str:
        return f"put({_fmt(self.key)}, {_fmt(self.value)})"


@dataclass(frozen=True, slots=True)
class Get:
    """Read `key`. The result is its value, or None when absent."""

    key: Key

    def __str__(self) -> str:
        return f"get({_fmt(self.key)})"


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove `key`. The result is None (unchecked) or a bool: whether it existed."""

    key: Key

    def __str__(self) -> str:
        return f"delete({_fmt(self.key)})"


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set by value: if `key` holds `expected`, set it to `new`.

    `expected=None` means "only if absent" (create-only); `new=None` deletes.
    The result is a bool: whether the swap happened.
    """

    key: Key
    expected: Value
    new: Value

    def __str__(self) -> str:
        return f"cas({_fmt(self.key)}, {_fmt(self.expected)}, {_fmt(self.new)})"


Call: TypeAlias = Put | Get | Delete | Cas

_CALL_NAMES: dict[type, str] = {Put: "put", Get: "get", Delete: "delete", Cas: "cas"}


class Status(StrEnum):
    """How an operation ended."""

    OK = "ok"  # completed; `result` is what the client was told
    FAIL = "fail"  # definitely did not take effect; the checker ignores it
    UNKNOWN = "unknown"  # timed out / client crashed: took effect later, or never


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a history.

    `complete` is None exactly when the status is `unknown` (it may also be
    None for `fail`). `result` is meaningful only for `ok` ops: a value (or
    None) for `Get`, a bool for `Cas`, None or a bool for `Delete`, None for
    `Put`.
    """

    id: int
    client: Client
    call: Call
    invoke: float
    complete: float | None = None
    result: Value = None
    status: Status = Status.OK

    def __post_init__(self) -> None:
        if not isinstance(self.call, Put | Get | Delete | Cas):
            raise TypeError(f"op {self.id}: not a call: {self.call!r}")
        status = Status(self.status)
        object.__setattr__(self, "status", status)
        if status is Status.OK:
            if self.complete is None:
                raise ValueError(f"op {self.id}: a completed op needs a completion time")
            call = self.call
            if isinstance(call, Cas) and not isinstance(self.result, bool):
                raise ValueError(f"op {self.id}: cas result must be a bool, got {self.result!r}")
            if isinstance(call, Delete) and not (
                self.result is None or isinstance(self.result, bool)
            ):
                raise ValueError(f"op {self.id}: delete result must be None or a bool")
            if isinstance(call, Put) and self.result is not None:
                raise ValueError(f"op {self.id}: put result must be None")
        elif status is Status.UNKNOWN and (self.complete is not None or self.result is not None):
            raise ValueError(f"op {self.id}: an unknown op has no completion or result")
        if self.complete is not None and self.complete < self.invoke:
            raise ValueError(
                f"op {self.id}: completes at {self.complete} before its invocation {self.invoke}"
            )

    @property
    def key(self) -> Key:
        return self.call.key

    def __str__(self) -> str:
        end = "…)" if self.complete is None else f"{self.complete:g}]"
        if self.status is Status.UNKNOWN:
            outcome = " -> ? (unknown)"
        elif self.status is Status.FAIL:
            outcome = " -> failed"
        elif isinstance(self.call, Get | Cas) or self.result is not None:
            outcome = f" -> {_fmt(self.result)}"
        else:
            outcome = ""
        return f"#{self.id} {self.client}: {self.call}{outcome}  [{self.invoke:g}, {end}"

    # -- JSON -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        call = self.call
        d: dict[str, Any] = {
            "id": self.id,
            "client": self.client,
            "f": _CALL_NAMES[type(call)],
            "key": call.key,
        }
        if isinstance(call, Put):
            d["value"] = call.value
        elif isinstance(call, Cas):
            d["expected"] = call.expected
            d["new"] = call.new
        d["invoke"] = self.invoke
        d["complete"] = self.complete
        d["status"] = str(self.status)
        d["result"] = self.result
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Op:
        f = d["f"]
        key = _hashable(d["key"])
        call: Call
        if f == "put":
            call = Put(key, _hashable(d["value"]))
        elif f == "get":
            call = Get(key)
        elif f == "delete":
            call = Delete(key)
        elif f == "cas":
            call = Cas(key, _hashable(d["expected"]), _hashable(d["new"]))
        else:
            raise ValueError(f"unknown call {f!r}")
        return cls(
            id=int(d["id"]),
            client=_hashable(d["client"]),
            call=call,
            invoke=d["invoke"],
            complete=d.get("complete"),
            result=_hashable(d.get("result")),
            status=Status(d.get("status", "ok")),
        )


def _hashable(v: Any) -> Any:
    """JSON lists come back as tuples so that values stay hashable."""
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


class History:
    """An ordered collection of ops with unique ids.

    Build one by hand with `add`, receive one from `Recorder.history()`, or
    load one with `from_json` / `load`.
    """

    def __init__(self, ops: Iterable[Op] = ()) -> None:
        self._ops: list[Op] = []
        self._ids: set[int] = set()
        self._next_id = 0
        for op in ops:
            self.append(op)

    def append(self, op: Op) -> Op:
        if op.id in self._ids:
            raise ValueError(f"duplicate op id {op.id}")
        self._ids.add(op.id)
        self._next_id = max(self._next_id, op.id + 1)
        self._ops.append(op)
        return op

    def add(
        self,
        client: Client,
        call: Call,
        invoke: float,
        complete: float | None = None,
        result: Value = None,
        *,
        status: Status | str | None = None,
    ) -> Op:
        """Append an op; with no `complete` (and no status) it is `unknown`."""
        if status is None:
            status = Status.UNKNOWN if complete is None else Status.OK
        op = Op(self._next_id, client, call, invoke, complete, result, Status(status))
        return self.append(op)

    @property
    def ops(self) -> tuple[Op, ...]:
        return tuple(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self._ops)

    def __getitem__(self, index: int) -> Op:
        return self._ops[index]

    def by_key(self) -> dict[Key, list[Op]]:
        """The ops of each key, in history order."""
        out: dict[Key, list[Op]] = {}
        for op in self._ops:
            out.setdefault(op.key, []).append(op)
        return out

    def __repr__(self) -> str:
        return f"History({len(self._ops)} ops)"

    # -- JSON -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "ops": [op.to_dict() for op in self._ops]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"unsupported history format {d.get('format')!r}")
        return cls(Op.from_dict(o) for o in d["ops"])

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> History:
        return cls.from_dict(json.loads(text))

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> History:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


class Recorder:
    """Records a history as it happens; safe to call from several threads.

    `clock` returns the current time; by default a logical counter is used,
    which orders events exactly as the recorder was told about them (the right
    choice inside a simulator, where many events share one virtual instant).
    Ops still open when `history()` is called appear as `unknown`.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        counter = itertools.count()
        self._clock: Callable[[], float] = clock if clock is not None else lambda: next(counter)
        self._lock = threading.Lock()
        self._next_id = 0
        self._open: dict[int, tuple[Client, Call, float]] = {}
        self._closed: dict[int, Op] = {}

    def invoke(self, client: Client, call: Call) -> int:
        """Record that `client` invoked `call` now; returns the handle for its outcome."""
        if not isinstance(call, Put | Get | Delete | Cas):
            raise TypeError(f"not a call: {call!r}")
        with self._lock:
            handle = self._next_id
            self._next_id += 1
            self._open[handle] = (client, call, self._clock())
            return handle

    def _close(self, handle: int, status: Status, result: Value, stamp: bool) -> None:
        with self._lock:
            try:
                client, call, invoke = self._open[handle]
            except KeyError:
                raise ValueError(f"handle {handle} is not open") from None
            complete = self._clock() if stamp else None
            # Validates the result before the op is closed.
            self._closed[handle] = Op(handle, client, call, invoke, complete, result, status)
            del self._open[handle]

    def complete(self, handle: int, result: Value = None) -> None:
        """The op completed now and the client was told `result`."""
        self._close(handle, Status.OK, result, stamp=True)

    def fail(self, handle: int) -> None:
        """The op definitely did not take effect (and never will)."""
        self._close(handle, Status.FAIL, None, stamp=True)

    def timeout(self, handle: int) -> None:
        """The client gave up: the op may take effect at any later time, or never."""
        self._close(handle, Status.UNKNOWN, None, stamp=False)

    def history(self) -> History:
        """A snapshot of everything recorded so far, in invocation order."""
        with self._lock:
            ops = dict(self._closed)
            for handle, (client, call, invoke) in self._open.items():
                ops[handle] = Op(handle, client, call, invoke, None, None, Status.UNKNOWN)
        return History(ops[h] for h in sorted(ops))
