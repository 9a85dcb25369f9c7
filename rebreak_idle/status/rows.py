"""The status page's rows, chosen from the live sessions without a snapshot of each.

At 50,000 accounts a snapshot of every account per request took about a second of the
reactor. :class:`StatusRows` answers a :class:`~rebreak_idle.status.query.PageQuery`
from what is kept up to date instead:

* the counts by state and the sessions that are ready per IMAP host come from the
  daemon's :class:`~rebreak_idle.session.states.StateTally` (moved by each session);
* the sessions sorted by e-mail, the accounts per host and a lower-case search text per
  session are kept until the set of sessions changes (a refresh, a stop:
  ``Supervisor.version``);
* a page is then the counts walked in the page's order (attention states first, then by
  e-mail: :data:`~rebreak_idle.status.query.ATTENTION`), and one filtering pass over the
  sorted sessions for the state(s) the page spans; only the page's rows get a snapshot.

A search (``q``) or host filter narrows the sorted sessions first, then chooses among
those (:func:`~rebreak_idle.status.query.choose`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

from ..fleet.supervisor import WAITING_FOR_DESCRIPTORS
from ..session.states import State
from .query import PageQuery, Selection, choose, page_order, ranked_hosts

__all__ = ["StatusRows"]

_READY = frozenset({State.IDLE, State.POLLING})


@dataclass(frozen=True)
class _Sorted:
    """The sessions of one version of the set, sorted by e-mail, and what the pages
    need of them that does not change while the set does not."""

    version: int
    sessions: list[Any]
    search: list[str]  # "email\nid\nhost", lower case, aligned with sessions
    hosts: Counter[str]  # accounts per IMAP host (invalid rows as "—")
    invalid: list[Any]  # the invalid rows, sorted by e-mail


class StatusRows:
    """The page's rows of ``supervisor`` (a :class:`~rebreak_idle.fleet.supervisor.Supervisor`
    whose sessions move its ``tally``); ``snapshot(entry)`` turns a chosen entry into its
    row (the daemon adds the last scan)."""

    def __init__(self, supervisor: Any, snapshot: Callable[[Any], dict]) -> None:
        self._sup = supervisor
        self._snapshot = snapshot
        self._sorted: _Sorted | None = None

    def _current(self) -> _Sorted:
        sup = self._sup
        kept = self._sorted
        if kept is None or kept.version != sup.version:
            sessions = sorted(sup.sessions.values(), key=lambda s: s.account.email)
            search = [f"{s.account.email}\n{s.account.id}\n{s.account.host}".lower()
                      for s in sessions]
            invalid = sorted(sup.invalid_rows(), key=lambda r: r.email or "")
            hosts = Counter(s.account.host for s in sessions)
            if invalid:
                hosts["—"] += len(invalid)
            kept = self._sorted = _Sorted(sup.version, sessions, search, hosts, invalid)
        return kept

    def state_of(self, entry: Any, waiting: Container[str] = ()) -> str:
        """The state the page shows; ``waiting``: the accounts the descriptor limit holds
        back (:meth:`Supervisor.waiting_for_descriptors`, asked once per page)."""
        if not hasattr(entry, "account"):
            return "invalid"
        if entry.state is State.STOPPED and self._sup.is_queued(entry.account.id):
            return WAITING_FOR_DESCRIPTORS if entry.account.id in waiting else "queued"
        return str(entry.state)

    def _fields(self, entry: Any, waiting: Container[str] = ()
                ) -> tuple[str, str, str, str | None, str | None]:
        if not hasattr(entry, "account"):
            return "invalid", entry.email or "", entry.id, None, entry.reason
        account = entry.account
        return (self.state_of(entry, waiting), account.email, account.id, account.host,
                entry.last_error)

    def _hosts(self, kept: _Sorted) -> tuple[list[tuple[str, int, int]], int]:
        ready = self._sup.tally.ready_by_host()
        for session in self._sup.stopping():  # still counted by the tally, shown nowhere
            if session.state in _READY:
                ready[session.account.host] -= 1
        return ranked_hosts(kept.hosts, ready), len(kept.hosts)

    def _in_state(self, kept: _Sorted, state: str) -> list[Any]:
        """The entries shown in ``state``, in e-mail order (one pass)."""
        if state == "invalid":
            return kept.invalid
        if state in ("queued", "stopped", WAITING_FOR_DESCRIPTORS):
            waiting = self._sup.waiting_for_descriptors()
            return [s for s in kept.sessions if s.state is State.STOPPED
                    and self.state_of(s, waiting) == state]
        try:
            wanted = State(state)
        except ValueError:
            return []
        return [s for s in kept.sessions if s.state is wanted]

    def page(self, query: PageQuery) -> Selection[dict]:
        kept = self._current()
        hosts, host_count = self._hosts(kept)
        total = len(kept.sessions) + len(kept.invalid)
        if query.q or query.host:
            waiting = self._sup.waiting_for_descriptors()
            chosen = choose(self._narrowed(kept, query), query,
                            lambda entry: self._fields(entry, waiting), by_email=True)
            rows = chosen.page
            matching = chosen.matching
        else:
            counts: Mapping[str, int] = self._sup.counts()
            states = [query.state] if query.state else page_order(counts)
            matching = sum(counts.get(s, 0) for s in states)
            rows, skip, need = [], query.offset, query.limit
            for state in states:
                n = counts.get(state, 0)
                if need <= 0:
                    break
                if skip >= n:
                    skip -= n
                    continue
                taken = self._in_state(kept, state)[skip:skip + need]
                rows.extend(taken)
                need -= len(taken)
                skip = 0
        return Selection(matching, [self._snapshot(e) for e in rows], total, hosts,
                         host_count)

    def _narrowed(self, kept: _Sorted, query: PageQuery) -> list[Any]:
        """The entries a search or host filter can match, in e-mail order."""
        entries: list[Any] = kept.sessions
        if query.host:
            entries = [s for s in entries if s.account.host == query.host]
        elif query.q:
            needle = query.q.lower()
            hits = {i for i, text in enumerate(kept.search) if needle in text}
            entries = [s for i, s in enumerate(entries)
                       if i in hits or (s.last_error and needle in s.last_error.lower())]
        if not query.host:  # invalid rows have no host
            entries = [*entries, *kept.invalid]
        return entries
