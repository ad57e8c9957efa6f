"""What applying one key-value command costs in-process: `SafeApply(KVMachine()).apply`.

Applies N realistic commands (binary-client `Request` envelopes, `seq` rising
per client over 256 clients, 1,000 keys, 100-byte values; mostly `Put`, some
`Get` and `Delete`, a few with preconditions, a few retries of the previous
request) and reports microseconds per command for two paths:

- ``apply``: a follower's (the command bytes arrive from the log);
- ``validate+apply``: the leader's (`kv.validate` when the client submits,
  then `apply` of the same bytes object once it is chosen).

It can run the code of other trees in the same run for before/after
comparisons: each measurement runs in a fresh subprocess that imports pnyx
from the given ``src`` directory, trees alternated, several rounds; it reports
per-tree medians and ratios against the first tree. It also checks that every
tree gave the same result bytes and the same final snapshot bytes (a digest of
them), since an optimisation of `apply` must not change a single byte.

    .venv/bin/python bench/bench_apply.py --tree /tmp/before-tree/src --rounds 3

The machine this runs on is shared and noisy: compare ratios within a run,
not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SRC = os.path.join(os.path.dirname(HERE), "src")


def _commands(n: int, seed: int) -> list[bytes]:
    """N encoded requests, the same for a given seed whatever the tree (encoding is msgspec's)."""
    from pnyx.statemachine import kv

    rng = random.Random(seed)
    token = f"{rng.getrandbits(64):016x}"
    clients = [f"{token}-c{i}" for i in range(256)]
    seqs = [0] * len(clients)
    value = bytes(rng.getrandbits(8) for _ in range(100))
    out: list[bytes] = []
    last: list[bytes | None] = [None] * len(clients)
    for _ in range(n):
        c = rng.randrange(len(clients))
        roll = rng.random()
        previous = last[c]
        if roll < 0.005 and previous is not None:
            out.append(previous)  # a client's retry of the request it sent last
            continue
        key = f"k{rng.randrange(1000)}"
        command: kv.Command
        if roll < 0.85:
            command = kv.Put(key, value)
        elif roll < 0.93:
            command = kv.Get(key)
        elif roll < 0.98:
            command = kv.Delete(key)
        elif roll < 0.99:
            command = kv.Put(key, value, prev_exist=False)
        else:
            command = kv.Put(key, value, prev_index=rng.randrange(n))
        seqs[c] += 1
        encoded = kv.encode_request(kv.Request(clients[c], seqs[c], command))
        last[c] = encoded
        out.append(encoded)
    return out


def _worker(n: int, seed: int) -> dict[str, Any]:
    """Run in a subprocess whose sys.path starts with the tree to measure."""
    import gc

    from pnyx.statemachine import kv
    from pnyx.statemachine.base import SafeApply

    commands = _commands(n, seed)
    limit = kv.DEFAULT_COMMAND_LIMIT
    out: dict[str, Any] = {"pnyx": os.path.dirname(kv.__file__)}

    # Follower: apply only. Fresh bytes objects, as decoded from the wire.
    fresh = [bytes(bytearray(c)) for c in commands]
    machine = SafeApply(kv.KVMachine())
    apply = machine.apply
    gc.collect()
    results = hashlib.blake2b()
    start = time.perf_counter()
    for index, command in enumerate(fresh, 1):
        apply(command, index)
    out["apply_us"] = (time.perf_counter() - start) / n * 1e6
    # Results checked in a second, untimed pass on another machine.
    check = SafeApply(kv.KVMachine())
    for index, command in enumerate(fresh, 1):
        results.update(check.apply(command, index))
    out["results"] = results.hexdigest()
    out["snapshot"] = hashlib.blake2b(machine.snapshot()).hexdigest()
    if out["snapshot"] != hashlib.blake2b(check.snapshot()).hexdigest():
        raise SystemExit("two machines fed the same log have different snapshots")

    # Leader: validate when submitted, apply the same object when chosen.
    fresh = [bytes(bytearray(c)) for c in commands]
    machine = SafeApply(kv.KVMachine())
    apply = machine.apply
    validate = kv.validate
    gc.collect()
    start = time.perf_counter()
    for index, command in enumerate(fresh, 1):
        try:
            validate(command, limit)
        except kv.CommandError:
            continue  # never proposed
        apply(command, index)
    out["validate_apply_us"] = (time.perf_counter() - start) / n * 1e6
    out["leader_snapshot"] = hashlib.blake2b(machine.snapshot()).hexdigest()
    return out


def _run_tree(src: str, n: int, seed: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=src, PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", "--n", str(n), "--seed", str(seed)],
        env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker for {src} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", default=[],
                        help="another src/ directory to compare (repeatable); "
                             "the first tree (this checkout's src) is the reference")
    parser.add_argument("--src", default=DEFAULT_SRC, help="the reference tree's src/")
    parser.add_argument("--n", type=int, default=200_000, help="commands per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.n, args.seed)))
        return
    trees = [args.src, *args.tree]
    runs: dict[str, list[dict[str, Any]]] = {tree: [] for tree in trees}
    for r in range(args.rounds):
        # Alternate the order each round so neither tree always goes first.
        order = trees if r % 2 == 0 else trees[::-1]
        for tree in order:
            result = _run_tree(tree, args.n, args.seed)
            runs[tree].append(result)
            print(f"round {r + 1} {tree}: apply {result['apply_us']:.3f} us, "
                  f"validate+apply {result['validate_apply_us']:.3f} us", flush=True)
    reference = runs[trees[0]][0]
    same = all(run[k] == reference[k] for tree in trees for run in runs[tree]
               for k in ("results", "snapshot", "leader_snapshot"))
    print(f"\nresult and snapshot bytes identical across trees and rounds: {same}")
    base = {k: statistics.median(run[k] for run in runs[trees[0]])
            for k in ("apply_us", "validate_apply_us")}
    print(f"{'tree':50s} {'apply us':>9s} {'ratio':>6s} {'val+apply us':>13s} {'ratio':>6s}")
    for tree in trees:
        med = {k: statistics.median(run[k] for run in runs[tree]) for k in base}
        print(f"{tree:50s} {med['apply_us']:9.3f} {med['apply_us'] / base['apply_us']:6.2f} "
              f"{med['validate_apply_us']:13.3f} "
              f"{med['validate_apply_us'] / base['validate_apply_us']:6.2f}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
