#!/bin/bash
# Does compiling pnyx's Python help? Compiles the hot modules of a copy of this tree
# with mypyc (mypy's compiler: type-annotated Python to C extensions, the .py files kept
# beside them as the pure-Python fallback), then runs bench/bench_path.py on the copy and
# on this tree, alternated: CPU per committed write, three nodes in one process.
#
#   bash bench/compiled_trial.sh [ROUNDS] [WORK_DIR]
#
# Needs a C compiler and Python's headers (Debian: gcc, python3-dev) and PyPI for mypy;
# nothing is installed into the project's venv. Compiled, in three sets (each alone):
#   core:   the Multi-Paxos replica (pnyx/protocol/multipaxos, but its msgspec messages,
#           records and membership, which mypyc cannot compile as msgspec structs), the
#           quorum and durability rules;
#   driver: core + the node's driver and its requests (Driver made subclassable, as Node
#           subclasses it);
#   kv:     the key-value machine and its checks (what applies every command).
# A few lines are adjusted in the copy only, for mypy's stricter inference (see `patch`).
set -euo pipefail
ROUNDS=${1:-2}
WORK=${2:-$(mktemp -d /tmp/pnyx-compiled.XXXXXX)}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
MYPY_VENV=$WORK/mypyc-venv
if [ ! -x "$MYPY_VENV/bin/mypyc" ]; then
    python3 -m venv "$MYPY_VENV"
    "$MYPY_VENV/bin/pip" install -q 'mypy>=1.13' msgspec aiohttp prometheus-client \
        cryptography uvloop httptools
fi
EXT=$MYPY_VENV/lib/python3.*/site-packages

patch() {  # TREE: what mypy needs to type-check these modules alone
    local src=$1/src/pnyx
    sed -i 's/^        entries = \[\]$/        entries: list = []/' "$src/protocol/multipaxos/log.py"
    sed -i 's/^            while _next_deadline(pending, order) is not None and order\[0\]\[0\] <= now:$/&  # type: ignore[misc]/' \
        "$src/protocol/multipaxos/reads.py"
    # mypyc cannot compile the branch mypy proves unreachable (an unknown read mode).
    sed -i 's/mode: ReadMode, now: float) -> None:/mode: str, now: float) -> None:/' \
        "$src/protocol/multipaxos/reads.py"
    # `ready` is bound twice in `Driver._attempt`, with two types.
    "$PY" - "$src/node/driver.py" <<'PATCH'
import sys
path = sys.argv[1]
text = open(path).read()
old = ("        ready = request.attempt(rid)\n        if ready is not None:\n"
       "            self._handle(ready)\n")
assert old in text, "Driver._attempt changed: update bench/compiled_trial.sh"
open(path, "w").write(text.replace(old, old.replace("ready", "attempted")))
PATCH
    sed -i 's/^class Driver:$/from mypy_extensions import mypyc_attr\n\n\n@mypyc_attr(allow_interpreted_subclasses=True)\nclass Driver:/' \
        "$src/node/driver.py"
    sed -i '/type(command) is Get$/{n;s/$/  # type: ignore[union-attr]/}' "$src/statemachine/kv/checks.py"
    sed -i 's/^                ident = request.idempotency_key$/&  # type: ignore[union-attr]/;
            s/and (type(cmd) is Get or (cmd.prev_index is None and cmd.prev_exist is None))$/&  # type: ignore[union-attr]/' \
        "$src/statemachine/kv/machine.py"
}

CORE="pnyx/protocol/multipaxos/acceptor.py pnyx/protocol/multipaxos/config.py
      pnyx/protocol/multipaxos/effects.py pnyx/protocol/multipaxos/election.py
      pnyx/protocol/multipaxos/log.py pnyx/protocol/multipaxos/pipeline.py
      pnyx/protocol/multipaxos/reads.py pnyx/protocol/multipaxos/replica.py
      pnyx/protocol/multipaxos/standing.py pnyx/protocol/multipaxos/transfer.py
      pnyx/protocol/quorum.py pnyx/protocol/durability.py"
DRIVER="$CORE pnyx/node/driver.py pnyx/node/requests.py"
KV="pnyx/statemachine/kv/machine.py pnyx/statemachine/kv/checks.py"

for set in core driver kv; do
    tree=$WORK/$set
    rm -rf "$tree" && mkdir -p "$tree"
    git -C "$HERE" archive HEAD | tar -x -C "$tree"
    patch "$tree"
    case $set in core) mods=$CORE ;; driver) mods=$DRIVER ;; kv) mods=$KV ;; esac
    # shellcheck disable=SC2086
    (cd "$tree/src" && "$MYPY_VENV/bin/mypyc" $mods > "$WORK/build-$set.log" 2>&1) \
        || { echo "mypyc failed for $set: see $WORK/build-$set.log"; exit 1; }
    echo "== $set: $(cd "$tree/src" && find pnyx -name '*.so' | wc -l) modules compiled"
done

for r in $(seq 1 "$ROUNDS"); do
    for tree in "$HERE/src" "$WORK/core/src" "$WORK/driver/src" "$WORK/kv/src"; do
        # mypy_extensions (for the driver's decorator) comes from mypyc's venv.
        out=$(PYTHONPATH="$tree:$(echo $EXT)" "$PY" "$HERE/bench/bench_path.py" --child \
              --rounds 1 --writes 60000 --warmup 10000 2>/dev/null | tail -1)
        echo "round $r ${tree#"$WORK"/}: $out" | cut -c1-120
    done
done
