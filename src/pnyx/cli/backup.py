"""`pnyx backup` and `pnyx restore`: a cluster's state to a file, and a new cluster from it.

    pnyx backup --endpoints 127.0.0.1:8001,127.0.0.1:8002 backup.pnyx
    pnyx restore backup.pnyx --data-dir d1 --id 1 --cluster 1=h1:7001,2=h2:7001,3=h3:7001

`backup` asks a node for `GET /v1/snapshot` (`pnyx.api.backup`: a snapshot file at
a linearizable point), trying the endpoints in turn as the other commands do
(`--endpoints`, `PNYX_ENDPOINTS`, TLS flags as `pnyx get`), and saves the answer
with `save_file`: verified as it arrives (header, length, checksum), written to a
temporary name, fsynced and renamed, so FILE is there only if it is a whole,
sound snapshot. An existing FILE is refused unless `--force`. A node that cannot
give one now (503, a dropped connection) is retried after the others until
`--timeout`; a node that sent a damaged snapshot or refused the request is not
asked again.

`restore` seeds the data directory of ONE member of a NEW cluster (run it once
per member, each with the same FILE, --cluster and cluster id): the snapshot goes
into DIR/snapshots under the new cluster id (its header and checksum rewritten:
`SnapshotStore.import_file`), and the log store DIR/pnyx.db is made for that
cluster id and node id with the member list recorded, the log compacted up to the
snapshot's slot (`CompactRecord`) and the standing VOTER (`StandingRecord`; see
`_seed_store` for why that is safe). The store is built under a temporary name
and renamed into place last, so DIR holds a log store only once it is whole.
The new cluster id is `--cluster-id`, else a fresh `restored-<8 hex>`, printed:
it can never be the old cluster's (refused if given so), and a member of the old
cluster refuses a peer that says another cluster id, so the two never mix.

Refused with one line and exit status 2: a DIR that is not empty, a FILE that is
not a whole pnyx snapshot, a node id not in --cluster, a cluster id equal to the
backup's, and another member of --cluster that is running (answers at its peer
address): a restore seeds a cluster whose members are all stopped. A disk that
fails while writing is one line and status 1 (what was written is removed).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

from pnyx.cli.common import StartError, UsageError
from pnyx.cli.kv import _endpoints, _one_line, _timeout, _tls, _Usage
from pnyx.client.common import parse_endpoints
from pnyx.node.config import Address, ConfigError, parse_cluster
from pnyx.storage.errors import CorruptStoreError, StoreError, StoreIdentityError
from pnyx.storage.snapshots import SnapshotInfo, read_info, save_file

SNAPSHOT_PATH: Final = "/v1/snapshot"  # pnyx.api.backup, without importing the server
CHUNK: Final = 1 << 20
DEFAULT_TIMEOUT: Final = "60"
EXIT_REFUSED: Final = 2
EXIT_FAILED: Final = 1
_PROBE_TIMEOUT: Final = 1.0  # seconds to wait for another member's peer port to answer


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "backup", help="save a consistent snapshot of a running cluster to a file",
        description="Fetch a snapshot of the cluster's state at a linearizable point from "
        "one of --endpoints (GET /v1/snapshot), verify it as it arrives and write it to "
        "FILE atomically. Prints its slot, index, key count and size.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--endpoints", metavar="HOST:PORT,...",
                   help="nodes to ask, in turn (default $PNYX_ENDPOINTS, else 127.0.0.1:8001)")
    p.add_argument("--timeout", metavar="SECONDS", default=DEFAULT_TIMEOUT,
                   help=f"give up after this long without a snapshot (default {DEFAULT_TIMEOUT})")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.add_argument("--cacert", dest="tls_cacert", metavar="FILE",
                   help="TLS: the CA the nodes' certificates must chain to (turns TLS on)")
    p.add_argument("--cert", dest="tls_cert", metavar="FILE",
                   help="TLS: present this client certificate (with --key)")
    p.add_argument("--key", dest="tls_key", metavar="FILE", help="TLS: the key of --cert")
    p.set_defaults(run=run_backup)

    p = sub.add_parser(
        "restore", help="seed a member of a NEW cluster from a backup",
        description="Seed the empty data directory DIR of member --id of a new cluster "
        "(--cluster, as pnyx serve takes it) from the backup FILE, under a new cluster id "
        "(--cluster-id, else a fresh one, printed). Run it once per member with the same "
        "FILE, --cluster and --cluster-id, then start each with pnyx serve and the same "
        "--cluster and --cluster-id.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--data-dir", required=True, metavar="DIR",
                   help="the member's data directory: must be empty or not exist")
    p.add_argument("--id", required=True, metavar="N", help="the member's node id")
    p.add_argument("--cluster", required=True, metavar="ID=HOST:PORT,...",
                   help="every member of the new cluster and its peer address")
    p.add_argument("--cluster-id", metavar="NAME",
                   help="the new cluster's id (default: a fresh restored-<8 hex>)")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.set_defaults(run=run_restore)


# ------------------------------------------------------------------ backup


class _Attempt(Exception):
    """One endpoint gave no snapshot; `again`: it may give one if asked later."""

    def __init__(self, reason: str, *, again: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.again = again


def _body(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while data := response.read(CHUNK):
        yield data


def _fetch_one(endpoint: str, dest: Path, timeout: float,
               context: ssl.SSLContext | None) -> tuple[SnapshotInfo, dict[str, str]]:
    ((host, port),) = parse_endpoints([endpoint])
    conn = (http.client.HTTPConnection(host, port, timeout=timeout) if context is None
            else http.client.HTTPSConnection(host, port, timeout=timeout, context=context))
    try:
        try:
            conn.request("GET", SNAPSHOT_PATH)
            response = conn.getresponse()
        except ssl.SSLCertVerificationError as exc:
            raise _Attempt(f"TLS: the node's certificate is not trusted "
                           f"({exc.verify_message or exc}); give the cluster's CA (--cacert)",
                           again=False) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Attempt(str(exc) or type(exc).__name__, again=True) from None
        headers = {k.lower(): v for k, v in response.getheaders()}
        if response.status != 200:
            raw = response.read(1 << 16)
            try:
                error = json.loads(raw)["error"]
                reason = f"{error['code']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                reason = f"HTTP {response.status}"
            raise _Attempt(f"HTTP {response.status} {reason}", again=response.status >= 500)
        try:
            info = save_file(dest, _body(response))
        except (CorruptStoreError, StoreIdentityError) as exc:
            raise _Attempt(f"the snapshot it sent is refused: {exc}", again=False) from None
        except (OSError, http.client.HTTPException) as exc:
            # Cut off mid-way (a short body is an IncompleteRead): nothing was kept.
            raise _Attempt(f"the transfer broke off: {exc or type(exc).__name__}",
                           again=True) from None
        slot = headers.get("x-pnyx-slot")
        if slot is not None and slot != str(info.slot):  # the node's own header disagrees
            with contextlib.suppress(OSError):
                dest.unlink()
            raise _Attempt(f"its X-Pnyx-Slot {slot} is not the file's slot {info.slot}",
                           again=False)
        return info, headers
    finally:
        conn.close()


def backup(endpoints: list[str], dest: Path, timeout: float,
           context: ssl.SSLContext | None) -> tuple[SnapshotInfo, dict[str, str], str]:
    """Fetch a snapshot from the first of `endpoints` that gives a sound one, saved at
    `dest`: its info, the answer's headers and the endpoint. `StartError` if none does
    within `timeout` (or every one refused for good)."""
    deadline = time.monotonic() + timeout
    reasons: dict[str, str] = {}
    given_up: set[str] = set()
    pause = 0.05
    while True:
        for endpoint in endpoints:
            if endpoint in given_up:
                continue
            try:
                # `timeout` bounds each wait for the node (its answer, each read of the
                # body); the deadline bounds the attempts.
                return (*_fetch_one(endpoint, dest, timeout, context), endpoint)
            except _Attempt as attempt:
                reasons[endpoint] = attempt.reason
                if not attempt.again:
                    given_up.add(endpoint)
        if len(given_up) == len(endpoints) or time.monotonic() + pause > deadline:
            raise StartError("no snapshot: " + "; ".join(
                f"{ep}: {_one_line(why)}" for ep, why in reasons.items()))
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def run_backup(args: argparse.Namespace, *, stdout: IO[str] | None = None) -> int:
    out = stdout if stdout is not None else sys.stdout
    try:
        endpoints = _endpoints(args)
        tls = _tls(args, endpoints)
        timeout = _timeout(args)
    except _Usage as exc:
        raise UsageError(f"pnyx backup: {_one_line(str(exc))}") from None
    dest = Path(args.file)
    if not args.force and os.path.lexists(dest):
        raise UsageError(f"pnyx backup: {dest} exists; give --force to overwrite it")
    if dest.is_dir():
        raise UsageError(f"pnyx backup: {dest} is a directory")
    started = time.monotonic()
    info, headers, endpoint = backup(endpoints, dest, timeout, tls.get("ssl_context"))
    seconds = time.monotonic() - started
    keys = headers.get("x-pnyx-keys")
    if args.json:
        out.write(json.dumps({"file": str(dest), "slot": info.slot, "index": info.index,
                              "keys": int(keys) if keys and keys.isdigit() else None,
                              "bytes": info.size, "cluster_id": info.cluster_id,
                              "endpoint": endpoint, "seconds": round(seconds, 3)}) + "\n")
    else:
        counted = f", {keys} keys" if keys else ""
        out.write(f"backup {dest}: slot {info.slot}, index {info.index}{counted}, "
                  f"{info.size} bytes, cluster {info.cluster_id!r}, from {endpoint} "
                  f"in {seconds:.2f} s\n")
    return 0


# ------------------------------------------------------------------ restore


def _refuse(message: str) -> UsageError:
    return UsageError(f"pnyx restore: {message}")


def _running(members: dict[int, Address], node_id: int) -> tuple[int, Address] | None:
    """Another member whose peer address answers (a running node), if any."""
    for other, address in sorted(members.items()):
        if other == node_id:
            continue
        with contextlib.suppress(OSError):
            socket.create_connection((address.host, address.port), _PROBE_TIMEOUT).close()
            return other, address
    return None


def _seed_store(path: Path, *, node_id: int, cluster_id: str, members: dict[int, Address],
                slot: int) -> None:
    """Make the log store of a restored member at `path`: compacted up to `slot` (the
    snapshot's), the member list recorded, and the standing VOTER.

    Why VOTER is safe. A store starts NEW so that a member that lost its disk cannot vote
    again with its promises forgotten (`pnyx.protocol.multipaxos.standing`). A NEW
    member votes once every other member answers that it is empty, and a restored one
    would never hear it: every member of a restored cluster holds the snapshot (a
    compacted floor), so each answers "not empty", and the restored cluster would never
    form. But no member of the restored cluster can have forgotten a vote: the cluster
    id is new (fresh, or given for this restore, and never the backup's own), the
    peers refuse anyone of another cluster id, so no acceptor of this cluster id has
    promised or accepted anything before these stores; and each member's store is made
    here, in an empty directory, before its first start. A store made this way is
    exactly what a member of a new cluster holds before its first vote, plus the
    snapshot every member holds alike. What `restore` cannot see is an operator
    restoring one member again into the restored cluster once it has run: so it refuses
    while another member is running (`_running`), and the README says to replace a lost
    member by starting it empty (it then rejoins as a learner), never by a restore.
    """
    from pnyx.protocol.multipaxos.records import CompactRecord, Standing, StandingRecord
    from pnyx.storage.log_store import SqliteLogStore

    with SqliteLogStore.open(path, node_id=node_id, cluster_id=cluster_id) as store:
        store.check_members({i: str(a) for i, a in members.items()})
        store.append([CompactRecord(slot), StandingRecord(Standing.VOTER)])
    for leftover in (Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        if leftover.exists():  # closing checkpoints the WAL into the file and removes it
            raise StoreError(leftover, "the log store was not checkpointed on close")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore(source: Path, data_dir: Path, *, node_id: int, members: dict[int, Address],
            cluster_id: str) -> SnapshotInfo:
    """Seed `data_dir` (empty or missing; checked by the caller) from the backup at
    `source`; the snapshot installed. On a failure, what was written is removed."""
    from pnyx.storage.snapshots import SnapshotStore

    made_dir = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    snapshots = data_dir / "snapshots"
    staged = data_dir / "pnyx.db.restoring"
    try:
        store = SnapshotStore.open(snapshots, cluster_id=cluster_id)
        info = store.import_file(source)  # verified as copied, under the new cluster id
        _seed_store(staged, node_id=node_id, cluster_id=cluster_id, members=members,
                    slot=info.slot)
        os.replace(staged, data_dir / "pnyx.db")  # the log store appears whole, last
        _fsync_dir(data_dir)
        return info
    except BaseException:
        shutil.rmtree(snapshots, ignore_errors=True)
        for leftover in (staged, Path(f"{staged}-wal"), Path(f"{staged}.init")):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
        if made_dir:
            with contextlib.suppress(OSError):
                data_dir.rmdir()
        raise


def run_restore(args: argparse.Namespace, *, stdout: IO[str] | None = None) -> int:
    out = stdout if stdout is not None else sys.stdout
    source, data_dir = Path(args.file), Path(args.data_dir)
    text = str(args.id).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise _refuse(f"--id {args.id!r} is not a node id")
    node_id = int(text)
    try:
        members = parse_cluster(args.cluster)
    except ConfigError as exc:
        raise _refuse(f"--cluster: {exc}") from None
    if node_id not in members:
        raise _refuse(f"node {node_id} is not in --cluster "
                      f"({', '.join(map(str, sorted(members)))})")
    if args.cluster_id is not None and not args.cluster_id.strip():
        raise _refuse("--cluster-id must not be empty")
    if data_dir.exists() and not data_dir.is_dir():
        raise _refuse(f"{data_dir} is not a directory")
    if data_dir.is_dir():
        try:
            entries = sorted(os.listdir(data_dir))
        except OSError as exc:
            raise _refuse(f"cannot read {data_dir}: {exc.strerror or exc}") from None
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise _refuse(f"{data_dir} is not empty ({shown}); a restore seeds an empty "
                          "data directory of a new cluster")
    try:
        backup_info = read_info(source)
    except StoreError as exc:
        raise _refuse(f"{_one_line(str(exc))} (not a whole pnyx snapshot)") from None
    cluster_id = args.cluster_id or f"restored-{secrets.token_hex(4)}"
    if cluster_id == backup_info.cluster_id:
        raise _refuse(f"--cluster-id {cluster_id!r} is the backed-up cluster's own id; a "
                      "restored cluster needs a new one, so it is never taken for the old")
    running = _running(members, node_id)
    if running is not None:
        raise _refuse(f"member {running[0]} at {running[1]} is running; a restore seeds a "
                      "new cluster whose members are all stopped (to replace a lost member "
                      "of a running cluster, start it with an empty data directory)")
    try:
        info = restore(source, data_dir, node_id=node_id, members=members,
                       cluster_id=cluster_id)
    except StoreError as exc:
        raise StartError(_one_line(str(exc))) from None
    if args.json:
        out.write(json.dumps({"data_dir": str(data_dir), "id": node_id,
                              "cluster_id": cluster_id, "slot": info.slot,
                              "index": info.index, "bytes": info.size,
                              "from_cluster": backup_info.cluster_id}) + "\n")
    else:
        out.write(f"restored node {node_id} of cluster {cluster_id!r} into {data_dir}: "
                  f"slot {info.slot}, index {info.index}, {info.size} bytes (a backup of "
                  f"cluster {backup_info.cluster_id!r}); restore every member with "
                  f"--cluster-id {cluster_id}, then start each with pnyx serve --cluster-id "
                  f"{cluster_id}\n")
    return 0
