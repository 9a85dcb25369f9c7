"""The one loopback check (which hosts may get credentials without TLS), and the one
check of what a row may name as its server (:func:`host_problem`, :func:`email_problem`).
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["MAX_EMAIL", "email_problem", "host_problem", "is_loopback"]

#: RFC 5321 §4.5.3.1: a path is at most 256 octets with its angle brackets, so an address
#: is at most 254
MAX_EMAIL = 254
#: RFC 1035 §2.3.4: names of at most 253 characters (255 octets on the wire), labels 1-63
MAX_HOST = 253
MAX_LABEL = 63
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_CONTROL = re.compile("[\x00-\x20\x7f-\x9f\u2028\u2029]")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot be connected to, or None: an IPv4 or IPv6 address (no
    brackets, no zone), or a DNS name of at most 253 characters whose labels are 1-63
    letters, digits, ``-`` or ``_`` (not starting or ending with ``-``); an
    internationalised name is checked in its IDNA form. Never repeats control
    characters."""
    if not host:
        return "is empty"
    if _CONTROL.search(host):
        return "contains spaces or control characters"
    if host.startswith("[") or host.endswith("]"):
        return "must be written without brackets (e.g. ::1, not [::1])"
    if ":" in host:
        return None if _ip(host) is not None else "is not a valid IPv6 address"
    if _ip(host) is not None:
        return None
    name = host[:-1] if host.endswith(".") else host
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return "is not a valid internationalised host name"
    if len(name) > MAX_HOST:
        return f"is longer than {MAX_HOST} characters"
    for label in name.split("."):
        if not label:
            return "has an empty label"
        if len(label) > MAX_LABEL:
            return f"has a label longer than {MAX_LABEL} characters"
        if _LABEL.fullmatch(label) is None:
            return "is not a valid host name"
    return None


def email_problem(email: str) -> str | None:
    """Why ``email`` cannot be a row's address, or None: at most :data:`MAX_EMAIL`
    characters, no spaces or control characters (it is part of every log line)."""
    if len(email) > MAX_EMAIL:
        return f"is longer than {MAX_EMAIL} characters"
    if _CONTROL.search(email):
        return "contains spaces or control characters"
    return None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1), also written as
    ``[::1]`` or with an IPv6 zone (``::1%lo``)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return False
