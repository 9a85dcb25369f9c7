"""What the bench's helper servers (``loadserver``, ``sink``) share: a loopback-only command
line, the descriptor limit, the ready line on stdout and the wait for SIGTERM/SIGINT or
``--max-seconds``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["announce_and_wait", "parser", "raise_nofile_limit", "run"]

LOOPBACK = ("127.0.0.1", "::1", "localhost")


#: descriptors a bench process asks for when it runs as root (50,000 sessions: the daemon's
#: sockets, the load server's, PostgreSQL's and some to spare)
ROOT_NOFILE = 200_000


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); as root, first
    the hard limit to :data:`ROOT_NOFILE` (and ``fs.nr_open`` where it is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0 and hard < ROOT_NOFILE:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                nr_open = int(f.read())
            if nr_open < ROOT_NOFILE:
                with open("/proc/sys/fs/nr_open", "w") as f:
                    f.write(str(ROOT_NOFILE))
            resource.setrlimit(resource.RLIMIT_NOFILE, (ROOT_NOFILE, ROOT_NOFILE))
            soft = hard = ROOT_NOFILE
        except (OSError, ValueError):
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--host`` (loopback only) and ``--max-seconds``."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-seconds", type=float, default=3600.0,
                   help="stop by itself after this long (0: never)")
    return p


def run(p: argparse.ArgumentParser, argv: list[str] | None, what: str,
        serve: Callable[[argparse.Namespace], Awaitable[None]]) -> None:
    """Parse, refuse anything but loopback, raise the descriptor limit, serve."""
    args = p.parse_args(argv)
    if args.host not in LOOPBACK:
        p.error(f"the {what} listens on loopback only")
    raise_nofile_limit()
    asyncio.run(serve(args))


async def announce_and_wait(ready: dict[str, Any], stop: asyncio.Event,
                            max_seconds: float) -> None:
    """Set ``stop`` on SIGTERM/SIGINT, keep what exists now out of the collector (the
    server's own steady state), print ``ready`` as one JSON line and wait for ``stop`` or
    ``max_seconds`` (0: no limit)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gc.freeze()
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    if max_seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)
    else:
        await stop.wait()
