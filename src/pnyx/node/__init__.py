"""The node runtime: the pure replica driven by asyncio, real TCP and a real disk.

`config` holds what one node must know (its id, the cluster, addresses,
timeouts) and parses it from flags or TOML; `transport` carries framed
messages between nodes over TCP; `runtime` runs a `Replica`: timers, group
commit to durable storage, sending, and completing the requests that wait
for their commands to be chosen and applied.
"""

from pnyx.node.config import Address, ConfigError, NodeConfig
from pnyx.node.runtime import Node

__all__ = ["Address", "ConfigError", "Node", "NodeConfig"]
