"""`pnyx serve`: one node of a cluster, wired together and run until SIGINT or SIGTERM.

The flags and the TOML file come from `pnyx.node.config.SETTINGS`, so every
setting has one flag, one TOML key and one default. `serve` opens the node's
durable store, starts the node (peer transport), the HTTP API and the binary
client protocol on one event loop (uvloop when installed). Every way it can
fail to start — a port that cannot be bound, an address that does not
resolve, a data directory that cannot be written, a store that belongs to
another node or is damaged — is one line on stderr and a non-zero exit
(`StartError`), never a retry loop.

`pnyx serve --join ENDPOINTS` (instead of `--cluster`) starts a node that
asks the cluster to add it (`pnyx.node.join`: before the event loop starts,
retried with backoff, refused in one line when the cluster says no for good);
once it holds data, `--join` is ignored at later starts.

A node that finds it was removed from the cluster logs one line saying so and
exits with status 0: it has nothing left to serve.

A storage fault while serving (full disk, I/O error, read-only remount: see
`Driver.disk_failed`) is fail-stop: one CRITICAL line naming the cause, the
ports released, exit status 74 (EX_IOERR) within `FAULT_GRACE` seconds, for a
supervisor to restart the node once its disk is fixed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys
import threading
from typing import TYPE_CHECKING, Any

from pnyx.cli.common import StartError, check_data_dir
from pnyx.node.config import SETTINGS, ConfigError, NodeConfig, flag_help, metavar, read_setting
from pnyx.tls import Reloading, TlsError, TlsFiles, client_port_context

if TYPE_CHECKING:
    from pnyx.node.runtime import Node

log = logging.getLogger("pnyx.serve")

EXIT_DISK_FAULT = 74  # EX_IOERR (sysexits.h): stopped by a storage fault
# After a storage fault: the most the ports may take to close before the process ends
# anyway (a client still sending, a write thread stuck on the broken disk).
FAULT_GRACE = 2.0


def add_parsers(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run one node of a cluster",
        description="Run one node: its peers reach it at its --cluster address (or --listen), "
        "clients at --http and --client. A node joining a running cluster gives --join "
        "(members' HTTP endpoints) and --listen instead of --cluster: it asks to be added, "
        "as a learner the leader promotes once caught up. Settings may also come from a "
        "TOML file (--config), whose keys are the flags' names with underscores "
        "(durations in seconds there, in milliseconds on the flags); flags win.",
    )
    serve.add_argument("--config", metavar="FILE", help="read settings from a TOML file")
    for s in SETTINGS:
        if s.kind in ("off", "on"):
            serve.add_argument(s.flag, dest=s.name, action="store_const", const=s.kind,
                               help=flag_help(s))
        else:
            serve.add_argument(s.flag, dest=s.name, metavar=metavar(s), help=flag_help(s))
    serve.set_defaults(run=run)


def node_config_from(args: argparse.Namespace) -> NodeConfig:
    """The node's configuration from the flags and the TOML file; ConfigError if it is wrong."""
    overrides = {s.name: read_setting(s, getattr(args, s.name), "flag")
                 for s in SETTINGS if getattr(args, s.name) is not None}
    config = NodeConfig.load(args.config, overrides)
    if config.join and config.members:
        raise ConfigError("give --cluster or --join, not both: a node joining a running "
                          "cluster learns its members from the cluster")
    return config


def run(args: argparse.Namespace) -> int:
    config = node_config_from(args)
    given = args.cluster_id is not None or (
        args.config is not None and "cluster_id" in NodeConfig.read_toml(args.config))
    return serve(config, cluster_id_given=given)


async def _serve(config: NodeConfig, stop: asyncio.Queue[int],
                 join_peers: dict[int, Any] | None = None) -> BaseException | None:
    """Start the node and its APIs, serve until a signal number arrives on `stop` (None)
    or a storage fault stops the node (the fault, its line already logged)."""
    # Imported here: every other command (and --help) starts without the server's imports.
    from pnyx.api.binary import close_server, serve_clients
    from pnyx.api.http import HttpServer, serve_http
    from pnyx.api.limits import ClientLimits
    from pnyx.node.direct import DirectNode
    from pnyx.node.metrics import Metrics
    from pnyx.node.runtime import Node
    from pnyx.statemachine.base import SnapshotError
    from pnyx.statemachine.kv import KVMachine
    from pnyx.storage.log_store import SqliteLogStore, StoreError
    from pnyx.storage.snapshots import SnapshotStore

    metrics = Metrics()
    node: Node | DirectNode
    if config.consensus:
        check_data_dir(config.data_dir)
        db = config.data_dir / "pnyx.db"
        try:
            store = SqliteLogStore.open(db, node_id=config.node_id,
                                        cluster_id=config.cluster_id, fsync=config.fsync)
        except StoreError as exc:
            raise StartError(str(exc)) from None
        try:  # other member ids than the data was made with: refused, naming both lists
            moved = store.check_members({i: str(a) for i, a in config.members.items()})
        except StoreError as exc:
            store.close()
            raise StartError(str(exc)) from None
        if moved is not None:
            log.warning("%s", moved)
        try:  # a damaged snapshot, or one of another cluster, is refused naming the file
            snapshots = SnapshotStore.open(config.data_dir / "snapshots",
                                           cluster_id=config.cluster_id, fsync=config.fsync)
        except StoreError as exc:
            store.close()
            raise StartError(str(exc)) from None
        node = Node(config, store, KVMachine(max_clients=65536), metrics, snapshots,
                    join_peers=join_peers)
        try:
            await node.start()
        except StoreError as exc:  # a damaged row is found when the log is read
            store.close()
            raise StartError(str(exc)) from None
        except (SnapshotError, ValueError) as exc:  # the snapshot and the log disagree
            store.close()
            raise StartError(f"{config.data_dir}: {exc}") from None
        except OSError as exc:
            store.close()
            raise StartError(f"cannot listen for peers on {config.peer_listen}: "
                             f"{exc.strerror or exc}") from None
        chosen = node.replica.commit if node.replica is not None else 0
    else:
        node = DirectNode(config.node_id, metrics=metrics, max_command=config.max_command)
        chosen = 0
    http: HttpServer | None = None
    clients: asyncio.Server | None = None
    limits = ClientLimits(body_timeout=config.body_timeout, idle_timeout=config.idle_timeout,
                          max_connections=config.max_connections,
                          max_inflight=config.max_inflight, max_pending=config.max_pending)
    tls = client_ssl(config)
    fault: BaseException | None = None
    try:
        if config.http is not None:
            try:
                http = await serve_http(node, config.http.host, config.http.port,
                                        max_value=config.max_value,
                                        request_timeout=config.request_timeout,
                                        limits=limits, ssl=tls)
            except OSError as exc:
                raise StartError(f"cannot serve HTTP on {config.http}: "
                                 f"{exc.strerror or exc}") from None
        if config.client is not None:
            try:
                clients = await serve_clients(node, config.client.host, config.client.port,
                                              max_command=config.max_command, limits=limits,
                                              ssl=tls)
            except OSError as exc:
                raise StartError(f"cannot serve clients on {config.client}: "
                                 f"{exc.strerror or exc}") from None
        log.info("node %s serving: %s", config.node_id, startup_line(config, chosen))
        fault = await _stopped(config, node if isinstance(node, Node) else None, stop)
    finally:
        async def close() -> None:
            if clients is not None:
                await close_server(clients)
            if http is not None:
                await http.close()
            if isinstance(node, Node):
                await node.stop()

        if fault is None:
            await close()
        else:  # fail-stop: the ports go now, not after a graceful minute
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(), FAULT_GRACE)
    if fault is None:
        log.info("node %s stopped", config.node_id)
    return fault


async def _stopped(config: NodeConfig, node: Node | None, stop: asyncio.Queue[int]
                   ) -> BaseException | None:
    """Wait for a signal on `stop` (None) or a storage fault stopping `node` (the fault).
    A fault is logged at once in its one line, and a watchdog ends the process
    `FAULT_GRACE` seconds later should closing hang."""
    from pnyx.node.driver import fault_line

    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.get())]
    if node is not None:
        waits.append(asyncio.ensure_future(node.stopped_by_fault()))
        waits.append(asyncio.ensure_future(node.removed_from_cluster()))
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in pending:
        waiting.cancel()
    if waits[0] in done:
        log.info("node %s stopping on %s", config.node_id,
                 signal.Signals(waits[0].result()).name)
        return None
    if waits[2] in done:  # its line is logged: removed, it has nothing to serve
        return None
    fault: BaseException = waits[1].result()
    log.critical("stopped: %s; exiting with status %d", fault_line(fault), EXIT_DISK_FAULT)
    watchdog = threading.Timer(FAULT_GRACE + 1.0, os._exit, (EXIT_DISK_FAULT,))
    watchdog.daemon = True
    watchdog.start()
    return fault


def client_ssl(config: NodeConfig) -> ssl.SSLContext | None:
    """The TLS context of the client ports (HTTP, binary), reloaded when its files change;
    None for plaintext. Raises `TlsError` if the files cannot be used."""
    if config.cert_file is None or config.key_file is None:
        return None
    ca = config.trusted_ca_file if config.client_cert_auth else None
    # TlsFiles wants a CA file to watch; without client certificates there is none, and
    # the certificate stands in (watched twice, read once).
    files = TlsFiles(config.cert_file, config.key_file, ca or config.cert_file)
    return Reloading(files, lambda f: client_port_context(f.cert, f.key, ca)).serving()


def startup_line(config: NodeConfig, chosen: int) -> str:
    """Where the node serves what: only the endpoints it has, and how far its log goes."""
    parts = [f"peers on {config.peer_listen}" if config.consensus else "no peers"]
    if config.http is not None:
        parts.append(f"HTTP on {config.http}")
    if config.client is not None:
        parts.append(f"binary clients on {config.client}")
    if config.http is None and config.client is None:
        parts.append("no client endpoint (give --http or --client)")
    elif config.cert_file is not None:
        parts.append("clients over TLS" + (" with client certificates"
                                           if config.client_cert_auth else ""))
    if config.consensus:
        parts.append(f"data in {config.data_dir}, {chosen} slots chosen")
        parts.append("peers over mutual TLS" if config.peer_tls is not None
                     else "peers in plaintext")
    else:
        parts.append("NO CONSENSUS: benchmark mode")
    return ", ".join(parts)


def serve(config: NodeConfig, *, cluster_id_given: bool = False) -> int:
    """Run one node until SIGINT/SIGTERM or its removal from the cluster (exit status 0)
    or a storage fault (`EXIT_DISK_FAULT`). Raises `StartError` if it cannot start.
    With `config.join`, it joins the cluster first (`pnyx.node.join`);
    `cluster_id_given`: `--cluster-id` was set, and the cluster must have that id."""
    try:
        config.check_addresses()
        if config.peer_tls is not None:
            config.peer_tls.check()
        client_ssl(config)  # the client ports' TLS files: fail now, in one line
    except (ConfigError, TlsError) as exc:
        raise StartError(str(exc)) from None
    exposed = config.exposed_without_tls()
    if exposed and not config.insecure:
        raise StartError(
            f"{' and '.join(exposed)}: beyond loopback without TLS, anyone who reaches the "
            f"port could speak as a member or client; make certificates with `pnyx certs init "
            f"DIR` and `pnyx certs issue DIR --node-id {config.node_id} --host HOST` "
            "(README: Security), or pass --insecure")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s node {config.node_id} %(levelname)s %(message)s")
    if config.insecure:
        log.warning("INSECURE (--insecure): %s without TLS; any process that reaches "
                    "them can speak as a member or client", ", ".join(exposed) or "nothing")
    # A node holds its whole log in dicts of millions of entries, which every full
    # collection of the cyclic GC walks (tens of milliseconds each, a tail on every
    # request). pnyx makes little cyclic garbage, so collect the old generations
    # far less often: the 256-client p99 drops ~2x in `pnyx bench`.
    gc.set_threshold(700, 50, 100)
    join_peers = None
    if config.join and config.consensus:
        from pnyx.node.join import JoinError, prepare

        check_data_dir(config.data_dir)
        try:
            joined = prepare(config, cluster_id_given=cluster_id_given)
        except JoinError as exc:
            raise StartError(str(exc)) from None
        config, join_peers = joined.config, joined.peers
        try:
            config.check_addresses()
        except ConfigError as exc:
            raise StartError(str(exc)) from None
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def main() -> BaseException | None:
        stop: asyncio.Queue[int] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.put_nowait, sig)
        return await _serve(config, stop, join_peers)

    return 0 if asyncio.run(main()) is None else EXIT_DISK_FAULT


