"""The real daemon (``twist rebreak-idle``) in a child process, for end-to-end tests.

Usage in a trial test (real reactor)::

    daemon = DaemonProcess(reactor, env={"DATABASE_URL": dsn, ...},
                           args=["--refresh-interval", "1"])
    daemon.start()
    self.addCleanup(daemon.kill)
    await daemon.wait_for(r"\\[idle/ann@x\\] connected", deadline=20)
    code = await daemon.terminate(deadline=15)      # SIGTERM; fires with the exit code

Every line of stdout and stderr is kept in ``daemon.lines`` (``daemon.output`` joined).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

from twisted.internet import defer, protocol
from twisted.python.failure import Failure

__all__ = ["DaemonProcess"]

TWIST = os.path.join(os.path.dirname(sys.executable), "twist")


class _Output(protocol.ProcessProtocol):
    def __init__(self, owner: DaemonProcess) -> None:
        self.owner = owner
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffer = self._partial.get(fd, b"") + data
        *complete, self._partial[fd] = buffer.split(b"\n")
        for line in complete:
            self.owner.line_received(line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            if rest:
                self.owner.line_received(rest.decode("utf-8", "replace"))
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.owner.process_ended(code if code is not None else -(sig or 1))


class DaemonProcess:
    def __init__(self, reactor: Any, env: dict[str, str], args: list[str] | None = None,
                 command: list[str] | None = None) -> None:
        self.reactor = reactor
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("REBREAK_") and k not in (
                    "DATABASE_URL", "ADMIN_SECRET", "ENCRYPTION_KEY", "BACKEND_URL",
                    "NODE_ENV")}
        base.update(env)
        base["PYTHONUNBUFFERED"] = "1"
        self.env = base
        self.argv = command or [TWIST, "--log-format=text", "rebreak-idle", *(args or [])]
        self.lines: list[str] = []
        self.exit_code: int | None = None
        self._waiters: list[tuple[re.Pattern[str], int, defer.Deferred]] = []
        self._exit_waiters: list[defer.Deferred] = []
        self.process: Any = None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def start(self) -> None:
        self.process = self.reactor.spawnProcess(
            _Output(self), self.argv[0], self.argv, env=self.env, path="/")

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines if regex.search(line))

    def wait_for(self, pattern: str, deadline: float = 20.0, count: int = 1) -> defer.Deferred:
        """Fires with the matching line once ``count`` lines match ``pattern`` (a regex);
        fails with a TimeoutError naming the pattern (and the last lines) after
        ``deadline`` seconds, or at once when the process ended without it."""
        regex = re.compile(pattern)
        d: defer.Deferred = defer.Deferred()
        matches = [line for line in self.lines if regex.search(line)]
        if len(matches) >= count:
            d.callback(matches[count - 1])
            return d
        if self.exit_code is not None:
            d.errback(AssertionError(f"daemon exited ({self.exit_code}) without a line "
                                     f"matching {pattern!r}:\n{self.tail()}"))
            return d
        entry = (regex, count, d)
        self._waiters.append(entry)

        def timed_out(failure: Failure) -> Failure:
            if entry in self._waiters:
                self._waiters.remove(entry)
            if failure.check(defer.TimeoutError, defer.CancelledError):
                raise AssertionError(f"no line matching {pattern!r} within {deadline}s:\n"
                                     f"{self.tail()}")
            return failure

        d.addTimeout(deadline, self.reactor)
        d.addErrback(timed_out)
        return d

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])

    def line_received(self, line: str) -> None:
        """A line of the daemon's output: keep it, fire the waits it matches."""
        self.lines.append(line)
        for entry in list(self._waiters):
            regex, count, d = entry
            if regex.search(line) and self.count(regex.pattern) >= count:
                self._waiters.remove(entry)
                d.callback(line)

    def process_ended(self, code: int) -> None:
        """The daemon exited with ``code`` (minus the signal): fail the line waits."""
        self.exit_code = code
        waiters, self._waiters = self._waiters, []
        for regex, _count, d in waiters:
            d.errback(AssertionError(f"daemon exited ({code}) without a line matching "
                                     f"{regex.pattern!r}:\n{self.tail()}"))
        exits, self._exit_waiters = self._exit_waiters, []
        for d in exits:
            d.callback(code)

    def exited(self, deadline: float = 30.0) -> defer.Deferred:
        """Fires with the exit code once the process has ended."""
        if self.exit_code is not None:
            return defer.succeed(self.exit_code)
        d: defer.Deferred = defer.Deferred()
        self._exit_waiters.append(d)
        return d.addTimeout(deadline, self.reactor)

    def signal(self, sig: int) -> None:
        if self.exit_code is None and self.process is not None:
            self.process.signalProcess(sig)

    def terminate(self, deadline: float = 30.0) -> defer.Deferred:
        """SIGTERM, then fires with the exit code."""
        self.signal(signal.SIGTERM)
        return self.exited(deadline)

    def kill(self) -> defer.Deferred:
        """SIGKILL (cleanup); fires once the process is gone."""
        if self.exit_code is not None:
            return defer.succeed(self.exit_code)
        self.signal(signal.SIGKILL)
        return self.exited(30.0).addErrback(lambda _: None)
