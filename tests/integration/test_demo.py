"""``make demo`` runs the whole loop and ends by itself with every casino mail deleted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[2]


class DemoTests(SynchronousTestCase):
    def test_demo_runs_the_loop_and_exits(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("REBREAK_") and k not in ("DATABASE_URL", "ADMIN_SECRET")}
        result = subprocess.run([sys.executable, "-m", "demo"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=180)
        out = result.stdout
        self.assertEqual(result.returncode, 0, out[-3000:] + result.stderr[-3000:])
        for line in (r"\[idle/ann@demo\.test\] connected \(127\.0\.0\.1:\d+\)",
                     r"\[idle/bob@demo\.test\] exists-event received \(new mail\)",
                     r"\[idle/bob@demo\.test\] scan-triggered → scanned=3 blocked=1",
                     r"\[idle/db\] refreshed — 4 active connections, 4 sessions",
                     r"\[idle/dave@demo\.test\] connected",
                     r"heartbeat NOOPs recorded — 4 of 4 rows",
                     r"\d+ scan triggers, 4 gambling mails deleted, 0 left behind"):
            self.assertRegex(out, line)
        self.assertNotIn("Traceback", out + result.stderr)
        self.assertEqual(len(re.findall(r"backend: deleted", out)), 4)
