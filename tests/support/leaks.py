"""Fixed secret strings of the fault suite, and a check that no log contains one.

Every test of the fault suite (``tests/faults/``) configures the daemon with these
values: the admin secret, the encryption key, the IMAP passwords, an XOAUTH2 token and the
password of a PostgreSQL role the daemon connects as. After the suite ran, grep its logs::

    python -m tests.support.leaks /tmp/rebreak-trial/test.log /tmp/rebreak-trial/daemon-logs/*

exits 1 and names each file (never the secret) that contains one of them, 0 otherwise.
Files that do not exist are reported and count as a failure (a typo must not pass).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["ADMIN_SECRET", "DB_PASSWORD", "DB_ROLE", "ENCRYPTION_KEY", "IMAP_PASSWORDS",
           "KNOWN_SECRETS", "XOAUTH2_TOKEN", "files_with_secrets", "main", "text_has_secret"]

ADMIN_SECRET = "fault-admin-Q7vT2mXw9KpL4sNe"
ENCRYPTION_KEY = "fault-key-Zr8Hc3Jq6Wd1Yf5Bn0Mx4Gt7"  # 34 characters, first 32 are the key
IMAP_PASSWORDS = (
    "fault-pw-ann-U4eR9kVz",
    "fault-pw-bob-P2sD6hLq",
    "fault-pw-cat-N8wF3cXj",
    "fault-pw-wrong-T5gB1mKy",
)
XOAUTH2_TOKEN = "ya29.fault-token-A1b2C3d4E5f6G7h8"
DB_ROLE = "rebreak_fault_app"
DB_PASSWORD = "fault-db-pw-R3nK8vQ2zX"

#: Every string that must never reach a log, an error text or the status API.
KNOWN_SECRETS: tuple[str, ...] = (ADMIN_SECRET, ENCRYPTION_KEY, ENCRYPTION_KEY[:32],
                                  *IMAP_PASSWORDS, XOAUTH2_TOKEN, DB_PASSWORD)

_NAMES = {ADMIN_SECRET: "ADMIN_SECRET", ENCRYPTION_KEY: "ENCRYPTION_KEY",
          ENCRYPTION_KEY[:32]: "ENCRYPTION_KEY", XOAUTH2_TOKEN: "XOAUTH2 token",
          DB_PASSWORD: "database password",
          **{p: "IMAP password" for p in IMAP_PASSWORDS}}


def text_has_secret(text: str, secrets: Iterable[str] = KNOWN_SECRETS) -> str | None:
    """The kind of the first secret found in ``text`` ("IMAP password", ...), or None.
    Never returns the secret itself."""
    for secret in secrets:
        if secret in text:
            return _NAMES.get(secret, "secret")
    return None


def files_with_secrets(paths: Iterable[str | Path],
                       secrets: Sequence[str] = KNOWN_SECRETS) -> list[tuple[str, str]]:
    """``(path, what)`` for each file that contains a secret (what: its kind) or cannot be
    read (what: "missing"/"unreadable")."""
    needles = [s.encode("utf-8") for s in secrets]
    found = []
    for path in paths:
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            found.append((str(p), "missing"))
            continue
        except OSError:
            found.append((str(p), "unreadable"))
            continue
        for secret, needle in zip(secrets, needles, strict=True):
            if needle in data:
                found.append((str(p), _NAMES.get(secret, "secret")))
                break
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write("usage: python -m tests.support.leaks FILE...\n")
        return 2
    problems = files_with_secrets(args)
    for path, what in problems:
        if what in ("missing", "unreadable"):
            sys.stderr.write(f"leak check: {path}: {what}\n")
        else:
            sys.stderr.write(f"leak check: {path} contains a secret ({what})\n")
    if not problems:
        sys.stdout.write(f"leak check: no known secret in {len(args)} file(s)\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
