"""``rebreak-idle probe ACCOUNT_ID`` (or ``--email ADDRESS``): one diagnostic run for one
row, without the daemon.

It reads the row with the store's query, decodes it as the supervisor does
(:func:`rebreak_idle.service.row_decoder`, with ``REBREAK_ALLOW_PRIVATE_HOSTS``), then
walks the steps a session takes, each timed: DNS (each address checked by the destination
policy), TCP, TLS (certificate subject, issuer, expiry, verification result), then the
session's own login sequence (:mod:`rebreak_idle.session.login_sequence`: greeting, STARTTLS,
capabilities, login (its outcome classified by
:func:`rebreak_idle.session.reconnect_policy.classify`),
ID, SELECT counts, Courier's STATUS for UIDNEXT), IDLE entered and left, a NOOP round
trip, LOGOUT. The connection is the daemon's own: :func:`rebreak_idle.net.connecting.
server_endpoint` with the destination policy (a name that resolves to a refused address
gets no connection), its TLS creators and :class:`rebreak_idle.imap.IdleClient`. A
certificate that fails to verify is shown from that same handshake; there is never a
second connection.

No secret is ever printed: every text is scrubbed (:mod:`rebreak_idle.failures`) of the
configured secrets and of the account's own in every form a server may echo it (the
secret, base64 of it, the AUTHENTICATE PLAIN and XOAUTH2 payloads), and the report holds
no field with a secret's name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IResolutionReceiver
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from . import imap
from .accounts.account import Account
from .accounts.destinations import DestinationPolicy, policy_for
from .config import Settings
from .db.store import AccountStore
from .failures import account_secrets, describe, maskable, scrub
from .fleet.supervisor import InvalidRow
from .imap.client import ConnectionState
from .net.connecting import server_endpoint, shared_tls_creator
from .service import row_decoder
from .session.login_sequence import LoggedIn, LoginSequence, Phase
from .session.reconnect_policy import classify, credentials_rejected

__all__ = ["FAILED", "NO_ROW", "OK", "ProbeReport", "format_report", "probe", "run_probe"]

#: Exit statuses: every step passed, a step failed, the row was not found or is unusable.
OK, FAILED, NO_ROW = 0, 1, 2
_MAX_TEXT = 300


def _clean(value: str, secrets: tuple[str, ...]) -> str:
    """Server- or row-supplied text made secret-free (first: escaping or cutting could
    split a secret), printable and bounded."""
    text = scrub(value, secrets)
    return "".join(c if c.isprintable() else "?" for c in text)[:_MAX_TEXT]


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


def certificate_facts(cert: Any) -> dict[str, Any]:
    """Subject, issuer and expiry of a pyOpenSSL X509 (or a ``cryptography`` one)."""
    if hasattr(cert, "to_cryptography"):
        cert = cert.to_cryptography()
    expires = cert.not_valid_after_utc
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expires_in_days": int((expires - datetime.now(UTC)).total_seconds() // 86400)}


def _failed_certificate(reason: Failure | None) -> dict[str, Any] | None:
    """The certificate that failed verification, as the failed handshake itself gave it
    (:class:`~rebreak_idle.net.tls.CertificateVerifyError`), or None."""
    cert = getattr(getattr(reason, "value", None), "certificate", None)
    if cert is None:
        return None
    facts = certificate_facts(cert)
    depth = getattr(reason.value, "depth", None) if reason is not None else None
    if depth:
        facts["depth"] = depth  # an issuer's certificate, not the server's own
    return facts


@implementer(IHandshakeListener)
class _ProbeClient(imap.IdleClient):
    """The daemon's client, noting when TCP connected, when a TLS handshake ended and why
    the connection was lost."""

    connected_at: float | None = None
    handshake_at: float | None = None
    lost_reason: Failure | None = None

    def connectionMade(self) -> None:
        self.connected_at = time.perf_counter()
        super().connectionMade()

    def handshakeCompleted(self) -> None:
        self.handshake_at = time.perf_counter()

    def connectionLost(self, reason: Failure = None) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)


class _Factory(Factory):
    noisy = False

    def __init__(self, client: _ProbeClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> _ProbeClient:
        self.client.factory = self
        return self.client


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class _Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def ms(self, since: float | None = None) -> float:
        return (time.perf_counter() - (self.start if since is None else since)) * 1000


class _StepFailed(Exception):
    """A step failed and is in the report: the run stops (LOGOUT still follows)."""


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects what a name resolution gives (IHostnameResolver)."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        host = str(getattr(address, "host", ""))
        if host not in self.addresses:
            self.addresses.append(host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


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
               last_connect_error=_clean(str(row["last_connect_error"]), secrets)
               if row.get("last_connect_error") else None,
               heartbeat_age_s=row.get("heartbeat_age"))
    return row


def _words(caps: dict[bytes, Any]) -> list[str]:
    out = []
    for name, values in caps.items():
        word = name.decode("ascii", "replace")
        if values:
            out.extend(f"{word}={v.decode('ascii', 'replace')}" for v in values)
        else:
            out.append(word)
    return sorted(out)[:100]


class _Run:
    """One probe of one decoded account: the steps after the row, in order."""

    def __init__(self, settings: Settings, account: Account, report: ProbeReport,
                 secrets: tuple[str, ...], reactor: Any, resolver: Any) -> None:
        self.settings = settings
        self.account = account
        self.report = report
        self.secrets = secrets
        self.reactor = reactor
        self.resolver = resolver
        self.policy: DestinationPolicy = policy_for(settings.allow_private_hosts)
        self.client = _ProbeClient(clock=reactor, command_timeout=settings.command_timeout,
                                   noop_timeout=settings.noop_timeout,
                                   allow_plaintext_auth=account.security == "plain")
        self._starttls_at: float | None = None
        self._select: dict[str, Any] = {}

    def clean(self, text: str) -> str:
        return _clean(text, self.secrets)

    def tls_options(self) -> Any:
        self._starttls_at = time.perf_counter()
        return shared_tls_creator(self.account.host, self.settings.tls_ca_file)

    async def run(self) -> None:
        if not await self.dns() or not await self.connect():
            return
        try:
            await self.session()
        except _StepFailed:
            pass
        finally:
            await self.logout()

    # -- before IMAP ------------------------------------------------------------------------

    async def dns(self) -> bool:
        """The row's name resolved as the daemon resolves it, each address checked by the
        destination policy; every address refused: the probe stops here, unconnected."""
        account, report = self.account, self.report
        if isIPAddress(account.host) or isIPv6Address(account.host):
            report.add("dns", True, 0.0, addresses=[account.host], note="IP literal")
            return True
        t = _Timer()
        resolver = self.resolver or self.reactor.nameResolver
        receiver = _Addresses()
        try:
            resolver.resolveHostName(receiver, account.host, account.port)
            addresses = await receiver.done.addTimeout(self.settings.command_timeout,
                                                       self.reactor)
        except Exception as e:
            text = self.clean(describe(e))
            report.add("dns", False, t.ms(), error=text)
            report.fail("dns", text)
            return False
        if not addresses:
            text = f"DNS lookup failed: no address for {account.host}"
            report.add("dns", False, t.ms(), error=text)
            report.fail("dns", text)
            return False
        problems = {a: self.policy.problem(a, account.host) for a in addresses}
        refused = [a for a, problem in problems.items() if problem is not None]
        if len(refused) == len(addresses):
            text = str(problems[addresses[0]])
            report.add("dns", False, t.ms(), addresses=addresses, error=text,
                       **{"class": "destination"})
            report.fail("dns", text)
            return False
        detail = {"refused": refused} if refused else {}
        report.add("dns", True, t.ms(), addresses=addresses, **detail)
        return True

    async def connect(self) -> bool:
        """TCP (and implicit TLS) through the daemon's endpoint and destination policy."""
        account, report, client = self.account, self.report, self.client
        t = _Timer()
        try:
            endpoint = server_endpoint(self.reactor, account, self.settings.command_timeout,
                                       self.tls_options, self.policy, resolver=self.resolver)
            await endpoint.connect(_Factory(client))
            if account.security == "tls":
                await client.greeted
        except Exception as e:
            outcome = classify(Failure(e))
            text = self.clean(outcome.text)
            if client.connected_at is None:
                report.add("tcp", False, t.ms(), error=text, **{"class": outcome.cause})
                report.fail("tcp", text)
            else:
                report.add("tcp", True, (client.connected_at - t.start) * 1000,
                           address=f"{account.host}:{account.port}")
                step = "tls" if account.security == "tls" else "greeting"
                detail: dict[str, Any] = {"verified": False} if step == "tls" else {}
                certificate = _failed_certificate(client.lost_reason)
                if step == "tls" and certificate is not None:
                    detail["certificate"] = certificate
                report.add(step, False, t.ms(client.connected_at), error=text,
                           **{"class": outcome.cause}, **detail)
                report.fail(step, text)
            if client.transport is not None and not client.closed:
                client.transport.abortConnection()
            return False
        connected = client.connected_at or time.perf_counter()
        peer = getattr(client.transport.getPeer(), "host", account.host) \
            if client.transport is not None else account.host
        report.add("tcp", True, (connected - t.start) * 1000,
                   address=f"{account.host}:{account.port}", peer=str(peer))
        if account.security == "tls":
            self.tls_step(connected)
        return True

    def tls_step(self, since: float) -> None:
        client = self.client
        cert = client.transport.getPeerCertificate() if client.transport is not None else None
        ms = ((client.handshake_at or time.perf_counter()) - since) * 1000
        facts = certificate_facts(cert) if cert is not None else {}
        self.report.add("tls", True, ms, verified=True, certificate=facts)

    # -- the session's login sequence, then IDLE and NOOP -------------------------------------

    async def step(self, name: str, action: Callable[[], Awaitable[Any]]) -> Any:
        """Run one step: timed, reported; a failure is reported and stops the run."""
        report, client = self.report, self.client
        t = _Timer()
        if name == "greeting":  # the server's greeting came after TCP / the handshake
            t.start = client.handshake_at or client.connected_at or t.start
        try:
            result = await action()
        except Exception as e:
            outcome = classify(Failure(e))
            text = self.clean(outcome.text)
            extra: dict[str, Any] = {"class": outcome.cause}
            if name == "login":
                extra["credentials_rejected"] = credentials_rejected(outcome)
            if name == "starttls":
                certificate = _failed_certificate(client.lost_reason)
                if certificate is not None:
                    extra["certificate"] = certificate
            report.add(name, False, t.ms(), error=text, **extra)
            report.fail(name, f"{text} ({outcome.cause})")
            raise _StepFailed(name) from None
        report.add(name, True, t.ms())
        return result

    def phase(self, phase: Phase, done: LoggedIn) -> None:
        """What the shared sequence tells: details added to the steps it ran."""
        report, client = self.report, self.client
        if phase is Phase.GREETED:
            greeting = next(s for s in report.steps if s["step"] == "greeting")
            greeting["preauth"] = client.state == ConnectionState.AUTH
            if self.account.security == "starttls" and self._starttls_at is not None:
                # the handshake is done once CAPABILITY answered
                self.tls_step(self._starttls_at)
            report.add("capabilities", True, 0.0, capabilities=_words(client.capabilities))
        elif phase is Phase.LOGGED_IN:
            # the capabilities that count: after login (Cyrus tells IDLE only then)
            report.steps[-1].update(method=done.account.auth_method,
                                    capabilities=_words(client.capabilities),
                                    idle=client.has_idle)
        elif phase is Phase.SELECTED and done.selected is not None:
            self._select = report.steps[-1]
            self._select.update({k.lower().replace("-", "_"): done.selected.get(k) for k in
                                 ("EXISTS", "RECENT", "UNSEEN", "UIDVALIDITY", "UIDNEXT",
                                  "READ-WRITE")})

    async def session(self) -> None:
        client, report = self.client, self.report
        sequence = LoginSequence(client, self.account, self.tls_options,
                                 on_phase=self.phase, step=self.step)
        done = await sequence.run()
        if done.mark is not None and done.mark.uidnext is None:  # STATUS asked (Courier)
            report.steps[-1]["uidnext"] = done.uidnext
            self._select.update(uidnext=done.uidnext, uidnext_from="STATUS")
        if client.has_idle:
            await self.step("idle", client.idle)
            await self.step("done", client.done)
        else:
            report.add("idle", None, note="IDLE not offered: the daemon polls this mailbox")
        await self.step("noop", client.noop)

    async def logout(self) -> None:
        client, report = self.client, self.report
        if client.closed or client.transport is None:
            return
        t = _Timer()
        try:
            await client.logout()
            report.add("logout", True, t.ms())
        except Exception as e:
            text = self.clean(describe(e))
            report.add("logout", False, t.ms(), error=text)
            report.fail("logout", text)
        if client.transport is not None and not client.closed:
            client.transport.abortConnection()


async def probe(settings: Settings, *, account_id: str | None = None,
                email: str | None = None, reactor: Any = None, resolver: Any = None
                ) -> ProbeReport:
    """Run the probe for one row (by ``account_id`` or ``email``) and return the report.
    ``reactor`` (default the global one) and ``resolver`` (an ``IHostnameResolver``,
    default the reactor's): the seams for tests."""
    report = ProbeReport(target=account_id or email or "")
    secrets = maskable(settings.secret_values())
    reactor = _global_reactor() if reactor is None else reactor
    store = AccountStore(settings.database_url, _global_reactor(),
                         connect_timeout=settings.command_timeout)
    try:
        row = await _lookup(store, account_id, email, report, secrets)
    finally:
        store.pool.close()
    if row is None:
        return report
    decoded = row_decoder(settings.key_bytes, settings.allow_private_hosts)(row)
    if isinstance(decoded, InvalidRow):
        text = _clean(decoded.reason, secrets)
        report.account = {"id": decoded.id, "email": decoded.email}
        report.add("decode", False, error=text)
        report.fail("decode", text, NO_ROW)
        return report
    account = decoded
    # every form in which a server may echo the account's secret (failures.py)
    secrets = maskable((*secrets, *account_secrets(account.username, account.secret)))
    report.account = {"id": account.id, "email": account.email, "host": account.host,
                      "port": account.port, "security": account.security,
                      "username": account.username, "auth_method": account.auth_method}
    await _Run(settings, account, report, secrets, reactor, resolver).run()
    return report


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
