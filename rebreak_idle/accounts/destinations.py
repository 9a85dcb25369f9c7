"""Where a row may send the daemon: the destination policy.

``imap_host`` is typed by an end user, so without a policy the daemon is a port scanner
of its own network (``last_connect_error`` would tell open from closed ports). By default
a row whose server is, or resolves to, a private (RFC 1918), link-local, unique-local
(RFC 4193), CGNAT (RFC 6598, 100.64.0.0/10), multicast, reserved or cloud metadata
address (169.254.169.254, AWS's fd00:ec2::254, Alibaba's 100.100.100.200) is refused
with a clear per-row error, unless ``REBREAK_ALLOW_PRIVATE_HOSTS`` (CIDRs) allows it. A
metadata address is allowed only by an entry naming exactly it. Loopback is always
allowed (CONTRACT §3: a local IMAP proxy is a real set-up).

The check is made twice: on the row (an address literal is refused at once, no session)
and on the address each connection actually reached (:class:`CheckedEndpoint` in
:mod:`rebreak_idle.net.connecting` checks the peer before the first byte is sent or read), so
a name that resolves to a public address at one moment and a private one the next (DNS
rebinding) is refused all the same.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from ..session_errors import SessionError

__all__ = ["METADATA", "DestinationPolicy", "DestinationRefused", "kind_of", "policy_for"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: cloud instance metadata services (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS
#: IPv6: fd00:ec2::254; Alibaba: 100.100.100.200)
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "100.100.100.200"))

#: (network, what it is), checked in order; anything else that is not global is
#: "not a public address"
_KINDS: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(n), kind) for n, kind in (
        ("10.0.0.0/8", "private"), ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"), ("100.64.0.0/10", "CGNAT"),
        ("169.254.0.0/16", "link-local"), ("fe80::/10", "link-local"),
        ("fc00::/7", "unique-local"), ("fec0::/10", "site-local"),
        ("0.0.0.0/8", "unspecified"), ("::/128", "unspecified"),
        ("224.0.0.0/4", "multicast"), ("ff00::/8", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ))
#: IPv6 forms that carry an IPv4 address: NAT64 (RFC 6052) and 6to4 (RFC 3056)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")


class DestinationRefused(SessionError):
    """A row's server is an address the policy refuses (cause ``destination``)."""

    def __init__(self, text: str) -> None:
        super().__init__("destination", text)


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _embedded(address: Address) -> Address:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address, else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def kind_of(address: Address) -> str | None:
    """What kind of non-public address ``address`` is (``private``, ``CGNAT``,
    ``cloud metadata`` ...), or None for a public or loopback address."""
    address = _embedded(address)
    if address.is_loopback:
        return None
    if address in METADATA:
        return "cloud metadata"
    for network, kind in _KINDS:
        if address.version == network.version and address in network:
            return kind
    return None if address.is_global else "non-public"


class DestinationPolicy:
    """The policy for one ``REBREAK_ALLOW_PRIVATE_HOSTS`` value (shared: see
    :func:`policy_for`)."""

    __slots__ = ("_allowed",)

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allowed)

    def _allows(self, address: Address) -> bool:
        for network in self._allowed:
            if address.version != network.version or address not in network:
                continue
            if address not in METADATA or network.num_addresses == 1:
                return True
        return False

    def problem(self, address: str, host: str | None = None) -> str | None:
        """Why the daemon may not connect to ``address`` (an IP address text; ``host`` the
        row's name for the text), or None. Text that is not an address: None (a name is
        checked on the address it resolves to)."""
        parsed = _address(address)
        if parsed is None:
            return None
        kind = kind_of(parsed)
        if kind is None or self._allows(parsed) or self._allows(_embedded(parsed)):
            return None
        what = "is" if host is None or host == address else "resolves to"
        return (f"destination refused: {host or address} {what} a {kind} address "
                "(allowed only through REBREAK_ALLOW_PRIVATE_HOSTS)")

    def check_peer(self, address: str, host: str) -> None:
        """Raise :class:`DestinationRefused` when the connected peer ``address`` of
        ``host`` is refused."""
        problem = self.problem(address, host)
        if problem is not None:
            raise DestinationRefused(problem)


@functools.lru_cache(maxsize=16)
def policy_for(allowed: tuple[str, ...] = ()) -> DestinationPolicy:
    """The one policy object per allow list (10,000 sessions share it)."""
    return DestinationPolicy(allowed)
