"""The pure protocol core: no module here does I/O, reads a clock or draws
randomness of its own; every input, `now` included, is passed in.

- `ballot`, `quorum`, `durability`, `codec`: the rules both families share
  (ballot order, quorum intersection, persist-before-send, decoding untrusted
  bytes);
- `synod/`: single-decree Paxos, the seed's Basic Paxos, role by role;
- `multipaxos/`: the replicated log, one Synod instance per slot, as a
  replica facade over small units (start with its cheat-sheet).
"""

from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.quorum import QuorumError, QuorumSystem

__all__ = ["ZERO", "Ballot", "QuorumError", "QuorumSystem"]
