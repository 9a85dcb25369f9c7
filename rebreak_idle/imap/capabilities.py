"""``CapabilityCache``: the server's capabilities as the client last learnt them (from
the greeting, a response code or CAPABILITY), a mixin of the client."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer

from .parser import Capabilities, capability_words, parse_capabilities

__all__ = ["CapabilityCache"]


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

    @property
    def has_idle(self) -> bool:
        return self._has(b"IDLE")

    @property
    def has_starttls(self) -> bool:
        return self._has(b"STARTTLS")

    @property
    def has_auth_plain(self) -> bool:
        return self._has(b"AUTH", b"PLAIN")

    @property
    def has_xoauth2(self) -> bool:
        return self._has(b"AUTH", b"XOAUTH2")

    @property
    def has_id(self) -> bool:
        """RFC 2971 ID."""
        return self._has(b"ID")

    @property
    def has_sasl_ir(self) -> bool:
        return self._has(b"SASL-IR")

    @property
    def login_disabled(self) -> bool:
        return self._has(b"LOGINDISABLED")
