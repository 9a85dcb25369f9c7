"""The demo backend's scanner: reads a mailbox over IMAP and deletes gambling mail.

A small stand-in for the real backend's keyword + blocklist rules: a message is blocked
when its subject contains a gambling keyword or its sender's domain is on the blocklist.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.mail import imap4

__all__ = ["BLOCKLIST", "KEYWORDS", "is_gambling", "scan_mailbox"]

KEYWORDS = ("casino", "jackpot", "free spins", "bonus bet", "betting", "poker", "slots",
            "roulette", "blackjack", "sportsbook", "wager", "odds boost")
BLOCKLIST = ("bet365.com", "pokerstars.com", "casino.com", "williamhill.com", "888.com",
             "betway.com", "unibet.com", "stake.com")
_KEYWORD = re.compile("|".join(re.escape(k) for k in KEYWORDS), re.IGNORECASE)


def is_gambling(subject: str, sender: str) -> bool:
    """The rule: a keyword in the subject, or a blocklisted sender domain."""
    domain = sender.rsplit("@", 1)[-1].strip().lower().rstrip(">")
    return bool(_KEYWORD.search(subject or "")) or any(
        domain == d or domain.endswith("." + d) for d in BLOCKLIST)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def _sender(envelope: list) -> str:
    addresses = envelope[2] or []
    if not addresses:
        return ""
    _name, _adl, mailbox, host = (list(addresses[0]) + [None] * 4)[:4]
    return f"{_text(mailbox)}@{_text(host)}"


async def scan_mailbox(reactor: Any, host: str, port: int, username: str,
                       password: str) -> dict[str, Any]:
    """Log in, read every message's envelope, delete the gambling ones.
    Returns ``{"scanned": n, "blocked": n, "subjects": [...]}``."""
    client = imap4.IMAP4Client()
    await connectProtocol(TCP4ClientEndpoint(reactor, host, port, timeout=10), client)
    try:
        await client.login(username.encode(), password.encode())
        selected = await client.select("INBOX")
        blocked: list[int] = []
        subjects: list[str] = []
        count = selected.get("EXISTS", 0)
        if count:
            envelopes = await client.fetchEnvelope("1:*", uid=True)
            for info in envelopes.values():
                env = info["ENVELOPE"]
                subject = _text(env[1])
                if is_gambling(subject, _sender(env)):
                    blocked.append(int(info["UID"]))
                    subjects.append(subject)
            if blocked:
                uids = imap4.MessageSet()
                for uid in blocked:
                    uids.add(uid)
                await client.addFlags(uids, ["\\Deleted"], uid=True)
                await client.expunge()
        await client.logout()
        return {"scanned": count, "blocked": len(blocked), "subjects": subjects}
    finally:
        if client.transport is not None:
            client.transport.loseConnection()
