"""The operator's HTML page of the status server (``GET /``, CONTRACT §8): the number of
accounts by state and, for a caller with the admin secret, the accounts by IMAP host and
one page of the account table: accounts needing attention first (auth-failed, backoff,
invalid), a search field and filters, paging, an optional automatic reload
(:mod:`rebreak_idle.status.query`: all server-side, GET parameters only).

Every value is HTML-escaped; the page has no script (status/server.py sends it with a
Content-Security-Policy that allows none).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .query import ATTENTION, PageQuery, Selection, choose

__all__ = ["render_page"]

_COLUMNS = ("E-mail", "State", "Since", "Last error", "Last heartbeat", "Last event")
_CSS = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin-top:1em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}td.err{color:#a00;max-width:40em;word-break:break-word}"
    ".muted{color:#777}tr.attention td{background:#fff4f0}"
    "form{margin-top:1em}form label{margin-right:1em}nav a{margin-right:1em}"
    "h2{font-size:1.1em;margin-top:1.5em}"
)


def _shown(value: Any) -> str:
    """An escaped cell value; None as a dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, datetime):
        text = _time_text(value)
    elif isinstance(value, Mapping):
        text = ", ".join(f"{k}={v}" for k, v in value.items())
    else:
        text = str(value)
    return html.escape(text, quote=True)


def _when(value: Any) -> str:
    """An escaped time: epoch seconds, a datetime or an ISO 8601 string, shown in UTC."""
    moment = value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            pass
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
    return _shown(moment)


def _time_text(moment: datetime) -> str:
    if moment.tzinfo:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _muted(html_text: str) -> str:
    return f" <span class=muted>{html_text}</span>" if html_text != "—" else ""


def _state_cell(a: Mapping[str, Any]) -> str:
    cell = _shown(a.get("state"))
    attempt, wait = a.get("attempt"), a.get("next_attempt_in")
    details = []
    if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 0:
        details.append(f"attempt {attempt}")
    if isinstance(wait, int | float) and not isinstance(wait, bool):
        details.append(f"next in {wait:.0f}s")
    return cell + (_muted(html.escape(", ".join(details))) if details else "")


def _event_cell(a: Mapping[str, Any]) -> str:
    """``last_event`` when the snapshot has one, else the last EXISTS, the last scan and
    since when a scan is owed (``scan_owed_since``)."""
    if "last_event" in a:
        return _shown(a.get("last_event"))
    lines = []
    exists = a.get("last_exists")
    if isinstance(exists, Mapping):
        lines.append(f"EXISTS {_shown(exists.get('count'))}{_muted(_when(exists.get('at')))}")
    scan = a.get("last_scan")
    if isinstance(scan, Mapping):
        text = f"scan {_shown(scan.get('outcome'))}"
        if scan.get("scanned") is not None or scan.get("blocked") is not None:
            text += (f" (scanned={_shown(scan.get('scanned'))}"
                     f" blocked={_shown(scan.get('blocked'))})")
        lines.append(text + _muted(_when(scan.get("time"))))
    owed = a.get("scan_owed_since")
    if owed:  # the backend has not acknowledged a scan of new mail since then
        lines.append(f"<strong>scan owed since {_when(owed)}</strong>")
    return "<br>".join(lines) if lines else "—"


def _row(a: Mapping[str, Any]) -> str:
    error = a.get("last_error")
    cells = (
        f"<td>{_shown(a.get('email'))}</td>",
        f"<td>{_state_cell(a)}</td>",
        f"<td>{_when(a.get('since'))}</td>",
        (f"<td class=err>{_shown(error)}{_muted(_when(a.get('last_error_at')))}</td>"
         if error else "<td>—</td>"),
        f"<td>{_when(a.get('last_heartbeat'))}</td>",
        f"<td>{_event_cell(a)}</td>",
    )
    mark = " class=attention" if a.get("state") in ATTENTION else ""
    return f"<tr{mark}>" + "".join(cells) + "</tr>"


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _hosts_table(selection: Selection, query: PageQuery) -> str:
    hosts, n = selection.hosts, selection.host_count
    rows = "".join(
        f"<tr><td><a href=\"{_esc(query.link(host=h if h != '—' else '', offset=0))}\">"
        f"{_esc(h)}</a></td><td>{total}</td><td>{bad}</td></tr>"
        for h, total, bad in hosts)
    more = f" <span class=muted>(the {len(hosts)} of {n} with most)</span>" if n > len(hosts) \
        else ""
    return (f"<h2>Accounts by IMAP host{more}</h2><table id=hosts><tr><th>IMAP host</th>"
            f"<th>Accounts</th><th>Not idle</th></tr>{rows}</table>")


def _form(counts: Mapping[str, int], query: PageQuery) -> str:
    states = "".join(
        f"<option value=\"{_esc(s)}\"{' selected' if s == query.state else ''}>{_esc(s)}"
        "</option>" for s in sorted(counts))
    refresh = "".join(
        f"<option value={n}{' selected' if n == query.refresh else ''}>"
        f"{'off' if n == 0 else f'every {n}s'}</option>" for n in (0, 10, 30, 60, 300))
    return (
        "<form method=get action=\"/\">"
        f"<label>Search <input type=search name=q value=\"{_esc(query.q)}\" size=30 "
        "placeholder=\"e-mail, id, host or error\"></label>"
        f"<label>State <select name=state><option value=\"\">any</option>{states}"
        "</select></label>"
        f"<label>IMAP host <input name=host value=\"{_esc(query.host)}\" size=20></label>"
        f"<label>Rows <input type=number name=limit min=1 max=1000 value={query.limit}>"
        "</label>"
        f"<label>Reload <select name=refresh>{refresh}</select></label>"
        "<button type=submit>Show</button></form>")


def _nav(query: PageQuery, matching: int, shown: int, total: int) -> str:
    first = query.offset + 1 if shown else 0
    parts = [f"<p id=showing>Showing {first} to {query.offset + shown} of {matching} matching"
             f" ({total} in all)</p><nav>"]
    if query.offset > 0:
        back = max(0, query.offset - query.limit)
        parts.append(f"<a rel=prev href=\"{_esc(query.link(offset=back))}\">« previous</a>")
    if query.offset + shown < matching:
        parts.append(f"<a rel=next href=\"{_esc(query.link(offset=query.offset + shown))}\">"
                     "next »</a>")
    parts.append("</nav>")
    return "".join(parts)


def render_page(accounts: Sequence[Mapping[str, Any]] | None, counts: Mapping[str, int],
                ready: bool, query: PageQuery | None = None,
                selection: Selection[Mapping[str, Any]] | None = None) -> str:
    """The operator page; ``accounts`` and ``selection`` None mean the table is withheld
    (no secret); ``query`` (from the GET parameters) picks the rows shown and the automatic
    reload. ``selection``: the page already chosen (:func:`~rebreak_idle.status.query.
    choose`), its rows as snapshot mappings; else it is chosen from ``accounts``."""
    query = query or PageQuery()
    if selection is None and accounts is not None:
        selection = choose(accounts, query)
    total = sum(counts.values())
    rows = "".join(
        f"<tr><td>{html.escape(state, quote=True)}</td><td>{n}</td></tr>"
        for state, n in sorted(counts.items())
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<meta http-equiv=refresh content={query.refresh}>" if query.refresh else "",
        "<title>rebreak-idle</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>rebreak-idle</h1>",
        f"<p>{'ready' if ready else 'not ready (waiting for the first account refresh)'}"
        f" — {total} account{'' if total == 1 else 's'}</p>",
        f"<table id=states><tr><th>State</th><th>Accounts</th></tr>{rows}</table>",
    ]
    if selection is None:
        parts.append(
            "<p class=muted>Send the header <code>x-admin-secret</code> to see the accounts, "
            "e.g. <code>curl -H \"x-admin-secret: $ADMIN_SECRET\" …</code></p>")
    else:
        head = "".join(f"<th>{title}</th>" for title in _COLUMNS)
        page = selection.page
        body = "".join(_row(a) for a in page)
        parts += [_hosts_table(selection, query), "<h2>Accounts</h2>", _form(counts, query),
                  _nav(query, selection.matching, len(page), selection.total),
                  f"<table id=accounts><tr>{head}</tr>{body}</table>"]
    parts.append("</body></html>\n")
    return "".join(parts)
