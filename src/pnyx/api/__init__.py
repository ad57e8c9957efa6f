"""The client-facing half of a node: the HTTP API, its contract with the node, and metrics.

- `pnyx.api.node_api`: `NodeAPI`, what the HTTP layer needs from a node.
- `pnyx.api.http`: `make_app(node)`, the aiohttp application (routes, status codes).
- `pnyx.api.metrics`: `Metrics`, a node's Prometheus registry and the calls that feed it.
"""

from pnyx.api.http import make_app
from pnyx.api.metrics import Metrics
from pnyx.api.node_api import NodeAPI

__all__ = ["Metrics", "NodeAPI", "make_app"]
