"""The status page for thousands of accounts: GET parameters, server-side selection,
counts by host, escaping (status_query, status_page)."""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.status.page import render_page
from rebreak_idle.status.query import MAX_LIMIT, PageQuery, by_host, select

STATES = ("idle", "idle", "idle", "polling", "backoff", "auth-failed", "queued", "invalid")


def many(n: int) -> list[dict]:
    return [{"id": f"id-{i:05d}", "email": f"u{i:05d}@host{i % 7}.example",
             "state": STATES[i % len(STATES)], "imap_host": f"imap.host{i % 7}.example",
             "last_error": "boom" if i % 8 in (4, 5) else None} for i in range(n)]


def args(**values: str) -> dict[bytes, list[bytes]]:
    return {k.encode(): [v.encode()] for k, v in values.items()}


class QueryTests(SynchronousTestCase):
    def test_parameters_are_bounded(self) -> None:
        self.assertEqual(PageQuery.from_args({}), PageQuery())
        q = PageQuery.from_args(args(limit="999999", offset="-3", refresh="1", q="x" * 999))
        self.assertEqual((q.limit, q.offset, q.refresh, len(q.q)), (MAX_LIMIT, 0, 5, 200))
        self.assertEqual(PageQuery.from_args(args(limit="0", refresh="junk")).limit, 1)
        self.assertEqual(PageQuery.from_args(args(refresh="99999")).refresh, 3600)
        self.assertEqual(PageQuery(q="a b&c", limit=10).link(offset=20),
                         "?q=a+b%26c&limit=10&offset=20")
        self.assertEqual(PageQuery().link(), "?")

    def test_attention_first_then_by_email(self) -> None:
        matching, page = select(many(80), PageQuery(limit=30))
        self.assertEqual(matching, 80)
        order = [a["state"] for a in page]
        self.assertEqual(order[:10], ["auth-failed"] * 10)
        self.assertEqual(order[10:20], ["backoff"] * 10)
        self.assertEqual(order[20:30], ["invalid"] * 10)
        emails = [a["email"] for a in page[:10]]
        self.assertEqual(emails, sorted(emails))

    def test_search_and_filters(self) -> None:
        accounts = many(800)
        matching, page = select(accounts, PageQuery(q="HOST3", limit=1000))
        self.assertTrue(all("host3" in a["email"] for a in page))
        self.assertEqual(matching,
                         len([a for a in accounts if a["imap_host"].endswith("3.example")]))
        matching, page = select(accounts, PageQuery(state="backoff", host="imap.host1.example"))
        self.assertTrue(all(a["state"] == "backoff" and a["imap_host"] == "imap.host1.example"
                            for a in page))
        self.assertGreater(matching, 0)
        self.assertEqual(select(accounts, PageQuery(q="boom"))[0], 200)

    def test_hosts(self) -> None:
        hosts, n = by_host([*many(70), {"state": "invalid"}], top=3)
        self.assertEqual(n, 8)
        self.assertEqual(len(hosts), 3)
        self.assertTrue(all(bad >= 0 and total >= bad for _h, total, bad in hosts))
        self.assertEqual(hosts[0][2], max(bad for _h, _t, bad in by_host(many(70))[0]))


class PageTests(SynchronousTestCase):
    def test_ten_thousand_accounts_render_one_page_quickly(self) -> None:
        accounts = many(10_000)
        counts: dict[str, int] = {}
        for a in accounts:
            counts[a["state"]] = counts.get(a["state"], 0) + 1
        started = time.perf_counter()
        page = render_page(accounts, counts, True, PageQuery(limit=50, offset=100))
        took = time.perf_counter() - started
        self.assertLess(took, 1.0)
        self.assertEqual(page.count("<tr class=attention>"), 50)  # rows 100-150: attention
        self.assertIn("Showing 101 to 150 of 10000 matching (10000 in all)", page)
        self.assertIn('<a rel=prev href="?limit=50&amp;offset=50">', page)
        self.assertIn('<a rel=next href="?limit=50&amp;offset=150">', page)
        self.assertLess(len(page), 100_000)

    def test_everything_is_escaped(self) -> None:
        evil = '"><script>x</script>'
        page = render_page([{"email": evil, "state": evil, "imap_host": evil}], {evil: 1},
                           True, PageQuery(q=evil, host=evil, state=evil))
        self.assertNotIn("<script>", page)
        self.assertIn("value=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\"", page)

    def test_refresh_is_opt_in(self) -> None:
        self.assertNotIn("http-equiv=refresh", render_page(None, {}, True))
        self.assertIn("<meta http-equiv=refresh content=30>",
                      render_page(None, {}, True, PageQuery(refresh=30)))
