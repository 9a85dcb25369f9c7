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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

__all__ = ["ATTENTION", "DEFAULT_LIMIT", "MAX_LIMIT", "Fields", "PageQuery", "Selection",
           "by_host", "choose", "page_order", "ranked_hosts", "select"]

T = TypeVar("T")
#: what the selection reads of one account: (state, e-mail, id, IMAP host, last error)
Fields = Callable[[Any], tuple[str, str, str, str | None, str | None]]
TOP_HOSTS = 50

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 10_000_000
_MAX_TEXT = 200
REFRESH_RANGE = (5, 3600)
#: States that need an operator's attention, in the order the page lists them.
ATTENTION = ("auth-failed", "backoff", "invalid", "waiting-for-descriptors")
_READY_STATES = frozenset({"idle", "polling"})
_ORDER = {state: n for n, state in enumerate(
    (*ATTENTION, "connecting", "authenticating", "selecting", "queued", "stopping",
     "stopped",
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


def select(accounts: Sequence[Mapping[str, Any]], query: PageQuery
           ) -> tuple[int, list[Mapping[str, Any]]]:
    """(how many match, the page of them): attention states first, then by e-mail."""
    chosen = choose(accounts, query)
    return chosen.matching, chosen.page


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


@dataclass(frozen=True)
class Selection(Generic[T]):
    """One page of accounts (``page``: the entries as given), how many match, how many
    there are in all, and the ``hosts`` table (:func:`by_host`'s rows and host count)."""

    matching: int
    page: list[T]
    total: int
    hosts: list[tuple[str, int, int]]
    host_count: int


def _mapping_fields(a: Mapping[str, Any]) -> tuple[str, str, str, str | None, str | None]:
    return (str(a.get("state")), str(a.get("email") or ""), str(a.get("id") or ""),
            a.get("imap_host"), a.get("last_error"))


def choose(entries: Iterable[T], query: PageQuery, fields: Fields = _mapping_fields, *,
           by_email: bool = False, top_hosts: int = TOP_HOSTS) -> Selection[T]:
    """The page of ``entries`` that ``query`` asks for, attention states first, then by
    e-mail, in one pass (no snapshot of each account: ``fields(entry)`` reads what the
    selection needs). ``by_email``: the entries come sorted by e-mail already, so the
    order is a stable split by state instead of a sort of every entry."""
    needle = query.q.lower()
    state_wanted, host_wanted = query.state, query.host
    order, last = _ORDER, len(_ORDER)
    buckets: dict[int, list[tuple[str, T]]] = {}
    total_by_host: Counter[str] = Counter()
    troubled: Counter[str] = Counter()
    total = 0
    for entry in entries:
        state, email, ident, host, error = fields(entry)
        total += 1
        shown_host = host or "—"
        total_by_host[shown_host] += 1
        if state not in _READY_STATES:
            troubled[shown_host] += 1
        if state_wanted and state != state_wanted:
            continue
        if host_wanted and (host or "") != host_wanted:
            continue
        if needle and not any(needle in (v or "").lower()
                              for v in (email, ident, host, error)):
            continue
        rank = order.get(state, last)
        bucket = buckets.get(rank)
        if bucket is None:
            bucket = buckets[rank] = []
        bucket.append((email, entry))
    matching: list[T] = []
    for rank in sorted(buckets):
        bucket = buckets[rank]
        if not by_email:
            bucket.sort(key=lambda item: item[0])
        matching.extend(entry for _email, entry in bucket)
    ready = {h: n - troubled[h] for h, n in total_by_host.items()}
    hosts = ranked_hosts(total_by_host, ready, top_hosts)
    return Selection(len(matching), matching[query.offset:query.offset + query.limit],
                     total, hosts, len(total_by_host))


def ranked_hosts(totals: Mapping[str, int], ready: Mapping[str, int],
                 top: int = TOP_HOSTS) -> list[tuple[str, int, int]]:
    """``[(host, accounts, not idle)]`` of the ``top`` hosts, most accounts not idle first,
    from the accounts per host and those ready (idle or polling) per host."""
    troubled = {h: max(0, n - ready.get(h, 0)) for h, n in totals.items()}
    ranked = sorted(totals, key=lambda h: (-troubled[h], -totals[h], h))[:top]
    return [(h, totals[h], troubled[h]) for h in ranked]


def page_order(counts: Mapping[str, int]) -> list[str]:
    """The states of ``counts`` in the page's order: attention first (as :func:`choose`
    ranks them), unknown states last."""
    last = len(_ORDER)
    return sorted(counts, key=lambda s: (_ORDER.get(s, last), s))
