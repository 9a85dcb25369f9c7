"""One watched mailbox: a validated row of ``rebreak.mail_connections`` (CONTRACT §3)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .addresses import email_problem, host_problem, is_loopback
from .destinations import DestinationPolicy, policy_for

__all__ = ["COLUMNS", "Account", "InvalidAccount", "account_from_row"]

#: The columns the daemon reads, in query order.
COLUMNS = (
    "id",
    "user_id",
    "email",
    "imap_host",
    "imap_port",
    "imap_security",
    "imap_username",
    "auth_method",
    "encrypted_secret",
)

SECURITIES = ("tls", "starttls", "plain")
AUTH_METHODS = ("password", "xoauth2")


class InvalidAccount(ValueError):
    """A row that cannot get a session; the message is recorded as its last_connect_error."""


@dataclass(frozen=True)
class Account:
    """Everything one session needs. ``secret`` is the decrypted password or token."""

    id: str
    user_id: str
    email: str
    host: str
    port: int
    security: str  # tls | starttls | plain
    username: str
    auth_method: str  # password | xoauth2
    secret: str = field(repr=False)

    @property
    def connection_key(self) -> tuple[Any, ...]:
        """What, when changed, requires a new connection (CONTRACT §7)."""
        return (self.host, self.port, self.security, self.username, self.auth_method,
                self.secret)

    @property
    def label(self) -> str:
        """The log prefix, ``[idle/<email>]``."""
        return f"[idle/{self.email}]"


def _shown(value: Any) -> str:
    """A row's value in an error text: its repr (control characters escaped), cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def account_from_row(row: Mapping[str, Any], decrypt: Callable[[str], str],
                     policy: DestinationPolicy | None = None) -> Account:
    """Validate a row and decrypt its secret; raise :class:`InvalidAccount` (or the
    decryptor's :class:`~rebreak_idle.accounts.secrets.SecretError`) when it cannot be watched.
    ``policy`` (default: no private addresses allowed) refuses an address literal that the
    daemon may not connect to; a name is checked on each connection's address."""
    host = (row.get("imap_host") or "").strip()
    if not host:
        raise InvalidAccount("invalid settings: imap_host is empty")
    problem = host_problem(host)
    if problem is not None:
        raise InvalidAccount(f"invalid settings: imap_host {problem}")
    refused = (policy or policy_for()).problem(host)
    if refused is not None:
        raise InvalidAccount(refused)
    port = row.get("imap_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidAccount(f"invalid settings: imap_port {_shown(port)} is outside 1-65535")
    security = (row.get("imap_security") or "").strip().lower()
    if security not in SECURITIES:
        raise InvalidAccount(
            f"invalid settings: imap_security {_shown(row.get('imap_security'))} is not one of "
            "tls, starttls, plain"
        )
    if security == "plain" and not is_loopback(host):
        raise InvalidAccount(
            f"invalid settings: imap_security 'plain' is refused for non-loopback host {host}"
        )
    method = (row.get("auth_method") or "password").strip().lower()
    if method not in AUTH_METHODS:
        raise InvalidAccount(
            f"invalid settings: auth_method {_shown(row.get('auth_method'))} is not one of "
            "password, xoauth2"
        )
    email = (row.get("email") or "").strip()
    problem = email_problem(email)
    if problem is not None:
        raise InvalidAccount(f"invalid settings: email {problem}")
    username = (row.get("imap_username") or "").strip() or email
    if not username:
        raise InvalidAccount("invalid settings: neither imap_username nor email is set")
    secret = decrypt(row.get("encrypted_secret"))
    return Account(
        id=str(row["id"]),
        user_id=str(row["user_id"]),
        email=email or username,
        host=host,
        port=port,
        security=security,
        username=username,
        auth_method=method,
        secret=secret,
    )
