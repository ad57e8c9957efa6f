"""What one node of a cluster must know, from command-line values or a TOML file.

A cluster is a fixed set of members, each with an id and the address other
nodes reach it at. A node also has its own addresses: where it listens for
peers (`listen`, which may differ from the address it is known by, for NAT
and containers), where it serves HTTP, and its data directory. Everything is
validated here, once, with one-line errors (`ConfigError`).
"""

from __future__ import annotations

import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int
    members: dict[int, Address]  # every member's peer address, as the others reach it
    data_dir: Path
    listen: Address | None = None  # where to listen for peers; default: our member address
    http: Address | None = None
    client: Address | None = None  # the binary client protocol (pnyx.api.wire)
    cluster_id: str = "pnyx"
    fsync: bool = True
    heartbeat_interval: float = 0.05
    election_timeout: float = 0.3
    request_timeout: float = 5.0
    max_command: int = 1 << 20
    consensus: bool = True  # False: apply commands directly, one node (benchmarks only)

    def __post_init__(self) -> None:
        if self.node_id not in self.members:
            raise ConfigError(
                f"node id {self.node_id} is not in the cluster "
                f"({', '.join(map(str, sorted(self.members)))})"
            )
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", self.cluster_id):
            raise ConfigError(f"cluster id {self.cluster_id!r}: use 1-64 of A-Z a-z 0-9 . _ -")
        if not 0 < self.heartbeat_interval < self.election_timeout:
            raise ConfigError("need 0 < heartbeat interval < election timeout")
        if self.request_timeout <= 0:
            raise ConfigError("the request timeout must be positive")
        if not self.consensus and len(self.members) != 1:
            raise ConfigError("without consensus a node cannot have peers: use one member")

    @property
    def peer_listen(self) -> Address:
        return self.listen or self.members[self.node_id]

    def check_addresses(self) -> None:
        """Resolve every address now, so a typo fails at start instead of looping later."""
        for node_id, addr in sorted(self.members.items()):
            addr.resolve(f"member {node_id}")
        self.peer_listen.resolve("listen address")
        if self.http is not None:
            self.http.resolve("HTTP address")
        if self.client is not None:
            self.client.resolve("client address")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> NodeConfig:
        """Read a node's configuration from TOML; keyword overrides win over the file.

            id = 1
            cluster = "1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001"
            data_dir = "/var/lib/pnyx"
            http = "0.0.0.0:8001"
            client = "0.0.0.0:9001"        # optional: the binary client protocol
            listen = "0.0.0.0:7001"        # optional
            cluster_id = "prod"            # optional
        """
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        known = {"id", "cluster", "data_dir", "http", "client", "listen", "cluster_id", "fsync",
                 "heartbeat_interval", "election_timeout", "request_timeout"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown setting {unknown[0]!r}")
        values: dict[str, Any] = {}
        try:
            if "id" in data:
                values["node_id"] = int(data["id"])
            if "cluster" in data:
                values["members"] = parse_cluster(str(data["cluster"]))
            if "data_dir" in data:
                values["data_dir"] = Path(str(data["data_dir"]))
            for key in ("http", "client", "listen"):
                if key in data:
                    values[key] = Address.parse(str(data[key]), f"{key} address")
            for key in ("cluster_id",):
                if key in data:
                    values[key] = str(data[key])
            if "fsync" in data:
                values["fsync"] = bool(data["fsync"])
            for key in ("heartbeat_interval", "election_timeout", "request_timeout"):
                if key in data:
                    values[key] = float(data[key])
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{path}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        for required in ("node_id", "members", "data_dir"):
            if required not in values:
                raise ConfigError(f"{path}: missing {required.replace('node_id', 'id')!r}")
        return cls(**values)
