"""The process's file descriptor limit (``RLIMIT_NOFILE``) and the sessions it allows.

Each session holds one socket. A shell or PM2 usually starts a process with a soft limit of
1,024 and a much higher hard limit; as Node.js does at start, the daemon raises its soft
limit to the hard one (:func:`raise_soft_limit`). What the limit cannot hold is not retried
in a loop of "Too many open files": the supervisor starts at most :func:`session_capacity`
sessions and the accounts beyond wait (state ``waiting-for-descriptors`` in ``/status``)
until sessions end or the daemon is restarted with a higher limit (``LimitNOFILE=`` in the
systemd unit, ``ulimit -Hn`` before ``pm2 start``; docs/operations.md).
"""

from __future__ import annotations

import errno
from typing import NamedTuple

try:
    import resource
except ImportError:  # pragma: no cover - not a POSIX system
    resource = None  # type: ignore[assignment]

__all__ = ["DESCRIPTOR_RESERVE", "DescriptorLimit", "is_out_of_descriptors",
           "raise_soft_limit", "session_capacity"]

#: Descriptors kept back from the sessions for everything else the process opens: stdio and
#: log files, the reactor's own (epoll, waker), the database pool, the LISTEN connection and
#: the lease keeper's, the backend's HTTP connections (REBREAK_SCAN_CONCURRENCY, 16 by
#: default), the status server and its clients, DNS look-ups and the CA file being read.
DESCRIPTOR_RESERVE = 100


class DescriptorLimit(NamedTuple):
    """``soft``, ``hard``: the limit now (None: unlimited or unknown); ``was``: the soft
    limit found at start (differs from ``soft`` when it was raised)."""

    soft: int | None
    hard: int | None
    was: int | None


def _finite(value: int) -> int | None:
    return None if resource is None or value == resource.RLIM_INFINITY or value < 0 else value


def current_limit() -> DescriptorLimit:
    """The limit as it is, without changing it."""
    if resource is None:  # pragma: no cover
        return DescriptorLimit(None, None, None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return DescriptorLimit(_finite(soft), _finite(hard), _finite(soft))


def raise_soft_limit() -> DescriptorLimit:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (when the hard limit is finite);
    the limit in force afterwards. A refusal keeps the limit as it was."""
    if resource is None:  # pragma: no cover
        return DescriptorLimit(None, None, None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    was = _finite(soft)
    if _finite(hard) is not None and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return DescriptorLimit(_finite(soft), _finite(hard), was)


def session_capacity(limit: DescriptorLimit, reserve: int = DESCRIPTOR_RESERVE) -> int | None:
    """How many sessions the soft limit allows (None: no limit), at least one."""
    if limit.soft is None:
        return None
    return max(1, limit.soft - reserve)


def is_out_of_descriptors(exc: BaseException) -> bool:
    """Whether ``exc`` is the process's descriptor limit (EMFILE, or the system's ENFILE)
    — Twisted reports a socket that could not be created as ``ConnectBindError`` with the
    errno in ``osError``."""
    code = getattr(exc, "osError", None)
    if code is None and isinstance(exc, OSError):
        code = exc.errno
    return code in (errno.EMFILE, errno.ENFILE)
