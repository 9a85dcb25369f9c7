"""The status page in a real browser: headless Chromium (Debian's ``chromium``) loads it from
a running daemon (real PostgreSQL, in-process IMAP server) through a small loopback proxy
that adds the ``x-admin-secret`` header, the test reads the DOM (``--dump-dom``) and saves a
screenshot (``status-page.png`` in trial's temporary directory)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.support.faults import FaultCase, free_port
from tests.support.leaks import ADMIN_SECRET, IMAP_PASSWORDS, text_has_secret
from tests.support.tools import tool
from tests.support.wait import until

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]
GOOD = 24


def chromium() -> str:
    return tool("chromium", "chromium-browser", package="chromium")


class _WithSecret(Resource):
    """Forwards every request to the status server, adding the admin header (what a
    browser extension would do for an operator)."""

    isLeaf = True

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def render(self, request):  # type: ignore[no-untyped-def]
        request.requestHeaders.setRawHeaders(b"x-admin-secret", [ADMIN_SECRET.encode()])
        return ReverseProxyResource("127.0.0.1", self.port, request.path).render(request)


class Rows(HTMLParser):
    """The cells of ``table#accounts`` and of ``table#states``, and meta refresh."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.refresh: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag == "td" and self._table is not None:
            self._cell = []
        elif tag == "meta" and a.get("http-equiv") == "refresh":
            self.refresh = a.get("content")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


class StatusPageBrowserTests(FaultCase, TestCase):
    timeout = 120

    async def _setUp(self) -> None:
        self.browser = chromium()
        await self.start_parts()
        self.ids = {}
        self.ids["bob"] = self.add_account("bob@rebreak.test", IMAP_PASSWORDS[1],
                                           server_password=IMAP_PASSWORDS[2])
        self.ids["cat"] = self.add_account("cat@rebreak.test", "x", stored="not-a-secret")
        for n in range(GOOD):
            self.add_account(f"user{n}@rebreak.test", IMAP_PASSWORDS[0])
        port = free_port()
        self.daemon_ = self.start_daemon(status_endpoint=f"tcp:{port}:interface=127.0.0.1",
                                         auth_failure_holdoff=600.0)
        await self.daemon_.status.when_listening()
        await until(lambda: self.states().get("idle") == GOOD
                    and self.states().get("auth-failed") == 1, deadline=30,
                    what="every good account idle, bob auth-failed")
        proxy = reactor.listenTCP(0, Site(_WithSecret(port)), interface="127.0.0.1")
        self.addCleanup(proxy.stopListening)
        self.base = f"http://127.0.0.1:{proxy.getHost().port}/"

    def setUp(self) -> None:
        super().setUp()
        return defer.ensureDeferred(self._setUp())

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry in self.daemon_.snapshot():
            out[entry["state"]] = out.get(entry["state"], 0) + 1
        return out

    async def chromium(self, *args: str) -> str:
        profile = tempfile.mkdtemp(prefix="rebreak-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        env = dict(os.environ, HOME=profile)
        run = getProcessOutputAndValue(
            self.browser, [*FLAGS, f"--user-data-dir={profile}", *args], env=env)
        out, err, code = await run.addTimeout(90, reactor)
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        return out.decode("utf-8")

    async def dom(self, query: str = "") -> tuple[str, Rows]:
        text = await self.chromium("--dump-dom", self.base + query)
        self.assertIsNone(text_has_secret(text))
        rows = Rows()
        rows.feed(text)
        return text, rows

    async def test_page_in_chromium(self) -> None:
        text, rows = await self.dom("?limit=10")
        self.assertIn("<title>rebreak-idle</title>", text)
        states = {r[0]: int(r[1]) for r in rows.tables["states"] if len(r) == 2}
        self.assertEqual(states, {"idle": GOOD, "auth-failed": 1, "invalid": 1})
        accounts = [r for r in rows.tables["accounts"] if r]
        self.assertEqual(len(accounts), 10)  # one page
        self.assertEqual([r[0] for r in accounts[:2]], ["bob@rebreak.test", "cat@rebreak.test"])
        self.assertTrue(accounts[0][1].startswith("auth-failed"))
        self.assertTrue(accounts[1][1].startswith("invalid"))
        self.assertTrue(all(r[1].startswith("idle") for r in accounts[2:]))
        self.assertIn("Showing 1 to 10 of 26 matching (26 in all)", text)
        hosts = [r for r in rows.tables["hosts"] if r]
        self.assertIn(["127.0.0.1", str(GOOD + 1), "1"], hosts)
        self.assertIsNone(rows.refresh)
        self.assertIn('rel="next" href="?limit=10&amp;offset=10"', text)

        text, rows = await self.dom("?q=USER1&limit=5&offset=5&refresh=30")
        accounts = [r for r in rows.tables["accounts"] if r]
        self.assertIn("Showing 6 to 10 of 11 matching (26 in all)", text)
        self.assertEqual(len(accounts), 5)
        self.assertTrue(all(re.fullmatch(r"user1\d?@rebreak\.test", r[0]) for r in accounts))
        self.assertEqual(rows.refresh, "30")
        self.assertIn('value="USER1"', text)

        text, rows = await self.dom("?state=auth-failed")
        self.assertEqual([r[0] for r in rows.tables["accounts"] if r], ["bob@rebreak.test"])

        shot = Path.cwd() / "status-page.png"
        await self.chromium(f"--screenshot={shot}", "--window-size=1280,1100",
                            self.base + "?limit=12")
        self.assertEqual(shot.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(shot.stat().st_size, 10_000)

    async def test_without_the_header_only_counts(self) -> None:
        port = (await self.daemon_.status.when_listening()).getHost().port
        text = await self.chromium("--dump-dom",
                                   f"http://127.0.0.1:{port}/?q=bob&secret={ADMIN_SECRET}")
        self.assertNotIn("bob@rebreak.test", text)
        self.assertNotIn(ADMIN_SECRET, text)
        self.assertIn("x-admin-secret", text)
