"""Multi-Paxos: the replicated log, one instance of Paxos per slot.

Import from this package, not from its modules: `Replica` (the facade a
driver feeds with events), `ReplicaConfig`, `LogReady` (the effects of one
event), `Outcome`/`Code` (what became of a request) and the read modes.
"""

from pnyx.protocol.multipaxos.outcome import READ_MODES, Code, Outcome, ReadMode
from pnyx.protocol.multipaxos.replica import LogReady, Machine, Replica, ReplicaConfig, Role

__all__ = [
    "READ_MODES", "Code", "LogReady", "Machine", "Outcome", "ReadMode", "Replica",
    "ReplicaConfig", "Role",
]
