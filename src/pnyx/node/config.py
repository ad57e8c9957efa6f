"""What one node of a cluster must know: the one path from flags or TOML to a `ReplicaConfig`.

A cluster starts as a set of members (`--cluster`: the first configuration),
each with an id and the address other nodes reach it at; members are added
and removed later through the log (`pnyx.protocol.multipaxos.membership`). A
node added later starts with `--join` instead of `--cluster`: it asks members
(their HTTP endpoints) to add it, and learns the first configuration and the
cluster id from their answer (`pnyx.cli.serve`); until then its `members` are
empty. A node also has its own addresses: where it listens for peers
(`listen`, which may differ from the address it is known by, for NAT and
containers; `advertise_peer` is that address for a joining node), where it
serves HTTP and the binary client protocol, and its data directory.

`SETTINGS` defines every setting once — its TOML key, its `pnyx serve` flag,
how it is read, its default and its help — and the flag parser, the TOML
loader and the README's table are all made from it. `NodeConfig` validates
the values together, with one-line errors (`ConfigError`), and
`NodeConfig.replica_config()` is the one place a node's `ReplicaConfig` is
built.

Defaults: every protocol setting defaults to `ReplicaConfig`'s own default,
read from that class (no copies here), except the timing of `DEPLOYMENT_TIMING`
below — the one deliberate difference between a node on real machines and a
replica in the simulator.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from pnyx.protocol.multipaxos import ReplicaConfig
from pnyx.protocol.multipaxos.config import check_read_lease
from pnyx.protocol.quorum import QuorumSystem
from pnyx.tls import TlsFiles


class ConfigError(ValueError):
    """A configuration that cannot work; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, what: str = "address") -> Address:
        m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\s]+):(\d+)", text.strip())
        if m is None:
            raise ConfigError(f"{what} {text!r} is not host:port")
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4))
        if not 0 < port < 65536:
            raise ConfigError(f"{what} {text!r}: port {port} is outside 1..65535")
        return cls(host, port)

    def resolve(self, what: str) -> None:
        """Fail now, with one line, if the host name does not resolve."""
        try:
            socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"{what} {self}: cannot resolve {self.host!r} ({exc})") from None


def parse_cluster(text: str) -> dict[int, Address]:
    """`1=127.0.0.1:7001,2=127.0.0.1:7002` → {1: Address, 2: Address}."""
    members: dict[int, Address] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        ident, sep, addr = part.partition("=")
        if not sep or not ident.strip().isdigit():
            raise ConfigError(f"cluster member {part!r} is not ID=host:port")
        node_id = int(ident)
        if node_id in members:
            raise ConfigError(f"cluster member {node_id} is listed twice")
        members[node_id] = Address.parse(addr, f"address of member {node_id}")
    if not members:
        raise ConfigError("the cluster has no members")
    return members


def parse_endpoints(text: str, what: str = "--join") -> tuple[Address, ...]:
    """`127.0.0.1:8001,127.0.0.1:8002` → (Address, Address): members' HTTP endpoints."""
    endpoints = tuple(Address.parse(part, f"{what} endpoint")
                      for part in filter(None, (p.strip() for p in text.split(","))))
    if not endpoints:
        raise ConfigError(f"{what}: no endpoint given (HOST:PORT,...)")
    return endpoints


# ReplicaConfig's timing (20 ms heartbeats, elections after 100-200 ms of silence)
# suits the simulator, whose network delivers in a few milliseconds and whose
# disks never stall. A node on real machines also sees fsync stalls, GC pauses and
# network jitter of tens of milliseconds; an election timeout that short would
# depose healthy leaders. So a node waits longer, and everything else is the same.
DEPLOYMENT_TIMING: Final[Mapping[str, float]] = {"heartbeat_interval": 0.05,
                                                 "election_timeout": 0.3}

# The replica takes no snapshots unless told (the simulator and unit tests choose
# their own); a node runs for months, so it takes one every 100,000 commands
# (etcd's count) or 64 MiB of them, and keeps the slots of 5,000 commands below it
# (etcd keeps 5,000 entries for followers a little behind).
DEPLOYMENT_SNAPSHOTS: Final[Mapping[str, int]] = {"snapshot_every": 100_000,
                                                  "snapshot_bytes": 64 << 20,
                                                  "snapshot_tail": 5000}

# A value written through the API travels in a command that also holds its key
# (at most 1024 bytes), the client's id and the encoding: this much room is kept.
VALUE_HEADROOM: Final = 4096

# One message (a batch, a catch-up, a part of a promise) must fit in a peer frame
# (node/transport.py's DEFAULT_MAX_FRAME, 32 MiB) with room for its encoding.
MAX_MESSAGE_BYTES: Final = 16 << 20


def _replica_default(name: str) -> Any:
    return ReplicaConfig.__dataclass_fields__[name].default


def _default(name: str) -> Any:
    for deployment in (DEPLOYMENT_TIMING, DEPLOYMENT_SNAPSHOTS):
        if name in deployment:
            return deployment[name]
    return _replica_default(name)


Kind = Literal["id", "cluster", "path", "address", "name", "seconds", "count", "bytes", "off",
               "on", "endpoints"]


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: TOML key `key`, flag `flag`, NodeConfig field `field`.

    A "seconds" setting is seconds in TOML and milliseconds on its flag; an
    "off" setting is a boolean whose flag turns it off (`--no-prevote`), an "on" setting
    one whose flag turns it on (`--insecure`)."""

    key: str
    flag: str
    kind: Kind
    help: str
    field: str = ""
    replica: bool = False  # passed on to ReplicaConfig
    metavar: str | None = None
    off: str = ""  # an "off" setting's flag: what turning it off does

    @property
    def name(self) -> str:
        return self.field or self.key


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("id", "--id", "id", "this node's id in the cluster", field="node_id"),
    Setting("cluster", "--cluster", "cluster",
            "every member of the cluster's first configuration and the address its peers "
            "reach it at (members added later are learned from the log)",
            field="members", metavar="ID=HOST:PORT,..."),
    Setting("join", "--join", "endpoints",
            "instead of --cluster: ask these members (their HTTP host:port) to add this node, "
            "and learn the cluster from their answer (an empty data directory only; ignored "
            "once it holds data)", metavar="HOST:PORT,..."),
    Setting("advertise_peer", "--advertise-peer", "address",
            "with --join: the address peers reach this node at, when it is not --listen "
            "(NAT, containers)"),
    Setting("join_learner", "--join-as-learner", "on",
            "with --join: be added as a learner the leader does not promote by itself (for "
            "`pnyx member replace OLD NEW`, which promotes it and removes OLD in one change)",
            off="with --join: be added as a learner the leader does not promote by itself "
            "(for `pnyx member replace OLD NEW`, which promotes it and removes OLD in one "
            "change)"),
    Setting("incarnation", "--incarnation", "count",
            "with --join: start as the member the cluster already lists under this id with "
            "this incarnation (added by `pnyx member add`; `pnyx member list --json` shows "
            "it). Only for a node that never ran: one that lost its data must be replaced "
            "(0: draw a new one)"),
    Setting("data_dir", "--data-dir", "path", "where the node keeps its log"),
    Setting("http", "--http", "address", "serve the HTTP API here"),
    Setting("client", "--client", "address",
            "serve the binary client protocol here (the fast path)"),
    Setting("listen", "--listen", "address",
            "listen for peers here instead of at our cluster address (NAT, containers)"),
    Setting("cluster_id", "--cluster-id", "name",
            "the cluster's name; a store of another cluster is refused"),
    Setting("fsync", "--unsafe-no-fsync", "off",
            "fsync the log before a record counts as durable; false loses acknowledged "
            "writes on power loss (benchmarks only)",
            off="do not fsync: fast, and loses acknowledged writes on power loss "
            "(benchmarks only)"),
    Setting("consensus", "--no-consensus", "off",
            "false: apply commands directly, with no log, peers or fsync: the cost floor of "
            "the stack (benchmarks only; one member)",
            off="apply commands directly, with no log, no peers and no fsync: the cost "
            "floor of the stack (benchmarks only; one member)"),
    Setting("heartbeat_interval", "--heartbeat", "seconds",
            "how often the leader tells followers it is alive", replica=True),
    Setting("election_timeout", "--election-timeout", "seconds",
            "silence before a follower stands for election (each wait is drawn from "
            "[this, 2 x this))", replica=True),
    Setting("prevote", "--no-prevote", "off",
            "ask whether a majority also misses the leader before starting an election",
            replica=True, off="start elections without asking first (no pre-vote)"),
    Setting("request_timeout", "--request-timeout", "seconds",
            "how long a client request may wait for its outcome"),
    Setting("read_timeout", "--read-timeout", "seconds",
            "how long a linearizable or quorum read may take before it fails",
            replica=True),
    Setting("read_lease", "--read-lease", "seconds",
            "leader leases for linearizable reads (0: off): the leader answers them at "
            "once, for this long after a heartbeat round a quorum acked, and members that "
            "acked promise no other ballot for an election timeout. Set it on every member, "
            "below the election timeout; safe while clock rates differ by less than "
            "(election timeout - lease) / election timeout", replica=True),
    Setting("window", "--window", "count", "slots in flight at once", replica=True),
    Setting("max_batch", "--max-batch", "count",
            "commands per slot; 1 turns batching off", replica=True),
    Setting("max_batch_bytes", "--max-batch-bytes", "bytes",
            "bytes of commands per slot, and per message of forwarded commands", replica=True),
    Setting("max_command", "--max-command", "bytes",
            f"the largest command; a value may be this less {VALUE_HEADROOM} bytes",
            replica=True),
    Setting("catchup_chunk", "--catchup-chunk", "count",
            "chosen slots per catch-up message", replica=True),
    Setting("catchup_bytes", "--catchup-bytes", "bytes",
            "bytes of chosen values per catch-up message", replica=True),
    Setting("snapshot_every", "--snapshot-every", "count",
            "take a snapshot once this many commands were applied since the last "
            "(0: never on this count)", replica=True),
    Setting("snapshot_bytes", "--snapshot-every-bytes", "bytes",
            "take a snapshot once this many bytes of commands were applied since the "
            "last (0: never on this count)", replica=True),
    Setting("snapshot_tail", "--snapshot-tail", "count",
            "commands kept in the log below a snapshot (whole slots), for followers a "
            "little behind", replica=True),
    # TLS between members (etcd's names): all three, or none for plaintext peers.
    Setting("peer_cert_file", "--peer-cert-file", "path",
            "this member's certificate for its peers (`pnyx certs issue`); with the next "
            "two, peers talk mutual TLS", metavar="FILE"),
    Setting("peer_key_file", "--peer-key-file", "path",
            "the key of --peer-cert-file", metavar="FILE"),
    Setting("peer_trusted_ca_file", "--peer-trusted-ca-file", "path",
            "the cluster's CA: a peer must present a certificate from it naming the node id "
            "it claims", metavar="FILE"),
    # TLS for clients on the HTTP and binary ports (etcd's names).
    Setting("cert_file", "--cert-file", "path",
            "serve HTTPS and the binary protocol over TLS with this certificate (a member's "
            "from `pnyx certs issue` will do: it names the hosts clients dial)",
            metavar="FILE"),
    Setting("key_file", "--key-file", "path", "the key of --cert-file", metavar="FILE"),
    Setting("client_cert_auth", "--client-cert-auth", "on",
            "clients must present a certificate from --trusted-ca-file",
            off="clients must present a certificate from --trusted-ca-file"),
    Setting("trusted_ca_file", "--trusted-ca-file", "path",
            "the CA client certificates must chain to (with --client-cert-auth)",
            metavar="FILE"),
    # Limits on client connections (pnyx.api.limits.ClientLimits holds the same defaults).
    Setting("body_timeout", "--body-timeout", "seconds",
            "an HTTP request body, or a binary frame once started, must arrive within this; "
            "else 408 (HTTP) and the connection is closed"),
    Setting("idle_timeout", "--idle-timeout", "seconds",
            "a client connection with no request in progress (nor its headers arriving) is "
            "closed after this"),
    Setting("max_connections", "--max-connections", "count",
            "client connections per port (HTTP, binary); more are refused at once"),
    Setting("max_inflight", "--max-inflight", "count",
            "requests of one binary connection at the node at once; past that the node "
            "stops reading from it until some finish"),
    Setting("max_pending", "--max-pending", "count",
            "admission control: client requests at the node at once, over every "
            "connection and port; past that one is refused at once (HTTP 503 overloaded)"),
    Setting("insecure", "--insecure", "on",
            "serve on a non-loopback address without TLS (refused otherwise)",
            off="serve on a non-loopback address without TLS (refused otherwise; logs a "
            "warning and /v1/status says insecure)"),
)
_BY_KEY: Final = {s.key: s for s in SETTINGS}
REQUIRED: Final = ("node_id", "members", "data_dir")


def _default_text(s: Setting) -> str:
    if s.name in REQUIRED:
        return "required" if s.name != "members" else "required, or --join"
    if s.kind in ("off", "on"):
        return "true" if s.kind == "off" else "false"
    if s.name == "listen":
        return "the member address"
    if s.name == "advertise_peer":
        return "--listen"
    if NodeConfig.__dataclass_fields__[s.name].default in (None, ()):
        return "none"
    value = _default(s.name) if (s.replica or s.name in DEPLOYMENT_TIMING) else (
        NodeConfig.__dataclass_fields__[s.name].default)
    if s.kind == "seconds":
        return f"{value * 1000:g} ms"
    if s.kind == "bytes" and value % 1024 == 0:
        return f"{value // 1024} KiB" if value < 1 << 20 else f"{value / (1 << 20):g} MiB"
    return str(value)


def settings_table() -> str:
    """The README's table of every setting, made from `SETTINGS`."""
    rows = ["| TOML key | `pnyx serve` flag | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        flag = s.flag if s.kind in ("off", "on") else f"{s.flag} {s.metavar or _METAVAR[s.kind]}"
        key = f"`{s.key}`" + (" (seconds)" if s.kind == "seconds" else "")
        rows.append(f"| {key} | `{flag}` | {_default_text(s)} | {s.help} |")
    return "\n".join(rows) + "\n"


_METAVAR: Final[Mapping[Kind, str]] = {
    "id": "N", "cluster": "ID=HOST:PORT,...", "path": "DIR", "address": "HOST:PORT",
    "name": "NAME", "seconds": "MS", "count": "N", "bytes": "BYTES", "off": "", "on": "",
    "endpoints": "HOST:PORT,...",
}


def flag_help(s: Setting) -> str:
    """The `pnyx serve --help` text of a setting's flag."""
    if s.kind in ("off", "on"):
        return s.off
    default = _default_text(s)
    return f"{s.help} ({default if default.startswith('required') else 'default ' + default})"


def metavar(s: Setting) -> str:
    return s.metavar or _METAVAR[s.kind]


def _integer(text: object, what: str) -> int:
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ConfigError(f"{what}: {text!r} is not an integer")
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not an integer") from None


def read_setting(s: Setting, raw: object, source: Literal["flag", "toml"]) -> Any:
    """One value as a flag (text) or TOML (typed) gives it; ConfigError if it is not one."""
    what = s.flag if source == "flag" else s.key
    if s.kind in ("off", "on"):
        if source == "flag":
            return s.kind == "on"
        if not isinstance(raw, bool):
            raise ConfigError(f"{what}: {raw!r} is not true or false")
        return raw
    if s.kind in ("id", "count", "bytes"):
        return _integer(raw, what)
    if s.kind == "seconds":
        if source == "flag":
            try:
                return float(str(raw)) / 1000.0
            except ValueError:
                raise ConfigError(f"{what}: {raw!r} is not a number of milliseconds") from None
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(f"{what}: {raw!r} is not a number of seconds")
        return float(raw)
    if not isinstance(raw, str):
        raise ConfigError(f"{what}: {raw!r} is not a string")
    if s.kind == "cluster":
        return parse_cluster(raw)
    if s.kind == "endpoints":
        return parse_endpoints(raw, what)
    if s.kind == "address":
        return Address.parse(raw, what)
    if s.kind == "path":
        return Path(raw)
    return raw


def snapshot_phase(node_id: int) -> float:
    """This member's `ReplicaConfig.snapshot_phase`: the fractional parts of multiples of
    the golden ratio, which any few consecutive ids spread far apart (ids 1, 2, 3: 0.62,
    0.24, 0.85), so no two members' snapshots and compactions fall together."""
    return (node_id * 0.6180339887498949) % 1.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int
    # The first configuration's members and the address each is reached at (empty for
    # a joining node until the cluster answered it: `joining`).
    members: dict[int, Address]
    data_dir: Path
    join: tuple[Address, ...] = ()  # members' HTTP endpoints to ask to add this node
    advertise_peer: Address | None = None  # where a joining node's peers reach it
    join_learner: bool = False  # joining: not promoted by the leader by itself
    incarnation: int = 0  # joining: the incarnation to join under (0: draw one)
    listen: Address | None = None  # where to listen for peers; default: our member address
    http: Address | None = None
    client: Address | None = None  # the binary client protocol
    cluster_id: str = "pnyx"
    fsync: bool = True
    consensus: bool = True  # False: apply commands directly, one node (benchmarks only)
    request_timeout: float = 5.0
    # Passed on to ReplicaConfig by replica_config(); defaults as described above.
    heartbeat_interval: float = _default("heartbeat_interval")
    election_timeout: float = _default("election_timeout")
    prevote: bool = _default("prevote")
    read_timeout: float = _default("read_timeout")
    read_lease: float = _default("read_lease")
    window: int = _default("window")
    max_batch: int = _default("max_batch")
    max_batch_bytes: int = _default("max_batch_bytes")
    max_command: int = _default("max_command")
    catchup_chunk: int = _default("catchup_chunk")
    catchup_bytes: int = _default("catchup_bytes")
    snapshot_every: int = _default("snapshot_every")
    snapshot_bytes: int = _default("snapshot_bytes")
    snapshot_tail: int = _default("snapshot_tail")
    peer_cert_file: Path | None = None  # TLS between members: all three or none
    peer_key_file: Path | None = None
    peer_trusted_ca_file: Path | None = None
    insecure: bool = False  # serving a non-loopback address without TLS was asked for
    cert_file: Path | None = None  # TLS on the client ports: cert and key, or neither
    key_file: Path | None = None
    client_cert_auth: bool = False
    trusted_ca_file: Path | None = None
    body_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 4096
    max_inflight: int = 4096
    max_pending: int = 1024

    def __post_init__(self) -> None:
        if self.join:
            if self.listen is None:
                raise ConfigError("--join needs --listen: where this node listens for peers "
                                  "(and, unless --advertise-peer, where they reach it)")
            if self.peer_address.host in _WILDCARD:
                raise ConfigError(f"peers cannot dial {self.peer_address}: give "
                                  "--advertise-peer HOST:PORT, the address they reach us at")
        elif self.advertise_peer is not None or self.join_learner or self.incarnation:
            raise ConfigError("--advertise-peer, --join-as-learner and --incarnation go with "
                              "--join (a member of --cluster is reached at its --cluster "
                              "address, and votes from the start)")
        if self.incarnation < 0:
            raise ConfigError(f"incarnation must be 0 or more, not {self.incarnation}")
        if self.node_id not in self.members and not self.join:
            raise ConfigError(
                f"node id {self.node_id} is not in the cluster "
                f"({', '.join(map(str, sorted(self.members)))})"
            )
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", self.cluster_id):
            raise ConfigError(f"cluster id {self.cluster_id!r}: use 1-64 of A-Z a-z 0-9 . _ -")
        if not 0 < self.heartbeat_interval < self.election_timeout:
            raise ConfigError("the heartbeat interval must be more than 0 and less than the "
                              f"election timeout ({self.heartbeat_interval * 1000:g} ms, "
                              f"{self.election_timeout * 1000:g} ms)")
        try:  # checked here too, not only by replica_config(): a joining node has none yet
            check_read_lease(self.read_lease, self.election_timeout)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("--cert-file and --key-file go together: TLS for clients "
                              "needs both")
        if self.client_cert_auth and (self.cert_file is None or self.trusted_ca_file is None):
            raise ConfigError("--client-cert-auth needs --cert-file, --key-file and "
                              "--trusted-ca-file: client certificates are checked over TLS")
        for name in ("max_connections", "max_inflight", "max_pending"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("request_timeout", "read_timeout", "body_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be positive")
        for name in ("snapshot_every", "snapshot_bytes", "snapshot_tail"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")
        for name in ("window", "max_batch", "catchup_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("max_batch_bytes", "max_command", "catchup_bytes"):
            if not 1 <= getattr(self, name) <= MAX_MESSAGE_BYTES:
                raise ConfigError(f"{name} must be 1..{MAX_MESSAGE_BYTES} bytes "
                                  f"(one message must fit a peer frame), not {getattr(self, name)}")
        if self.max_command <= VALUE_HEADROOM:
            raise ConfigError(f"max_command {self.max_command} leaves no room for a value: "
                              f"it must be more than {VALUE_HEADROOM} bytes")
        if self.max_command > self.max_batch_bytes:
            raise ConfigError(f"max_command ({self.max_command}) must not exceed "
                              f"max_batch_bytes ({self.max_batch_bytes}): a slot holds a command")
        peer_tls = (self.peer_cert_file, self.peer_key_file, self.peer_trusted_ca_file)
        if any(f is None for f in peer_tls) and any(f is not None for f in peer_tls):
            raise ConfigError("--peer-cert-file, --peer-key-file and --peer-trusted-ca-file "
                              "go together: TLS between members needs all three")
        if not self.consensus and (len(self.members) != 1 or self.join):
            raise ConfigError("without consensus a node cannot have peers: use one member")
        if self.joining:
            return  # no configuration yet: the cluster's answer gives it
        try:
            self.replica_config()
        except ValueError as exc:  # a rule of ReplicaConfig's that the checks above missed
            raise ConfigError(str(exc)) from None

    def replica_config(self) -> ReplicaConfig:
        """The node's replica settings: the one place a node builds its `ReplicaConfig`."""
        members = tuple(sorted(self.members))
        tuning = {s.name: getattr(self, s.name) for s in SETTINGS if s.replica}
        return ReplicaConfig(members, QuorumSystem.majority(members), **tuning,
                             snapshot_phase=snapshot_phase(self.node_id))

    @property
    def max_value(self) -> int:
        """The largest value a client may write (`max_command` less the command's headroom)."""
        return self.max_command - VALUE_HEADROOM

    @property
    def joining(self) -> bool:
        """Started with --join and not yet told the cluster's first configuration."""
        return bool(self.join) and not self.members

    @property
    def peer_listen(self) -> Address:
        if self.listen is not None:
            return self.listen
        return self.members[self.node_id]

    @property
    def peer_address(self) -> Address:
        """Where the peers reach this node: its member address (or, joining, the
        advertised one, else where it listens)."""
        if self.advertise_peer is not None:
            return self.advertise_peer
        if self.node_id in self.members:
            return self.members[self.node_id]
        return self.peer_listen

    @property
    def peer_tls(self) -> TlsFiles | None:
        """The files of TLS between members, or None: peers talk plaintext."""
        if self.peer_cert_file is None or self.peer_key_file is None or (
                self.peer_trusted_ca_file is None):
            return None
        return TlsFiles(self.peer_cert_file, self.peer_key_file, self.peer_trusted_ca_file)

    def exposed_without_tls(self) -> list[str]:
        """The endpoints served beyond loopback without TLS (which `pnyx serve` refuses
        unless `insecure`): anyone who can reach them could speak as a member or a client."""
        exposed = []
        if self.consensus and self.peer_tls is None and not is_loopback(self.peer_listen):
            exposed.append(f"peers on {self.peer_listen}")
        client_tls = self.cert_file is not None  # the client ports' TLS (HTTP and binary)
        for what, addr in (("HTTP", self.http), ("binary clients", self.client)):
            if addr is not None and not client_tls and not is_loopback(addr):
                exposed.append(f"{what} on {addr}")
        return exposed

    def check_addresses(self) -> None:
        """Resolve every address now, so a typo fails at start instead of looping later."""
        for node_id, addr in sorted(self.members.items()):
            addr.resolve(f"member {node_id}")
        self.peer_listen.resolve("listen address")
        for endpoint in self.join:
            endpoint.resolve("--join endpoint")
        if self.http is not None:
            self.http.resolve("HTTP address")
        if self.client is not None:
            self.client.resolve("client address")

    @classmethod
    def load(cls, path: str | Path | None, overrides: Mapping[str, Any]) -> NodeConfig:
        """A configuration from a TOML file (or none) and `overrides` (by field; None = unset),
        which win over the file. Every problem is one `ConfigError` line."""
        values = cls.read_toml(path) if path is not None else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        flags = {s.name: s.flag for s in SETTINGS}
        if values.get("join") and "members" not in values:
            values["members"] = {}  # the cluster's answer to the join gives them
        for required in REQUIRED:
            if required not in values:
                where = f"{path}: missing {_key_of(required)!r}" if path is not None else (
                    f"{flags[required]} is required (or give --config)")
                if required == "members":
                    where += "; a node joining a running cluster gives --join instead"
                raise ConfigError(where)
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> NodeConfig:
        """Read a node's configuration from TOML; keyword overrides win over the file.

            id = 1
            cluster = "1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001"
            data_dir = "/var/lib/pnyx"
            http = "0.0.0.0:8001"
            client = "0.0.0.0:9001"        # optional: the binary client protocol
            election_timeout = 0.5         # optional: any key of SETTINGS
        """
        return cls.load(path, overrides)

    @staticmethod
    def read_toml(path: str | Path) -> dict[str, Any]:
        """The settings a TOML file gives, by NodeConfig field."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        unknown = sorted(set(data) - set(_BY_KEY))
        if unknown:
            raise ConfigError(f"{path}: unknown setting {unknown[0]!r}")
        try:
            return {_BY_KEY[k].name: read_setting(_BY_KEY[k], v, "toml") for k, v in data.items()}
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


def is_loopback(addr: Address) -> bool:
    """Whether only this machine can reach `addr` (every address its host resolves to is
    loopback); 0.0.0.0 and :: are every interface, so not."""
    try:
        return ipaddress.ip_address(addr.host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


_WILDCARD: Final = frozenset({"", "0.0.0.0", "::", "*"})


def _key_of(name: str) -> str:
    return next(s.key for s in SETTINGS if s.name == name)
