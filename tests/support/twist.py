"""The daemon run as a child process by twist, with an environment built from
the suite's defaults."""

from __future__ import annotations

import os
import subprocess
import sys

SECRET = "adm1n-s3cret-value"
KEY = "k" * 31 + "Z-more-key-material"
BASE = {
    "DATABASE_URL": "postgresql://app:db-pa55word@127.0.0.1:5432/rebreak",
    "ADMIN_SECRET": SECRET,
    "ENCRYPTION_KEY": KEY,
}


def env(**changes: str | None) -> dict[str, str]:
    out = dict(BASE)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def run_twist(*args: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    twist = os.path.join(os.path.dirname(sys.executable), "twist")
    clean = {k: v for k, v in os.environ.items()
             if k not in BASE and not k.startswith(("REBREAK_", "NODE_ENV", "BACKEND_URL"))}
    clean.update(environ or {})
    return subprocess.run([twist, *args], capture_output=True, text=True, timeout=120,
                          env=clean, cwd="/")
