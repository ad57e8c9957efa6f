"""pnyx: Multi-Paxos for Python.

A consensus library you can embed, a replicated key-value store you can run,
and the clearest place to learn Paxos. The protocol lives in `pnyx.protocol`
(pure: no I/O, no clock, no randomness of its own); `pnyx.sim` drives it under
a seeded, faulty virtual network.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

# The clients pull in aiohttp; load them on first use, so that importing the pure
# core (`pnyx.protocol`) or the simulator stays light.
_LAZY = {
    "AsyncClient": "pnyx.client",
    "Client": "pnyx.client",
    "AsyncFastClient": "pnyx.client",
    "FastClient": "pnyx.client",
    "BadRequest": "pnyx.errors",
    "Conflict": "pnyx.errors",
    "NotFound": "pnyx.errors",
    "PnyxError": "pnyx.errors",
    "PreconditionFailed": "pnyx.errors",
    "Unavailable": "pnyx.errors",
    "ValueTooLarge": "pnyx.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pnyx' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:
    from pnyx.client import AsyncClient, AsyncFastClient, Client, FastClient
    from pnyx.errors import (
        BadRequest,
        Conflict,
        NotFound,
        PnyxError,
        PreconditionFailed,
        Unavailable,
        ValueTooLarge,
    )

__all__ = [
    "AsyncClient",
    "AsyncFastClient",
    "BadRequest",
    "Client",
    "Conflict",
    "FastClient",
    "NotFound",
    "PnyxError",
    "PreconditionFailed",
    "Unavailable",
    "ValueTooLarge",
    "__version__",
]
