"""The sequential specification of one key of the store.

This module owns what a single, correct, one-at-a-time key-value store does,
in two forms that must agree:

- `apply(call, store)`: run a call against a plain dict and return the result a
  client would be told. Generators (tests, benchmarks, the simulator's
  workloads) use it to produce histories that are correct by construction.
- `encode` / `step`: the same semantics on small integers, used in the inner
  loop of the linearizability search. The state of one key is the interned id
  of its value, `ABSENT` (0) when it has none. `step(code, state)` returns the
  state after the op, or `REJECT` when the op's recorded result is impossible
  in `state`.

Semantics, per key (value-level; there is no modification index):

- `put(v)`: the key holds `v`; result None.
- `get()`: result is the value held, or None when absent.
- `delete()`: the key becomes absent; result None (not checked) or a bool,
  whether the key existed.
- `cas(expected, new)`: if the key holds `expected` (None: is absent) it
  becomes `new` (None: absent) and the result is True; otherwise nothing
  changes and the result is False.

An op whose outcome is unknown has no recorded result, so its step never
rejects: a `cas` of unknown outcome swaps exactly when the state matches. "It
never took effect" needs no special case: the search may leave it unapplied.
"""

from __future__ import annotations

from typing import NamedTuple

from .history import Call, Cas, Delete, Get, Op, Put, Status, Value

ABSENT = 0
REJECT = -1

PUT, GET, DELETE, CAS = range(4)

# Result codes for delete and cas.
UNCHECKED = -1  # delete with no reported result; cas of unknown outcome
FALSE = 0
TRUE = 1


class Code(NamedTuple):
    """One op in the search's integer form.

    PUT: a = value id.  GET: r = value id observed.  DELETE: r = result code.
    CAS: a = expected id, b = new id, r = result code.
    """

    kind: int
    a: int = 0
    b: int = 0
    r: int = 0


class Interner:
    """Maps values to small ints; None is always `ABSENT`.

    Values are keyed with their type so that 1, 1.0 and True stay distinct.
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[type, Value], int] = {(type(None), None): ABSENT}
        self.values: list[Value] = [None]

    def id(self, value: Value) -> int:
        k = (type(value), value)
        got = self._ids.get(k)
        if got is None:
            got = self._ids[k] = len(self.values)
            self.values.append(value)
        return got


def encode(op: Op, values: Interner) -> Code:
    """The integer form of `op` (which must not be a failed op or an unknown get)."""
    call = op.call
    known = op.status is Status.OK
    if isinstance(call, Put):
        return Code(PUT, values.id(call.value))
    if isinstance(call, Get):
        if not known:
            raise ValueError("a get of unknown outcome constrains nothing; drop it")
        return Code(GET, r=values.id(op.result))
    if isinstance(call, Delete):
        if not known or op.result is None:
            return Code(DELETE, r=UNCHECKED)
        return Code(DELETE, r=TRUE if op.result else FALSE)
    if isinstance(call, Cas):
        r = UNCHECKED if not known else (TRUE if op.result else FALSE)
        return Code(CAS, values.id(call.expected), values.id(call.new), r)
    raise TypeError(f"not a call: {call!r}")


def step(code: Code, state: int) -> int:
    """The state after `code` runs in `state`, or `REJECT` if its result is impossible."""
    kind, a, b, r = code
    if kind == GET:
        return state if state == r else REJECT
    if kind == PUT:
        return a
    if kind == CAS:
        if state == a:
            return REJECT if r == FALSE else b
        return REJECT if r == TRUE else state
    # DELETE
    if r == UNCHECKED or r == (state != ABSENT):
        return ABSENT
    return REJECT


def is_blind_write(code: Code) -> bool:
    """Whether the op sets the state without looking at it (and so cannot reject)."""
    return code.kind == PUT or (code.kind == DELETE and code.r == UNCHECKED)


def is_read_only(code: Code) -> bool:
    """Whether the op leaves the state unchanged in every state it fits."""
    kind, a, b, r = code
    return (
        kind == GET or (kind == CAS and (r == FALSE or a == b)) or (kind == DELETE and r == FALSE)
    )


def apply(call: Call, store: dict[object, Value]) -> Value:
    """Run `call` against `store` (a dict; absent keys are missing) and return its result.

    Delete reports whether the key existed.
    """
    key = call.key
    if isinstance(call, Put):
        store[key] = call.value
        return None
    if isinstance(call, Get):
        return store.get(key)
    if isinstance(call, Delete):
        return store.pop(key, None) is not None
    if isinstance(call, Cas):
        current = store.get(key)
        if type(current) is type(call.expected) and current == call.expected:
            if call.new is None:
                store.pop(key, None)
            else:
                store[key] = call.new
            return True
        return False
    raise TypeError(f"not a call: {call!r}")
