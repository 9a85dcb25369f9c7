"""``rebreak-idle probe ACCOUNT_ID`` (or ``--email ADDRESS``): one diagnostic run for one
row, without the daemon.

It reads the row with the store's query, decodes it as the supervisor does
(:func:`rebreak_idle.service.row_decoder`), then walks the steps a session takes, each
timed: DNS, TCP, TLS (certificate subject, issuer, expiry, verification result), greeting,
capabilities, STARTTLS, login (its outcome classified by :func:`rebreak_idle.reconnect.
classify`), SELECT counts, IDLE entered and left, a NOOP round trip, LOGOUT. The
connection is the daemon's own: :func:`rebreak_idle.connecting.server_endpoint`, its TLS
creators and :class:`rebreak_idle.imap.IdleClient`.

No secret is ever printed: every text is scrubbed of the configured secrets and the
account's own, and the report holds no field with a secret's name.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.internet import threads
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from . import imap
from .account import Account
from .config import Settings
from .connecting import server_endpoint, shared_tls_creator
from .db.store import AccountStore
from .failures import describe, maskable, scrub
from .imap.client import ConnectionState
from .reconnect import classify, credentials_rejected
from .service import row_decoder
from .supervisor import InvalidRow

__all__ = ["FAILED", "NO_ROW", "OK", "ProbeReport", "format_report", "probe", "run_probe"]

#: Exit statuses: every step passed, a step failed, the row was not found or is unusable.
OK, FAILED, NO_ROW = 0, 1, 2
_MAX_TEXT = 300


def _clean(value: str, secrets: tuple[str, ...]) -> str:
    """Server- or row-supplied text made printable, bounded and secret-free."""
    text = "".join(c if c.isprintable() else "?" for c in value)[:_MAX_TEXT]
    return scrub(text, secrets)


@dataclass
class ProbeReport:
    """What the probe found; :meth:`as_dict` is the ``--json`` output."""

    target: str
    account: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    status: int = OK
    summary: str = "ok"

    def add(self, step: str, ok: bool | None, ms: float | None = None, **detail: Any
            ) -> None:
        entry: dict[str, Any] = {"step": step, "ok": ok}
        if ms is not None:
            entry["ms"] = round(ms, 1)
        entry.update(detail)
        self.steps.append(entry)

    def fail(self, step: str, text: str, status: int = FAILED) -> None:
        if self.status == OK:
            self.status, self.summary = status, f"failed at {step}: {text}"

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "account": self.account, "ok": self.status == OK,
                "summary": self.summary, "steps": self.steps}


def _name_text(name: Any) -> str:
    return ", ".join(f"{k.decode('ascii', 'replace')}={v.decode('utf-8', 'replace')}"
                     for k, v in name.get_components())


def certificate_facts(cert: Any) -> dict[str, Any]:
    """Subject, issuer and expiry of a pyOpenSSL X509 (or a ``cryptography`` one)."""
    if hasattr(cert, "to_cryptography"):
        cert = cert.to_cryptography()
    expires = cert.not_valid_after_utc
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expires_in_days": int((expires - datetime.now(UTC)).total_seconds() // 86400)}


def _unverified_certificate(host: str, port: int, timeout: float) -> dict[str, Any]:
    """The server's certificate fetched without verification (implicit TLS), to show what
    failed to verify. Runs in a thread."""
    from cryptography import x509

    pem = ssl.get_server_certificate((host, port), timeout=timeout)
    return certificate_facts(x509.load_pem_x509_certificate(pem.encode("ascii")))


@implementer(IHandshakeListener)
class _ProbeClient(imap.IdleClient):
    """The daemon's client, noting when TCP connected and when a TLS handshake ended."""

    connected_at: float | None = None
    handshake_at: float | None = None

    def connectionMade(self) -> None:
        self.connected_at = time.perf_counter()
        super().connectionMade()

    def handshakeCompleted(self) -> None:
        self.handshake_at = time.perf_counter()


class _Factory(Factory):
    noisy = False

    def __init__(self, settings: Settings, account: Account) -> None:
        self.client = _ProbeClient(clock=_reactor(), command_timeout=settings.command_timeout,
                                   noop_timeout=settings.noop_timeout,
                                   allow_plaintext_auth=account.security == "plain")

    def buildProtocol(self, addr: Any) -> _ProbeClient:
        self.client.factory = self
        return self.client


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def ms(self, since: float | None = None) -> float:
        return (time.perf_counter() - (self.start if since is None else since)) * 1000


async def _lookup(store: AccountStore, account_id: str | None, email: str | None,
                  report: ProbeReport, secrets: tuple[str, ...]) -> dict[str, Any] | None:
    t = _Timer()
    try:
        rows = await store.rows_of(account_id=account_id, email=email)
    except Exception as e:
        text = _clean(describe(e), secrets)
        report.add("row", False, t.ms(), error=text)
        report.fail("row", text, NO_ROW)
        return None
    if len(rows) != 1:
        text = ("no such row" if not rows else
                f"{len(rows)} rows have this e-mail; probe one by id: "
                + ", ".join(str(r["id"]) for r in rows))
        report.add("row", False, t.ms(), error=text)
        report.fail("row", text, NO_ROW)
        return None
    row = rows[0]
    report.add("row", True, t.ms(), active=bool(row.get("is_active")),
               last_connect_error=_clean(str(row["last_connect_error"]), ())
               if row.get("last_connect_error") else None,
               heartbeat_age_s=row.get("heartbeat_age"))
    return row


async def _dns(account: Account, report: ProbeReport) -> bool:
    if isIPAddress(account.host) or isIPv6Address(account.host):
        report.add("dns", True, 0.0, addresses=[account.host], note="IP literal")
        return True
    t = _Timer()
    try:
        infos = await threads.deferToThread(socket.getaddrinfo, account.host, account.port,
                                            0, socket.SOCK_STREAM)
    except OSError as e:
        report.add("dns", False, t.ms(), error=describe(e))
        report.fail("dns", describe(e))
        return False
    addresses = sorted({info[4][0] for info in infos})
    report.add("dns", True, t.ms(), addresses=addresses)
    return True


async def _connect(settings: Settings, account: Account, report: ProbeReport,
                   secrets: tuple[str, ...]) -> _ProbeClient | None:
    reactor = _reactor()
    factory = _Factory(settings, account)
    client = factory.client

    def tls_options() -> Any:
        return shared_tls_creator(account.host, settings.tls_ca_file)

    t = _Timer()
    try:
        endpoint = server_endpoint(reactor, account, settings.command_timeout, tls_options)
        await endpoint.connect(factory)
        if account.security == "tls":
            await client.greeted
    except Exception as e:
        failure = Failure(e)
        outcome = classify(failure)
        text = _clean(outcome.text, secrets)
        if client.connected_at is None:
            report.add("tcp", False, t.ms(), error=text, **{"class": outcome.cause})
            report.fail("tcp", text)
        else:
            report.add("tcp", True, (client.connected_at - t.start) * 1000,
                       address=f"{account.host}:{account.port}")
            step = "tls" if account.security == "tls" else "greeting"
            detail: dict[str, Any] = {"verified": False} if step == "tls" else {}
            if step == "tls" and outcome.cause == "tls":
                try:
                    detail["certificate"] = await threads.deferToThread(
                        _unverified_certificate, account.host, account.port,
                        settings.command_timeout)
                except Exception as e:  # only an illustration of the failure: say so
                    detail["certificate"] = {"unavailable": _clean(describe(e), secrets)}
            report.add(step, False, t.ms(client.connected_at), error=text,
                       **{"class": outcome.cause}, **detail)
            report.fail(step, text)
        if client.transport is not None and not client.closed:
            client.transport.abortConnection()
        return None
    connected = client.connected_at or time.perf_counter()
    report.add("tcp", True, (connected - t.start) * 1000,
               address=f"{account.host}:{account.port}")
    if account.security == "tls":
        _tls_step(client, report, connected)
    return client


def _tls_step(client: _ProbeClient, report: ProbeReport, since: float) -> None:
    cert = client.transport.getPeerCertificate() if client.transport is not None else None
    ms = ((client.handshake_at or time.perf_counter()) - since) * 1000
    facts = certificate_facts(cert) if cert is not None else {}
    report.add("tls", True, ms, verified=True, certificate=facts)


async def _step(report: ProbeReport, name: str, run: Callable[[], Deferred],
                secrets: tuple[str, ...]) -> tuple[bool, Any]:
    t = _Timer()
    try:
        result = await run()
    except Exception as e:
        outcome = classify(Failure(e))
        text = _clean(outcome.text, secrets)
        extra: dict[str, Any] = {"class": outcome.cause}
        if name == "login":
            extra["credentials_rejected"] = credentials_rejected(outcome)
        report.add(name, False, t.ms(), error=text, **extra)
        report.fail(name, f"{text} ({outcome.cause})")
        return False, None
    report.steps.append({"step": name, "ok": True, "ms": round(t.ms(), 1)})
    return True, result


def _words(caps: dict[bytes, Any]) -> list[str]:
    out = []
    for name, values in caps.items():
        word = name.decode("ascii", "replace")
        if values:
            out.extend(f"{word}={v.decode('ascii', 'replace')}" for v in values)
        else:
            out.append(word)
    return sorted(out)[:100]


async def _session(settings: Settings, account: Account, client: _ProbeClient,
                   report: ProbeReport, secrets: tuple[str, ...]) -> None:
    started = client.handshake_at or client.connected_at or time.perf_counter()
    ok, _ = await _step(report, "greeting", lambda: client.greeted, secrets)
    report.steps[-1]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    if not ok:
        return
    report.steps[-1]["preauth"] = client.state == ConnectionState.AUTH
    if account.security == "starttls":
        if not client.has_starttls:
            report.add("starttls", False, error="server does not offer STARTTLS")
            report.fail("starttls", "server does not offer STARTTLS")
            return
        since = time.perf_counter()
        tls = shared_tls_creator(account.host, settings.tls_ca_file)
        ok, _ = await _step(report, "starttls", lambda: client.startTLS(tls), secrets)
        if not ok:
            return
    ok, caps = await _step(report, "capabilities", client.getCapabilities, secrets)
    if not ok:
        return
    if account.security == "starttls":  # the handshake is done once CAPABILITY answered
        _tls_step(client, report, since)
        report.steps.insert(-1, report.steps.pop())
    report.steps[-1].update(capabilities=_words(caps), idle=client.has_idle)
    if account.auth_method == "xoauth2":
        ok, _ = await _step(report, "login",
                            lambda: client.login_xoauth2(account.username, account.secret),
                            secrets)
    else:
        ok, _ = await _step(report, "login",
                            lambda: client.login(account.username, account.secret), secrets)
    if not ok:
        return
    report.steps[-1].update(method=account.auth_method)
    ok, info = await _step(report, "select", client.select, secrets)
    if not ok:
        return
    report.steps[-1].update({k.lower().replace("-", "_"): info.get(k) for k in
                             ("EXISTS", "RECENT", "UNSEEN", "UIDVALIDITY", "UIDNEXT",
                              "READ-WRITE")})
    if client.has_idle:
        ok, _ = await _step(report, "idle", client.idle, secrets)
        if not ok:
            return
        ok, _ = await _step(report, "done", client.done, secrets)
        if not ok:
            return
    else:
        report.add("idle", None, note="IDLE not offered: the daemon polls this mailbox")
    ok, _ = await _step(report, "noop", client.noop, secrets)


async def probe(settings: Settings, *, account_id: str | None = None,
                email: str | None = None) -> ProbeReport:
    """Run the probe for one row (by ``account_id`` or ``email``) and return the report."""
    report = ProbeReport(target=account_id or email or "")
    secrets = maskable(settings.secret_values())
    store = AccountStore(settings.database_url, _reactor(),
                         connect_timeout=settings.command_timeout)
    try:
        row = await _lookup(store, account_id, email, report, secrets)
    finally:
        store.pool.close()
    if row is None:
        return report
    decoded = row_decoder(settings.key_bytes)(row)
    if isinstance(decoded, InvalidRow):
        text = _clean(decoded.reason, secrets)
        report.account = {"id": decoded.id, "email": decoded.email}
        report.add("decode", False, error=text)
        report.fail("decode", text, NO_ROW)
        return report
    account = decoded
    secrets = maskable((*secrets, account.secret))
    report.account = {"id": account.id, "email": account.email, "host": account.host,
                      "port": account.port, "security": account.security,
                      "username": account.username, "auth_method": account.auth_method}
    if not await _dns(account, report):
        return report
    client = await _connect(settings, account, report, secrets)
    if client is None:
        return report
    try:
        await _session(settings, account, client, report, secrets)
    finally:
        await _logout(client, report, secrets)
    return report


async def _logout(client: _ProbeClient, report: ProbeReport, secrets: tuple[str, ...]
                  ) -> None:
    if client.closed or client.transport is None:
        return
    if report.status != OK:  # whatever failed, still say goodbye
        t = _Timer()
        try:
            await client.logout()
            report.add("logout", True, t.ms())
        except Exception as e:
            report.add("logout", False, t.ms(), error=_clean(describe(e), secrets))
        if client.transport is not None and not client.closed:
            client.transport.abortConnection()
        return
    await _step(report, "logout", client.logout, secrets)


def format_report(report: ProbeReport) -> str:
    """The human output: one line per step."""
    a = report.account
    head = f"probe {report.target}"
    if a.get("host"):
        head = (f"probe {a['email']} (id {a['id']}): {a['host']}:{a['port']} "
                f"{a['security']}, {a['auth_method']} as {a['username']}")
    lines = [head]
    for s in report.steps:
        mark = {True: "ok", False: "FAIL", None: "--"}[s["ok"]]
        ms = f"{s['ms']:8.1f} ms" if "ms" in s else " " * 11
        details = [f"{k}={_shown(v)}" for k, v in s.items() if k not in ("step", "ok", "ms")]
        lines.append(f"  {s['step']:<13}{mark:<5}{ms}  {'; '.join(details)}".rstrip())
    lines.append(f"result: {report.summary}")
    return "\n".join(lines) + "\n"


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_shown(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def run_probe(settings: Settings, *, account_id: str | None, email: str | None,
              as_json: bool, write: Callable[[str], Any]) -> int:
    """Run the probe on the global reactor (``task.react``) and write its report; the
    exit status (0 ok, 1 a step failed, 2 no usable row)."""
    from twisted.internet import task

    status: list[int] = []

    async def main(_reactor: Any) -> None:
        report = await probe(settings, account_id=account_id, email=email)
        write(json.dumps(report.as_dict(), indent=2, default=str) + "\n" if as_json
              else format_report(report))
        status.append(report.status)

    try:
        task.react(lambda r: Deferred.fromCoroutine(main(r)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return status[0] if status else FAILED
