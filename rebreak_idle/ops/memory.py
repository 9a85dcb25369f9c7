"""Giving the C heap back after the start-up ramp, and the allocator's own figures.

While thousands of sessions connect, each TLS handshake briefly holds large buffers
(OpenSSL's 16 KB record buffers, the handshake's message buffer, key shares) that are freed
when the handshake ends; the sessions' long-lived allocations land between them, so glibc's
heap keeps free chunks it cannot return by itself (it only trims the top of the heap).
:func:`release_free_heap` calls glibc's ``malloc_trim(0)`` once, when the ramp has settled,
which gives those free pages back to the system (``madvise``) without moving anything;
:func:`heap_figures` reads ``mallinfo2()`` for the log and the benchmarks. On a C library
without these functions both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from twisted.logger import Logger

__all__ = ["heap_figures", "release_free_heap", "rss_kib"]

log = Logger(namespace="rebreak_idle.memory")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - no C library by that name
        return None


_LIBC = _libc()


def heap_figures() -> dict[str, int]:
    """glibc's ``mallinfo2()`` in bytes (``uordblks``: in use, ``fordblks``: free but kept,
    ``arena``: heap size, ``hblkhd``: mmapped blocks); empty where unavailable."""
    f = getattr(_LIBC, "mallinfo2", None)
    if f is None:  # pragma: no cover - not glibc >= 2.33
        return {}
    f.restype = _MallInfo2
    info = f()
    return {name: int(getattr(info, name)) for name, _ in _MallInfo2._fields_}


def rss_kib() -> int:
    """The process's resident memory (``VmRSS``), 0 where ``/proc`` is not there."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - no /proc
        pass
    return 0


def release_free_heap(reason: str = "ramp settled") -> int:
    """``malloc_trim(0)`` once; returns the KiB of resident memory it gave back (0 where
    the C library has no ``malloc_trim``) and logs the figure."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is None:  # pragma: no cover - not glibc
        return 0
    before = rss_kib()
    trim(0)
    freed = max(0, before - rss_kib())
    log.info("[idle/db] memory: {reason}, gave {freed} KiB of free heap back",
             reason=reason, freed=freed)
    return freed
