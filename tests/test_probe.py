"""``rebreak-idle probe``: one diagnostic run for one row, against a real PostgreSQL and the
in-process IMAP server (plain, implicit TLS with a good and a bad certificate) and Dovecot;
the command itself in a child process."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import defer, utils
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from rebreak_idle import probe
from rebreak_idle.failures import account_secrets
from rebreak_idle.testing.certs import make_test_certs
from tests.support.dovecot import DovecotServer, skip_without_dovecot
from tests.support.faults import FaultCase, ScriptedIMAPServer, child_env
from tests.support.leaks import IMAP_PASSWORDS, XOAUTH2_TOKEN, text_has_secret
from tests.support.profiles import PROFILES


def steps(report: probe.ProbeReport) -> dict[str, dict]:
    return {s["step"]: s for s in report.steps}


class ProbeTests(FaultCase, TestCase):
    async def _setUp(self) -> None:
        await self.start_parts()

    def setUp(self) -> None:
        super().setUp()
        return defer.ensureDeferred(self._setUp())

    def run_probe(self, **kwargs: object) -> defer.Deferred:
        settings = self.settings(tls_ca_file=make_test_certs().ca)
        return defer.ensureDeferred(probe.probe(settings, **kwargs))

    def assertNoSecret(self, report: probe.ProbeReport) -> None:
        text = json.dumps(report.as_dict(), default=str) + probe.format_report(report)
        self.assertIsNone(text_has_secret(text))
        for password in IMAP_PASSWORDS:
            self.assertNotIn(password, text)

    async def test_plain_account_every_step(self) -> None:
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0])
        self.imap.deliver("ann@rebreak.test")
        self.imap.deliver("ann@rebreak.test")
        report = await self.run_probe(account_id=account_id)
        self.assertEqual(report.status, probe.OK, probe.format_report(report))
        found = steps(report)
        self.assertEqual(
            [s["step"] for s in report.steps],
            ["row", "dns", "tcp", "greeting", "capabilities", "login", "select", "idle",
             "done", "noop", "logout"])
        self.assertTrue(all(s["ok"] for s in report.steps))
        self.assertTrue(all(s["ms"] >= 0 for s in report.steps))
        self.assertEqual(found["select"]["exists"], 2)
        self.assertIn("IDLE", found["capabilities"]["capabilities"])
        self.assertEqual(found["dns"]["note"], "IP literal")
        self.assertTrue(found["row"]["active"])
        self.assertEqual(self.imap.commands[b"LOGOUT"], 1)
        self.assertEqual(self.imap.commands[b"IDLE"], 1)
        self.assertEqual(report.account["email"], "ann@rebreak.test")
        self.assertNoSecret(report)
        human = probe.format_report(report)
        self.assertIn("result: ok", human)
        self.assertRegex(human, r"select\s+ok\s+[\d.]+ ms\s+exists=2")

    async def test_bad_password_is_classified_and_still_logs_out(self) -> None:
        account_id = self.add_account("bob@rebreak.test", IMAP_PASSWORDS[1],
                                      server_password=IMAP_PASSWORDS[2])
        report = await self.run_probe(account_id=account_id)
        self.assertEqual(report.status, probe.FAILED)
        login = steps(report)["login"]
        self.assertFalse(login["ok"])
        self.assertEqual(login["class"], "auth")
        self.assertTrue(login["credentials_rejected"])
        self.assertTrue(report.summary.startswith("failed at login:"), report.summary)
        self.assertNotIn("select", steps(report))
        self.assertTrue(steps(report)["logout"]["ok"])
        self.assertEqual(self.imap.commands[b"LOGOUT"], 1)
        self.assertNoSecret(report)

    async def test_by_email_and_unknown_rows(self) -> None:
        self.add_account("cat@rebreak.test", IMAP_PASSWORDS[2], active=False)
        report = await self.run_probe(email="CAT@rebreak.test")
        self.assertEqual(report.status, probe.OK, probe.format_report(report))
        self.assertFalse(steps(report)["row"]["active"])
        for kwargs in ({"email": "nobody@rebreak.test"}, {"account_id": "not-a-uuid"},
                       {"account_id": "00000000-0000-0000-0000-000000000000"}):
            report = await self.run_probe(**kwargs)
            self.assertEqual(report.status, probe.NO_ROW)
            self.assertEqual(report.summary, "failed at row: no such row")
        self.add_account("cat@rebreak.test", IMAP_PASSWORDS[2])
        report = await self.run_probe(email="cat@rebreak.test")
        self.assertEqual(report.status, probe.NO_ROW)
        self.assertIn("2 rows have this e-mail", report.summary)

    async def test_undecryptable_secret(self) -> None:
        account_id = self.add_account("ann@rebreak.test", "x", stored="not-a-secret")
        report = await self.run_probe(account_id=account_id)
        self.assertEqual(report.status, probe.NO_ROW)
        self.assertFalse(steps(report)["decode"]["ok"])
        self.assertEqual(self.imap.connections_made, 0)

    async def test_implicit_tls_certificate_facts(self) -> None:
        port = self.imap.listen(tls=True).getHost().port
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0], port=port,
                                      security="tls", host="localhost")
        report = await self.run_probe(account_id=account_id)
        self.assertEqual(report.status, probe.OK, probe.format_report(report))
        tls = steps(report)["tls"]
        self.assertTrue(tls["verified"])
        self.assertIn("CN=", tls["certificate"]["subject"])
        self.assertIn("CN=", tls["certificate"]["issuer"])
        self.assertGreater(tls["certificate"]["expires_in_days"], 0)
        self.assertTrue({"127.0.0.1", "::1"} & set(steps(report)["dns"]["addresses"]))

    async def test_starttls_steps_in_order(self) -> None:
        port = self.imap.listen(starttls=True).getHost().port
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0], port=port,
                                      security="starttls", host="localhost")
        report = await self.run_probe(account_id=account_id)
        self.assertEqual(report.status, probe.OK, probe.format_report(report))
        self.assertEqual([s["step"] for s in report.steps][:8],
                         ["row", "dns", "tcp", "greeting", "starttls", "tls", "capabilities",
                          "login"])
        found = steps(report)
        self.assertTrue(found["tls"]["verified"])
        self.assertIn("CN=", found["tls"]["certificate"]["subject"])
        self.assertIn("AUTH=PLAIN", found["login"]["capabilities"])
        self.assertNoSecret(report)

    async def test_bad_certificate_after_starttls(self) -> None:
        port = self.imap.listen(starttls=True, cert=make_test_certs().expired).getHost().port
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0], port=port,
                                      security="starttls", host="localhost")
        report = await self.run_probe(account_id=account_id)
        starttls = steps(report)["starttls"]
        self.assertFalse(starttls["ok"])
        self.assertEqual(starttls["class"], "tls")
        self.assertLess(starttls["certificate"]["expires_in_days"], 0)  # from the handshake
        self.assertEqual(self.imap.connections_made, 1)
        self.assertNotIn("login", steps(report))

    async def test_bad_certificate(self) -> None:
        port = self.imap.listen(tls=True, cert=make_test_certs().expired).getHost().port
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0], port=port,
                                      security="tls", host="localhost")
        report = await self.run_probe(account_id=account_id)
        self.assertEqual(report.status, probe.FAILED)
        tls = steps(report)["tls"]
        self.assertFalse(tls["ok"])
        self.assertFalse(tls["verified"])
        self.assertEqual(tls["class"], "tls")
        self.assertIn("certificate verify failed", tls["error"])
        self.assertLess(tls["certificate"]["expires_in_days"], 0)
        self.assertNotIn("login", steps(report))
        self.assertEqual(self.imap.login_attempts["ann@rebreak.test"], 0)
        # the certificate came from the failed handshake: no second, unchecked connection
        self.assertEqual(self.imap.connections_made, 1)

    async def test_refused_port(self) -> None:
        from tests.support.faults import free_port

        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0],
                                      port=free_port())
        report = await self.run_probe(account_id=account_id)
        self.assertEqual(report.status, probe.FAILED)
        self.assertEqual(steps(report)["tcp"]["class"], "network")
        self.assertTrue(report.summary.startswith("failed at tcp:"))

    async def test_command_line_json_and_human(self) -> None:
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0])
        env = dict(os.environ, **child_env(self.dsn, self.backend.url))
        code_args = [sys.executable, "-c", "from rebreak_idle.cli import main; main()"]
        out, err, code = await utils.getProcessOutputAndValue(
            code_args[0], [*code_args[1:], "probe", account_id, "--json"], env=env)
        self.assertEqual(code, 0, err)
        data = json.loads(out)
        self.assertTrue(data["ok"])
        self.assertEqual(data["account"]["id"], account_id)
        out, err, code = await utils.getProcessOutputAndValue(
            code_args[0], [*code_args[1:], "probe", "--email", "nobody@rebreak.test"],
            env=env)
        self.assertEqual(code, 2, err)
        self.assertIn(b"result: failed at row: no such row", out)
        for text in (out, err):
            self.assertIsNone(text_has_secret(text.decode()))


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _Resolver:
    """Answers each lookup with the next list of addresses (the last one repeated)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        addresses = self.answers[min(len(self.asked), len(self.answers) - 1)]
        self.asked.append(hostName)
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        for address in addresses:
            receiver.addressResolved(IPv4Address("TCP", address, portNumber))
        receiver.resolutionComplete()
        return resolution


class _NoTrafficReactor:
    """The real reactor, except that each TCP connect to an address other than loopback
    is noted and refused right here: no packet leaves for the addresses these tests
    name."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.connects: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> Any:
        if host in ("127.0.0.1", "::1"):
            return self._reactor.connectTCP(host, port, factory, timeout, bindAddress)
        self.connects.append((host, port))
        self._reactor.callLater(0, factory.clientConnectionFailed, None,
                                Failure(ConnectionRefusedError()))


class ProbeReachTests(FaultCase, TestCase):
    """The probe goes only where the daemon would go, through the daemon's own connecting,
    destination policy, login sequence and scrubbing (issue 24, items 3 and 8)."""

    async def _setUp(self) -> None:
        await self.start_parts()

    def setUp(self) -> None:
        super().setUp()
        self.no_traffic = _NoTrafficReactor(self.reactor)
        return defer.ensureDeferred(self._setUp())

    def run_probe(self, resolver: Any = None, **kwargs: Any) -> defer.Deferred:
        allow = kwargs.pop("allow_private_hosts", ())
        settings = self.settings(tls_ca_file=make_test_certs().ca, allow_private_hosts=allow)
        return defer.ensureDeferred(probe.probe(settings, reactor=self.no_traffic,
                                                resolver=resolver, **kwargs))

    def scripted(self, **kwargs: Any) -> tuple[ScriptedIMAPServer, int]:
        server = ScriptedIMAPServer(self.reactor, **kwargs)
        port = server.listen()
        self.addCleanup(server.stop)
        return server, port

    async def test_names_resolving_to_refused_addresses_get_no_connection(self) -> None:
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0], port=993,
                                      security="tls", host="imap.rebreak.test")
        for address, kind, allow in (("10.0.0.5", "private", ()),
                                     ("169.254.169.254", "cloud metadata", ()),
                                     ("169.254.169.254", "cloud metadata",
                                      ("169.254.0.0/16",))):
            report = await self.run_probe(_Resolver([address]), account_id=account_id,
                                          allow_private_hosts=allow)
            self.assertEqual(report.status, probe.FAILED)
            self.assertEqual(report.summary,
                             f"failed at dns: destination refused: imap.rebreak.test "
                             f"resolves to a {kind} address (allowed only through "
                             "REBREAK_ALLOW_PRIVATE_HOSTS)")
            self.assertEqual(steps(report)["dns"]["class"], "destination")
            self.assertNotIn("tcp", steps(report))
        self.assertEqual(self.no_traffic.connects, [])

    async def test_a_name_that_rebinds_is_refused_at_connect(self) -> None:
        """Public at the probe's lookup, private at the connect's: the connect's own
        lookup is checked too (the daemon's CheckedHostnameEndpoint), nothing is sent."""
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0], port=993,
                                      security="tls", host="imap.rebreak.test")
        report = await self.run_probe(_Resolver(["93.184.216.34"], ["10.0.0.5"]),
                                      account_id=account_id)
        self.assertTrue(steps(report)["dns"]["ok"])
        tcp = steps(report)["tcp"]
        self.assertFalse(tcp["ok"])
        self.assertEqual(tcp["class"], "destination")
        self.assertIn("destination refused: imap.rebreak.test resolves to a private",
                      tcp["error"])
        self.assertEqual(self.no_traffic.connects, [])

    async def test_allow_private_hosts_is_honoured(self) -> None:
        literal = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0], port=993,
                                   security="tls", host="10.0.0.5")
        name = self.add_account("bob@rebreak.test", IMAP_PASSWORDS[1], port=993,
                                security="tls", host="imap.rebreak.test")
        refused = await self.run_probe(account_id=literal)
        self.assertEqual(refused.status, probe.NO_ROW)
        self.assertIn("destination refused", steps(refused)["decode"]["error"])
        for account_id in (literal, name):
            report = await self.run_probe(_Resolver(["10.0.0.5"]), account_id=account_id,
                                          allow_private_hosts=("10.0.0.0/8",))
            self.assertNotIn("decode", steps(report))
            self.assertTrue(steps(report)["dns"]["ok"])
            self.assertEqual(steps(report)["tcp"]["error"], "connection refused")
        # the two allowed attempts reached the (stand-in) network; the refused row none
        self.assertEqual(self.no_traffic.connects, [("10.0.0.5", 993)] * 2)

    async def test_a_server_that_echoes_the_login_gets_it_masked(self) -> None:
        server, port = self.scripted()
        server.echo_login = True
        oauth = self.add_account("ann@rebreak.test", XOAUTH2_TOKEN, port=port,
                                 auth="xoauth2", server=server)
        password = self.add_account("bob@rebreak.test", IMAP_PASSWORDS[1], port=port,
                                    server=server)
        for account_id, email, secret in ((oauth, "ann@rebreak.test", XOAUTH2_TOKEN),
                                          (password, "bob@rebreak.test", IMAP_PASSWORDS[1])):
            report = await self.run_probe(account_id=account_id)
            login = steps(report)["login"]
            self.assertFalse(login["ok"])
            self.assertIn("***", login["error"])
            text = json.dumps(report.as_dict(), default=str) + probe.format_report(report)
            for form in account_secrets(email, secret):  # raw, quoted, base64 payloads
                self.assertNotIn(form, text)
            self.assertIsNone(text_has_secret(text))
        self.assertEqual(len(server.connections), 2)

    async def test_courier_uidnext_from_status(self) -> None:
        server, port = self.scripted(profile=PROFILES["courier"])
        server.deliver(2)
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0], port=port,
                                      server=server)
        report = await self.run_probe(account_id=account_id)
        self.assertEqual(report.status, probe.OK, probe.format_report(report))
        found = steps(report)
        self.assertEqual(found["select"]["uidnext"], server.uidnext)
        self.assertEqual(found["select"]["uidnext_from"], "STATUS")
        self.assertEqual(found["status"]["uidnext"], server.uidnext)
        self.assertIn(f"uidnext={server.uidnext}", probe.format_report(report))

    async def test_cyrus_idle_after_login(self) -> None:
        server, port = self.scripted(profile=PROFILES["cyrus"])
        account_id = self.add_account("ann@rebreak.test", IMAP_PASSWORDS[0], port=port,
                                      server=server)
        report = await self.run_probe(account_id=account_id)
        self.assertEqual(report.status, probe.OK, probe.format_report(report))
        found = steps(report)
        self.assertNotIn("IDLE", found["capabilities"]["capabilities"])  # before login
        self.assertTrue(found["login"]["idle"])
        self.assertIn("IDLE", found["login"]["capabilities"])
        self.assertTrue(found["idle"]["ok"] and found["done"]["ok"])
        self.assertTrue(found["id"]["ok"])  # the session's sequence: ID after login
        self.assertEqual(server.ids and len(server.ids), 1)


class DovecotProbeTests(FaultCase, TestCase):
    skip = skip_without_dovecot()

    async def _setUp(self) -> None:
        await self.start_parts(imap=False)
        self.dovecot = DovecotServer.shared()

    def setUp(self) -> None:
        super().setUp()
        return defer.ensureDeferred(self._setUp())

    async def test_dovecot_tls_and_bad_password(self) -> None:
        user, password = "carol@rebreak.test", self.dovecot.users["carol@rebreak.test"]
        self.dovecot.deliver(user)
        good = self.add_account(user, password, port=self.dovecot.imaps_port,
                                security="tls", host="localhost", server=self.dovecot)
        settings = self.settings(tls_ca_file=self.dovecot.ca_file)
        report = await defer.ensureDeferred(probe.probe(settings, account_id=good))
        self.assertEqual(report.status, probe.OK, probe.format_report(report))
        found = steps(report)
        self.assertGreaterEqual(found["select"]["exists"], 1)
        self.assertTrue(found["tls"]["verified"])
        self.assertTrue(found["idle"]["ok"] and found["done"]["ok"])
        bad = self.add_account("bob@rebreak.test", "not-bobs-password",
                               port=self.dovecot.imap_port, server=self.dovecot)
        report = await defer.ensureDeferred(probe.probe(settings, account_id=bad))
        login = steps(report)["login"]
        self.assertEqual(login["class"], "auth")
        self.assertIn("AUTHENTICATIONFAILED", login["error"])
        self.assertTrue(steps(report)["logout"]["ok"])
