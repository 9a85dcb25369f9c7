"""What one ``MailboxSession`` object costs in memory, without a server: N sessions built
(stopped) and N sessions waiting to reconnect after a refused connect (their wait armed),
measured with ``tracemalloc`` and the garbage collector's count of tracked objects.

    python -m bench.session_size --n 1000

prints one JSON line per phase: bytes and tracked objects per session, and
``sys.getsizeof`` of the session object and of each attribute it holds directly (the
collaborators with their ``__slots__``). Run it on two checkouts to compare (the daemon's
full figure, connection and TLS included, is ``rss_per_session_kb`` of ``python -m bench``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from typing import Any

__all__ = ["main"]


def _deep_size(session: Any) -> int:
    """The session object, its ``__dict__`` and each object held directly that has slots
    or a dict of its own (one level: the collaborators, not the shared parts)."""
    size = sys.getsizeof(session) + sys.getsizeof(vars(session))
    for value in vars(session).values():
        if hasattr(type(value), "__slots__") and not isinstance(value, (str, int, float,
                                                                        tuple)):
            size += sys.getsizeof(value)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            size += sys.getsizeof(value)
    return size


def measure(n: int) -> list[dict[str, Any]]:
    from twisted.internet.defer import fail
    from twisted.internet.error import ConnectionRefusedError
    from twisted.internet.task import Clock

    from rebreak_idle.accounts.account import Account
    from rebreak_idle.config import Settings, session_settings
    from rebreak_idle.session.mailbox_marks import MailboxMemory
    from rebreak_idle.session.session import MailboxSession
    from rebreak_idle.session.states import StateTally
    from rebreak_idle.timing.wheel import TimerWheel

    class Refusing:
        def connect(self, factory: Any) -> Any:
            return fail(ConnectionRefusedError())

    class Recorder:
        def record_error(self, account_id: str, text: str) -> None:
            pass

        def clear_error(self, account_id: str) -> None:
            pass

        def record_heartbeat(self, account_id: str) -> None:
            pass

    settings = session_settings(Settings(database_url="postgresql://x",
                                         admin_secret="s" * 8, encryption_key="k" * 32))
    clock = Clock()
    shared = {"timers": TimerWheel(clock), "memory": MailboxMemory(), "tally": StateTally(),
              "endpoint": Refusing(), "jitter": lambda: 0.0}
    recorder = Recorder()
    accounts = [Account(id=f"00000000-0000-4000-8000-{k:012d}", user_id="u",
                        email=f"user{k}@example.org", host="imap.example.org", port=993,
                        security="tls", username=f"user{k}", auth_method="password",
                        secret="x" * 12) for k in range(n)]

    def on_new_mail(*args: Any, **kw: Any) -> None:
        return None

    out = []
    gc.collect()
    tracemalloc.start()
    base_bytes = tracemalloc.get_traced_memory()[0]
    base_objects = len(gc.get_objects())
    sessions = [MailboxSession(a, settings, recorder, on_new_mail, clock, **shared)
                for a in accounts]
    gc.collect()
    out.append({"phase": "built", "n": n,
                "bytes_per_session": round((tracemalloc.get_traced_memory()[0]
                                            - base_bytes) / n),
                "objects_per_session": round((len(gc.get_objects()) - base_objects) / n, 2),
                "shallow_bytes": _deep_size(sessions[0])})
    for session in sessions:
        session.startService()
    clock.advance(0)  # the refusals are reported on the next turn
    gc.collect()
    out.append({"phase": "waiting", "n": n,
                "state": str(sessions[0].state),
                "bytes_per_session": round((tracemalloc.get_traced_memory()[0]
                                            - base_bytes) / n),
                "objects_per_session": round((len(gc.get_objects()) - base_objects) / n, 2),
                "shallow_bytes": _deep_size(sessions[0])})
    for session in sessions:
        session.stopService()
    tracemalloc.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.session_size",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args(argv)
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    for line in measure(args.n):
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
