"""Single-decree Paxos (the Synod), as the seed tells it: proposer, acceptor,
learner, and `SynodNode`, which plays all three behind persist-before-send.
"""

from pnyx.protocol.synod.acceptor import Acceptor, AcceptorState
from pnyx.protocol.synod.learner import Learner
from pnyx.protocol.synod.messages import (
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
from pnyx.protocol.synod.node import DurableState, Ready, SynodConfig, SynodNode
from pnyx.protocol.synod.proposer import Phase, Proposer, RetryPolicy, choose_value

__all__ = [
    "Accept", "Accepted", "Acceptor", "AcceptorState", "Chosen", "DurableState", "Forward",
    "Learned", "Learner", "MalformedMessage", "Message", "Phase", "Prepare", "Promise",
    "Proposal", "Proposer", "Ready", "Rejected", "RetryPolicy", "SynodConfig", "SynodNode",
    "choose_value", "decode", "encode",
]
