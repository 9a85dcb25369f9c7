"""Waiting on conditions with a deadline, for integration tests on the real reactor."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import task

__all__ = ["end_process", "server_started", "until"]


async def until(check: Callable[[], Any], deadline: float = 10.0, every: float = 0.05,
                what: str = "") -> Any:
    """Wait until ``check()`` returns a true value (and return it); fail after
    ``deadline`` seconds. For conditions that have no event to wait on (rows in the
    database, counters of a server)."""
    from twisted.internet import reactor

    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline}s: {what or check}")
        await task.deferLater(reactor, every, lambda: None)


def server_started(process: subprocess.Popen, port: int, timeout: float, name: str, *,
                   greets: bytes | None = None, details: Callable[[], str] = str) -> None:
    """Block until the child server ``process`` accepts connections on 127.0.0.1:``port``
    (and, with ``greets``, its first bytes start with it); RuntimeError with its output
    and ``details()`` when it exits or is not up within ``timeout`` seconds (the caller
    stops it). Start-up of a child process has no event to wait on but the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"{name} exited ({process.returncode}): {out}{details()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if greets is None:
                    return
                s.settimeout(5)
                if s.recv(200).startswith(greets):
                    return
        except OSError:
            pass
        time.sleep(0.05)  # nothing to wait on but the port
    raise RuntimeError(f"{name} did not start within {timeout}s: {details()}")


def end_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the child server, SIGKILL it after ``grace`` seconds, reap it and close its
    output pipe."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
