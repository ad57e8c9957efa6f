"""pnyx: Multi-Paxos for Python.

A consensus library you can embed, a replicated key-value store you can run,
and the clearest place to learn Paxos. The protocol lives in `pnyx.protocol`
(pure: no I/O, no clock, no randomness of its own); `pnyx.sim` drives it under
a seeded, faulty virtual network.
"""

__version__ = "0.1.0"

from pnyx.client import AsyncClient, Client
from pnyx.errors import (
    BadRequest,
    NotFound,
    PnyxError,
    PreconditionFailed,
    Unavailable,
    ValueTooLarge,
)
from pnyx.fastclient import AsyncFastClient, FastClient

__all__ = [
    "AsyncClient",
    "AsyncFastClient",
    "BadRequest",
    "Client",
    "FastClient",
    "NotFound",
    "PnyxError",
    "PreconditionFailed",
    "Unavailable",
    "ValueTooLarge",
    "__version__",
]
