"""``CapabilityCache``: the server's capabilities as the client last learnt them (from
the greeting, a response code or CAPABILITY). An object the client composes (one per
connection, two slots), with a narrow interface: take a list or a response code, forget,
ask whether a name was announced. It sends nothing: the client asks the server when the
cache does not know."""

from __future__ import annotations

from .parser import Capabilities, capability_words, parse_capabilities

__all__ = ["CapabilityCache", "announced"]


class CapabilityCache:
    """``words``: the capabilities (bytes names, upper case → None or a list of bytes
    values); ``known``: whether they are current (False before the greeting's list, after
    STARTTLS and after a login whose answer carried none)."""

    __slots__ = ("known", "words")

    def __init__(self) -> None:
        self.words: Capabilities = {}
        self.known = False

    def take(self, words: bytes) -> None:
        """The words of an untagged CAPABILITY or of a response code."""
        self.words = parse_capabilities(words)
        self.known = True

    def take_code(self, code: bytes | None) -> bool:
        """Take the capabilities of a ``[CAPABILITY ...]`` response code, if it is one."""
        words = capability_words(code)
        if words is None:
            return False
        self.take(words)
        return True

    def forget(self) -> None:
        """STARTTLS: what the server said before TLS is not trusted."""
        self.words = {}
        self.known = False

    def stale(self) -> None:
        """A login changes what the server offers; ask again before the next use."""
        self.known = False

    def has(self, name: bytes, value: bytes | None = None) -> bool:
        """Whether the server announced ``name`` (with ``value`` among its values)."""
        if value is None:
            return name in self.words
        return value in (self.words.get(name) or ())


def announced(name: bytes, value: bytes | None = None, doc: str | None = None) -> property:
    """A read-only ``bool`` property of the client: whether the server announced ``name``
    (with ``value`` among its values: ``AUTH=PLAIN``), read from its ``_caps``."""

    def get(self: object) -> bool:
        return self._caps.has(name, value)  # type: ignore[attr-defined]

    label = (name if value is None else name + b"=" + value).decode("ascii")
    return property(get, doc=doc or f"The server announced {label}.")
