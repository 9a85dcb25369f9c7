"""The operator's HTML page of the status server (``GET /``, CONTRACT §8): the number of
accounts by state and, for a caller with the admin secret, one row per account.

Every value is HTML-escaped; the page has no script (status.py sends it with a
Content-Security-Policy that allows none).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["render_page"]

_COLUMNS = ("E-mail", "State", "Since", "Last error", "Last heartbeat", "Last event")
_CSS = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin-top:1em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}td.err{color:#a00;max-width:40em;word-break:break-word}"
    ".muted{color:#777}"
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
    """``last_event`` when the snapshot has one, else the last EXISTS and the last scan."""
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
    return "<tr>" + "".join(cells) + "</tr>"


def render_page(accounts: Sequence[Mapping[str, Any]] | None, counts: Mapping[str, int],
                ready: bool) -> str:
    """The operator page; ``accounts`` None means the table is withheld (no secret)."""
    total = sum(counts.values())
    rows = "".join(
        f"<tr><td>{html.escape(state, quote=True)}</td><td>{n}</td></tr>"
        for state, n in sorted(counts.items())
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>rebreak-idle</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>rebreak-idle</h1>",
        f"<p>{'ready' if ready else 'not ready (waiting for the first account refresh)'}"
        f" — {total} account{'' if total == 1 else 's'}</p>",
        f"<table><tr><th>State</th><th>Accounts</th></tr>{rows}</table>",
    ]
    if accounts is None:
        parts.append(
            "<p class=muted>Send the header <code>x-admin-secret</code> to see the accounts, "
            "e.g. <code>curl -H \"x-admin-secret: $ADMIN_SECRET\" …</code></p>")
    else:
        head = "".join(f"<th>{title}</th>" for title in _COLUMNS)
        body = "".join(_row(a) for a in sorted(accounts, key=lambda a: str(a.get("email", ""))))
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
    parts.append("</body></html>\n")
    return "".join(parts)
