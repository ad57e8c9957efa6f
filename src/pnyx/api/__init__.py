"""The client-facing half of a node: the HTTP API, its contract with the node, and metrics.

- `pnyx.api.node_api`: `NodeAPI`, what the HTTP layer needs from a node.
- `pnyx.api.http`: `make_app(node)`, the aiohttp application (routes, status codes),
  and `serve_http(node, host, port, limits=, ssl=)`, which serves it as `pnyx serve` does.
- `pnyx.api.binary`: `serve_clients(node, host, port, limits=, ssl=)`, the binary protocol.
- `pnyx.api.limits`: `ClientLimits`, the bounds on client connections both ports keep.
- `Metrics` (re-exported): a node's Prometheus registry, which lives in `pnyx.node.metrics`.
"""

from typing import Any

__all__ = ["Metrics", "NodeAPI", "make_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing `pnyx.api.binary` does not load aiohttp.
    if name == "make_app":
        from pnyx.api.http import make_app

        return make_app
    if name == "Metrics":
        from pnyx.node.metrics import Metrics

        return Metrics
    if name == "NodeAPI":
        from pnyx.api.node_api import NodeAPI

        return NodeAPI
    raise AttributeError(f"module 'pnyx.api' has no attribute {name!r}")
