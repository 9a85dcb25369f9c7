"""Programs the integration tests run (promtool, npm, chromium, ...): found on PATH or at
a known path; missing, the test is skipped with the apt-get line that installs it, unless
``REBREAK_REQUIRE_DOVECOT=1`` (CI: every integration dependency is required), where it is a
failure."""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SkipTest

__all__ = ["all_required", "tool"]


def all_required() -> bool:
    """True where no integration test may be skipped (``.ci/run`` sets it)."""
    return os.environ.get("REBREAK_REQUIRE_DOVECOT") == "1"


def tool(*names: str, package: str, paths: tuple[str, ...] = ()) -> str:
    """The path of the first of ``names`` on PATH (or of ``paths`` that exists); else
    SkipTest, or AssertionError where :func:`all_required`. ``package``: the Debian
    package that brings it."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    for path in paths:
        if os.access(path, os.X_OK):
            return path
    what = f"{names[0]} is not installed (apt-get install {package}; .ci/run does)"
    if all_required():
        raise AssertionError(f"{what}, and REBREAK_REQUIRE_DOVECOT=1 requires it")
    raise SkipTest(f"{what}; set REBREAK_REQUIRE_DOVECOT=1 to make this a failure")
