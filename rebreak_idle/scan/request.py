"""One scan request (CONTRACT §5): its JSON body, the bounded read of the answer, and the
texts that describe its outcome in logs (never a secret).

:class:`~rebreak_idle.scan.trigger.ScanTrigger` decides when to send one and what to do with the
outcome; this module knows only what one POST and its answer look like.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss, stringToDatetime

from ..failures import describe, scrub

if TYPE_CHECKING:
    from ..accounts.account import Account

__all__ = ["BACKEND_REFUSALS", "BODY_LOG_LIMIT", "BODY_READ_LIMIT", "RETRYABLE_4XX", "Job",
           "answer_counts", "attempt_error", "read_body", "retry_after", "snippet",
           "timed_out"]

#: Characters of a response body (or of an error text) that reach a log line.
BODY_LOG_LIMIT = 200
#: Bytes of a response body read at most (the rest is discarded).
BODY_READ_LIMIT = 64 * 1024


#: 4xx answers that say "later", not "never": retried like a 5xx (RFC 9110 §15.5.9,
#: RFC 6585 §4)
RETRYABLE_4XX = frozenset({408, 429})
#: 4xx answers that say the daemon's configuration is wrong for every account: 401/403 a
#: wrong ADMIN_SECRET, 404 a wrong BACKEND_URL
BACKEND_REFUSALS = frozenset({401, 403, 404})


@dataclass
class Job:
    """What one scan (including its retries) is about."""

    account: Account
    exists: int
    reason: str
    #: who waits for this scan's outcome: fired True on a 2xx answer, False when it is
    #: dropped (shutdown, the account discarded) or replaced by a later request of the
    #: same mailbox before it went out (whose answer covers it: :mod:`rebreak_idle.scan.owed`)
    acks: list[Deferred[bool]] = field(default_factory=list)
    #: an extra folder's name (REBREAK_EXTRA_FOLDERS); None for INBOX
    mailbox: str | None = None

    def settle(self, acknowledged: bool) -> None:
        """Tell every waiter the outcome (once)."""
        acks, self.acks = self.acks, []
        for d in acks:
            d.callback(acknowledged)

    def payload(self) -> bytes:
        """The request body: ``connectionId``, ``userId``, ``reason``, ``exists`` (and
        ``mailbox`` for an extra folder; INBOX's body is exactly CONTRACT §5's)."""
        body: dict[str, Any] = {
            "connectionId": self.account.id,
            "userId": self.account.user_id,
            "reason": self.reason,
            "exists": self.exists,
        }
        if self.mailbox is not None:
            body["mailbox"] = self.mailbox
        return json.dumps(body).encode("utf-8")


class _BodyReader(Protocol):
    """Collect a response body up to ``limit`` bytes; cancelling drops the connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            self.chunks.append(data[:room])
            self.size += min(room, len(data))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


def read_body(response: Any) -> Deferred[bytes]:
    """The first :data:`BODY_READ_LIMIT` bytes of ``response``'s body."""
    reader = _BodyReader(BODY_READ_LIMIT)
    response.deliverBody(reader)
    return reader.done


def timed_out(result: object, timeout: float) -> NoReturn:
    """``onTimeoutCancel``: whatever the cancelled request failed with, it timed out."""
    raise DeferredTimeoutError(timeout, "scan request")


def snippet(body: bytes, secrets: Sequence[str]) -> str:
    """A response body on one line for a log: scrubbed and cut at :data:`BODY_LOG_LIMIT`."""
    text = scrub(" ".join(body.decode("utf-8", "replace").split()), secrets)
    if not text:
        return "(empty answer)"
    if len(text) > BODY_LOG_LIMIT:
        text = text[:BODY_LOG_LIMIT] + "…"
    return text


def attempt_error(failure: Failure, timeout: float, secrets: Sequence[str]) -> str:
    """A short, secret-free description of a failed attempt: the HTTP-specific cases here,
    everything else as :func:`rebreak_idle.failures.describe` words it."""
    value = failure.value
    if failure.check(DeferredTimeoutError, neterror.TimeoutError):
        text = f"no answer within {timeout:g}s"
    elif failure.check(ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed):
        reasons = [r.getErrorMessage() or r.type.__name__
                   for r in getattr(value, "reasons", [])]
        text = ("connection lost while sending"
                if failure.check(RequestTransmissionFailed)
                else "connection lost before the answer")
        if reasons:
            text += f" ({'; '.join(reasons)})"
    else:
        text = describe(failure)
    return scrub(text, secrets)[:BODY_LOG_LIMIT]


def retry_after(values: Sequence[bytes] | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3): delay-seconds or an
    HTTP-date (``now`` is the epoch time it is measured from); None when absent or not
    readable. Not bounded here (:class:`~rebreak_idle.scan.backend_health.BackendHealth` is)."""
    if not values:
        return None
    text = values[-1].strip()
    if text.isdigit():
        return float(int(text[:12]))
    try:
        moment = stringToDatetime(text)
    except (ValueError, IndexError, KeyError, OverflowError):
        return None
    return max(0.0, moment - now)


def answer_counts(body: bytes) -> tuple[int | None, int | None, str]:
    """``(scanned, blocked, note)`` from a 2xx answer; None where the JSON says nothing."""
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None, None, "no JSON in answer"

    def number(key: str) -> int | None:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value

    scanned, blocked = number("scanned"), number("blocked")
    note = "" if scanned is not None and blocked is not None else "answer without counts"
    return scanned, blocked, note
