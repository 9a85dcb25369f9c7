"""``CapabilityCache``: the server's capabilities as the client last learnt them (from
the greeting, a response code or CAPABILITY), a mixin of the client."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer

from .parser import Capabilities, capability_words, parse_capabilities

__all__ = ["CapabilityCache"]


def _announced(name: bytes, value: bytes | None = None, doc: str | None = None) -> property:
    """A read-only ``bool`` property: whether the server announced ``name`` (with
    ``value`` among its values: ``AUTH=PLAIN``)."""

    def get(self: CapabilityCache) -> bool:
        return self._has(name, value)

    label = (name if value is None else name + b"=" + value).decode("ascii")
    return property(get, doc=doc or f"The server announced {label}.")


class CapabilityCache:
    """``getCapabilities`` and the ``has_*`` properties."""

    _caps_known = False

    # provided by the client
    capabilities: Capabilities
    _command: Callable[..., defer.Deferred]

    def _capabilities_in(self, code: bytes | None) -> bool:
        """Take the capabilities of a ``[CAPABILITY ...]`` response code, if it is one."""
        words = capability_words(code)
        if words is None:
            return False
        self._set_caps(words)
        return True

    def _set_caps(self, words: bytes) -> None:
        self.capabilities = parse_capabilities(words)
        self._caps_known = True

    def getCapabilities(self) -> defer.Deferred:
        """The capabilities (bytes names, upper case → None or list of bytes values),
        from the greeting or the last login response when known, else via CAPABILITY."""
        if self._caps_known:
            return defer.succeed(self.capabilities)
        return self._refresh_caps()

    def _refresh_caps(self) -> defer.Deferred:
        d = self._command(b"CAPABILITY")
        d.addCallback(lambda _: self.capabilities)
        return d

    def _has(self, name: bytes, value: bytes | None = None) -> bool:
        if value is None:
            return name in self.capabilities
        return value in (self.capabilities.get(name) or ())

    has_idle = _announced(b"IDLE")
    has_starttls = _announced(b"STARTTLS")
    has_auth_plain = _announced(b"AUTH", b"PLAIN")
    has_xoauth2 = _announced(b"AUTH", b"XOAUTH2")
    has_id = _announced(b"ID", doc="RFC 2971 ID.")
    has_sasl_ir = _announced(b"SASL-IR")
    login_disabled = _announced(b"LOGINDISABLED")
