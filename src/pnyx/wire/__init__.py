"""What travels on pnyx's TCP connections: the one framing and the client protocol's messages.

Imports only the standard library and msgspec, so a client can speak to a node
without importing any server code.

- `pnyx.wire.framing`: `encode_frame`, `FrameDecoder`, `FrameTooLarge`,
  `read_frame`, `LENGTH`, `HEADER` (peer and client protocols alike).
- `pnyx.wire.messages`: `ClientRequest`, `ClientResponse`, `ErrorCode`,
  `MAX_FRAME`, `frame`, `encoder`, `request_decoder`, `response_decoder`.
- `pnyx.wire.stream`: `FramedProtocol`, the asyncio side of both ends of the
  client protocol.
"""

from pnyx.wire.framing import HEADER, LENGTH, FrameDecoder, FrameTooLarge, encode_frame, read_frame
from pnyx.wire.messages import (
    MAX_FRAME,
    ClientRequest,
    ClientResponse,
    ErrorCode,
    encoder,
    frame,
    request_decoder,
    response_decoder,
)

__all__ = [
    "HEADER", "LENGTH", "MAX_FRAME", "ClientRequest", "ClientResponse", "ErrorCode",
    "FrameDecoder", "FrameTooLarge", "encode_frame", "encoder", "frame", "read_frame",
    "request_decoder", "response_decoder",
]
