"""The IMAP connection's state (RFC 3501 §3), ``IdleClient.state``, and its table: the
moves with the event of each, checked by the client on every move."""

from __future__ import annotations

import enum

__all__ = ["AUTH", "BYE", "CLOSED", "CONNECTION_TRANSITIONS", "GREETING", "SELECTED",
           "UNAUTH", "ConnectionState"]


class ConnectionState(enum.StrEnum):
    """The connection's IMAP state (RFC 3501 §3), ``IdleClient.state``."""

    GREETING = "greeting"  # connected, the greeting not yet received
    UNAUTH = "unauth"
    AUTH = "auth"
    SELECTED = "selected"
    BYE = "bye"            # LOGOUT runs and the server said BYE: only its answer may follow
    CLOSED = "closed"      # closing or closed: nothing more is sent or read


GREETING, UNAUTH, AUTH, SELECTED, BYE, CLOSED = ConnectionState  # fast to read
#: state → the states it may move to, with the event of each move (a server may accept
#: a login or SELECT again). "closing" is any of: connection lost, a protocol error, a
#: deadline passed, an input flood, ``* BYE`` outside LOGOUT.
CONNECTION_TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    GREETING: frozenset({
        UNAUTH,    # greeting "* OK"
        AUTH,      # greeting "* PREAUTH"
        CLOSED,    # greeting "* BYE", no greeting in time, not an IMAP greeting; closing
    }),
    UNAUTH: frozenset({
        AUTH,      # LOGIN / AUTHENTICATE answered OK
        SELECTED,  # SELECT answered OK (a server that needs no login)
        BYE,       # "* BYE" while LOGOUT runs
        CLOSED,    # closing
    }),
    AUTH: frozenset({
        AUTH,      # a login answered OK again
        SELECTED,  # SELECT answered OK
        BYE,       # "* BYE" while LOGOUT runs
        CLOSED,    # LOGOUT answered OK; closing
    }),
    SELECTED: frozenset({
        AUTH,      # a login answered OK again
        SELECTED,  # SELECT answered OK again
        BYE,       # "* BYE" while LOGOUT runs
        CLOSED,    # LOGOUT answered OK; closing
    }),
    BYE: frozenset({
        CLOSED,    # LOGOUT answered OK; any other line ("data after BYE"); closing
    }),
    CLOSED: frozenset(),
}
