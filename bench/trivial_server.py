"""A binary-protocol server with no node behind it: every request is answered at once, `ok=True`.

The benchmark points its load generator here to measure the generator's own
ceiling (client, framing, loopback TCP), with nothing of Paxos in the way.
It speaks `pnyx.wire` exactly as `pnyx.api.binary.serve_clients` does,
and shares its framing and write coalescing, but answers every request with
an empty result (a status with a stub status object).

    python bench/trivial_server.py --port 7100 [--host 127.0.0.1] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import msgspec

from pnyx import wire
from pnyx.wire.stream import FramedProtocol

_STATUS = msgspec.json.encode({"id": 0, "role": "trivial", "leader": None, "commit_index": 0,
                               "applied_index": 0, "members": {}})


class TrivialConnection(FramedProtocol):
    def frame_received(self, view: memoryview) -> bool:
        try:
            request = wire.request_decoder.decode(view)
        except (msgspec.MsgspecError, ValueError):
            self.protocol_error("malformed request")
            return False
        if request.op == "status":
            # A status shaped like a node's, so readiness checks work unchanged.
            self.send(wire.ClientResponse(request.id, True, _STATUS))
        else:
            self.send(wire.ClientResponse(request.id, True))
        return True

    def protocol_error(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int) -> asyncio.Server:
    """Start the trivial server; port 0 picks a free one (see `server.sockets`)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(TrivialConnection, host, port)


async def _main(host: str, port: int) -> None:
    server = await serve(host, port)
    bound = server.sockets[0].getsockname()
    print(f"trivial binary server on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="use uvloop if installed")
    args = parser.parse_args()
    if args.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
