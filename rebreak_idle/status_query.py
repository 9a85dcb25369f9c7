"""The status page's GET parameters, and the server-side selection they make: search,
filters, accounts needing attention first, paging; counts by IMAP host.

Parameters (all optional, every value bounded; anything unparsable falls back to the
default): ``q`` (search text, case-insensitive, in e-mail, id, IMAP host and last error),
``state``, ``host`` (exact filters), ``limit`` (rows per page, 1 to 1000, default 100),
``offset``, ``refresh`` (seconds between automatic reloads, 5 to 3600; off by default). The
admin secret is never a parameter (only the ``x-admin-secret`` header).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

__all__ = ["ATTENTION", "DEFAULT_LIMIT", "MAX_LIMIT", "PageQuery", "by_host", "select"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 10_000_000
_MAX_TEXT = 200
REFRESH_RANGE = (5, 3600)
#: States that need an operator's attention, in the order the page lists them.
ATTENTION = ("auth-failed", "backoff", "invalid", "waiting-for-descriptors")
_ORDER = {state: n for n, state in enumerate(
    (*ATTENTION, "connecting", "authenticating", "selecting", "queued", "stopped",
     "polling", "idle"))}


def _text(args: Mapping[bytes, Sequence[bytes]], name: str) -> str:
    values = args.get(name.encode("ascii")) or [b""]
    return values[0].decode("utf-8", "replace").strip()[:_MAX_TEXT]


def _number(args: Mapping[bytes, Sequence[bytes]], name: str, default: int, low: int,
            high: int) -> int:
    raw = _text(args, name)
    if not raw.isdigit() or len(raw) > 9:
        return default
    return min(high, max(low, int(raw)))


@dataclass(frozen=True)
class PageQuery:
    q: str = ""
    state: str = ""
    host: str = ""
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    refresh: int = 0

    @classmethod
    def from_args(cls, args: Mapping[bytes, Sequence[bytes]]) -> PageQuery:
        """From twisted.web's ``request.args``."""
        refresh = _number(args, "refresh", 0, 0, REFRESH_RANGE[1])
        if refresh:
            refresh = max(REFRESH_RANGE[0], refresh)
        return cls(q=_text(args, "q"), state=_text(args, "state"), host=_text(args, "host"),
                   limit=_number(args, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
                   offset=_number(args, "offset", 0, 0, MAX_OFFSET), refresh=refresh)

    def link(self, **changes: Any) -> str:
        """``?…`` of this query with ``changes`` (defaults left out); not yet escaped."""
        q = replace(self, **changes)
        pairs = [(k, v) for k, v in (("q", q.q), ("state", q.state), ("host", q.host),
                                     ("limit", q.limit), ("offset", q.offset),
                                     ("refresh", q.refresh))
                 if v not in ("", 0) and not (k == "limit" and v == DEFAULT_LIMIT)]
        return "?" + urlencode(pairs) if pairs else "?"


def _rank(account: Mapping[str, Any]) -> tuple[int, str]:
    return (_ORDER.get(str(account.get("state")), len(_ORDER)), str(account.get("email") or ""))


def _matches(account: Mapping[str, Any], query: PageQuery, needle: str) -> bool:
    if query.state and str(account.get("state")) != query.state:
        return False
    if query.host and str(account.get("imap_host") or "") != query.host:
        return False
    if not needle:
        return True
    return any(needle in str(account.get(k) or "").lower()
               for k in ("email", "id", "imap_host", "last_error"))


def select(accounts: Sequence[Mapping[str, Any]], query: PageQuery
           ) -> tuple[int, list[Mapping[str, Any]]]:
    """(how many match, the page of them): attention states first, then by e-mail."""
    needle = query.q.lower()
    matching = [a for a in accounts if _matches(a, query, needle)]
    matching.sort(key=_rank)
    return len(matching), matching[query.offset:query.offset + query.limit]


def by_host(accounts: Sequence[Mapping[str, Any]], top: int = 50
            ) -> tuple[list[tuple[str, int, int]], int]:
    """``[(host, accounts, not idle)]`` of the ``top`` hosts with most accounts, and how
    many hosts there are in all. Accounts without a host (invalid rows) count as ``—``."""
    total: Counter[str] = Counter()
    troubled: Counter[str] = Counter()
    for a in accounts:
        host = str(a.get("imap_host") or "—")
        total[host] += 1
        if a.get("state") not in ("idle", "polling"):
            troubled[host] += 1
    ranked = sorted(total, key=lambda h: (-troubled[h], -total[h], h))[:top]
    return [(h, total[h], troubled[h]) for h in ranked], len(total)
