"""Garbage-collector settings for a process that holds thousands of sessions.

CPython's cycle collector examines every tracked object in a full (generation 2)
collection. With 10,000 TLS sessions that is a few million objects and up to 1.1 s of
CPU for one full collection (``python -m bench --gc-default``). With the default thresholds
``(700, 10, 10)`` the youngest generation is collected after every 700 net allocations, so
objects that are only in flight (a heartbeat's Deferreds waiting for the server's answer)
survive collections and get promoted, and full collections come often: in that benchmark 12
while 10,000 sessions started, 2 in a 120 s idle window (1.8 s of CPU, a third of the
window's), 7 during the stop.

:func:`tune_for_many_sessions` raises the first threshold to ``GEN0_THRESHOLD``: objects
that live for milliseconds are freed by reference counting before a collection sees them,
so hardly anything is promoted; the same benchmark with it had one full collection in all
(while the sessions started) and 0.17 s of collections in the idle window. A young
collection then looks at up to 10,000 objects, some milliseconds. Memory is still
reclaimed; reference cycles wait a little longer.

:func:`stopping` freezes everything that exists when the daemon begins to stop
(``gc.freeze``): the 10,000 LOGOUTs of a stop create garbage fast, and a full collection
over every session, each one about to be freed anyway, would only delay the exit.

Only the process's owner calls these (``build_daemon(..., owns_process=True)``: ``twist`` and
``twistd``); a test or an embedding program keeps its own settings.
"""

from __future__ import annotations

import gc

from twisted.logger import Logger

__all__ = ["GEN0_THRESHOLD", "stopping", "tune_for_many_sessions"]

log = Logger(namespace="rebreak_idle.gc_tuning")

#: youngest-generation threshold (CPython's default is 700)
GEN0_THRESHOLD = 10_000


def tune_for_many_sessions() -> None:
    """Raise the young-generation threshold (the older two stay as they are), and give
    back to the collector what an earlier :func:`stopping` froze (a service started again
    in the same process)."""
    gc.unfreeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GEN0_THRESHOLD, gen0), gen1, gen2)
    log.debug("gc thresholds {thresholds}", thresholds=gc.get_threshold())


def stopping() -> None:
    """Keep the collector off what exists now: the process is about to exit."""
    gc.freeze()
