"""contrib/prometheus/alerts.yml and contrib/grafana/rebreak-idle.json: the rules pass
``promtool check rules`` and their unit tests (``promtool test rules``), and every metric
either file names is one the daemon really exports, with labels it really has.

promtool comes from Debian's ``prometheus`` package (``.ci/run`` installs it); without it
the promtool tests are skipped, unless ``REBREAK_REQUIRE_DOVECOT=1`` (CI), where a missing
promtool is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import rebreak_idle.service  # noqa: F401  (imports every room, so every metric exists)
from rebreak_idle.metrics import REGISTRY
from tests.support.tools import tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "rebreak-idle.json"

#: Series Prometheus adds itself, and the labels of every scraped series.
SYNTHETIC = {"up"}
TARGET_LABELS = {"job", "instance"}

METRIC = re.compile(r"\b(rebreak_idle_[a-z0-9_]+|up)\b(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def exported() -> dict[str, set[str]]:
    """Every series name of GET /metrics (as prometheus_client writes them: counters with
    ``_total`` and ``_created``, histograms with ``_bucket``, ``_count``, ``_sum``) and the
    label names of each."""
    names: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):  # the registry's own collectors
        labels = set(getattr(collector, "_labelnames", ()))
        for family in collector.describe():
            suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                        "histogram": ("_bucket", "_count", "_sum", "_created")}[family.type]
            for suffix in suffixes:
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def promtool() -> str:
    return tool("promtool", package="prometheus", paths=("/usr/bin/promtool",))


class MetricNameTests(TestCase):
    def check_names(self, text: str, where: str) -> int:
        """Every metric of ``text`` is exported, every label matcher names a label of it;
        returns the number of metric references."""
        known = exported()
        found = 0
        for match in METRIC.finditer(text):
            name, selector = match.group(1), match.group(2) or ""
            found += 1
            if name in SYNTHETIC:
                continue
            self.assertIn(name, known, f"{where}: {name} is not a metric of the daemon")
            for label in MATCHER.findall(selector):
                self.assertIn(label, known[name] | TARGET_LABELS,
                              f"{where}: {name} has no label {label!r}")
        return found

    def test_exported_names(self) -> None:
        known = exported()
        self.assertIn("rebreak_idle_sessions", known)
        self.assertEqual(known["rebreak_idle_sessions"], {"state"})
        self.assertIn("rebreak_idle_scan_triggers_total", known)
        self.assertIn("rebreak_idle_refresh_duration_seconds_count", known)
        self.assertNotIn("rebreak_idle_exists_events", known)
        # the names as GET /metrics writes them (series with labels appear once used)
        text = generate_latest(REGISTRY).decode()
        written = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                   if line and not line.startswith("#")}
        self.assertIn("rebreak_idle_exists_events_total", written)
        self.assertEqual(written - set(known), set())

    def test_alert_rules_use_real_metrics(self) -> None:
        # the whole file: expressions, and the names quoted in annotations and comments
        self.assertGreater(self.check_names(RULES.read_text(), str(RULES)), 13)

    def test_rule_tests_use_real_metrics(self) -> None:
        self.check_names(RULE_TESTS.read_text(), str(RULE_TESTS))

    def test_rules_have_summary_and_runbook(self) -> None:
        text = RULES.read_text()
        alerts = re.findall(r"^\s*- alert: (\w+)$", text, re.M)
        self.assertGreaterEqual(len(alerts), 10)
        for block in re.split(r"^\s*- alert: ", text, flags=re.M)[1:]:
            name = block.split()[0]
            self.assertRegex(block, r"\n\s+summary: \S", name)
            self.assertRegex(block, r"\n\s+runbook: \S", name)
            self.assertRegex(block, r"\n\s+severity: (critical|warning)\n", name)
        tests = RULE_TESTS.read_text()
        for name in alerts:
            self.assertIn(f"alertname: {name}\n", tests, f"{name} has no unit test")

    def test_dashboard_uses_real_metrics(self) -> None:
        data = json.loads(DASHBOARD.read_text())
        self.assertEqual(data["uid"], "rebreak-idle")
        ids = [p["id"] for p in data["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        exprs = dashboard_exprs()
        self.assertGreater(len(exprs), 15)
        for expr in exprs:
            self.assertGreater(self.check_names(expr, f"{DASHBOARD}: {expr}"), 0,
                               f"{expr} names no metric")


class PromtoolTests(TestCase):
    timeout = 60

    async def promtool(self, *args: str) -> str:
        out, err, code = await getProcessOutputAndValue(promtool(), args, env=dict(os.environ),
                                                        path=str(ROOT))
        text = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, text)
        return text

    async def test_check_rules(self) -> None:
        text = await self.promtool("check", "rules", str(RULES))
        self.assertIn("SUCCESS", text)

    async def test_rule_unit_tests(self) -> None:
        text = await self.promtool("test", "rules", str(RULE_TESTS))
        self.assertIn("SUCCESS", text)

    async def test_dashboard_queries_parse(self) -> None:
        """Each panel query as a recording rule (``$instance`` → ``.*``): promtool parses
        it as PromQL."""
        directory = Path(tempfile.mkdtemp(prefix="rebreak-dashboard-"))
        self.addCleanup(shutil.rmtree, directory, True)
        lines = ["groups:", "  - name: dashboard", "    rules:"]
        for n, expr in enumerate(dashboard_exprs()):
            query: Any = expr.replace("$instance", ".*")
            lines += [f"      - record: dashboard:query{n}", f"        expr: {json.dumps(query)}"]
        rules = directory / "dashboard.yml"
        rules.write_text("\n".join(lines) + "\n")
        text = await self.promtool("check", "rules", str(rules))
        self.assertIn("SUCCESS", text)
