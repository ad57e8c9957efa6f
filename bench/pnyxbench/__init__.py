"""`pnyx bench`: pnyx side by side with PySyncObj and with itself unreplicated.

This package lives in a source checkout's bench/, not in the installed `pnyx`:
`pnyx bench` (`pnyx.cli.bench`) imports it from there; `python -m pnyxbench`
in bench/ runs it too. Its modules, in the order a run uses them: `config`
(systems, flags), `processes` (starting and stopping them), `loadgen` (the
closed-loop clients), `measure` (one point), `summary`, `run` (every system,
every round), `report` (ratios, targets, table, plot), `main` (entry points);
for `--open-loop`, `openloop` (the paced generator) and `openrun` (the
max-rate search, the overload run, their report).

    pnyx bench --systems pnyx3,pnyx3-nofsync,pnyx1-direct,pysyncobj3 \\
        --clients 32 --value-size 100 --duration 10 --rounds 2 --json out.json

The benchmark starts every system itself on 127.0.0.1, in a scratch data
directory, and drives each with the same closed-loop load generator speaking
pnyx's binary client protocol (`pnyx.wire`): every client keeps exactly
one request in flight, under its own client id with increasing `seq`, and
sends the next the moment the answer arrives. After a warm-up it counts
completions and records each latency; it reports throughput and p50, p90,
p99 and max as a table and as JSON, with a ratio table and the issue's
targets, and optionally a PNG plot.

**Systems** (`--systems`, comma-separated):

- `pnyxN` — N `pnyx serve` nodes, fsync on (the default, crash-safe);
- `pnyxN-nofsync` — the same with `--unsafe-no-fsync` (for comparison only);
- `pnyxN-lease` — the same with `--read-lease 150` (leader leases for
  linearizable reads, half the default election timeout);
- `pnyx1-direct` — one `pnyx serve --no-consensus`: the same server with
  Paxos and the disk bypassed (`pnyx.node.direct.DirectNode`), the cost floor;
- `pysyncobjN` — N PySyncObj nodes replicating a dict, behind the same wire
  protocol (`bench/pysyncobj_server.py`; `pip install 'pnyx[bench]'`), with
  PySyncObj's defaults; `pysyncobjN-nobatch` sets `appendEntriesUseBatch=False`,
  PySyncObj's own setting for latency. (With the defaults, entries leave the
  leader once per 100 ms append period, so a closed loop of C clients gets
  about 10·C commits/s; without batching each command goes out at once.)
- `etcdN` — N etcd servers, driven through their JSON gateway, if `etcd` is
  installed (Debian `etcd-server`);
- `trivial` — `bench/trivial_server.py`, which answers every request at once:
  the load generator's own ceiling. It is measured in every run anyway.
- `wire@HOST:PORT` — a server already running; the benchmark neither starts
  nor stops it.

**Fairness.** Rounds (`--rounds`) alternate the systems round-robin, so slow
drift of a shared machine (other tenants, thermal limits, page cache) falls
on all of them alike; each system is started fresh in each round. The load
generator runs in its own process(es) (`--procs`), never in the benchmark's
own, and is measured against the trivial server at the same load, so a
reader can see how close each system came to what the generator can drive.
The servers and the generator share the machine's cores: on a 2-core
machine every number is a lower bound for a machine with cores to spare.

**Open loop** (`--open-loop`). Requests arrive at a fixed offered rate
(`--arrivals poisson` or `paced`), whatever the system answers, with latency
counted from when each was due. With `--rate R,...` it measures those rates;
without, it searches each system's max-rate: the highest rate at which at
least `--success` (90 %) of the requests are answered ok within `--bound`
(1 s), as PySyncObj's own benchmark searches; `--overload 2` then offers
twice the first pnyx system's max-rate to every replicated system. The report
shows offered, sent, committed, the share refused as `overloaded`, p50/p99 and
the largest node's memory during the run.

    pnyx bench --open-loop --systems pnyx3,pysyncobj3 --overload 2 --json out.json

**Curves.** Give one of `--clients`, `--value-size`, `--read-ratio` or
`--nodes` as a list (`--clients 1,4,16,64,256`) for a scaling curve; `--plot`
draws throughput and p99 against it.

**Cleanup.** Every process the benchmark starts is in its own process group
and is stopped on the way out — after success, on an error, on Ctrl-C and on
SIGTERM — and on Linux also if the benchmark itself is killed. Every error
(an unknown system, a port in use, a node that does not answer) is one line
on stderr and a non-zero exit.
"""

from pnyxbench.config import parse_size, parse_system
from pnyxbench.main import main, run
from pnyxbench.report import ratios
from pnyxbench.summary import Summary, percentile

__all__ = ["Summary", "main", "parse_size", "parse_system", "percentile", "ratios", "run"]
