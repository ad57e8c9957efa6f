"""What every part of the benchmark shares: exit codes, names, limits, its two errors."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

BENCH_DIR_ENV: Final = "PNYX_BENCH_DIR"
# The command that runs one pnyx node; override it to benchmark another build
# (it gets `serve --id ... --cluster ... --data-dir ... --client ...` appended).
SERVE_ENV: Final = "PNYX_BENCH_SERVE"
KNOWN_SYSTEMS: Final = ("pnyxN", "pnyxN-nofsync", "pnyxN-tls", "pnyxN-lease", "pnyx1-direct",
                        "pysyncobjN", "pysyncobjN-nobatch", "etcdN", "trivial",
                        "wire@HOST:PORT")
# `pnyxN-lease`: leader leases for linearizable reads, half of `pnyx serve`'s default
# election timeout (300 ms): safe while clock rates differ by less than 50 %.
LEASE_MS: Final = 150
DEFAULT_SYSTEMS: Final = "pnyx3,pnyx3-nofsync,pnyx1-direct,pysyncobj3"
# Clients share connections (each still has one request in flight): fewer, busier
# connections batch more per syscall on both sides. Measured on 2 cores against
# the trivial server, 32 clients: 1 connection 246 k/s, 4: 177 k/s, 32: 78 k/s.
DEFAULT_CONNECTIONS: Final = 4
CONNECT_GRACE: Final = 0.5  # seconds the generator gets to connect before the clock starts


class BenchError(Exception):
    """The benchmark cannot go on; the message is one line for the user."""


class UsageError(Exception):
    """A bad flag: one line on stderr, exit status 2."""


