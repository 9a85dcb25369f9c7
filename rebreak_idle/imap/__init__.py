"""The IMAP client room: ``IdleClient`` (an ``IMAP4Client`` with IDLE) and its errors.

``from rebreak_idle import imap; imap.IdleClient`` and
``from rebreak_idle.imap import IdleClient, AuthenticationFailed`` both work.
"""

from .client import IdleClient
from .errors import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    ConnectionLost,
    IMAPError,
    InputFlood,
    InsecureConnection,
    ProtocolError,
    ServerBye,
)
from .idle import IdleState

__all__ = [
    "AuthenticationFailed",
    "CommandFailed",
    "CommandTimeout",
    "ConnectionLost",
    "IMAPError",
    "IdleClient",
    "IdleState",
    "InputFlood",
    "InsecureConnection",
    "ProtocolError",
    "ServerBye",
]
