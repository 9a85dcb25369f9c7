"""The status server (CONTRACT §8): health, readiness, Prometheus metrics, account status.

Routes (GET; HEAD works too, other methods get 405):

``/healthz``
    200 ``ok`` while the service runs (the server only listens while it runs).
``/readyz``
    200 once ``ready()`` says the first account refresh has succeeded, else 503 with the
    reason in the body.
``/metrics``
    The Prometheus text format of the registry (its gauges are kept current by the rooms
    that own them: the supervisor sets the oldest heartbeat age at each refresh).
``/status``
    JSON list, one object per account, as ``snapshot()`` gives them. Requires the header
    ``x-admin-secret`` (compared in constant time); without it or with a wrong one: 401.
    With any of the page's GET parameters (``limit``, ``offset``, ``q``, ``state``,
    ``host``): only that page, in the page's order, as cheap as the page; the header
    ``x-total-count`` says how many match.
``/``
    A small HTML page for an operator (:mod:`rebreak_idle.status.page`). Without the header
    it shows only the number of accounts by state (no e-mail address, no error text), from
    counts kept up to date (``counts()``: no walk of the accounts per request). With
    a correct ``x-admin-secret`` header it also shows the account table (e-mail, state,
    since, last error, last heartbeat, last event), the accounts by IMAP host, a search
    field, filters, paging and an optional reload (GET parameters ``q``, ``state``,
    ``host``, ``limit``, ``offset``, ``refresh``: :mod:`rebreak_idle.status.query`), the
    accounts needing attention first; a wrong header gets 401. The secret is
    never accepted in the query string (it would end up in access logs and browser
    history): use ``curl -H "x-admin-secret: $ADMIN_SECRET" http://127.0.0.1:9464/`` or a
    browser extension that adds the header. Every value is HTML-escaped; the page has no
    script.

No answer ever contains a secret: snapshot fields whose name suggests one are dropped.
The access log skips the polling routes (/healthz, /readyz, /metrics) and logs only the
method, path (without query string), status code and client address of the others —
never a request header.
"""

from __future__ import annotations

import functools
import hmac
import json
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from .. import live_metrics  # noqa: F401  (registers the scrape-time gauges of /metrics)
from ..deferreds import Waiters
from ..failures import is_secret_name
from ..metrics import REGISTRY
from .page import render_page
from .query import PageQuery, Selection, choose

if TYPE_CHECKING:
    from ..config import StatusSettings

__all__ = ["StatusService", "make_site", "make_status_resource"]

log = Logger(namespace="rebreak_idle.status")  # the namespace operators know

Snapshot = Callable[[], Sequence[Mapping[str, Any]]]
#: accounts by state (``{"idle": 9, "backoff": 1}``), kept up to date: no walk of the accounts
Counts = Callable[[], Mapping[str, int]]
#: GET parameters that ask /status for one page instead of every account
_PAGE_ARGS = (b"limit", b"offset", b"q", b"state", b"host")
#: the page's rows for a query (snapshot mappings of that page only)
Page = Callable[[PageQuery], Selection[Mapping[str, Any]]]

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


def _chosen_from(snapshot: Snapshot, query: PageQuery) -> Selection[Mapping[str, Any]]:
    """The page of ``query`` chosen from a whole snapshot (for callers without page())."""
    return choose(snapshot(), query)


def _counted(snapshot: Snapshot) -> Counter[str]:
    """Accounts by state, counted from a whole snapshot (for callers without counts)."""
    return Counter(str(a.get("state", "unknown")) for a in snapshot())


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

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        body = generate_latest(self._registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


class _Status(Resource):
    isLeaf = True

    def __init__(self, snapshot: Snapshot, page: Page, secret: _Secret) -> None:
        super().__init__()
        self._snapshot = snapshot
        self._page = page
        self._secret = secret

    def render_GET(self, request: Request) -> bytes:
        if not self._secret.check(request):
            return _plain(request, 401, "unauthorized\n")
        args = request.args or {}
        if any(name in args for name in _PAGE_ARGS):  # one page, as the HTML page picks it
            chosen = _chosen(self._page, PageQuery.from_args(args))
            if chosen is None:
                return _plain(request, 500, "internal error\n")
            accounts: list[dict[str, Any]] | None = chosen.page
            request.setHeader(b"x-total-count", str(chosen.matching).encode("ascii"))
        else:
            accounts = _public_accounts(self._snapshot)
            if accounts is None:
                return _plain(request, 500, "internal error\n")
        _set_headers(request, b"application/json")
        return json.dumps(accounts, default=_json_default, ensure_ascii=False).encode("utf-8")


def _chosen(page: Page, query: PageQuery) -> Selection[dict[str, Any]] | None:
    """The page of ``query`` with public fields only; None (the failure logged) when
    ``page()`` raises."""
    try:
        chosen = page(query)
    except Exception:
        log.failure("status server: choosing the page's accounts failed")
        return None
    return replace(chosen, page=[_public_fields(a) for a in chosen.page])


class _Page(Resource):
    isLeaf = True

    def __init__(self, ready: Callable[[], bool], counts: Counts, page: Page,
                 secret: _Secret) -> None:
        super().__init__()
        self._ready = ready
        self._counts = counts
        self._page = page
        self._secret = secret

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return _plain(request, 404, "not found\n")
        allowed = self._secret.check(request)
        if allowed is False:
            return _plain(request, 401, "unauthorized\n")
        try:  # kept up to date by the sessions: an anonymous request walks nothing
            counts = self._counts()
        except Exception:
            log.failure("status server: counting the accounts failed")
            return _plain(request, 500, "internal error\n")
        # GET parameters pick the rows (status/query.py); the secret is only ever the header
        query = PageQuery.from_args(request.args or {})
        selection = None
        if allowed:  # only the page's rows are snapshotted (with the daemon's page())
            selection = _chosen(self._page, query)
            if selection is None:
                return _plain(request, 500, "internal error\n")
        page = render_page(None, counts, bool(self._ready()), query, selection)
        _set_headers(request, b"text/html; charset=utf-8", _HTML_HEADERS)
        return page.encode("utf-8")


def make_status_resource(
    settings: StatusSettings,
    *,
    ready: Callable[[], bool],
    snapshot: Snapshot,
    counts: Counts | None = None,
    page: Page | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> IResource:
    """The root resource of the status server (routes in the module docstring).

    ``settings.admin_secret`` — what /status and the page's account table require;
    ``ready()`` — whether the first account refresh has succeeded; ``snapshot()`` — one
    mapping per account (``id``, ``email``, ``state``, ``since``, ``last_error``,
    ``last_heartbeat``, ``last_event``; times as epoch seconds or datetimes; more keys are
    passed through to /status); ``counts()`` — the accounts by state, cheap (the daemon's
    :meth:`~rebreak_idle.fleet.supervisor.Supervisor.counts`; default: counted from
    ``snapshot()``), all that the page shows a caller without the secret; ``page(query)``
    — the page's rows for a caller with the secret, without a snapshot of every account
    (the daemon's :meth:`~rebreak_idle.service.Daemon.page`; default: chosen from
    ``snapshot()``).
    """
    secret = _Secret(settings.admin_secret)
    if counts is None:
        counts = functools.partial(_counted, snapshot)
    if page is None:
        page = functools.partial(_chosen_from, snapshot)
    root = Resource()
    root.putChild(b"", _Page(ready, counts, page, secret))
    root.putChild(b"healthz", _Health())
    root.putChild(b"readyz", _Ready(ready))
    root.putChild(b"metrics", _Metrics(registry))
    root.putChild(b"status", _Status(snapshot, page, secret))
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
    """Listens on ``settings.status_endpoint`` (a Twisted server endpoint string, e.g.
    ``tcp:9464:interface=127.0.0.1``) while running and serves ``resource`` there.

    A listening failure is logged as one clear line (the daemon keeps running without the
    status server) and errbacks the Deferreds of :meth:`when_listening`.
    """

    name = "status"

    def __init__(self, settings: StatusSettings, resource: IResource,
                 reactor: IReactorCore) -> None:
        endpoint = settings.status_endpoint
        try:
            self._endpoint = serverFromString(reactor, endpoint)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"REBREAK_STATUS_ENDPOINT is not a valid endpoint description: {e}") from None
        self.description = endpoint
        self.site = make_site(resource, reactor)
        self._port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None
        self._listened = Waiters()

    def when_listening(self) -> Deferred[IListeningPort]:
        """A Deferred that fires with the listening port (``.getHost()`` gives the address)
        or fails with the reason it could not listen."""
        return self._listened.wait()

    def startService(self) -> None:
        super().startService()
        self._listened.unsettle()
        listening = self._endpoint.listen(self.site)
        self._listening = listening

        def listened(port: IListeningPort) -> None:
            self._listening = None
            self._port = port
            address = port.getHost()
            log.info("status server listening on {address}",
                     address=f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"
                     .rstrip(":"))
            self._listened.settle(port)

        def failed(reason: Failure) -> None:
            self._listening = None
            log.error("status server could not listen on {endpoint}: {error}",
                      endpoint=self.description, error=reason.getErrorMessage())
            self._listened.settle(reason)

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
