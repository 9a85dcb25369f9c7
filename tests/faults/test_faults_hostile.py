"""Fault suite, hostile users and servers (issue 17): the whole daemon on the real reactor
with real PostgreSQL against scripted servers on loopback that flood, push a 60 MB
literal, answer AUTHENTICATE with continuations forever, echo the password, send numbers
above 2^32-1 or answer like another service; and rows typed to forge log lines or to
reach internal addresses. Memory is measured from /proc, log size counted.
Results: docs/reliability.md.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from rebreak_idle.accounts.destinations import DestinationRefused
from rebreak_idle.net.connecting import CheckedHostnameEndpoint
from rebreak_idle.ops.logs import text_observer
from rebreak_idle.session.reconnect_policy import FLOOD_MIN_DELAY
from tests.support.faults import FaultCase, ScriptedIMAPServer, record_figure, until
from tests.support.leaks import IMAP_PASSWORDS, XOAUTH2_TOKEN

ANN = IMAP_PASSWORDS[0]
MIB = 1024 * 1024


def _text_log(case: TestCase) -> io.StringIO:
    """The text log as ``twist`` writes it (level info and above), into a StringIO."""
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate

    out = io.StringIO()
    observer = FilteringLogObserver(text_observer(out), [LogLevelFilterPredicate(
        defaultLogLevel=LogLevel.info)])
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM (Linux: ``5`` into clear_refs); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RSSProbe:
    """The process's RSS growth while a test runs: peak (VmHWM after a reset) or, where
    the peak cannot be reset, the largest of samples taken every 10 ms."""

    def __init__(self, reactor) -> None:
        from twisted.internet.task import LoopingCall

        self.start = _status_kib("VmRSS")
        self.peak_reset = _reset_peak()
        self.highest = self.start
        self._loop = LoopingCall(self.sample)
        self._loop.clock = reactor
        self._loop.start(0.01)

    def sample(self) -> None:
        """Read VmRSS now and keep the highest."""
        self.highest = max(self.highest, _status_kib("VmRSS"))

    def growth_mib(self) -> float:
        if self._loop.running:
            self._loop.stop()
        peak = _status_kib("VmHWM") if self.peak_reset else self.highest
        return max(0, max(peak, self.highest) - self.start) / 1024


async def _ann_on(case: FaultCase, plan: list[str], *, auth: str = "password",
                  capabilities: str = "IMAP4rev1 IDLE AUTH=PLAIN SASL-IR",
                  password: str | None = None, secret: str = ANN,
                  stream_limit: int = 64 * MIB) -> tuple[ScriptedIMAPServer, str]:
    await case.start_parts(imap=False)
    server = ScriptedIMAPServer(case.reactor, plan=plan, capabilities=capabilities,
                                password=password, stream_limit=stream_limit)
    case.imap_port = server.listen()
    case.addCleanup(server.stop)
    case.imap = None  # type: ignore[assignment]
    ann = case.add_account("ann@faults.test", secret, auth=auth, server=server)
    return server, ann


class MemoryTests(FaultCase, TestCase):
    async def _bounded(self, plan: list[str], reason: str, **kw) -> tuple[float, str]:
        _server, ann = await _ann_on(self, plan, **kw)
        probe = RSSProbe(self.reactor)
        self.start_daemon()
        line = await self.wait_log(r"\[idle/ann@faults\.test\] connect failed: ")
        growth = probe.growth_mib()
        self.assertIn(reason, line)
        await self.connected("ann@faults.test", deadline=10)
        return growth, ann

    def test_the_probe_sees_memory_growth(self) -> None:
        """The instrument itself: 64 MiB touched show as growth."""
        from twisted.internet import reactor

        probe = RSSProbe(reactor)
        block = bytearray(64 * MIB)
        for i in range(0, len(block), 4096):
            block[i] = 1
        probe.sample()
        growth = probe.growth_mib()
        del block
        self.assertGreater(growth, 48)

    async def test_xoauth2_continuation_flood_costs_no_memory(self) -> None:
        growth, _ann = await self._bounded(
            ["challenge-flood-login"], "XOAUTH2 challenge after cancel", auth="xoauth2",
            secret=XOAUTH2_TOKEN,
            capabilities="IMAP4rev1 IDLE AUTH=XOAUTH2 SASL-IR")
        record_figure(self, "rss_growth_mib", round(growth, 1))
        self.assertLess(growth, 20)

    async def test_60mb_fetch_literal_during_idle_is_refused(self) -> None:
        growth, _ann = await self._bounded(
            ["fetch-60mb-idle"], "server literal of 60000000 bytes exceeds 8192 bytes")
        record_figure(self, "rss_growth_mib", round(growth, 1))
        self.assertLess(growth, 20)


class FloodTests(FaultCase, TestCase):
    async def test_exists_flood_is_closed_folded_and_backed_off(self) -> None:
        server, ann = await _ann_on(self, ["exists-flood-idle"], stream_limit=512 * MIB)
        out = _text_log(self)
        started = self.reactor.seconds()
        self.start_daemon(reconnect_max_delay=600.0)
        line = await self.wait_log(r"\[idle/ann@faults\.test\] connect failed: ", deadline=30)
        flood_s = self.reactor.seconds() - started
        self.assertIn("server flooded the connection", line)
        again = await self.wait_log(r"\[idle/ann@faults\.test\] reconnecting in ")
        delay = float(re.search(r"reconnecting in ([0-9.]+)s", again).group(1))
        self.assertGreaterEqual(delay, FLOOD_MIN_DELAY)
        self.assertEqual(self.snap(ann)["last_error"], line.split("connect failed: ", 1)[1])
        error = await until(lambda: self.status_row(ann)["error"], what="error recorded")
        self.assertIn("server flooded the connection", error)
        lines = server.connections[0].streamed // len(b"* 1000000 EXISTS\r\n")
        exists_lines = self.logs.count(r"exists-event received \(new mail\)")
        record_figure(self, "exists_lines_sent", lines)
        record_figure(self, "exists_log_lines", exists_lines)
        record_figure(self, "text_log_bytes", len(out.getvalue().encode()))
        self.assertGreater(lines, 100_000)
        self.assertLessEqual(exists_lines, 4 + 1)  # 3 in full, then summaries (+ stop)
        self.assertLess(len(out.getvalue().encode()), 64 * 1024)
        # scans: the connect scan and at most one per scan_min_interval while it lasted
        # (unbounded, the flood made one per answered POST: hundreds)
        scans = self.scans_of(ann)
        record_figure(self, "scans", len(scans))
        record_figure(self, "flood_s", round(flood_s, 2))
        interval = self.daemon.settings.scan_min_interval
        self.assertLessEqual(len(scans), 2 + math.ceil(flood_s / interval))


class ServerTextTests(FaultCase, TestCase):
    async def test_password_echoed_in_no_is_masked_everywhere(self) -> None:
        server, ann = await _ann_on(self, [], password="something-else")
        server.login_reply = f"NO [AUTHENTICATIONFAILED] bad login ann/{ANN}"
        self.start_daemon(auth_failure_holdoff=3600.0)
        line = await self.wait_log(r"\[idle/ann@faults\.test\] connect failed: ")
        self.assertIn("bad login ann/***", line)
        error = await until(lambda: self.status_row(ann)["error"], what="error recorded")
        self.assertEqual(error, "[AUTHENTICATIONFAILED] bad login ann/***")
        self.assertNotIn(ANN, str(self.snap(ann)))
        # FaultCase checks every log line of the test for the password

    async def test_banner_of_another_service_is_not_quoted(self) -> None:
        _server, ann = await _ann_on(self, ["banner-greeting"] * 20)
        self.start_daemon()
        line = await self.wait_log(r"\[idle/ann@faults\.test\] connect failed: ")
        self.assertIn("not an IMAP server (no IMAP greeting)", line)
        error = await until(lambda: self.status_row(ann)["error"], what="error recorded")
        self.assertEqual(error, "not an IMAP server (no IMAP greeting)")
        self.assertNotIn("SSH", self.logs.text())
        self.assertNotIn("corp.local", self.logs.text())

    async def test_exists_above_2_32_is_a_protocol_error(self) -> None:
        _server, ann = await _ann_on(self, ["big-exists-idle"])
        self.start_daemon()
        line = await self.wait_log(r"\[idle/ann@faults\.test\] connect failed: ")
        self.assertIn("number above 2^32-1", line)
        await self.connected("ann@faults.test", count=2)
        self.assertNotIn(4294967296, [r.body.get("exists") for r in self.scans_of(ann)])


class HostileRowTests(FaultCase, TestCase):
    async def test_forged_and_unreachable_rows_are_invalid(self) -> None:
        await self.start_parts()
        out = _text_log(self)
        forged = "x@faults.test\n2026-01-01T00:00:00+0000 [-] [idle/db] refreshed — 777"
        bad = {
            self.add_account(forged, ANN): "invalid settings: email contains spaces or "
                                           "control characters",
            self.add_account("long@faults.test" + "x" * 300, ANN):
                "invalid settings: email is longer than 254 characters",
            self.add_account("br@faults.test", ANN, host="[::1]"):
                "invalid settings: imap_host must be written without brackets",
            self.add_account("dots@faults.test", ANN, host="a..b.test"):
                "invalid settings: imap_host has an empty label",
            self.add_account("esc@faults.test", ANN, host="imap\x1b[31m.test"):
                "invalid settings: imap_host contains spaces or control characters",
            self.add_account("priv@faults.test", ANN, host="10.1.2.3", security="tls"):
                "destination refused: 10.1.2.3 is a private address",
            self.add_account("meta@faults.test", ANN, host="169.254.169.254",
                             security="tls"):
                "destination refused: 169.254.169.254 is a cloud metadata address",
            self.add_account("cgnat@faults.test", ANN, host="100.64.1.1", security="tls"):
                "destination refused: 100.64.1.1 is a CGNAT address",
        }
        ann = self.add_account("ann@faults.test", ANN)
        self.start_daemon()
        await self.connected("ann@faults.test")
        for account_id, text in bad.items():
            error = await until(lambda a=account_id: self.status_row(a)["error"],
                                what=f"error of {text}")
            self.assertIn(text, error)
        self.assertIsNone(self.status_row(ann)["error"])
        text = out.getvalue()
        for physical in text.splitlines():
            self.assertFalse(physical.startswith("2026-01-01T00:00:00+0000 [-] [idle/db]"),
                             physical)
        self.assertNotIn("\x1b", text)


class _Silent(Protocol):
    def connectionMade(self) -> None:
        self.factory.connected.append(self.transport.getPeer())

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)


class _Policy:
    """A policy double: ``at_resolution`` refuses resolved addresses, ``at_connect``
    refuses connected peers; records what it was asked."""

    def __init__(self, at_resolution: bool, at_connect: bool) -> None:
        self.at_resolution = at_resolution
        self.at_connect = at_connect
        self.asked: list[tuple[str, str, str]] = []

    def problem(self, address: str, host: str | None = None) -> str | None:
        self.asked.append(("resolved", address, host or ""))
        if self.at_resolution:
            return f"destination refused: {host} resolves to a private address"
        return None

    def check_peer(self, address: str, host: str) -> None:
        self.asked.append(("connected", address, host))
        if self.at_connect:
            raise DestinationRefused(f"destination refused: {host} resolves to a private "
                                     "address")


class _Resolver:
    """A name resolver double: every name is 127.0.0.1."""

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        from twisted.internet.address import IPv4Address

        receiver.resolutionBegan(None)
        receiver.addressResolved(IPv4Address("TCP", "127.0.0.1", portNumber))
        receiver.resolutionComplete()
        return receiver


class ConnectedAddressTests(TestCase):
    """A name is checked on the addresses it resolved to, before any connection, and the
    connected peer once more before a byte."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        server = Factory.forProtocol(_Silent)
        server.connected, server.received = [], []
        self.server = server
        self.port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    async def _refused(self, policy: _Policy) -> None:
        endpoint = CheckedHostnameEndpoint(self.reactor, "rebind.test",
                                           self.port.getHost().port, 5, policy,
                                           resolver=_Resolver())
        d = endpoint.connect(Factory.forProtocol(Protocol))
        with self.assertRaises(DestinationRefused) as e:
            await d.addTimeout(5, self.reactor)
        self.assertIn("rebind.test resolves to a private address", e.exception.text)
        self.assertEqual(self.server.received, [])

    async def test_refused_address_gets_no_connection(self) -> None:
        policy = _Policy(at_resolution=True, at_connect=True)
        await self._refused(policy)
        self.assertEqual(policy.asked, [("resolved", "127.0.0.1", "rebind.test")])
        self.assertEqual(self.server.connected, [])  # not even a SYN: no port oracle

    async def test_connected_peer_checked_before_a_byte(self) -> None:
        policy = _Policy(at_resolution=False, at_connect=True)
        await self._refused(policy)
        self.assertEqual(policy.asked, [("resolved", "127.0.0.1", "rebind.test"),
                                        ("connected", "127.0.0.1", "rebind.test")])
