"""The Python clients of a pnyx cluster, and what they share.

- `pnyx.client.http`: `Client` (blocking, stdlib only) and `AsyncClient`
  (aiohttp, imported on first use), over the HTTP API.
- `pnyx.client.fast`: `AsyncFastClient` and `FastClient`, over the binary
  client protocol (`pnyx.wire`): the fast path.
- `pnyx.client.members`: the membership calls' bodies and checks, and the steps of
  `replace_member`, shared by both HTTP clients.
- `pnyx.client.common`: endpoints, argument checks, idempotency keys, the
  retry bookkeeping and the one mapping from an answer to a `pnyx.errors`
  exception, shared by both.

No client imports server code (`pnyx.api`, `pnyx.node`).
"""

from pnyx.client.common import (
    CONSISTENCY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RETRY_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_PAGE,
    parse_endpoints,
)
from pnyx.client.fast import AsyncFastClient, FastClient
from pnyx.client.http import AsyncClient, Client

__all__ = [
    "CONSISTENCY",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RETRY_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_PAGE",
    "AsyncClient",
    "AsyncFastClient",
    "Client",
    "FastClient",
    "parse_endpoints",
]
