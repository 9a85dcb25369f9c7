"""The fault bench's arithmetic (bench/faultreport.py, bench/faults.py's mail plan): which
message a scan covers, percentiles, unwatched seconds, what an account went through."""

from __future__ import annotations

import json
import random

from twisted.trial.unittest import SynchronousTestCase

from bench.faultreport import (
    Delivery,
    Scan,
    Window,
    account_windows,
    cover,
    distribution,
    from_raw,
    label,
    summarise,
    to_raw,
    unwatched_seconds,
)
from bench.faults import QUICK, plan_mail


def delivery(at: float, account: str = "a", kind: str = "sparse", mailbox: str = "INBOX"
             ) -> Delivery:
    return Delivery(account, f"{account}@x.test", at, 4, kind, mailbox)


def scan(received: float, account: str = "a", status: int = 200, mailbox: str = "INBOX"
         ) -> Scan:
    return Scan(account, mailbox, received, received + 0.01, status)


class CoverTests(SynchronousTestCase):
    def test_the_first_acknowledged_scan_started_at_or_after_delivery_covers(self) -> None:
        scans = [scan(9.0), scan(10.0, status=503), scan(12.0), scan(15.0)]
        self.assertEqual(cover([delivery(10.0)], scans), [scans[2]])
        self.assertEqual(cover([delivery(12.0)], scans), [scans[2]])  # same instant

    def test_a_scan_that_started_before_delivery_covers_nothing(self) -> None:
        self.assertEqual(cover([delivery(10.0)], [scan(9.99)]), [None])

    def test_refused_and_failed_answers_cover_nothing(self) -> None:
        scans = [scan(11.0, status=s) for s in (503, 429, 401, 500)]
        self.assertEqual(cover([delivery(10.0)], scans), [None])

    def test_only_the_same_account_and_mailbox(self) -> None:
        scans = [scan(11.0, account="b"), scan(11.0, mailbox="Junk")]
        self.assertEqual(cover([delivery(10.0)], scans), [None])
        self.assertEqual(cover([delivery(10.0, mailbox="Junk")], scans), [scans[1]])

    def test_one_scan_covers_every_earlier_message_in_order(self) -> None:
        scans = [scan(20.0), scan(5.0)]  # unsorted on purpose
        got = cover([delivery(12.0), delivery(3.0), delivery(21.0)], scans)
        self.assertEqual(got, [scans[0], scans[1], None])


class DistributionTests(SynchronousTestCase):
    def test_nearest_rank(self) -> None:
        values = [float(v) for v in range(100, 0, -1)]
        self.assertEqual(distribution(values),
                         {"n": 100, "p50": 50.0, "p99": 99.0, "max": 100.0})

    def test_small_and_empty(self) -> None:
        self.assertEqual(distribution([2.0, 1.0]), {"n": 2, "p50": 1.0, "p99": 2.0,
                                                     "max": 2.0})
        self.assertEqual(distribution([]), {"n": 0, "p50": None, "p99": None, "max": None})


class WatchTests(SynchronousTestCase):
    def test_unwatched_seconds_count_whole_intervals_after_a_sample(self) -> None:
        samples = [(0.0, {"a", "b"}), (1.0, {"a"}), (3.0, set()), (3.5, {"a", "b"}),
                   (4.0, {"a", "b"})]
        self.assertEqual(unwatched_seconds(samples, ["a", "b", "c"]),
                         {"a": 0.5, "b": 2.5, "c": 4.0})

    def test_an_account_fault_lasts_until_the_next_login(self) -> None:
        faults = [("silent", "a", 10.0), ("bye", "b", 5.0)]
        logins = {"a": [1.0, 9.0, 52.0, 80.0], "b": [1.0]}
        self.assertEqual(account_windows(faults, logins, end=100.0),
                         [Window("silent", 10.0, 52.0, "a"), Window("bye", 5.0, 100.0, "b")])

    def test_label_prefers_the_backend_then_the_account_then_the_database(self) -> None:
        windows = [Window("refused", 10.0, 50.0), Window("db-restart", 0.0, 100.0),
                   Window("silent", 40.0, 60.0, "a"), Window("deaf", 40.0, 70.0, "b")]
        self.assertEqual(label(delivery(45.0), windows), "refused")
        self.assertEqual(label(delivery(55.0), windows), "silent")
        self.assertEqual(label(delivery(65.0), windows), "db-restart")  # a's window ended
        self.assertEqual(label(delivery(65.0, account="b"), windows), "deaf")
        self.assertEqual(label(delivery(100.0), windows), "none")


class SummaryTests(SynchronousTestCase):
    def test_figures_inside_and_outside_a_spell_and_the_misses(self) -> None:
        spell = Window("503", 100.0, 130.0)
        deliveries = [delivery(50.0), delivery(110.0, "b"), delivery(120.0, "c", "dense"),
                      delivery(200.0, "d")]
        scans = [scan(50.5), scan(115.0, "b", status=503), scan(130.5, "a", status=503),
                 scan(133.0, "b"), scan(131.0, "c")]
        r = summarise(deliveries, scans, [spell], t0=0.0, samples=[(0.0, {"a"}), (10.0, set())],
                      accounts=["a", "b", "c", "d"], logins={"a": [1.0, 2.0], "b": [1.0]},
                      rss_kb=[1024, 3072, 2048])
        self.assertEqual((r["delivered"], r["covered"], r["uncovered"]), (4, 3, 1))
        self.assertEqual(r["delay_s"]["outside"], {"n": 1, "p50": 0.5, "p99": 0.5, "max": 0.5})
        self.assertEqual(r["delay_s"]["inside"], {"n": 2, "p50": 11.0, "p99": 23.0,
                                                  "max": 23.0})
        self.assertEqual(r["missed"], {"d@x.test": [{"at_s": 200.0, "exists": 4,
                                                     "kind": "sparse", "during": "none"}]})
        [s] = r["spells"]
        self.assertEqual((s["delivered"], s["covered"], s["requests"]), (2, 2, 1))
        self.assertEqual(s["covered_after_return_s"]["max"], 3.0)
        self.assertEqual(s["first_2xx_after_return_s"], 1.0)  # the 503 at 130.5 is no return
        self.assertEqual(r["logins"], {"min": 0.0, "median": 0.5, "max": 2.0})
        # 0-10 s: a watched, b, c and d not
        self.assertEqual(r["unwatched_s"], {"min": 0.0, "median": 10.0, "max": 10.0,
                                            "total": 30.0})
        self.assertEqual(r["rss_mib"], {"median": 2.0, "max": 3.0, "samples": 3})
        self.assertEqual(r["ids"], {"d@x.test": "d"})
        raw = to_raw(deliveries, scans, [spell], 0.0, [(0.0, {"a"}), (10.0, set())],
                     ["a", "b", "c", "d"], {"a": [1.0, 2.0], "b": [1.0]}, [1024, 3072, 2048])
        self.assertEqual(from_raw(json.loads(json.dumps(raw))), r)


class MailPlanTests(SynchronousTestCase):
    def test_sparse_accounts_get_one_message_dense_ones_many(self) -> None:
        emails = [f"u{i:03d}" for i in range(90)]
        plan = plan_mail(emails, QUICK, 120.0, 15.0, random.Random(1))
        per: dict[str, int] = {}
        for at, email, _kind in plan.deliveries:
            per[email] = per.get(email, 0) + 1
            self.assertTrue(2.0 <= at <= 105.0, at)
        aimed_at_own_fault = {e for i, f in enumerate(QUICK) if f.kind in ("bye", "silent",
                                                                           "deaf")
                              for e in plan.targets[i]}
        for email in emails[:30]:  # the sparse third: one message, or one after its fault
            self.assertEqual(per.get(email, 0), 0 if email in aimed_at_own_fault else 1)
        self.assertGreater(min(per[e] for e in emails[30:60]), 2)  # dense
        self.assertFalse(set(per) & set(emails[60:]))  # quiet
        kill = next(i for i, f in enumerate(QUICK) if f.kind == "kill")
        times = {e: at for at, e, _ in plan.deliveries}
        for email in plan.targets[kill]:
            self.assertTrue(0 < times[email] - QUICK[kill].at < 2, times[email])
