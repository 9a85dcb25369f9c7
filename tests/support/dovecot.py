"""A private Dovecot instance for integration tests (Debian's ``dovecot-imapd``).

Usage::

    from tests.support.dovecot import DovecotServer, skip_without_dovecot

    class T(TestCase):
        skip = skip_without_dovecot()       # None when Dovecot exists (or is required)

        def setUp(self):
            self.dovecot = DovecotServer.shared()   # one per test process
            # or DovecotServer(users={"ann": "pw"}) for a dedicated one, then .stop()

    dovecot.imap_port / dovecot.imaps_port     # plain IMAP and implicit TLS on 127.0.0.1
    dovecot.users                              # {"ann@rebreak.test": "ann-password", ...}
    dovecot.ca_file                            # the test CA that signed its certificate
    dovecot.deliver("ann@rebreak.test", subject="Hi", body="...")   # into the Maildir

The instance runs ``dovecot -F -c <own config>`` from a temporary directory: passwd-file
authentication (plain passwords), Maildir under the temp dir owned by an unprivileged
system user (created when missing, as the tests run as root), IDLE with
``imap_idle_notify_interval = 1 secs``, ``auth_failure_delay = 0``, cleartext login
allowed (loopback only), TLS with the test CA's server certificate
(:mod:`rebreak_idle.testing.certs`). Failed logins answer
``NO [AUTHENTICATIONFAILED] Authentication failed.``. Config syntax follows
``dovecot --version`` (2.3 or 2.4).

:func:`skip_without_dovecot` returns a skip reason when ``/usr/sbin/dovecot`` is
missing, unless ``REBREAK_REQUIRE_DOVECOT=1`` (CI) — then it returns None and
:class:`DovecotServer` raises, so the tests fail instead of skipping.
"""

from __future__ import annotations

import atexit
import email.utils
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

from rebreak_idle.testing.certs import make_test_certs

from .tools import all_required
from .wait import end_process, server_started

__all__ = ["DOVECOT", "DovecotServer", "dovecot_version", "skip_without_dovecot"]

DOVECOT = os.environ.get("REBREAK_DOVECOT", "/usr/sbin/dovecot")
_MAIL_USER = "rebreak_vmail"
DEFAULT_USERS = {
    "ann@rebreak.test": "ann-password",
    "bob@rebreak.test": "bob-password",
    "carol@rebreak.test": "carol-password",
}


def _available() -> bool:
    return os.access(DOVECOT, os.X_OK) or shutil.which("dovecot") is not None


def skip_without_dovecot() -> str | None:
    """The skip reason for Dovecot tests, or None when they must run."""
    if _available():
        return None
    if all_required():
        return None  # DovecotServer() will raise: CI must not skip
    return (f"Dovecot is not installed ({DOVECOT} missing; apt-get install dovecot-imapd, "
            "or set REBREAK_REQUIRE_DOVECOT=1 to make this a failure)")


def _binary() -> str:
    if os.access(DOVECOT, os.X_OK):
        return DOVECOT
    found = shutil.which("dovecot")
    if not found:
        raise RuntimeError(f"Dovecot is required (REBREAK_REQUIRE_DOVECOT=1) but {DOVECOT} "
                           "is missing")
    return found


def dovecot_version() -> tuple[int, int]:
    out = subprocess.run([_binary(), "--version"], capture_output=True, text=True,
                         check=True).stdout
    major, minor = out.split()[0].split(".")[:2]
    return int(major), int(minor)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mail_user() -> tuple[int, int, str]:
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return entry.pw_uid, entry.pw_gid, entry.pw_name
    try:
        entry = pwd.getpwnam(_MAIL_USER)
    except KeyError:
        subprocess.run(["useradd", "-r", "-s", "/usr/sbin/nologin", "-M", _MAIL_USER],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(_MAIL_USER)
    return entry.pw_uid, entry.pw_gid, entry.pw_name


# What both versions share. The ``{...}`` fields named in _CONF_23 / _CONF_24 are the
# lines where 2.3 and 2.4 differ; the rest are the instance's values (directory, ports,
# certificate, mail owner).
_CONF = """\
{version_header}base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
instance_name = rebreak-test-{imap}
protocols = imap
listen = 127.0.0.1
default_login_user = dovenull
default_internal_user = dovecot
ssl = yes
{ssl_files}ssl_min_protocol = TLSv1.2
{allow_cleartext}
auth_mechanisms = plain login
auth_failure_delay = 0
auth_cache_size = 0
{mail_location}mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 1
first_valid_gid = 1
imap_idle_notify_interval = {one_second}
mailbox_idle_check_interval = {one_second}
shutdown_clients = yes
namespace inbox {{
  inbox = yes
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
  mailbox Unbekannt {{
    auto = create
  }}
}}
{auth_dbs}service imap-login {{
  inet_listener imap {{
    {listener_address} = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    {listener_address} = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
{other_services}"""

# Dovecot 2.3.
_CONF_23 = {
    "version_header": "",
    "ssl_files": """\
ssl_cert = <{cert}
ssl_key = <{key}
""",
    "allow_cleartext": "disable_plaintext_auth = no",
    "mail_location": """\
mail_location = maildir:{d}/mail/%u/Maildir
""",
    "one_second": "1 secs",
    "auth_dbs": """\
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
""",
    "listener_address": "address",
    "other_services": """\
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""",
}

# Dovecot 2.4: new names for the same settings, named passdb/userdb blocks, %{user}.
_CONF_24 = {
    "version_header": """\
dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
""",
    "ssl_files": """\
ssl_server_cert_file = {cert}
ssl_server_key_file = {key}
""",
    "allow_cleartext": "auth_allow_cleartext = yes",
    "mail_location": """\
mail_driver = maildir
mail_path = {d}/mail/%{{user}}/Maildir
""",
    "one_second": "1s",
    "auth_dbs": """\
passdb passwd-file {{
  passwd_file_path = {d}/users
  default_password_scheme = PLAIN
}}
userdb static {{
  fields {{
    uid = {uid}
    gid = {gid}
    home = {d}/mail/%{{user}}
  }}
}}
""",
    "listener_address": "listen",
    "other_services": "",
}


def _dovecot_conf(version: tuple[int, int], **values: object) -> str:
    """The config file for Dovecot ``version``: :data:`_CONF` with that version's lines,
    all filled in with ``values`` (d, cert, key, uid, gid, imap, imaps)."""
    lines = _CONF_24 if version >= (2, 4) else _CONF_23
    return _CONF.format(**values, **{k: v.format(**values) for k, v in lines.items()})


class DovecotServer:
    """One private Dovecot process; see the module docstring."""

    _shared: DovecotServer | None = None

    @classmethod
    def shared(cls) -> DovecotServer:
        """A process-wide instance with :data:`DEFAULT_USERS`, stopped at exit."""
        if cls._shared is None or cls._shared.process.poll() is not None:
            cls._shared = cls()
            atexit.register(cls._shared.stop)
        return cls._shared

    def __init__(self, users: dict[str, str] | None = None, startup_timeout: float = 20.0
                 ) -> None:
        binary = _binary()
        self.version = dovecot_version()
        self.users = dict(users or DEFAULT_USERS)
        self.certs = make_test_certs()
        self.ca_file = self.certs.ca
        self.dir = Path(tempfile.mkdtemp(prefix="rebreak-dovecot-"))
        os.chmod(self.dir, 0o755)
        self.uid, self.gid, _ = _mail_user()
        self.imap_port = _free_port()
        self.imaps_port = _free_port()
        for sub in ("run", "state", "mail"):
            (self.dir / sub).mkdir()
        os.chown(self.dir / "mail", self.uid, self.gid)
        (self.dir / "users").write_text(
            "".join(f"{u}:{p}::::::\n" for u, p in self.users.items()))
        for user in self.users:
            self._maildir(user)
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(_dovecot_conf(
            self.version, d=self.dir, cert=self.certs.server.cert, key=self.certs.server.key,
            uid=self.uid, gid=self.gid, imap=self.imap_port, imaps=self.imaps_port))
        self.log = self.dir / "dovecot.log"
        self.process = subprocess.Popen([binary, "-F", "-c", str(self.conf)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float) -> None:
        try:
            server_started(self.process, self.imap_port, timeout, "dovecot",
                           greets=b"* OK", details=self.log_text)
        except RuntimeError:
            self.stop()
            raise

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _maildir(self, user: str, folder: str = "INBOX") -> Path:
        root = self.dir / "mail" / user
        maildir = root / "Maildir"
        parts = [root, maildir]
        if folder != "INBOX":  # Maildir++: a folder is a dot directory
            maildir = maildir / f".{folder}"
            parts.append(maildir)
        for p in (*parts, maildir / "cur", maildir / "new", maildir / "tmp"):
            p.mkdir(exist_ok=True)
            os.chown(p, self.uid, self.gid)
        return maildir

    def deliver(self, user: str, subject: str = "Test message",
                sender: str = "sender@example.org", body: str = "Hello.\n",
                raw: bytes | None = None, folder: str = "INBOX") -> str:
        """Put a message into ``user``'s INBOX Maildir (or ``folder``'s: the configured
        ``Junk``, special use ``\\Junk``, and ``Unbekannt``) (tmp/ then rename to new/, as an
        MDA does); Dovecot reports it to IDLE clients as ``* N EXISTS`` within about a
        second. Returns the file name."""
        if raw is None:
            msg = EmailMessage()
            msg["From"] = sender
            msg["To"] = user
            msg["Subject"] = subject
            msg["Date"] = email.utils.formatdate(time.time())
            msg["Message-ID"] = email.utils.make_msgid(domain="rebreak.test")
            msg.set_content(body)
            raw = msg.as_bytes()
        maildir = self._maildir(user, folder)
        name = f"{time.time_ns()}.P{os.getpid()}Q{id(raw)}.rebreak-test"
        tmp = maildir / "tmp" / name
        tmp.write_bytes(raw)
        os.chown(tmp, self.uid, self.gid)
        os.rename(tmp, maildir / "new" / name)
        return name

    def stop(self) -> None:
        """Stop Dovecot and remove its directory."""
        end_process(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)
