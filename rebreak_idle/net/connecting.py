"""How a session reaches its server: the endpoint (TCP, implicit TLS, the destination
policy's checks), shared TLS contexts, TCP keepalive, and the factory of the IMAP client.
The session's own state machine decides when to connect (docs/design.md, "One machine per
connection")."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import imap
from ..accounts.account import Account
from ..accounts.destinations import DestinationPolicy, DestinationRefused
from ..session_errors import SessionError
from .tls import TLSClientEndpoint, client_tls_options

__all__ = ["CheckedHostnameEndpoint", "ClientFactory", "enable_keepalive", "server_endpoint",
           "shared_tls_creator"]

_TCP_KEEPALIVE_OPTIONS = (
    # (option name, value): first probe after 60 s idle, then every 20 s, dead after 4 misses
    ("TCP_KEEPIDLE", 60),
    ("TCP_KEEPINTVL", 20),
    ("TCP_KEEPCNT", 4),
)


@functools.lru_cache(maxsize=4096)
def shared_tls_creator(hostname: str, ca_file: str | None) -> Any:
    """One TLS context per (host, CA file), shared by every session of that host: building
    a context loads the trust store, which 10,000 sessions must not each do. A CA file
    that became unusable since the start fails the attempt without its path in the
    user-visible error."""
    try:
        return client_tls_options(hostname, ca_file)
    except ValueError:
        raise SessionError("tls", "the TLS trust store cannot be loaded (see "
                           "REBREAK_TLS_CA_FILE)") from None


def enable_keepalive(transport: Any) -> None:
    """TCP keepalive with short probe intervals where the platform allows (TLS wrappers
    forward these calls to the TCP transport)."""
    setter = getattr(transport, "setTcpKeepAlive", None)
    if setter is None:
        return
    try:
        setter(True)
        handle = transport.getHandle()
        for name, value in _TCP_KEEPALIVE_OPTIONS:
            option = getattr(socket, name, None)
            if option is not None:
                handle.setsockopt(socket.IPPROTO_TCP, option, value)
    except (AttributeError, OSError):  # pragma: no cover - platform without these options
        pass


def server_endpoint(reactor: Any, account: Account, timeout: float,
                    tls_options: Callable[[], Any],
                    policy: DestinationPolicy | None = None,
                    bind: str | None = None, *,
                    resolver: Any = None) -> IStreamClientEndpoint:
    """The endpoint of ``account``'s server: IP literals without the resolver (no thread
    hop per connect), names through HostnameEndpoint, implicit TLS around either; with
    ``policy``, the address each TCP connection reached is checked before TLS or IMAP
    sees a byte (:class:`CheckedEndpoint`); ``bind``: the local source address
    (REBREAK_SOURCE_ADDRESSES); ``resolver``: an ``IHostnameResolver`` for names checked
    by ``policy`` (default the reactor's; ``rebreak-idle probe``'s tests)."""
    host, seconds = account.host, max(1, int(timeout))
    local = None if bind is None else (bind, 0)
    endpoint: IStreamClientEndpoint
    if isIPAddress(host):  # an address literal: checked with the row
        endpoint = TCP4ClientEndpoint(reactor, host, account.port, timeout=seconds,
                                      bindAddress=local)
    elif isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, account.port, timeout=seconds,
                                      bindAddress=local)
    elif policy is not None:
        endpoint = CheckedHostnameEndpoint(reactor, host, account.port, seconds, policy,
                                           resolver=resolver, bind_address=local)
    else:
        endpoint = HostnameEndpoint(reactor, host, account.port, timeout=seconds,
                                    bindAddress=local)
    if account.security == "tls":
        endpoint = TLSClientEndpoint(tls_options(), endpoint)
    return endpoint


class _CheckedFactory(Factory):
    """Checks the connected peer's address before building the protocol: raising here
    fails the endpoint's connect with :class:`~rebreak_idle.accounts.destinations.
    DestinationRefused` and closes the socket before anything is written or read."""

    noisy = False

    def __init__(self, factory: IProtocolFactory, policy: DestinationPolicy,
                 host: str) -> None:
        self._factory = factory
        self._policy = policy
        self._host = host

    def buildProtocol(self, addr: Any) -> Any:
        self._policy.check_peer(str(getattr(addr, "host", "")), self._host)
        return self._factory.buildProtocol(addr)


@implementer(IResolutionReceiver)
class _FilteringReceiver:
    """Passes on the resolved addresses the policy allows; notes the refusal of others."""

    __slots__ = ("_endpoint", "_receiver")

    def __init__(self, receiver: Any, endpoint: CheckedHostnameEndpoint) -> None:
        self._receiver = receiver
        self._endpoint = endpoint

    def resolutionBegan(self, resolution: Any) -> None:
        self._receiver.resolutionBegan(resolution)

    def addressResolved(self, address: Any) -> None:
        endpoint = self._endpoint
        problem = endpoint.policy.problem(str(getattr(address, "host", "")), endpoint.host)
        if problem is None:
            self._receiver.addressResolved(address)
        else:
            endpoint.refused = problem

    def resolutionComplete(self) -> None:
        self._receiver.resolutionComplete()


@implementer(IHostnameResolver)
class _FilteringResolver:
    __slots__ = ("_endpoint", "_resolver")

    def __init__(self, resolver: Any, endpoint: CheckedHostnameEndpoint) -> None:
        self._resolver = resolver
        self._endpoint = endpoint

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        return self._resolver.resolveHostName(
            _FilteringReceiver(receiver, self._endpoint), hostName, portNumber=portNumber,
            addressTypes=addressTypes, transportSemantics=transportSemantics)


class CheckedHostnameEndpoint(HostnameEndpoint):
    """A :class:`HostnameEndpoint` that only connects to addresses the destination policy
    allows. The resolved addresses are filtered before any connection is tried (a refused
    address gets no SYN, so an open and a closed internal port look the same), the
    endpoint connects to exactly the addresses it kept (no second resolution for DNS
    rebinding to slip through), and each connection's peer is checked once more before a
    byte is read or written. When every address was refused, the connect fails with
    :class:`~rebreak_idle.accounts.destinations.DestinationRefused`. ``resolver``: for tests."""

    def __init__(self, reactor: Any, host: str, port: int, timeout: float,
                 policy: DestinationPolicy, resolver: Any = None,
                 bind_address: tuple[str, int] | None = None) -> None:
        self.policy = policy
        self.host = host
        self.refused: str | None = None
        self._resolver = resolver
        super().__init__(reactor, host, port, timeout=timeout, bindAddress=bind_address)

    def _getNameResolverAndMaybeWarn(self, reactor: object) -> Any:
        inner = self._resolver
        if inner is None:
            inner = super()._getNameResolverAndMaybeWarn(reactor)
        return _FilteringResolver(inner, self)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self.refused = None
        d = super().connect(_CheckedFactory(protocolFactory, self.policy, self.host))
        d.addErrback(self._explain)
        return d

    def _explain(self, failure: Failure) -> Failure:
        if self.refused is not None and failure.check(DNSLookupError):
            raise DestinationRefused(self.refused)
        return failure


class ClientFactory(Factory):
    """Builds the :class:`~rebreak_idle.imap.IdleClient` of each connection and hands it to
    ``attach``."""

    noisy = False

    def __init__(self, attach: Callable[[imap.IdleClient], None], **client_kwargs: Any
                 ) -> None:
        self._attach = attach
        self._kwargs = client_kwargs

    def buildProtocol(self, addr: Any) -> imap.IdleClient:
        client = imap.IdleClient(**self._kwargs)
        client.factory = self
        self._attach(client)
        return client
