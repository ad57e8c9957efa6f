"""Linearizability checker benchmark: time to check a large concurrent history.

Run by hand (not a test):  .venv/bin/python bench/bench_checker.py [--ops 10000]

A workload of concurrent clients runs against a simulated linearizable store:
each op gets an invocation time, a linearization point inside its interval and
a completion time; the ops are applied to a dict in linearization-point order,
which gives every client its result. So the history is linearizable by
construction, with overlapping intervals. A few ops time out: the client
gives up (and comes back as a new client), and the op either took effect at
its linearization point or never did.

Reported:
1. checking the valid history (must be `ok`);
2. the same history with one read made stale (it returns a value the key held
   before a write that completed before the read began), which must be a
   `violation`, and its explanation;
3. the same with a read of a value never written;
4. the whole workload on a single key (no partitioning to help).

Harder settings: --keys 1 --clients 16 (much more concurrency per key),
--ops 100000, --unknown 0.01, --values 1000.
"""

from __future__ import annotations

import argparse
import heapq
import random
import time

from pnyx.check import Cas, Delete, Get, History, Op, Put, Status, Verdict, apply, check
from pnyx.check.history import Call


def workload(
    ops: int, keys: int, clients: int, values: int, unknown_rate: float, seed: int
) -> History:
    rng = random.Random(seed)
    key_names = [f"k{i}" for i in range(keys)]

    def call() -> Call:
        key = rng.choice(key_names)
        roll = rng.random()
        if roll < 0.5:
            return Get(key)
        if roll < 0.75:
            return Put(key, rng.randrange(values))
        if roll < 0.85:
            return Delete(key)
        expected = None if rng.random() < 0.2 else rng.randrange(values)
        return Cas(key, expected, rng.randrange(values))

    # (invoke, linearization point or None if it never takes effect,
    #  completion or None if unknown, client, call)
    planned: list[tuple[float, float | None, float | None, str, Call]] = []
    ready = [(rng.random(), c, f"c{c}") for c in range(clients)]
    heapq.heapify(ready)
    restarts = 0
    while len(planned) < ops:
        now, slot, client = heapq.heappop(ready)
        c = call()
        point = now + rng.expovariate(1.0)
        done = point + rng.expovariate(1.0)
        if rng.random() < unknown_rate:
            took_effect = rng.random() < 0.5
            planned.append((now, point if took_effect else None, None, client, c))
            restarts += 1
            heapq.heappush(ready, (now + 10.0, slot, f"c{slot}.{restarts}"))
        else:
            planned.append((now, point, done, client, c))
            heapq.heappush(ready, (done + rng.expovariate(5.0), slot, client))

    store: dict[object, object] = {}
    results: dict[int, object] = {}
    order = sorted((point, i) for i, (_, point, _, _, _) in enumerate(planned) if point is not None)
    for _, i in order:
        results[i] = apply(planned[i][4], store)

    h = History()
    for i, (invoke, _, complete, client, c) in enumerate(planned):
        if complete is None:
            h.add(client, c, invoke)
        else:
            result = None if isinstance(c, Put) else results[i]
            h.add(client, c, invoke, complete, result)
    return h


def with_result(h: History, target: Op, result: object) -> History:
    return History(
        Op(op.id, op.client, op.call, op.invoke, op.complete, result, op.status)
        if op.id == target.id
        else op
        for op in h
    )


def stale_read(h: History, rng: random.Random) -> tuple[History, Op, object]:
    """Make a read of the busiest key return a value it held before a completed write.

    For a read R of key k, look for writes W1 (value v) and W2 (value != v) on k
    with W1 completed before W2 was invoked and W2 completed before R was
    invoked, and no other op that could produce v later. R -> v is then stale.
    """
    ops = list(h)
    # The busiest key is checked last, so every other key is checked first.
    by_key = h.by_key()
    busiest = max(by_key, key=lambda k: (len(by_key[k]), repr(k)))
    reads = [
        op
        for op in ops[len(ops) // 3 : 2 * len(ops) // 3]
        if op.key == busiest and isinstance(op.call, Get) and op.status is Status.OK
    ]
    rng.shuffle(reads)
    for read in reads:
        writes = [
            op
            for op in ops
            if op.key == read.key and isinstance(op.call, Put) and op.status is Status.OK
        ]
        before = [w for w in writes if w.complete is not None and w.complete < read.invoke]
        for w2 in reversed(before):
            for w1 in reversed(before):
                assert isinstance(w1.call, Put) and isinstance(w2.call, Put)
                v = w1.call.value
                if w1.complete is None or w1.complete >= w2.invoke or w2.call.value == v:
                    continue
                # Nothing else on the key could write v after w2 was invoked.
                if any(
                    other.key == read.key
                    and other.invoke <= read.complete  # type: ignore[operator]
                    and (other.complete is None or other.complete >= w2.invoke)
                    and (
                        (isinstance(other.call, Put) and other.call.value == v)
                        or (isinstance(other.call, Cas) and other.call.new == v)
                    )
                    for other in ops
                ):
                    continue
                return with_result(h, read, v), read, v
            break
    raise SystemExit(
        "no read can be made provably stale (a timed-out write of each old value may"
        " still land); try another --seed or fewer --unknown"
    )


def run(label: str, h: History, budget: float, expect: Verdict) -> None:
    started = time.perf_counter()
    result = check(h, budget_seconds=budget)
    wall = time.perf_counter() - started
    unknown = sum(op.status is Status.UNKNOWN for op in h)
    mark = "" if result.verdict is expect else f"   <-- expected {expect}"
    print(
        f"{label:<42} {len(h):>7} ops {unknown:>4} unknown  {result.verdict:<9}"
        f" {wall:7.3f} s  {result.states:>9} states  {len(h) / wall:>9.0f} ops/s{mark}"
    )
    if result.verdict is Verdict.VIOLATION:
        print("    " + result.explanation.replace("\n", "\n    "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--values", type=int, default=5, help="distinct values written")
    parser.add_argument("--unknown", type=float, default=0.002, help="fraction timed out")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", type=float, default=120.0)
    args = parser.parse_args()

    started = time.perf_counter()
    h = workload(args.ops, args.keys, args.clients, args.values, args.unknown, args.seed)
    print(
        f"generated {len(h)} ops, {args.keys} keys, {args.clients} clients, "
        f"{args.values} values in {time.perf_counter() - started:.2f} s"
    )
    text = h.to_json()
    started = time.perf_counter()
    assert History.from_json(text).ops == h.ops
    print(f"JSON round trip of {len(text) / 1e6:.1f} MB in {time.perf_counter() - started:.2f} s")
    print()

    run("valid history", h, args.budget, Verdict.OK)
    stale, read, value = stale_read(h, random.Random(args.seed))
    print(f"\n(stale read injected: op #{read.id} now returns {value!r})")
    run("one stale read", stale, args.budget, Verdict.VIOLATION)
    never = with_result(h, read, "never-written")
    print()
    run("one read of a never-written value", never, args.budget, Verdict.VIOLATION)
    print()
    single = workload(args.ops, 1, args.clients, args.values, args.unknown, args.seed)
    run("valid history, all on one key", single, args.budget, Verdict.OK)


if __name__ == "__main__":
    main()
