"""The IMAP client room: ``IdleClient`` (an ``IMAP4Client`` with IDLE) and its errors.

``from rebreak_idle import imap; imap.IdleClient`` and
``from rebreak_idle.imap import IdleClient, AuthenticationFailed`` both work.
"""

from .client import IdleClient
from .errors import *  # noqa: F403  (the errors are public names of the package)
from .errors import __all__ as _errors
from .idle import IdleState

__all__ = ["IdleClient", "IdleState", *_errors]
