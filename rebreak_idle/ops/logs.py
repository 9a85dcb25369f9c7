"""Log output on stdout: the CONTRACT §6 lines as plain text, or one JSON object per line.

``text`` (the default) is Twisted's classic line format, which is what the operator's
dashboards grep::

    2026-01-01T12:00:00+0000 [rebreak_idle.session#info] [idle/a@example.com] connected (...)

``json`` (``--log-format json`` / ``REBREAK_LOG_FORMAT=json``) is meant for log shippers:
one object per line with ``time`` (ISO 8601, UTC), ``level``, ``message`` (the formatted
text, plus the traceback of a logged failure), ``namespace`` and the event's own fields
(``account_id``, ``email``, ...) when they are JSON values. Fields whose name suggests a
secret are dropped, and both formats replace every configured secret value (ADMIN_SECRET,
ENCRYPTION_KEY, the DATABASE_URL password) by ``***`` wherever it would appear.

Every value is hostile (an ``email`` or ``imap_host`` is typed by an end user, a server's
text by whoever runs it): the text format escapes control characters (C0 including CR, LF
and ESC, DEL, C1, U+2028/U+2029) in every interpolated field as ``\\xNN`` / ``\\uNNNN``,
so no value makes a new physical line or reaches a terminal as an escape sequence; the
JSON format escapes DEL, C1 (U+0085 among them), U+2028 and U+2029 too, which JSON itself
allows raw and some readers take as line ends.

``twist`` picks JSON on its own when stdout is not a terminal; :func:`configure_runner_logging`
(called by the plugin's ``Options.postOptions``) puts the choice back in our setting's hands.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    formatEvent,
    formatEventAsClassicLogText,
)

from ..failures import is_secret_name, maskable, scrub

__all__ = [
    "FORMATS",
    "configure_runner_logging",
    "escape_controls",
    "event_as_json",
    "json_observer",
    "make_observer",
    "text_observer",
    "twistd_observer",
]

FORMATS = ("text", "json")
_RESERVED = {"time", "level", "message", "namespace"}
# Legacy twisted.python.log keys that duplicate what "message" already carries.
_LEGACY = {"format", "isError", "system", "why", "failure", "time"}
_PLAIN = (str, int, float, bool, type(None))

ObserverFactory = Callable[[IO[str]], ILogObserver]

#: control characters no interpolated value may carry raw into a text log line
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: what JSON leaves raw but some readers take as a line end or a terminal control
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(value: str) -> str:
    """``value`` with every control character written as an escape (``\\n``,
    ``\\x1b``, ``\\x85``, ``\\u2028``); printable text unchanged."""
    if _CONTROL.search(value) is None:
        return value
    return _CONTROL.sub(_escape_one, value)


def _json_escape_one(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _escaped_fields(event: LogEvent) -> LogEvent:
    """A copy of ``event`` whose string fields (the values a format interpolates) are
    escaped; ``log_*`` keys (the format itself, the failure) are kept as they are."""
    changed = None
    for key, value in event.items():
        if (isinstance(value, str) and not (isinstance(key, str) and key.startswith("log_"))
                and _CONTROL.search(value) is not None):
            if changed is None:
                changed = dict(event)
            changed[key] = escape_controls(value)
    return event if changed is None else changed


def _json_value(value: Any, depth: int = 0) -> tuple[bool, Any]:
    """(True, value) when ``value`` is a plain JSON value (nested lists/dicts of them)."""
    if isinstance(value, _PLAIN):
        if isinstance(value, float) and value != value:  # NaN is not JSON
            return False, None
        return True, value
    if depth > 4:
        return False, None
    if isinstance(value, list | tuple):
        items = [_json_value(v, depth + 1) for v in value]
        if all(ok for ok, _ in items):
            return True, [v for _, v in items]
        return False, None
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        pairs = {k: _json_value(v, depth + 1) for k, v in value.items()}
        if all(ok for ok, _ in pairs.values()):
            return True, {k: v for k, (_, v) in pairs.items()}
    return False, None


def event_as_json(event: LogEvent) -> dict[str, Any]:
    """The JSON object of one log event (not yet scrubbed of secret values)."""
    message = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            trace = failure.getTraceback()
        except Exception:  # a broken failure object must not break logging
            trace = "(unable to format the failure)"
        message = f"{message}\n{trace}" if message else trace
    when = event.get("log_time")
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": (datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
                 if isinstance(when, int | float) else None),
        "level": getattr(level, "name", None),
        "message": message,
        "namespace": event.get("log_namespace"),
    }
    legacy = "log_legacy" in event or "isError" in event
    for key, value in event.items():
        if (not isinstance(key, str) or key.startswith("log_") or key in _RESERVED
                or (legacy and key in _LEGACY) or key == "message" or is_secret_name(key)):
            continue
        ok, plain = _json_value(value)
        if ok:
            out[key] = plain
    return out


def _json_line(secrets: Sequence[str]) -> Callable[[LogEvent], str | None]:
    def format_event(event: LogEvent) -> str | None:
        record = event_as_json(event)
        if not record["message"] and not record.get("account_id"):
            return None  # nothing to say (e.g. an event carrying only data)
        line = _JSON_RAW.sub(_json_escape_one, json.dumps(record, ensure_ascii=False))
        return scrub(line, secrets) + "\n"

    return format_event


def _text_line(secrets: Sequence[str]) -> Callable[[LogEvent], str | None]:
    def format_event(event: LogEvent) -> str | None:
        text = formatEventAsClassicLogText(_escaped_fields(event))
        return None if text is None else scrub(text, secrets)

    return format_event


def text_observer(out: IO[str], secrets: Iterable[str] = ()) -> ILogObserver:
    """Twisted's classic text lines on ``out``, secret values masked."""
    return FileLogObserver(out, _text_line(maskable(secrets)))


def json_observer(out: IO[str], secrets: Iterable[str] = ()) -> ILogObserver:
    """One JSON object per line on ``out`` (see the module docstring), secret values masked."""
    return FileLogObserver(out, _json_line(maskable(secrets)))


def make_observer(log_format: str, out: IO[str], secrets: Iterable[str] = ()) -> ILogObserver:
    """The observer of ``log_format`` ('text' or 'json'), e.g. for a ``.tac`` file::

        application.setComponent(ILogObserver, make_observer(settings.log_format, sys.stdout,
                                                             settings.secret_values()))
    """
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    factory = json_observer if log_format == "json" else text_observer
    return factory(out, secrets)


def _observer_factory(log_format: str, secrets: Sequence[str]) -> ObserverFactory:
    def factory(out: IO[str]) -> ILogObserver:
        return make_observer(log_format, out, secrets)

    factory.log_format = log_format  # type: ignore[attr-defined]  # for tests and humans
    return factory


# --- twist / twistd ---------------------------------------------------------------------

#: twistd's --logger takes the dotted name of a zero-argument factory, so what it needs to
#: know (``format``, ``logfile``, ``secrets`` to mask) is handed over here by postOptions;
#: empty when twistd runs the .tac file (no plugin options).
twistd_choice: dict[str, Any] = {}


def twistd_observer() -> ILogObserver:
    """The observer for twistd's ``--logger`` option.

    Set by ``twistd rebreak-idle`` itself when the log format is json. For the .tac file
    (which has no plugin options), ``twistd -ny rebreak.tac --logger
    rebreak_idle.ops.logs.twistd_observer`` logs to stdout in ``REBREAK_LOG_FORMAT`` with the
    secrets of the environment's settings masked."""
    if not twistd_choice:
        return make_observer(_environment_format(), sys.stdout, _environment_secrets())
    target = twistd_choice.get("logfile")
    secrets = twistd_choice.get("secrets", ())
    if target is None:
        return make_observer(twistd_choice["format"], sys.stdout, secrets)
    from twisted.python.logfile import LogFile

    out = LogFile.fromFullPath(target)
    return make_observer(twistd_choice["format"], out, secrets)  # type: ignore[arg-type]


def _environment_format() -> str:
    value = os.environ.get("REBREAK_LOG_FORMAT", "").strip().lower()
    return value if value in FORMATS else "text"


def _environment_secrets() -> tuple[str, ...]:
    from ..config import ConfigError, load_settings

    try:
        return load_settings().secret_values()
    except ConfigError:
        return ()


def _twist_format_chosen(argv: Sequence[str], tapname: str) -> bool:
    """Whether the operator gave twist's own ``--log-format`` (before the plugin name).

    TwistOptions stores the same value for an explicit choice and for its tty-based
    default, so the command line is the only witness."""
    for arg in argv:
        if arg == tapname:
            return False
        if arg == "--log-format" or arg.startswith("--log-format="):
            return True
    return False


def configure_runner_logging(
    parent: Any,
    log_format: str,
    explicit: bool,
    secrets: Iterable[str] = (),
    argv: Sequence[str] | None = None,
    tapname: str = "rebreak-idle",
) -> None:
    """Make the runner (``twist``'s or ``twistd``'s options, ``parent``) log in our format.

    - ``twist``: its ``fileLogObserverFactory`` becomes ours (secrets masked) in
      ``log_format`` when the operator set our setting (``explicit``); otherwise in the
      format of twist's own ``--log-format`` when that was given, else text.
    - ``twistd``: text stays twistd's own observer (log rotation, syslog); for json, a
      JSON observer on twistd's log target is installed through its ``logger`` option,
      unless the operator chose ``--logger`` or ``--syslog``.
    """
    masked = maskable(secrets)
    argv = sys.argv[1:] if argv is None else argv
    if "fileLogObserverFactory" in parent:  # twist
        if not explicit and _twist_format_chosen(argv, tapname):
            log_format = parent.get("logFormat", "text")
            if log_format not in FORMATS:
                return
        parent["fileLogObserverFactory"] = _observer_factory(log_format, masked)
        parent["logFormat"] = log_format
    elif "logger" in parent and "nodaemon" in parent:  # twistd
        if log_format != "json" or parent["logger"] is not None or parent.get("syslog"):
            return
        logfile = parent.get("logfile")
        if logfile == "-" and not parent["nodaemon"]:
            return  # twistd itself refuses this ("Daemons cannot log to stdout")
        if parent["nodaemon"] and logfile in (None, "", "-"):
            twistd_choice["logfile"] = None
        else:
            twistd_choice["logfile"] = logfile or "twistd.log"
        twistd_choice["secrets"] = masked
        twistd_choice["format"] = log_format
        parent["logger"] = f"{__name__}.twistd_observer"
