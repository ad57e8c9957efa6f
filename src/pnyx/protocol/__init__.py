"""The pure protocol core: Basic Paxos (the Synod) and the rules Multi-Paxos reuses.

No module here does I/O, reads a clock or draws randomness of its own.
"""

from pnyx.protocol.acceptor import Acceptor, AcceptorState
from pnyx.protocol.ballot import ZERO, Ballot
from pnyx.protocol.learner import Learner
from pnyx.protocol.messages import (
    Accept,
    Accepted,
    Chosen,
    Forward,
    Learned,
    MalformedMessage,
    Message,
    Prepare,
    Promise,
    Proposal,
    Rejected,
    decode,
    encode,
)
from pnyx.protocol.proposer import Phase, Proposer, RetryPolicy, choose_value
from pnyx.protocol.quorum import QuorumError, QuorumSystem
from pnyx.protocol.synod import DurableState, Ready, SynodConfig, SynodNode

__all__ = [
    "ZERO", "Accept", "Accepted", "Acceptor", "AcceptorState", "Ballot", "Chosen",
    "DurableState", "Forward", "Learned", "Learner", "MalformedMessage", "Message", "Phase",
    "Prepare", "Promise", "Proposal", "Proposer", "QuorumError", "QuorumSystem", "Ready",
    "Rejected", "RetryPolicy", "SynodConfig", "SynodNode", "choose_value", "decode", "encode",
]
