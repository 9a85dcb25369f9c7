"""LIST (RFC 3501 §6.3.8, RFC 6154 SPECIAL-USE) and STATUS commands of other mailboxes, as
functions over the public command methods of :class:`~rebreak_idle.imap.IdleClient`
(which delegates ``list_mailboxes``, ``status`` and ``status_command`` here), and
mailbox names: modified UTF-7
(RFC 3501 §5.1.3, Twisted's ``imap4-utf-7`` codec with this module's refusals on top)
for display and for names typed by an operator, quoting for the wire.

Names are kept as the server listed them (the raw bytes, modified UTF-7) and sent back
so; only :func:`decode_mutf7` turns them into text for logs and scan triggers.

Bounded: a LIST answer is read line by line and only the entries a ``keep`` predicate
accepts are kept, at most ``limit`` of them — a server listing 100,000 folders costs
the lines' parsing time (and the connection's input budget), not memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import twisted.mail.imap4  # noqa: F401  (registers the imap4-utf-7 codec)
from twisted.internet import defer
from twisted.python.failure import Failure

from ..config import MAILBOX_CONTROL, MAX_MAILBOX_NAME
from .commands import Command, command_failed
from .errors import CommandFailed
from .parser import is_atom, parse_parens, split_code, status_items

if TYPE_CHECKING:
    from .client import IdleClient

__all__ = ["ListEntry", "decode_mutf7", "encode_mutf7", "list_mailboxes", "parse_list",
           "quote_mailbox", "status", "status_command", "tagged_ahead", "untagged_ahead"]

_B64_RUN = re.compile(rb"&([A-Za-z0-9+,]*)-")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Twisted's modified UTF-7 (RFC 3501 §5.1.3), registered when twisted.mail.imap4 loads
_CODEC = "imap4-utf-7"
#: the longest mailbox name kept (RFC 3501 sets none; servers use a few hundred bytes): the
#: limit the folders setting is checked against too
MAX_NAME = MAX_MAILBOX_NAME
#: the longest LIST line parsed (a name of MAX_NAME bytes, quoted, and its attributes)
MAX_LIST = 4 * MAX_NAME


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One ``* LIST`` line: attributes (``\\Junk``, as the server spelled them), the
    hierarchy delimiter (None for NIL) and the name as listed (modified UTF-7 bytes)."""

    attributes: tuple[str, ...]
    delimiter: str | None
    raw: bytes

    @property
    def name(self) -> str:
        """The name for display (modified UTF-7 decoded)."""
        return decode_mutf7(self.raw)

    def has(self, attribute: str) -> bool:
        """Whether the server listed ``attribute``, in any case (RFC 3501 §9: flags
        and attributes are case-insensitive; Cyrus writes ``\\junk``)."""
        wanted = attribute.lower()
        return any(a.lower() == wanted for a in self.attributes)

    @property
    def control_characters(self) -> bool:
        """Whether the name, decoded, holds a control character (C0, DEL, C1): ``&AAA-``
        decodes to NUL, which no database text column takes. Such a folder is not
        watched: its name would be a scan trigger's field and a mark's key."""
        return _CONTROL.search(self.name) is not None


def _decode_run(run: bytes) -> str:
    """One ``&...-`` run through Twisted's codec; as sent when the codec refuses it (an
    odd number of bytes, non-zero padding bits) or it decodes to a lone surrogate (half
    of a pair: no UTF-8 text, no database column takes it)."""
    try:
        decoded = run.decode(_CODEC)
    except UnicodeDecodeError:
        return run.decode("ascii")
    if _SURROGATE.search(decoded) is not None:
        return run.decode("ascii")
    return decoded


def decode_mutf7(raw: bytes) -> str:
    """Modified UTF-7 (``&AOQ-`` for ä, ``&-`` for &) → text; a malformed run is shown as
    it was (never raises). Each well-formed run goes through Twisted's ``imap4-utf-7``
    codec; the rest is ASCII (8-bit bytes shown as U+FFFD, a ``&`` that starts no run as
    itself: the codec alone would raise on the one and turn the other into ``+``)."""
    out: list[str] = []
    pos = 0
    for match in _B64_RUN.finditer(raw):
        out.append(raw[pos:match.start()].decode("ascii", "replace"))
        out.append(_decode_run(match.group(0)))
        pos = match.end()
    out.append(raw[pos:].decode("ascii", "replace"))
    return "".join(out)


def encode_mutf7(name: str) -> bytes:
    """Text → modified UTF-7 (what a server lists for a name typed by the operator), by
    Twisted's ``imap4-utf-7`` codec. ValueError for a name with a C0 control character or
    DEL: the codec writes TAB, CR and LF as they are (CRLF inside a command), and no
    folder name the daemon watches holds one (the folders setting refuses them)."""
    if MAILBOX_CONTROL.search(name) is not None:
        raise ValueError("mailbox name holds a control character")
    return name.encode(_CODEC)


def quote_mailbox(raw: bytes) -> bytes | None:
    """The wire form of a mailbox name: an atom as is, else a quoted string (``\\`` and
    ``"`` escaped). None for a name that would need a literal (a control character, 8-bit
    bytes): such a name cannot go into a pipelined write, the folder is skipped."""
    if not raw or len(raw) > MAX_NAME or not all(0x20 <= b < 0x7F for b in raw):
        return None
    if is_atom(raw):
        return raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def parse_list(data: bytes) -> ListEntry | None:
    """The data of an untagged LIST response (after ``LIST``):
    ``(\\HasNoChildren \\Junk) "/" Spam`` → ListEntry; None when malformed or longer
    than :data:`MAX_LIST` (not parsed: a name of at most 1,000 bytes and its attributes)."""
    if len(data) > MAX_LIST:
        return None
    try:
        parsed = parse_parens(data)
    except ValueError:
        return None
    if len(parsed) != 3 or not isinstance(parsed[0], list):
        return None
    attrs, delim, name = parsed
    if not isinstance(name, bytes) or not name or len(name) > MAX_NAME:
        return None
    if not all(isinstance(a, bytes) for a in attrs):
        return None
    delimiter = delim.decode("ascii", "replace") if isinstance(delim, bytes) \
        and delim.upper() != b"NIL" else None
    return ListEntry(tuple(a.decode("ascii", "replace") for a in attrs[:32]), delimiter,
                     name)


def list_mailboxes(client: IdleClient, pattern: bytes = b"*", *, special_use: bool = False,
                   keep: Callable[[ListEntry], bool] = lambda e: True, limit: int = 64,
                   hints: tuple[bytes, ...] = ()) -> defer.Deferred:
    """``LIST "" pattern`` on ``client`` (``LIST (SPECIAL-USE) "" pattern`` with
    ``special_use``, RFC 6154 §5.1: only special-use mailboxes); fires with the entries
    ``keep`` accepted, at most ``limit`` of them, in the server's order. Malformed lines are
    skipped (a name that cannot be parsed cannot be watched). ``hints``: lower-case byte
    strings of which a line must contain one to be parsed at all (a quick filter for long
    listings)."""
    wire = quote_mailbox(pattern)
    if wire is None:
        return defer.fail(CommandFailed("LIST pattern must be printable ASCII",
                                        command="LIST"))
    kept: list[ListEntry] = []

    def untagged(keyword: bytes, rest: bytes) -> bool:
        if keyword != b"LIST":
            return False
        if len(kept) >= limit or (hints and not any(h in rest.lower() for h in hints)):
            return True
        entry = parse_list(rest.partition(b" ")[2])
        if entry is not None and len(kept) < limit and keep(entry):
            kept.append(entry)
        return True

    args = (b"(SPECIAL-USE) " if special_use else b"") + b'"" ' + wire
    return client.command(b"LIST", args, on_untagged=untagged,
                          on_ok=lambda code, data: kept)


def status_command(raw: bytes, items: tuple[bytes, ...], timeout: float) -> Command | None:
    """A STATUS command of mailbox ``raw`` (as listed) for writing ahead (the heartbeat's
    pipeline) or for :func:`status`; its Deferred fires with ``{item: int}``. None when the
    name cannot be sent without a literal. A malformed answer raises
    :class:`ProtocolError` from the command's ``on_untagged`` (the client closes)."""
    wire = quote_mailbox(raw)
    if wire is None:
        return None
    answer: dict[str, int] = {}
    name = raw.decode("ascii")
    inbox = name.upper() == "INBOX"  # the one case-insensitive name (RFC 3501 §5.1)

    def untagged(keyword: bytes, rest: bytes) -> bool:
        if keyword != b"STATUS":
            return False
        listed, values = status_items(rest.partition(b" ")[2])  # ProtocolError
        if listed != name and not (inbox and listed.upper() == "INBOX"):
            return False  # another STATUS's answer (written ahead, or unasked)
        answer.update((k, v) for k, v in values.items() if k.encode("ascii") in items)
        return True

    line = b"STATUS " + wire + b" (" + b" ".join(items) + b")"
    return Command(b"STATUS", [line], timeout, on_untagged=untagged,
                   on_ok=lambda code, data: answer)


def status(client: IdleClient, mailbox: str | bytes = "INBOX",
           items: tuple[str | bytes, ...] = ("UIDNEXT",)) -> defer.Deferred:
    """STATUS ``mailbox`` (a name, or the bytes a LIST gave) for ``items`` (e.g. UIDNEXT
    UIDVALIDITY MESSAGES) on ``client``; fires with ``{item: int}`` for the items the
    server answered (the others are absent). CommandFailed when the server refuses
    (NO/BAD) or the name cannot be sent without a literal; ProtocolError for a malformed
    answer. RFC 3501 §6.3.10: allowed while a mailbox is selected. The same command as the
    heartbeat's folder checks (:func:`status_command`), sent on its own."""
    words = tuple((i if isinstance(i, bytes) else i.encode("ascii", "replace")).upper()
                  for i in items)
    try:
        raw = mailbox if isinstance(mailbox, bytes) else mailbox.encode("ascii")
    except UnicodeEncodeError:
        raw = b""
    cmd = (status_command(raw, words, client.command_timeout)
           if words and all(is_atom(w) for w in words) else None)
    if cmd is None:
        return defer.fail(CommandFailed("mailbox name needs a literal, or items are "
                                        "not atoms", command="STATUS"))
    return client.send(cmd)


# -- STATUS commands written ahead (the heartbeat's pipeline) may be answered before the
# NOOP written ahead of them: RFC 3501 §5.5 lets a server run commands that do not depend
# on each other at the same time (Dovecot does). The client hands such answers here with
# the commands waiting in its queue.

def untagged_ahead(waiting: list[Command], keyword: bytes, rest: bytes) -> None:
    """An untagged response the running command did not take: a STATUS answer for a
    STATUS written ahead (one of ``waiting``)."""
    if keyword != b"STATUS":
        return
    for cmd in waiting:
        if cmd.name == b"STATUS" and cmd.tag is not None and cmd.on_untagged is not None \
                and cmd.on_untagged(keyword, rest):
            return


def tagged_ahead(waiting: list[Command], tag: bytes, rest: bytes) -> bool:
    """The tagged answer of a STATUS written ahead, before the running command's: complete
    it out of order and remove it from ``waiting`` (True), or False for a tag nobody
    sent."""
    for cmd in waiting:
        if cmd.name == b"STATUS" and cmd.tag == tag:
            break
    else:
        return False
    waiting.remove(cmd)
    status, _, data = rest.partition(b" ")
    status = status.upper()
    if status == b"OK":
        assert cmd.on_ok is not None
        cmd.deferred.callback(cmd.on_ok(None, data))
    else:
        code, _ = split_code(data)
        cmd.deferred.errback(Failure(command_failed(cmd, status, code, data)))
    return True
