"""Settings: read from the environment and command-line flags, validated once.

Every setting has an environment variable (CONTRACT §2) and a flag of the same name
(``REBREAK_REFRESH_INTERVAL`` ↔ ``--refresh-interval``); a flag wins over the environment.
Validation problems raise :class:`ConfigError` with one line that names the variable and
never repeats a secret value.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

__all__ = ["MAILBOX_CONTROL", "MAX_FOLDERS", "MAX_MAILBOX_NAME", "OPTIONS", "ConfigError",
           "Option", "Settings", "load_settings", "parse_folders", "read_ca_file"]


#: The per-host login budget's defaults (docs/providers.md, "Login budget": why these).
DEFAULT_HOST_LOGIN_RATE = 10.0
DEFAULT_HOST_LOGIN_BURST = 20


#: at most this many extra folders (each costs one STATUS per heartbeat)
MAX_FOLDERS = 8
#: the longest mailbox name sent or read, in bytes of its wire form (modified UTF-7)
MAX_MAILBOX_NAME = 1000
#: what no mailbox name sent may hold (C0 controls and DEL): the folders setting refuses it
#: here, imap/listing.py's encoder at run time
MAILBOX_CONTROL = re.compile("[\x00-\x1f\x7f]")


class ConfigError(ValueError):
    """A setting is missing or invalid. ``str()`` is one line fit for an operator."""


@dataclass(frozen=True)
class Option:
    attr: str  # attribute of Settings
    env: str  # environment variable
    help: str
    default: Any = None
    kind: str = "str"  # str | seconds | int | choice | url | path | secret | cafile | networks
    required: bool = False
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """The plugin flag: ``REBREAK_IDLE_RENEW`` → ``idle-renew``, ``DATABASE_URL`` →
        ``database-url``."""
        name = self.env.removeprefix("REBREAK_")
        return name.lower().replace("_", "-")


_HOSTNAME = socket.gethostname()

OPTIONS: tuple[Option, ...] = (
    Option("database_url", "DATABASE_URL", "libpq connection string or URI of the backend's "
           "PostgreSQL (direct or through a transaction pooler)", kind="secret", required=True),
    Option("admin_secret", "ADMIN_SECRET", "shared secret sent as x-admin-secret on every scan "
           "trigger and required by GET /status", kind="secret", required=True),
    Option("encryption_key", "ENCRYPTION_KEY", "key of the stored IMAP secrets; 32 or more "
           "characters, the first 32 bytes are the AES-256 key", kind="secret", required=True),
    Option("backend_url", "BACKEND_URL", "base URL of the Rebreak backend (default "
           "http://127.0.0.1:3016, or :3015 when NODE_ENV=production)", kind="url"),
    Option("node_env", "NODE_ENV", "'production' switches the default backend port"),
    Option("refresh_interval", "REBREAK_REFRESH_INTERVAL", "seconds between account-list "
           "refreshes", 300.0, "seconds"),
    Option("idle_renew", "REBREAK_IDLE_RENEW", "seconds after which IDLE is ended and re-entered "
           "(RFC 2177 servers may drop at 29 min)", 1500.0, "seconds"),
    Option("heartbeat_interval", "REBREAK_HEARTBEAT_INTERVAL", "seconds between NOOP "
           "heartbeats", 120.0, "seconds"),
    Option("reconnect_delay", "REBREAK_RECONNECT_DELAY", "first reconnect delay in seconds, "
           "doubling with jitter", 5.0, "seconds"),
    Option("reconnect_max_delay", "REBREAK_RECONNECT_MAX_DELAY", "longest reconnect delay in "
           "seconds", 300.0, "seconds"),
    Option("auth_failure_holdoff", "REBREAK_AUTH_FAILURE_HOLDOFF", "seconds to wait after the "
           "server rejected the credentials (a change of the row's secret retries at once)",
           1800.0, "seconds"),
    Option("poll_interval", "REBREAK_POLL_INTERVAL", "seconds between NOOP polls for servers "
           "without IDLE", 60.0, "seconds"),
    Option("command_timeout", "REBREAK_COMMAND_TIMEOUT", "seconds an IMAP command may take",
           60.0, "seconds"),
    Option("noop_timeout", "REBREAK_NOOP_TIMEOUT", "seconds a heartbeat NOOP (or DONE) may take "
           "before the connection is declared dead", 30.0, "seconds"),
    Option("connect_rate", "REBREAK_CONNECT_RATE", "sessions started per second at most (start-up "
           "ramp)", 50.0, "number"),
    Option("scan_concurrency", "REBREAK_SCAN_CONCURRENCY", "scan triggers in flight at most",
           16, "int"),
    Option("scan_timeout", "REBREAK_SCAN_TIMEOUT", "seconds one scan request may take", 30.0,
           "seconds"),
    Option("scan_attempts", "REBREAK_SCAN_ATTEMPTS", "accepted for compatibility and not used: "
           "a scan is never given up, it stays owed until the backend acknowledges it", 6,
           "int"),
    Option("write_flush_interval", "REBREAK_WRITE_FLUSH_INTERVAL", "seconds between batched "
           "heartbeat writes", 5.0, "seconds"),
    Option("shutdown_timeout", "REBREAK_SHUTDOWN_TIMEOUT", "seconds a graceful stop may take "
           "(LOGOUT, flush, in-flight scans)", 10.0, "seconds"),
    Option("notify_channel", "REBREAK_NOTIFY_CHANNEL", "PostgreSQL channel to LISTEN on for "
           "instant refreshes (needs a direct connection, not a transaction pooler)"),
    Option("status_endpoint", "REBREAK_STATUS_ENDPOINT", "Twisted server endpoint of the "
           "status/metrics HTTP server, e.g. tcp:9464:interface=127.0.0.1 (unset: none)"),
    Option("tls_ca_file", "REBREAK_TLS_CA_FILE", "PEM file of extra CA certificates to trust for "
           "IMAP TLS", kind="cafile"),
    Option("log_format", "REBREAK_LOG_FORMAT", "log format on stdout: text or json", "text",
           "choice", choices=("text", "json")),
    Option("leases", "REBREAK_LEASES", "share the accounts between replicas through leases in "
           "PostgreSQL: on or off", "off", "choice", choices=("on", "off")),
    Option("replica_id", "REBREAK_REPLICA_ID", "name of this replica (default hostname:pid)"),
    Option("lease_ttl", "REBREAK_LEASE_TTL", "seconds a replica's lease lives without renewal",
           30.0, "seconds"),
    Option("lease_renew", "REBREAK_LEASE_RENEW", "seconds between lease renewals", 10.0,
           "seconds"),
    Option("allow_private_hosts", "REBREAK_ALLOW_PRIVATE_HOSTS", "CIDRs of private, "
           "link-local, unique-local or CGNAT addresses that rows may name as their IMAP "
           "server (default none; loopback is always allowed)", None, "networks"),
    Option("scan_min_interval", "REBREAK_SCAN_MIN_INTERVAL", "seconds between two new-mail scans "
           "of one account at least (the first after a quiet spell goes out at once)", 5.0,
           "seconds"),
    Option("host_login_rate", "REBREAK_HOST_LOGIN_RATE", "connection attempts per second to "
           "one IMAP host at most, all sessions together, at start-up, takeover and on every "
           "reconnect (off: no limit; docs/providers.md)", DEFAULT_HOST_LOGIN_RATE,
           "rate"),
    Option("host_login_burst", "REBREAK_HOST_LOGIN_BURST", "attempts to one host allowed at "
           "once before REBREAK_HOST_LOGIN_RATE paces them", DEFAULT_HOST_LOGIN_BURST, "int"),
    Option("host_max_connections", "REBREAK_HOST_MAX_CONNECTIONS", "open connections to one "
           "IMAP host at most, per source address (unset: no limit); sessions beyond wait, "
           "queued", kind="int"),
    Option("source_addresses", "REBREAK_SOURCE_ADDRESSES", "comma-separated local IP "
           "addresses to spread IMAP connections over (unset: the system's choice)",
           kind="addresses"),
    Option("extra_folders", "REBREAK_EXTRA_FOLDERS", "comma-separated folders to watch "
           "besides INBOX, by special-use attribute (\\Junk) or name (Unbekannt); checked "
           "with STATUS at every heartbeat (unset: INBOX only; docs/folders.md)",
           kind="folders"),
)

_BY_ATTR = {o.attr: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one daemon process. Secrets are kept out of ``repr``."""

    database_url: str = field(repr=False)
    admin_secret: str = field(repr=False)
    encryption_key: str = field(repr=False)
    backend_url: str = "http://127.0.0.1:3016"
    node_env: str | None = None
    refresh_interval: float = 300.0
    idle_renew: float = 1500.0
    heartbeat_interval: float = 120.0
    reconnect_delay: float = 5.0
    reconnect_max_delay: float = 300.0
    auth_failure_holdoff: float = 1800.0
    poll_interval: float = 60.0
    command_timeout: float = 60.0
    noop_timeout: float = 30.0
    connect_rate: float = 50.0
    scan_concurrency: int = 16
    scan_timeout: float = 30.0
    scan_attempts: int = 6
    write_flush_interval: float = 5.0
    shutdown_timeout: float = 10.0
    notify_channel: str | None = None
    status_endpoint: str | None = None
    tls_ca_file: str | None = None
    log_format: str = "text"
    leases: str = "off"
    replica_id: str = field(default_factory=lambda: f"{_HOSTNAME}:{os.getpid()}")
    lease_ttl: float = 30.0
    lease_renew: float = 10.0
    allow_private_hosts: tuple[str, ...] = ()
    scan_min_interval: float = 5.0
    host_login_rate: float | None = DEFAULT_HOST_LOGIN_RATE
    host_login_burst: int = DEFAULT_HOST_LOGIN_BURST
    host_max_connections: int | None = None
    source_addresses: tuple[str, ...] = ()
    extra_folders: tuple[str, ...] = ()

    @property
    def key_bytes(self) -> bytes:
        """The AES-256 key: the first 32 bytes of ENCRYPTION_KEY in UTF-8 (CONTRACT §4)."""
        return self.encryption_key.encode("utf-8")[:32]

    @property
    def leases_enabled(self) -> bool:
        return self.leases == "on"

    def secret_values(self) -> tuple[str, ...]:
        """Every secret string this configuration holds (for log scrubbing and tests)."""
        values = [self.admin_secret, self.encryption_key]
        password = urlsplit(self.database_url).password if "://" in self.database_url else None
        if password is None and "://" not in self.database_url:
            password = _dsn_password(self.database_url)
        if password:
            values.append(password)
        return tuple(v for v in values if v)


def _positive(opt: Option, raw: str) -> float:
    unit = " of seconds" if opt.kind == "seconds" else ""
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{opt.env} must be a number{unit}, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{opt.env} must be a positive number{unit}, got {raw!r}")
    return value


def _int(opt: Option, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{opt.env} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{opt.env} must be a positive whole number, got {raw!r}")
    return value


def _url(opt: Option, raw: str) -> str:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{opt.env} is not a valid URL (bad port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{opt.env} must be an http:// or https:// URL with a host, got {raw!r}")
    if parts.username or parts.password:
        raise ConfigError(f"{opt.env} must not contain credentials")
    return raw.rstrip("/")


def _addresses(opt: Option, raw: str) -> tuple[str, ...]:
    found = []
    for part in raw.split(","):
        part = part.strip()
        try:
            found.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise ConfigError(f"{opt.env} must list IP addresses, got {part!r}") from None
    return tuple(found)


def _convert(opt: Option, raw: str) -> Any:
    if opt.kind in ("seconds", "number"):
        return _positive(opt, raw)
    if opt.kind == "rate":  # a positive number, or off
        return None if raw.strip().lower() == "off" else _positive(opt, raw)
    if opt.kind == "int":
        return _int(opt, raw)
    if opt.kind == "url":
        return _url(opt, raw)
    if opt.kind == "choice":
        value = raw.strip().lower()
        if value not in opt.choices:
            raise ConfigError(f"{opt.env} must be one of {', '.join(opt.choices)}, got {raw!r}")
        return value
    if opt.kind == "addresses":
        return _addresses(opt, raw)
    if opt.kind == "path":
        if not os.path.isfile(raw):
            raise ConfigError(f"{opt.env} names no readable file: {raw}")
        return raw
    if opt.kind == "cafile":
        return _ca_file(opt, raw)
    if opt.kind == "networks":
        return _networks(opt, raw)
    if opt.kind == "folders":
        try:
            return parse_folders(raw)
        except ValueError as e:
            raise ConfigError(f"{opt.env}: {e}") from None
    return raw


def _ca_file(opt: Option, raw: str) -> str:
    """A PEM file holding at least one certificate: checked at start, so that a wrong
    file stops the start instead of failing every TLS account later."""
    if not os.path.isfile(raw):
        raise ConfigError(f"{opt.env} names no readable file: {raw}")
    try:
        read_ca_file(raw)
    except ValueError as e:
        raise ConfigError(f"{opt.env}: {e}") from None
    return raw


def read_ca_file(path: str) -> list[Any]:
    """All PEM certificates of ``path`` (``cryptography`` certificates); ValueError with a
    clear text when it cannot be read or holds none. The one reader of the CA file: checked
    here at start, loaded by :func:`rebreak_idle.net.tls.load_ca_file` for each TLS context."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read TLS CA file {path}: {e.strerror or e}") from None
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"TLS CA file {path} holds no PEM certificate") from None


def parse_folders(value: str) -> tuple[str, ...]:
    """``REBREAK_EXTRA_FOLDERS``: ``"\\Junk, Unbekannt"`` → ("\\Junk", "Unbekannt"), each
    once; ValueError for too many entries, INBOX, a special-use entry that is not a word,
    or a name that cannot be sent without a literal (a control character, or longer than
    :data:`MAX_MAILBOX_NAME` bytes in modified UTF-7)."""
    import twisted.mail.imap4  # noqa: F401  (registers the imap4-utf-7 codec)

    entries: list[str] = []
    for part in value.split(","):
        entry = part.strip()
        if not entry:
            continue
        if entry.upper() == "INBOX":
            raise ValueError("INBOX is always watched; list only other folders")
        if entry.startswith("\\"):
            if not entry[1:].isalnum():
                raise ValueError(f"not a special-use attribute: {entry[:40]!r}")
        elif MAILBOX_CONTROL.search(entry) is not None \
                or len(entry.encode("imap4-utf-7")) > MAX_MAILBOX_NAME:
            raise ValueError(f"folder name not usable: {entry[:40]!r}")
        if entry not in entries:
            entries.append(entry)
    if len(entries) > MAX_FOLDERS:
        raise ValueError(f"at most {MAX_FOLDERS} extra folders")
    return tuple(entries)


def _networks(opt: Option, raw: str) -> tuple[str, ...]:
    """A comma- or space-separated list of CIDRs (``10.0.0.0/8, fd00::/8``)."""
    import ipaddress

    out = []
    for item in raw.replace(",", " ").split():
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(f"{opt.env} must be a list of CIDRs (e.g. 10.0.0.0/8), got "
                              f"{item!r}") from None
    return tuple(out)


def _dsn(raw: str) -> None:
    """A key=value DATABASE_URL must parse: libpq's own message quotes the text after the
    point it failed at, which may be half a password (``password=two words``)."""
    if "://" in raw:
        return
    from psycopg2.extensions import parse_dsn

    try:
        parse_dsn(raw)
    except Exception:
        raise ConfigError("DATABASE_URL is not a valid libpq connection string (put a value "
                          "holding spaces in single quotes: password='...')") from None


def _dsn_password(dsn: str) -> str | None:
    """The password of a key=value DSN, or None."""
    from psycopg2.extensions import parse_dsn

    try:
        return parse_dsn(dsn).get("password")
    except Exception:
        return None


def load_settings(
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``) overridden by
    ``flags`` (attribute name → raw string, ``None`` meaning "not given")."""
    environ = os.environ if environ is None else environ
    flags = flags or {}
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = flags.get(opt.attr)
        if raw is None:
            raw = environ.get(opt.env)
        if raw is not None and raw.strip() == "" and opt.kind != "secret":
            raw = None
        if raw is None or raw == "":
            if opt.required:
                raise ConfigError(f"{opt.env} is required but not set")
            continue
        values[opt.attr] = _convert(opt, raw)

    _dsn(values["database_url"])
    key = values["encryption_key"]
    if len(key) < 32:
        raise ConfigError(
            f"ENCRYPTION_KEY must be at least 32 characters, it has {len(key)}"
        )
    if "backend_url" not in values:
        production = values.get("node_env") == "production"
        values["backend_url"] = f"http://127.0.0.1:{3015 if production else 3016}"
    if "replica_id" in values and not values["replica_id"].strip():
        del values["replica_id"]
    return Settings(**values)


def describe(opt: Option) -> str:
    """One help line: text, environment variable and default."""
    default = opt.default
    shown = "required" if opt.required else f"default {default}" if default is not None else "unset"
    return f"{opt.help} [env {opt.env}; {shown}]"


# --- per-room views ---


_V = TypeVar("_V")


def _view(cls: type[_V], settings: Settings) -> _V:
    """``cls`` (a view dataclass) filled from the fields of ``settings`` of the same names."""
    return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})  # type: ignore[arg-type]


# --- supervisor view ---


@dataclass(frozen=True)
class SupervisorSettings:
    """What the supervisor reads: its refresh timer, the start-up ramp, the stop deadline,
    and the secret values its log lines must not repeat."""

    refresh_interval: float
    connect_rate: float
    shutdown_timeout: float
    secret_values: tuple[str, ...] = ()


def supervisor_settings(settings: Settings) -> SupervisorSettings:
    """The supervisor's view of ``settings``."""
    return SupervisorSettings(refresh_interval=settings.refresh_interval,
                              connect_rate=settings.connect_rate,
                              shutdown_timeout=settings.shutdown_timeout,
                              secret_values=settings.secret_values())


__all__ += ["SupervisorSettings", "supervisor_settings"]


# --- scan view ---


@dataclass(frozen=True)
class ScanSettings:
    """What :class:`~rebreak_idle.scan.trigger.ScanTrigger` needs: where to POST, with which secret,
    how many at once, how long and how often, and the secrets to keep out of its logs."""

    backend_url: str
    admin_secret: str = field(repr=False)
    scan_concurrency: int = 16
    scan_timeout: float = 30.0
    #: REBREAK_SCAN_ATTEMPTS: accepted for compatibility, not used (scans are owed until
    #: acknowledged: rebreak_idle.scan.trigger)
    scan_attempts: int = 6
    shutdown_timeout: float = 10.0
    #: every configured secret value (:meth:`Settings.secret_values`), masked in log texts
    secrets: tuple[str, ...] = field(default=(), repr=False)
    #: seconds between the starts of two scans of one account at least (0: no minimum)
    scan_min_interval: float = 0.0


def scan_settings(settings: Settings) -> ScanSettings:
    return ScanSettings(
        backend_url=settings.backend_url,
        admin_secret=settings.admin_secret,
        scan_concurrency=settings.scan_concurrency,
        scan_timeout=settings.scan_timeout,
        scan_attempts=settings.scan_attempts,
        shutdown_timeout=settings.shutdown_timeout,
        secrets=settings.secret_values(),
        scan_min_interval=settings.scan_min_interval,
    )


__all__ += ["ScanSettings", "scan_settings"]


# --- status view ---


@dataclass(frozen=True)
class StatusSettings:
    """What the status server needs: where to listen and the secret /status requires."""

    status_endpoint: str
    admin_secret: str = field(repr=False)


def status_settings(settings: Settings) -> StatusSettings | None:
    """The status server's view, or None when ``REBREAK_STATUS_ENDPOINT`` is unset."""
    if not settings.status_endpoint:
        return None
    return StatusSettings(status_endpoint=settings.status_endpoint,
                          admin_secret=settings.admin_secret)


__all__ += ["StatusSettings", "status_settings"]


# --- session view ---

@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What one :class:`~rebreak_idle.session.session.MailboxSession` reads of the settings (no
    database URL, no admin secret)."""

    idle_renew: float
    heartbeat_interval: float
    reconnect_delay: float
    reconnect_max_delay: float
    auth_failure_holdoff: float
    poll_interval: float
    command_timeout: float
    noop_timeout: float
    shutdown_timeout: float
    tls_ca_file: str | None
    allow_private_hosts: tuple[str, ...]
    extra_folders: tuple[str, ...] = ()


def session_settings(settings: Settings) -> SessionSettings:
    """The session's view of ``settings``."""
    return _view(SessionSettings, settings)


__all__ += ["SessionSettings", "session_settings"]


# --- lease view ---


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """What the replica lease keeper reads: its database, its name and its timing."""

    database_url: str = field(repr=False)
    replica_id: str
    lease_ttl: float
    lease_renew: float


def lease_settings(settings: Settings) -> LeaseSettings:
    """The lease keeper's view of ``settings``."""
    return _view(LeaseSettings, settings)


__all__ += ["LeaseSettings", "lease_settings"]
