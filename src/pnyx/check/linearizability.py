"""Deciding whether a key-value history is linearizable.

This module owns the search and its verdict; the sequential semantics it
checks against live in `pnyx.check.model`, the history vocabulary in
`pnyx.check.history`.

The method:

1. **P-compositionality.** Linearizability is local (Herlihy & Wing): a history
   is linearizable iff the sub-history of every key is. `check` partitions the
   history by key and searches each key on its own, smallest first.
2. **Wing–Gong search with Lowe's just-in-time linearization** (as in
   Porcupine and Knossos). The call and return events of one key are put in a
   doubly linked list in time order. Scanning from the head, each call met
   before the first pending return is a candidate to take effect next; it is
   tried against the model, and on success it is lifted out of the list and
   the scan restarts. Meeting a return event means that op should already have
   taken effect: the search backtracks.
3. **Memoization.** A configuration is (set of ops already linearized, model
   state). Each one is explored at most once. The set of completed ops is
   stored compactly as (lowest op not yet linearized, bitmask above it), so a
   long history costs memory in proportion to its concurrency, not its length.
4. **Unknown ops** (timed out, client crashed) have no return event: they may
   take effect at any point after their invocation, and "never" is the same
   as "after everything else", so the search is done once every completed op
   is linearized. They are kept in a separate mask and a separate list, tried
   only after the completed candidates, and configurations are pruned by
   dominance: having applied fewer unknown ops (same completed set, same
   state) can only leave more options. A blind write (put, unchecked delete)
   is never tried straight after an unknown op: that op's effect would be
   invisible, and the same write from the configuration without it dominates.
5. **Reads first.** A completed op that cannot change the state (a get, a
   cas or delete that reported failure, a cas to the same value) and fits the
   current state can be linearized right away: if any order works, one that
   starts with it does. It is the only choice tried at that configuration.
6. **A budget.** The search stops with `unknown` when the time budget or the
   configuration budget is spent; it never hangs.

Cost. Finding a linearization is usually cheap: a handful of configurations
per op. Proving there is none means exhausting every configuration reachable
before the failing op, which grows quickly with the number of ops in flight
on one key at once (on a 2-core machine: 10,000 ops on one key from 16
concurrent clients check `ok` in ~0.4 s, but a stale read injected into them
runs out of the default budget). Spreading load over keys keeps per-key
concurrency, and so the cost, low.

The search was checked against a brute-force Wing–Gong enumeration on tens
of thousands of random small histories (see the tests).

When a key is not linearizable, the report names the op R whose completion no
order of the ops gets past: the ops that completed before R completed can be
put in an order that respects real time and the model, together with any
subset of the ops still pending at that moment (one such order is shown); no
such order also contains R. It is the earliest completion at which the search
fails. (Pending ops keep their recorded results here: a cas that is reported
to fail later cannot be assumed to have succeeded.)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .history import Get, History, Key, Op, Status, Value
from .model import ABSENT, REJECT, Interner, encode, is_blind_write, is_read_only, step

_CHECK_EVERY = 1024  # loop iterations between clock reads
_SHOW_LINEARIZED = 10  # how many ops of the witness order the explanation prints
_SHOW_CONCURRENT = 20


class Verdict(StrEnum):
    OK = "ok"  # linearizable
    VIOLATION = "violation"  # proven not linearizable
    UNKNOWN = "unknown"  # the budget ran out before a verdict


@dataclass(frozen=True)
class Result:
    """The outcome of `check`.

    For a violation: `key` is the offending key; `op` is the op whose completion
    no order reaches; `linearized` is one order of the key's earlier ops that
    does work; `possible_values` are the values the key can hold once every op
    that completed before `op` has taken effect (and `op` has not); `concurrent`
    are the ops whose intervals overlap `op`'s. For `unknown`, `key` is the key
    whose search ran out of budget. `per_key` has the verdict of every key
    checked; checking stops at the first violation.
    """

    verdict: Verdict
    explanation: str
    key: Key | None = None
    op: Op | None = None
    linearized: tuple[Op, ...] = ()
    possible_values: tuple[Value, ...] = ()
    concurrent: tuple[Op, ...] = ()
    per_key: Mapping[Key, Verdict] = field(default_factory=dict)
    states: int = 0  # configurations explored, all keys
    elapsed: float = 0.0  # seconds

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def __str__(self) -> str:
        return self.explanation


@dataclass
class _Outcome:
    verdict: Verdict
    states: int
    reason: str = ""
    blocked: Op | None = None
    linearized: tuple[Op, ...] = ()
    possible_values: tuple[Value, ...] = ()


def _relevant(ops: Iterable[Op]) -> list[Op]:
    """Drop ops that cannot constrain anything: failed ops and gets of unknown outcome."""
    out = [
        op
        for op in ops
        if op.status is Status.OK or (op.status is Status.UNKNOWN and not isinstance(op.call, Get))
    ]
    out.sort(key=lambda op: (op.invoke, op.id))
    return out


def _search(ops: list[Op], deadline: float, max_states: int) -> _Outcome:
    """Search one key's ops (already filtered by `_relevant`) for a linearization."""
    n = len(ops)
    values = Interner()
    codes = [encode(op, values) for op in ops]
    unknown = [op.status is Status.UNKNOWN for op in ops]
    blind = [is_blind_write(code) for code in codes]
    read_only = [is_read_only(code) and not u for code, u in zip(codes, unknown, strict=True)]

    # Completed ops get bits 0.. in invocation order; unknown ops their own mask.
    bit = [0] * n
    completed = unknown_count = 0
    for i in range(n):
        if unknown[i]:
            bit[i] = 1 << unknown_count
            unknown_count += 1
        else:
            bit[i] = 1 << completed
            completed += 1
    if completed == 0:
        return _Outcome(Verdict.OK, 0)

    # Events: call node 2i, return node 2i+1 (unknown ops have none), sorted by
    # time; at equal times calls sort before returns (intervals are closed).
    # `pos` is a node's place in that order. Completed ops live in the main
    # list; the calls of unknown ops in a second list, so that at every
    # configuration the completed candidates are tried first and the unknown
    # ones last. That order is what makes the dominance pruning bite: the
    # configuration with fewer unknown ops applied is explored first.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        if not unknown[i]:
            assert op.complete is not None
            events.append((op.complete, 1, i))
    events.sort()
    head, uhead = 2 * n, 2 * n + 1
    nxt = [-1] * (2 * n + 2)
    prv = [-1] * (2 * n + 2)
    pos = [0] * (2 * n)
    last, ulast = head, uhead
    for index, (_, kind, i) in enumerate(events):
        node = 2 * i + kind
        pos[node] = index
        if unknown[i]:
            nxt[ulast] = node
            prv[node] = ulast
            ulast = node
        else:
            nxt[last] = node
            prv[node] = last
            last = node

    cbits = 0  # completed ops linearized
    ubits = 0  # unknown ops linearized
    state = ABSENT
    # The stack, linked: (op index, state before it, bound when pushed,
    # forced, rest).
    stack: tuple | None = None
    remaining = completed
    seen: dict[int, int | list[int]] = {}
    state_bits = len(values.values).bit_length()
    low_bits = n.bit_length()
    states = 0
    iterations = 0
    furthest = -1  # position of the furthest return event the search got stuck at
    blocked = -1
    stuck_states: set[int] = set()
    witness: tuple | None = None
    monotonic = time.monotonic

    in_main = True  # scanning the main list, else the unknown ops
    bound = -1  # in the unknown list: the first pending return node
    entry = -1
    arrived = True  # at a configuration not yet scanned
    dead = False  # the current configuration cannot be extended
    record = False  # ... and it got stuck at `bound` (for the explanation)
    while True:
        iterations += 1
        if iterations % _CHECK_EVERY == 0 and monotonic() > deadline:
            return _Outcome(Verdict.UNKNOWN, states, "time budget exhausted")

        if dead:
            dead = False
            if record:
                where = pos[bound]
                if where > furthest:
                    furthest, blocked, witness = where, bound >> 1, stack
                    stuck_states = {state}
                elif where == furthest:
                    stuck_states.add(state)
            # Backtrack to the last configuration with choices left (a forced
            # one had none).
            forced = True
            while forced and stack is not None:
                i, state, bound, forced, stack = stack
                c = 2 * i
                if unknown[i]:
                    ubits ^= bit[i]
                    in_main = False
                else:
                    cbits ^= bit[i]
                    remaining += 1
                    in_main = True
                    # Put the return node back (reverse order of lifting).
                    r = c + 1
                    p, q = prv[r], nxt[r]
                    nxt[p] = r
                    if q != -1:
                        prv[q] = r
                p, q = prv[c], nxt[c]
                nxt[p] = c
                if q != -1:
                    prv[q] = c
            if forced:
                break  # the root failed: not linearizable
            entry = nxt[c]
            continue

        forced = False
        if arrived:
            # A completed op that cannot change the state (a read, a failed
            # cas, ...) and fits now can go first: if any order works from
            # here, one that starts with it does. So it is the only choice
            # tried here, and if it fails this configuration fails.
            arrived = False
            in_main, entry = True, nxt[head]
            e = entry
            while not e & 1:
                i = e >> 1
                if read_only[i] and step(codes[i], state) != REJECT:
                    forced = True
                    break
                e = nxt[e]
        if not forced:
            if in_main:
                if entry & 1:
                    # A return: this op should have taken effect by now. Before
                    # backtracking, try the unknown ops invoked so far.
                    in_main, bound, entry = False, entry, nxt[uhead]
                    continue
                i = entry >> 1
            elif entry != -1 and pos[entry] < pos[bound]:
                i = entry >> 1
            else:
                # Nothing can take effect before `bound` returns.
                dead = record = True
                continue
            entry = nxt[entry]
            # A blind write straight after an unknown op is not tried: it
            # would hide that op's effect from everyone, and the configuration
            # without that op (which dominates) gets the same write from the
            # ancestor before it.
            if blind[i] and stack is not None and unknown[stack[0]]:
                continue

        # Try to let op i take effect now.
        new = step(codes[i], state)
        if new == REJECT:
            continue
        if unknown[i]:
            nc, nu = cbits, ubits | bit[i]
        else:
            nc, nu = cbits | bit[i], ubits
        # The memo key packs (lowest completed op not linearized, the mask
        # above it, state) into one int; the value is the unknown-op mask it
        # was reached with (an int), or a list of them.
        low = ((nc + 1) & ~nc).bit_length() - 1
        memo = ((((nc >> low) << state_bits) | new) << low_bits) | low
        masks = seen.get(memo)
        if masks is None:
            seen[memo] = nu
        elif type(masks) is int:
            if not masks & ~nu:
                # Explored before with a subset of these unknown ops: it failed.
                if forced:
                    dead, record = True, False
                continue
            seen[memo] = nu if not nu & ~masks else [masks, nu]
        elif any(not u & ~nu for u in masks):
            if forced:
                dead, record = True, False
            continue
        else:
            masks[:] = [u for u in masks if nu & ~u]
            masks.append(nu)
        states += 1
        if states > max_states:
            return _Outcome(Verdict.UNKNOWN, states, "state budget exhausted")
        stack = (i, state, bound, forced, stack)
        cbits, ubits, state = nc, nu, new
        # Lift op i out of its list.
        c = 2 * i
        p, q = prv[c], nxt[c]
        nxt[p] = q
        if q != -1:
            prv[q] = p
        if not unknown[i]:
            r = c + 1
            p, q = prv[r], nxt[r]
            nxt[p] = q
            if q != -1:
                prv[q] = p
            remaining -= 1
            if remaining == 0:
                return _Outcome(Verdict.OK, states)
        arrived = True

    order: list[Op] = []
    while witness is not None:
        i, _, _, _, witness = witness
        order.append(ops[i])
    order.reverse()
    possible = tuple(values.values[s] for s in sorted(stuck_states))
    return _Outcome(
        Verdict.VIOLATION,
        states,
        blocked=ops[blocked],
        linearized=tuple(order),
        possible_values=possible,
    )


def _overlapping(op: Op, ops: list[Op]) -> tuple[Op, ...]:
    end = op.complete if op.complete is not None else float("inf")
    out = []
    for other in ops:
        if other is op:
            continue
        other_end = other.complete if other.complete is not None else float("inf")
        if other.invoke <= end and op.invoke <= other_end:
            out.append(other)
    return tuple(out)


def _explain_violation(key: Key, outcome: _Outcome, concurrent: tuple[Op, ...]) -> str:
    op = outcome.blocked
    assert op is not None
    lines = [
        f"not linearizable: key {key!r}",
        f"no order of the ops on {key!r} reaches the completion of",
        f"    {op}",
        "the ops that completed before it (with any of the ops still pending then) can",
        "be put in an order that respects real time and every recorded result (one",
        "such order is below), but no such order can also include it.",
        "",
    ]
    shown = ", ".join("absent" if v is None else repr(v) for v in outcome.possible_values)
    lines.append(
        f"values {key!r} can hold just before it, once everything that completed "
        f"earlier has taken effect: {shown}"
    )
    lin = outcome.linearized
    if lin:
        skipped = len(lin) - _SHOW_LINEARIZED
        head = f"one order of the {len(lin)} ops before that point"
        lines.append(head + (f" (last {_SHOW_LINEARIZED} shown):" if skipped > 0 else ":"))
        if skipped > 0:
            lines.append(f"    ... {skipped} earlier ops")
        lines.extend(f"    {o}" for o in lin[-_SHOW_LINEARIZED:])
    else:
        lines.append("it fails before any op can be linearized (the key starts absent).")
    if concurrent:
        lines.append(f"ops concurrent with it ({len(concurrent)}):")
        lines.extend(f"    {o}" for o in concurrent[:_SHOW_CONCURRENT])
        if len(concurrent) > _SHOW_CONCURRENT:
            lines.append(f"    ... {len(concurrent) - _SHOW_CONCURRENT} more")
    return "\n".join(lines)


def check(
    history: History | Iterable[Op],
    *,
    budget_seconds: float = 10.0,
    max_states: int = 2_000_000,
) -> Result:
    """Check that `history` is linearizable with respect to a key-value store.

    Returns `ok`, `violation` (with the key and an explanation), or `unknown`
    once `budget_seconds` of wall time (for the whole history) or
    `max_states` configurations (per key) are spent. Stops at the first key
    found in violation.
    """
    started = time.monotonic()
    deadline = started + budget_seconds
    by_key: dict[Key, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    keys = sorted(by_key, key=lambda k: (len(by_key[k]), repr(k)))
    per_key: dict[Key, Verdict] = {}
    states = 0
    gave_up: tuple[Key, str] | None = None

    for key in keys:
        if time.monotonic() > deadline:
            if gave_up is None:
                gave_up = (key, "time budget exhausted")
            break
        ops = _relevant(by_key[key])
        outcome = _search(ops, deadline, max_states)
        states += outcome.states
        per_key[key] = outcome.verdict
        if outcome.verdict is Verdict.VIOLATION:
            assert outcome.blocked is not None
            concurrent = _overlapping(outcome.blocked, ops)
            return Result(
                Verdict.VIOLATION,
                _explain_violation(key, outcome, concurrent),
                key=key,
                op=outcome.blocked,
                linearized=outcome.linearized,
                possible_values=outcome.possible_values,
                concurrent=concurrent,
                per_key=per_key,
                states=states,
                elapsed=time.monotonic() - started,
            )
        if outcome.verdict is Verdict.UNKNOWN and gave_up is None:
            gave_up = (key, outcome.reason)

    elapsed = time.monotonic() - started
    if gave_up is not None:
        key, reason = gave_up
        done = sum(v is Verdict.OK for v in per_key.values())
        return Result(
            Verdict.UNKNOWN,
            f"unknown: {reason} on key {key!r} after {elapsed:.3f} s and {states} states "
            f"({done} of {len(keys)} keys linearizable, none in violation)",
            key=key,
            per_key=per_key,
            states=states,
            elapsed=elapsed,
        )
    n_ops = sum(len(v) for v in by_key.values())
    return Result(
        Verdict.OK,
        f"linearizable: {n_ops} ops on {len(keys)} keys, {states} states, {elapsed:.3f} s",
        per_key=per_key,
        states=states,
        elapsed=elapsed,
    )
