"""What ``IdleClient`` inherits from Twisted's ``IMAP4Client`` and does not support.

``IdleClient`` replaces ``IMAP4Client``'s line handling, command queue, authenticators and
timeout (its ``__init__`` is never called), so the inherited commands and hooks built on
them cannot work. Each of them is overridden here to fail with a clear error naming what
to use instead: commands return a failed Deferred, hooks and helpers raise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

__all__ = ["UNSUPPORTED_COMMANDS", "UNSUPPORTED_HOOKS", "Unsupported"]

_MAILBOX = "IdleClient only selects one mailbox and waits for changes; use select()"
_FETCH = "IdleClient reports changes through on_exists / on_expunge and does not fetch"
_AUTH = "use login() (AUTH PLAIN or LOGIN) or login_xoauth2()"
_EVENTS = "IdleClient reports changes through its on_exists / on_expunge callbacks"
_READER = ("IdleClient reads lines and literals with its BoundedReader (client.reader), "
           "which dataReceived feeds")
_TIMEOUT = ("IdleClient gives every command its own deadline (command_timeout, "
            "noop_timeout) on its clock")

#: inherited commands → what to use instead (they return a failed Deferred)
UNSUPPORTED_COMMANDS: dict[str, str] = {
    "authenticate": _AUTH,
    "examine": "use select()",
    "sendCommand": "use the IdleClient command methods (select, noop, idle, ...)",
    **dict.fromkeys(("addFlags", "append", "check", "close", "copy", "create", "delete",
                     "expunge", "list", "lsub", "namespace", "removeFlags", "rename",
                     "search", "setFlags", "status", "subscribe", "unsubscribe"), _MAILBOX),
    **dict.fromkeys(("fetchAll", "fetchBody", "fetchBodyStructure", "fetchEnvelope",
                     "fetchFast", "fetchFlags", "fetchFull", "fetchHeaders",
                     "fetchInternalDate", "fetchMessage", "fetchSimplifiedBody",
                     "fetchSize", "fetchSpecific", "fetchUID"), _FETCH),
}

#: inherited hooks and helpers → why they do not apply (they raise)
UNSUPPORTED_HOOKS: dict[str, str] = {
    "registerAuthenticator": _AUTH,
    "serverGreeting": "wait for the greeted Deferred",
    "dispatchCommand": "IdleClient parses responses itself",
    "response_AUTH": "IdleClient parses responses itself",
    "response_UNAUTH": "IdleClient parses responses itself",
    "messageFile": "IdleClient keeps (bounded) literals in memory",
    "flagsChanged": _EVENTS,
    "newMessages": _EVENTS,
    "modeChanged": _EVENTS,
    "setLineMode": _READER,
    "setRawMode": _READER,
    "rawDataReceived": _READER,
    "lineLengthExceeded": _READER,
    "callLater": _TIMEOUT,
    "setTimeout": _TIMEOUT,
    "resetTimeout": _TIMEOUT,
    "timeoutConnection": _TIMEOUT,
}


def _unsupported(name: str, hint: str, *, command: bool) -> Callable[..., Any]:
    message = f"IdleClient does not implement {name}; {hint}"

    def unsupported(self: Any, *args: Any, **kwargs: Any) -> defer.Deferred:
        if command:
            return defer.fail(NotImplementedError(message))
        raise NotImplementedError(message)

    unsupported.__name__ = unsupported.__qualname__ = name
    unsupported.__doc__ = message
    return unsupported


class Unsupported:
    """The base placed before ``IMAP4Client`` in ``IdleClient``'s bases: its unsupported
    methods, overridden. It stays a base class, not an object: what it does is override
    inherited methods, which only a class in the method resolution order can do. It
    holds no state and reads nothing of the client (each method only fails), so it is
    not a mixin that needs attributes provided by its host."""


for _name, _hint in UNSUPPORTED_COMMANDS.items():
    setattr(Unsupported, _name, _unsupported(_name, _hint, command=True))
for _name, _hint in UNSUPPORTED_HOOKS.items():
    setattr(Unsupported, _name, _unsupported(_name, _hint, command=False))
del _name, _hint
