"""Pure functions over IMAP bytes: response lines, response codes, capabilities, flag
lists, astrings and literals. No protocol state; what a correct server never sends raises
:class:`~rebreak_idle.imap.errors.ProtocolError` (nothing else is raised on any input),
which the client turns into a closed connection. The fuzz tests call these directly.
"""

from __future__ import annotations

import re
from typing import Any

from ..failures import printable
from .errors import ProtocolError

__all__ = [
    "LITERAL",
    "MALFORMED",
    "astring",
    "capability_words",
    "excerpt",
    "fetch_flags",
    "flag_list",
    "is_atom",
    "is_digits",
    "is_fetch",
    "is_number",
    "join_pieces",
    "literal_size",
    "number",
    "parse_capabilities",
    "parse_parens",
    "parse_status",
    "parse_untagged",
    "split_code",
    "status_items",
    "text",
]

TEXT_LIMIT = 300
#: the largest IMAP number (RFC 3501 §4.2: unsigned 32-bit): counts, UIDs, UIDVALIDITY
MAX_NUMBER = 2**32 - 1
_NUMBER = re.compile(rb"[0-9]{1,10}")
_DIGITS = re.compile(rb"[0-9]+")
#: a literal announced at the end of a line (``{n}``); the reader searches every line
LITERAL = re.compile(rb"~?\{([0-9]{1,20})\+?\}$")
_TAG = re.compile(rb"[\x21-\x7e]{1,64}")
_ATOM = re.compile(rb"[A-Za-z0-9_.+&/-]{1,200}")
_COUNTS = (b"EXISTS", b"EXPUNGE", b"RECENT")
_CONDITIONS = (b"OK", b"NO", b"BAD", b"PREAUTH")

#: what :func:`fetch_flags` returns for FETCH data it cannot parse
MALFORMED: Any = object()

Capabilities = dict[bytes, list[bytes] | None]


def text(data: bytes) -> str:
    """Printable, bounded text of server bytes (only the first few hundred bytes are
    looked at: the cost does not grow with the line)."""
    s = data[: 4 * TEXT_LIMIT].decode("utf-8", "replace")
    s = "".join(ch if ch.isprintable() else "?" for ch in s).strip()
    return s if len(s) <= TEXT_LIMIT else s[: TEXT_LIMIT - 3] + "..."


def excerpt(line: bytes) -> str:
    """The start of a server line, for an error text: printable characters as they are
    (a password the server echoes stays whole, so that the session's scrubber masks it),
    the others escaped by :func:`~rebreak_idle.failures.printable`, which the scrubber
    also applies to the secrets it masks."""
    shown = printable(line[:80].decode("utf-8", "replace"))
    return shown + ("..." if len(line) > 80 else "")


def split_code(data: bytes) -> tuple[bytes | None, bytes]:
    """``[CODE args] rest`` → (b"CODE args", rest); otherwise (None, data)."""
    if data.startswith(b"["):
        end = data.find(b"]")
        if end != -1:
            return data[1:end], data[end + 1:].strip()
    return None, data


def capability_words(code: bytes | None) -> bytes | None:
    """The words of a ``CAPABILITY ...`` response code, else None."""
    if code is not None and code.upper().startswith(b"CAPABILITY "):
        return code[len(b"CAPABILITY "):]
    return None


def is_number(data: bytes) -> bool:
    """True for an IMAP number as this client accepts it (1 to 10 digits, at most
    :data:`MAX_NUMBER`)."""
    return _NUMBER.fullmatch(data) is not None and int(data) <= MAX_NUMBER


def is_digits(data: bytes) -> bool:
    """True for a run of digits, whatever its size (a number a server may have sent
    out of range)."""
    return _DIGITS.fullmatch(data) is not None


def number(data: bytes, what: str = "number") -> int:
    """An IMAP number; :class:`ProtocolError` for digits above :data:`MAX_NUMBER`."""
    if not is_number(data):
        raise ProtocolError(f"{what} out of range: {excerpt(data)}")
    return int(data)


def parse_capabilities(words: bytes) -> Capabilities:
    """``IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2`` → {b"IMAP4REV1": None, b"AUTH": [b"PLAIN",
    b"XOAUTH2"]} (names upper case)."""
    caps: Capabilities = {}
    for word in words.split():
        name, eq, value = word.upper().partition(b"=")
        if eq:
            current = caps.get(name)
            if current is None:
                caps[name] = [value]
            else:  # appended in place: linear in the number of words
                current.append(value)
        else:
            caps.setdefault(name, None)
    return caps


def astring(value: str) -> list[bytes]:
    """An IMAP astring as one quoted string, or as a literal when it is not printable
    ASCII. Returns pieces: ``[b'"x"']`` or ``[b'{n}', raw]``; ValueError for a NUL."""
    raw = value.encode("utf-8")
    if b"\x00" in raw:
        raise ValueError("NUL cannot be sent")
    if all(0x20 <= b < 0x7F for b in raw):
        return [b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"']
    return [b"{%d}" % len(raw), raw]


def join_pieces(head: list[bytes], *astrings: list[bytes]) -> list[bytes]:
    """Command pieces: each piece but the last ends with a literal marker, so the client
    waits for a continuation before sending the next one."""
    pieces = [b" ".join(head)]
    for a in astrings:
        pieces[-1] += b" " + a[0]
        if len(a) == 2:
            pieces.append(a[1])
    return pieces


def is_atom(name: bytes) -> bool:
    """True for a mailbox name the client sends as an atom."""
    return _ATOM.fullmatch(name) is not None


#: the longest literal marker (``~{`` 20 digits ``+}``): only a line's tail is searched
_LITERAL_TAIL = 24


def literal_size(line: bytes) -> int | None:
    """The size of the literal announced at the end of ``line`` (``{n}``), else None.
    Only the line's last bytes are looked at (a search of the whole line cost more than
    everything else done with an unsolicited 16 KiB line)."""
    if not line.endswith(b"}"):
        return None
    match = LITERAL.search(line, max(0, len(line) - _LITERAL_TAIL))
    return int(match.group(1)) if match is not None else None


def is_fetch(line: bytes) -> bool:
    """True for ``* <n> FETCH ...``."""
    parts = line.split(b" ", 3)
    return (len(parts) >= 3 and parts[0] == b"*" and is_number(parts[1])
            and parts[2].upper() == b"FETCH")


#: one token of parenthesised data (RFC 3501 §4): blanks, an opening or closing bracket,
#: a quoted string (the unrolled form: linear, no backtracking), a literal's marker, an
#: atom (anything else up to a delimiter)
_TOKEN = re.compile(rb'(\s+)|([(\[])|([)\]])|"([^"\\]*(?:\\.[^"\\]*)*)"'
                    rb'|\{([0-9]{1,20})\}\r\n|([^\s()\[\]"{]+|\{)')
_ESCAPED = re.compile(rb"\\(.)")
#: deeper nesting than any server sends; refused rather than followed
MAX_DEPTH = 64
#: the longest STATUS answer parsed: a name (at most 1,000 bytes kept anywhere) and a few
#: numbers; a longer one is a protocol error, never a long parse
MAX_STATUS = 2048


def parse_parens(data: bytes) -> list[Any]:
    """Parenthesised data → nested lists of bytes: ``(\\Seen) "a b" NIL {2}\\r\\nxy`` →
    [[b"\\Seen"], b"a b", None, b"xy"]. ``[...]`` nests like ``(...)`` (``BODY[...]``);
    quoted strings are unescaped; NIL is None. ValueError for unbalanced brackets, an
    unterminated quote, a short literal or nesting deeper than :data:`MAX_DEPTH`.

    One pass, each byte looked at once: the cost is linear in ``data`` (Twisted's
    ``parseNestedParens`` is not, and a server decides how long its lines are)."""
    top: list[Any] = []
    stack: list[tuple[list[Any], bytes]] = []
    current = top
    pos, end = 0, len(data)
    match = _TOKEN.match
    while pos < end:
        m = match(data, pos)
        if m is None:
            raise ValueError(f"unparseable data at byte {pos}")
        pos = m.end()
        kind = m.lastindex
        if kind == 1:
            continue
        if kind == 2:
            if len(stack) >= MAX_DEPTH:
                raise ValueError("nesting too deep")
            inner: list[Any] = []
            current.append(inner)
            stack.append((current, b")" if m.group(2) == b"(" else b"]"))
            current = inner
        elif kind == 3:
            if not stack or stack[-1][1] != m.group(3):
                raise ValueError("unbalanced brackets")
            current = stack.pop()[0]
        elif kind == 4:
            value = m.group(4)
            current.append(_ESCAPED.sub(rb"\1", value) if b"\\" in value else value)
        elif kind == 5:
            size = int(m.group(5))
            if pos + size > end:
                raise ValueError("literal shorter than announced")
            current.append(data[pos:pos + size])
            pos += size
        else:
            atom = m.group(6)
            current.append(None if atom.upper() == b"NIL" else atom)
    if stack:
        raise ValueError("unbalanced brackets")
    return top


def _flags(items: list[Any]) -> list[str]:
    return [f.decode("utf-8", "replace") for f in items if isinstance(f, bytes)]


def flag_list(data: bytes) -> list[str]:
    """``(\\Seen \\Answered) ...`` → ["\\Seen", "\\Answered"]; [] when unparseable."""
    try:
        parsed = parse_parens(data)
    except ValueError:
        return []
    if parsed and isinstance(parsed[0], list):
        return _flags(parsed[0])
    return []


#: a FETCH item's name (RFC 3501 §7.4.2) where an item may start
_FETCH_FLAGS = re.compile(rb"[(\s]FLAGS ", re.IGNORECASE)
_FETCH_UID = re.compile(rb"[(\s]UID ([^\s()]*)", re.IGNORECASE)
#: a flag list: atoms between parentheses, no nesting, no strings
_FLAG_LIST = re.compile(rb"\(([^()\"{}\r\n]*)\)")


def _fetch_flag_bytes(data: bytes) -> Any:
    """The FLAGS list of a FETCH response's data as the bytes between its parentheses,
    None when absent, :data:`MALFORMED` when the data is not parenthesised, its FLAGS is
    not a flag list, or its UID is not an IMAP number. Regular expressions only: C speed
    and linear, whatever the server sends (a FETCH may come at any time, during IDLE)."""
    if len(data) < 2 or data[:1] != b"(" or data[-1:] != b")":
        return MALFORMED
    uid = _FETCH_UID.search(data)
    if uid is not None and not is_number(uid.group(1)):
        return MALFORMED  # a UID above 2^32-1 (or not a number)
    item = _FETCH_FLAGS.search(data)
    if item is None:
        return None
    flags = _FLAG_LIST.match(data, item.end())
    return MALFORMED if flags is None else flags.group(1)


def fetch_flags(data: bytes) -> Any:
    """FLAGS of a FETCH response's data (``(UID 5 FLAGS (\\Seen))`` → ["\\Seen"]), None
    when absent, :data:`MALFORMED` when unparseable (see :func:`_fetch_flag_bytes`)."""
    raw = _fetch_flag_bytes(data)
    if raw is None or raw is MALFORMED:
        return raw
    return [f.decode("utf-8", "replace") for f in raw.split()]


def parse_status(rest: bytes, allowed: tuple[bytes, ...]) -> tuple[bytes, bytes] | None:
    """``OK [code] text`` (after the tag) → (b"OK", b"[code] text"); None when the
    status word is not one of ``allowed``."""
    status, _, data = rest.partition(b" ")
    status = status.upper()
    return (status, data) if status in allowed else None


def _malformed(rest: bytes, what: str = "untagged response") -> ProtocolError:
    return ProtocolError(f"malformed {what}: {excerpt(b'* ' + rest)}")


def parse_untagged(rest: bytes) -> tuple[bytes, int | None, bytes]:
    """An untagged response (after ``* ``) → (KEYWORD, number or None, data):
    ``5 EXISTS`` → (b"EXISTS", 5, b""), ``OK [UIDNEXT 4] x`` → (b"OK", None,
    b"[UIDNEXT 4] x"). ProtocolError for what a server must not send: a number with a
    keyword other than EXISTS/EXPUNGE/RECENT/FETCH, data after a count, an unparseable
    FETCH or response."""
    first, _, after = rest.partition(b" ")
    if is_digits(first) and not is_number(first):
        raise _malformed(rest, "untagged response (number above 2^32-1)")
    if is_number(first):
        keyword, _, data = after.partition(b" ")
        keyword = keyword.upper()
        if keyword == b"FETCH":
            if _fetch_flag_bytes(data) is MALFORMED:
                raise _malformed(rest, "FETCH response")
        elif keyword not in _COUNTS or data:
            raise _malformed(rest)
        return keyword, int(first), data
    upper = first.upper()
    if upper in _CONDITIONS or upper in (b"BYE", b"CAPABILITY"):
        return upper, None, after
    if not _TAG.fullmatch(first):
        raise _malformed(rest)
    # the data of other responses (LIST, STATUS, FLAGS, ID, SEARCH, unknown ones) is
    # parsed only by the command that asked for it: an unsolicited one costs nothing
    return upper, None, after


def status_items(data: bytes) -> tuple[str, dict[str, int]]:
    """The data of an untagged STATUS response (RFC 3501 §7.2.4, after ``STATUS``):
    ``INBOX (UIDNEXT 5 MESSAGES 3)`` → ("INBOX", {"UIDNEXT": 5, "MESSAGES": 3}); item names
    upper case, values IMAP numbers (items with other values are left out).
    ProtocolError when the data is not a mailbox and a parenthesised list of pairs, or is
    longer than :data:`MAX_STATUS` (a real answer is a name and a few numbers)."""
    if len(data) > MAX_STATUS:
        raise _malformed(b"STATUS " + data, "STATUS response")
    try:
        parsed = parse_parens(data)
    except ValueError:
        raise _malformed(b"STATUS " + data, "STATUS response") from None
    if len(parsed) != 2 or not isinstance(parsed[0], bytes) or not isinstance(parsed[1], list) \
            or len(parsed[1]) % 2:
        raise _malformed(b"STATUS " + data, "STATUS response")
    pairs = parsed[1]
    items: dict[str, int] = {}
    for i in range(0, len(pairs), 2):
        name, value = pairs[i], pairs[i + 1]
        if not isinstance(name, bytes) or not _ATOM.fullmatch(name):
            raise _malformed(b"STATUS " + data, "STATUS response")
        if isinstance(value, bytes) and is_number(value):
            items[name.upper().decode("ascii")] = int(value)
    return parsed[0].decode("utf-8", "replace"), items
