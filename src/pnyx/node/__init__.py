"""The node runtime: the pure replica driven by asyncio, real TCP and a real disk.

`config` holds what one node must know (its id, the cluster, addresses,
timeouts) and parses it from flags or TOML; `transport` carries framed
messages between nodes over TCP; `ports` names what a driver needs (clock,
disk, network); `driver` runs a `Replica` against them — group commit,
persist-before-send, timers, and the requests waiting for their commands
(`requests`) — for the node and the simulator alike; `runtime` is that driver
over asyncio, TCP and SQLite; `direct` is the same API with no consensus;
`metrics` is what a node counts.
"""

from typing import TYPE_CHECKING, Any

from pnyx.node.config import Address, ConfigError, NodeConfig

if TYPE_CHECKING:
    from pnyx.node.runtime import Node

__all__ = ["Address", "ConfigError", "Node", "NodeConfig"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the simulator, which runs the driver, loads no asyncio or TCP.
    if name == "Node":
        from pnyx.node.runtime import Node

        return Node
    raise AttributeError(f"module 'pnyx.node' has no attribute {name!r}")
