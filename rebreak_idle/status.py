"""The status server (CONTRACT §8): health, readiness, Prometheus metrics, account status.

Routes (GET; HEAD works too, other methods get 405):

``/healthz``
    200 ``ok`` while the service runs (the server only listens while it runs).
``/readyz``
    200 once ``ready()`` says the first account refresh has succeeded, else 503 with the
    reason in the body.
``/metrics``
    The Prometheus text format of the registry (``before_metrics()`` runs first, so the
    daemon can refresh gauges such as the oldest heartbeat age).
``/status``
    JSON list, one object per account, as ``snapshot()`` gives them. Requires the header
    ``x-admin-secret`` (compared in constant time); without it or with a wrong one: 401.
``/``
    A small HTML page for an operator. Without the header it shows only the number of
    accounts by state (no e-mail address, no error text). With a correct
    ``x-admin-secret`` header it also shows the account table (e-mail, state, since, last
    error, last heartbeat, last event); a wrong header gets 401. The secret is never
    accepted in the query string (it would end up in access logs and browser history):
    use ``curl -H "x-admin-secret: $ADMIN_SECRET" http://127.0.0.1:9464/`` or a browser
    extension that adds the header. Every value is HTML-escaped; the page has no script.

No answer ever contains a secret: snapshot fields whose name suggests one are dropped.
The access log skips the polling routes (/healthz, /readyz, /metrics) and logs only the
method, path (without query string), status code and client address of the others —
never a request header.
"""

from __future__ import annotations

import hmac
import html
import json
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from .failures import is_secret_name
from .metrics import REGISTRY

__all__ = ["StatusService", "make_site", "make_status_resource", "render_page"]

log = Logger()

Snapshot = Callable[[], Sequence[Mapping[str, Any]]]

ADMIN_HEADER = b"x-admin-secret"
QUIET_PATHS = frozenset({b"/healthz", b"/readyz", b"/metrics"})
NOT_READY = "not ready: the first account refresh has not succeeded yet\n"
_SECURITY_HEADERS = {
    b"cache-control": b"no-store",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
}
_HTML_HEADERS = {
    b"content-security-policy": b"default-src 'none'; style-src 'unsafe-inline'",
    b"x-frame-options": b"DENY",
}


def _set_headers(request: Request, content_type: bytes, *extra: Mapping[bytes, bytes]) -> None:
    request.setHeader(b"content-type", content_type)
    for headers in (_SECURITY_HEADERS, *extra):
        for name, value in headers.items():
            request.setHeader(name, value)


def _plain(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    _set_headers(request, b"text/plain; charset=utf-8")
    return text.encode("utf-8")


class _Secret:
    """The admin secret, checked in constant time; an empty secret admits nobody."""

    def __init__(self, secret: str) -> None:
        self._value = secret.encode("utf-8")

    def __repr__(self) -> str:
        return "<admin secret>"

    def check(self, request: Request) -> bool | None:
        """None when the header is absent, else whether it matches."""
        given = request.getHeader(ADMIN_HEADER)
        if given is None:
            return None
        if isinstance(given, str):
            given = given.encode("utf-8")
        return bool(self._value) and hmac.compare_digest(given, self._value)


def _public_fields(account: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in account.items()
            if not is_secret_name(k)}


def _public_accounts(snapshot: Snapshot) -> list[dict[str, Any]] | None:
    """Every account's :func:`_public_fields`; None (the failure logged) when ``snapshot()``
    raises."""
    try:
        return [_public_fields(a) for a in snapshot()]
    except Exception:
        log.failure("status server: taking the account snapshot failed")
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return _plain(request, 200, "ok\n")


class _Ready(Resource):
    isLeaf = True

    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self._ready = ready

    def render_GET(self, request: Request) -> bytes:
        if self._ready():
            return _plain(request, 200, "ready\n")
        return _plain(request, 503, NOT_READY)


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry,
                 before: Callable[[], None] | None) -> None:
        super().__init__()
        self._registry = registry
        self._before = before

    def render_GET(self, request: Request) -> bytes:
        if self._before is not None:
            try:
                self._before()
            except Exception:
                log.failure("status server: refreshing the gauges before /metrics failed")
        body = generate_latest(self._registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


class _Status(Resource):
    isLeaf = True

    def __init__(self, snapshot: Snapshot, secret: _Secret) -> None:
        super().__init__()
        self._snapshot = snapshot
        self._secret = secret

    def render_GET(self, request: Request) -> bytes:
        if not self._secret.check(request):
            return _plain(request, 401, "unauthorized\n")
        accounts = _public_accounts(self._snapshot)
        if accounts is None:
            return _plain(request, 500, "internal error\n")
        _set_headers(request, b"application/json")
        return json.dumps(accounts, default=_json_default, ensure_ascii=False).encode("utf-8")


# --- the HTML page ------------------------------------------------------------------------

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


class _Page(Resource):
    isLeaf = True

    def __init__(self, ready: Callable[[], bool], snapshot: Snapshot, secret: _Secret) -> None:
        super().__init__()
        self._ready = ready
        self._snapshot = snapshot
        self._secret = secret

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return _plain(request, 404, "not found\n")
        allowed = self._secret.check(request)
        if allowed is False:
            return _plain(request, 401, "unauthorized\n")
        accounts = _public_accounts(self._snapshot)
        if accounts is None:
            return _plain(request, 500, "internal error\n")
        counts = Counter(str(a.get("state", "unknown")) for a in accounts)
        page = render_page(accounts if allowed else None, counts, bool(self._ready()))
        _set_headers(request, b"text/html; charset=utf-8", _HTML_HEADERS)
        return page.encode("utf-8")


def make_status_resource(
    *,
    ready: Callable[[], bool],
    snapshot: Snapshot,
    admin_secret: str,
    registry: CollectorRegistry = REGISTRY,
    before_metrics: Callable[[], None] | None = None,
) -> IResource:
    """The root resource of the status server (routes in the module docstring).

    ``ready()`` — whether the first account refresh has succeeded; ``snapshot()`` — one
    mapping per account (``id``, ``email``, ``state``, ``since``, ``last_error``,
    ``last_heartbeat``, ``last_event``; times as epoch seconds or datetimes; more keys are
    passed through to /status); ``before_metrics()`` — called before each /metrics answer.
    """
    secret = _Secret(admin_secret)
    root = Resource()
    root.putChild(b"", _Page(ready, snapshot, secret))
    root.putChild(b"healthz", _Health())
    root.putChild(b"readyz", _Ready(ready))
    root.putChild(b"metrics", _Metrics(registry, before_metrics))
    root.putChild(b"status", _Status(snapshot, secret))
    return root


# --- serving ------------------------------------------------------------------------------


class _StatusSite(Site):
    """A Site that logs no header, no query string and none of the polling routes, and can
    drop its open connections when the service stops."""

    noisy = False
    displayTracebacks = False

    def __init__(self, resource: IResource, reactor: Any = None) -> None:
        super().__init__(resource, reactor=reactor)
        self._channels: weakref.WeakSet[HTTPChannel] = weakref.WeakSet()

    def buildProtocol(self, addr: Any) -> HTTPChannel:
        channel = super().buildProtocol(addr)
        if channel is not None:
            self._channels.add(channel)
        return channel

    def close_connections(self) -> None:
        for channel in list(self._channels):
            transport = getattr(channel, "transport", None)
            if transport is not None:
                transport.loseConnection()

    def log(self, request: Request) -> None:
        path = request.path or b""
        if path in QUIET_PATHS:
            return
        address = request.getClientAddress()
        log.info(
            "status server: {method} {path} {code} from {client}",
            method=(request.method or b"?").decode("latin-1")[:16],
            path=path.decode("utf-8", "replace")[:200],
            code=request.code,
            client=getattr(address, "host", None) or str(address),
        )


def make_site(resource: IResource, reactor: Any = None) -> Site:
    """A twisted.web Site for ``resource`` with the status server's quiet access log."""
    return _StatusSite(resource, reactor=reactor)


class StatusService(Service):
    """Listens on a Twisted server endpoint string (``settings.status_endpoint``, e.g.
    ``tcp:9464:interface=127.0.0.1``) while running and serves ``resource`` there.

    A listening failure is logged as one clear line (the daemon keeps running without the
    status server) and errbacks the Deferreds of :meth:`when_listening`.
    """

    name = "status"

    def __init__(self, endpoint: str, resource: IResource, reactor: IReactorCore) -> None:
        try:
            self._endpoint = serverFromString(reactor, endpoint)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"REBREAK_STATUS_ENDPOINT is not a valid endpoint description: {e}") from None
        self.description = endpoint
        self.site = make_site(resource, reactor)
        self._port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._waiters: list[Deferred[IListeningPort]] = []
        self._outcome: IListeningPort | Failure | None = None

    def when_listening(self) -> Deferred[IListeningPort]:
        """A Deferred that fires with the listening port (``.getHost()`` gives the address)
        or fails with the reason it could not listen."""
        if isinstance(self._outcome, Failure):
            return fail(self._outcome)
        if self._outcome is not None:
            return succeed(self._outcome)
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _settle(self, outcome: IListeningPort | Failure) -> None:
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    def startService(self) -> None:
        super().startService()
        self._outcome = None
        listening = self._endpoint.listen(self.site)
        self._listening = listening

        def listened(port: IListeningPort) -> None:
            self._listening = None
            self._port = port
            address = port.getHost()
            log.info("status server listening on {address}",
                     address=f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"
                     .rstrip(":"))
            self._settle(port)

        def failed(reason: Failure) -> None:
            self._listening = None
            log.error("status server could not listen on {endpoint}: {error}",
                      endpoint=self.description, error=reason.getErrorMessage())
            self._settle(reason)

        listening.addCallbacks(listened, failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._listening is not None:
            self._listening.cancel()
        port, self._port = self._port, None
        self.site.close_connections()
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return stopped if isinstance(stopped, Deferred) else succeed(None)
