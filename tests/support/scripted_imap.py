"""One scripted IMAP server double, for the session unit tests and the fault suite.

:class:`ScriptedIMAPServer` holds the mailbox (EXISTS, UIDVALIDITY, UIDNEXT), the
accepted password (None: any login succeeds), the capabilities and counters, and builds
one :class:`ScriptedConnection` per connection. A connection follows the server's
``plan`` (one of :data:`FAULTS` per connection, then ``normal``) and can be made to
misbehave by a test (``responsive = False``: reads but never answers; ``push = False``: no
EXISTS during IDLE; ``close()``; ``send()`` any line).

Two ways to run it:

* in memory, on a :class:`~twisted.internet.task.Clock`: :meth:`ScriptedIMAPServer.connect`
  joins a client protocol to a new connection with :func:`twisted.test.iosim.connect` and
  returns the :class:`~twisted.test.iosim.IOPump` that moves the bytes;
* on loopback TCP with the real reactor: :meth:`ScriptedIMAPServer.listen`.

A server can play a real provider (``profile=PROFILES["gmail"]``, see :class:`Profile` and
docs/providers.md): its greeting and capabilities, its connection cap per user with the
exact refusal text, a BYE after a session or token TTL, throttling (``throttled_until``),
silent drops, and ID required before SELECT. ``logins_by_user`` counts logins per user
name; ``passwords`` and ``tokens`` give users their own secrets.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.test import iosim

from .profiles import PROFILES, Profile

__all__ = ["CAPABILITY_FLOOD_LINE", "FAULTS", "PARENS_FLOOD_LINE", "PROFILES", "Folder",
           "Profile", "ScriptedConnection", "ScriptedIMAPServer"]

#: Faults of a connection, one per connection of the plan: what it does, and when.
FAULTS = ("bye-greeting", "bye-login", "bye-idle", "garbage-idle", "long-line-idle",
          "huge-literal-idle", "unknown-tag-idle", "normal",
          # hostile servers (issue 17)
          "banner-greeting", "challenge-flood-login", "fetch-60mb-idle", "exists-flood-idle",
          "big-exists-idle",
          # CPU floods (issue 24): full-length lines that were costly to parse
          "capability-flood-idle", "parens-flood-idle")

#: a 16,369-byte untagged CAPABILITY line of ``A=`` words (25 ms each in a quadratic parse)
CAPABILITY_FLOOD_LINE = b"* CAPABILITY " + b"A= " * 5452 + b"\r\n"
#: a 16,369-byte unknown untagged response of one long list (``parseNestedParens``: 23 ms)
PARENS_FLOOD_LINE = b"* X (" + b"a " * 8180 + b")\r\n"


class _ClientTransport(iosim.FakeTransport):
    """The client's side of an in-memory connection: an abort reads as one."""

    def abortConnection(self) -> None:
        self.disconnectReason = ConnectionAborted()
        super().abortConnection()


class ScriptedConnection(LineOnlyReceiver):
    """The server side of one connection (see the module docstring)."""

    delimiter = b"\r\n"
    MAX_LENGTH = 64 * 1024

    def __init__(self, server: ScriptedIMAPServer) -> None:
        self.server = server
        self.fault = server.plan.pop(0) if server.plan else "normal"
        self.lines: list[str] = []  # what the client sent
        self.responsive = True
        self.push = True  # announce new mail during IDLE
        self.selected = False
        self.idle_tag: str | None = None
        self.entered_idle = False
        self.announced = server.exists
        self.streamed = 0
        self.lost = False
        self.misbehaved = False
        self.user: str | None = None  # logged in as
        self.sent_id = False
        self.pending_auth: str | None = None  # the tag of a failed XOAUTH2 challenge
        self.timers: list[Any] = []
        self.refusing: str | None = None  # every command after login gets this

    # -- connection ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        s = self.server
        s.connections.append(self)
        peer = self.transport.getPeer() if self.transport is not None else None
        self.peer = getattr(peer, "host", None)  # the client's (source) address
        if self.fault == "bye-greeting":
            self.send("* BYE [UNAVAILABLE] maintenance, come back later")
            self.transport.loseConnection()
            return
        if self.fault == "banner-greeting":  # another service on the port
            self.send("SSH-2.0-OpenSSH_9.2p1 internal-db-01.corp.local")
            return
        greeting = s.profile.greeting if s.profile else "scripted server ready"
        self.send(f"* OK [CAPABILITY {self.capabilities()}] {greeting}")

    def capabilities(self) -> str:
        """What this connection advertises now (some servers tell more after login)."""
        profile = self.server.profile
        if self.user is None and profile is not None and profile.pre_login_capabilities:
            return profile.pre_login_capabilities
        return self.server.capabilities

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        for timer in self.timers:
            if timer.active():
                timer.cancel()

    def send(self, line: str | bytes) -> None:
        if isinstance(line, str):
            line = line.encode()
        self.transport.write(line + b"\r\n")

    def close(self) -> None:
        """Close the connection from the server's side."""
        if not self.lost:
            self.transport.loseConnection()

    def lineReceived(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        self.lines.append(line)
        if self.responsive and not self.lost:
            self.handle(line)

    # -- mailbox ------------------------------------------------------------------------

    def announce(self) -> None:
        """Send ``* N EXISTS`` when the count changed since this connection last heard."""
        exists = self.server.exists
        if exists != self.announced:
            self.announced = exists
            self.send(f"* {exists} EXISTS")

    def mailbox_grew(self) -> None:
        if self.selected and self.idle_tag is not None and self.push and not self.lost:
            self.announce()

    # -- commands -----------------------------------------------------------------------

    def handle(self, line: str) -> None:
        if self.pending_auth is not None:  # the client's answer to the error challenge
            tag, self.pending_auth = self.pending_auth, None
            self.send(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)")
            return
        if self.idle_tag is not None:
            tag, self.idle_tag = self.idle_tag, None
            ok = line.strip().upper() == "DONE"
            self.send(f"{tag} OK IDLE terminated" if ok else f"{tag} BAD expected DONE")
            return
        if line.strip().upper() == "DONE":
            return  # an IDLE that already ended
        tag, _, rest = line.partition(" ")
        command, _, args = rest.partition(" ")
        command = command.upper()
        s = self.server
        s.commands.append(command.encode())
        handler = getattr(self, "_do_" + command.lower(), None)
        if handler is None or (command == "IDLE" and not s.idle_enabled):
            self.send(f"{tag} BAD unknown command")
        else:
            handler(tag, args)

    def _do_capability(self, tag: str, args: str) -> None:
        self.send(f"* CAPABILITY {self.capabilities()}")
        self.send(f"{tag} OK done")

    def _do_login(self, tag: str, args: str) -> None:
        if self.server.echo_login:
            self.send(f"{tag} NO [AUTHENTICATIONFAILED] cannot log in with {args}")
            return
        user, _, password = args.partition(" ")
        self._logged_in(tag, password.strip('"'), user.strip('"'))

    def _do_authenticate(self, tag: str, args: str) -> None:
        mechanism, _, initial = args.partition(" ")
        if self.server.echo_login:  # what it got, as given and decoded
            try:
                decoded = base64.b64decode(initial).decode("utf-8", "replace")
            except ValueError:
                decoded = ""
            self.send(f"{tag} NO [AUTHENTICATIONFAILED] bad payload {initial} "
                      f"({decoded.replace(chr(0), ' ').replace(chr(1), ' ')})")
            return
        if self.fault == "challenge-flood-login":  # continuations, as fast as read
            challenge = b"+ " + base64.b64encode(b'{"status":"401"}' + b" " * 3000) + b"\r\n"
            self._stream(challenge * 16)
            return
        if mechanism.upper() == "XOAUTH2":
            self._xoauth2(tag, initial)
            return
        try:
            pieces = base64.b64decode(initial).split(b"\0")
            password, user = pieces[-1].decode(), pieces[-2].decode()
        except (ValueError, IndexError):
            password = user = None
        self._logged_in(tag, password if mechanism.upper() == "PLAIN" else None, user)

    def _xoauth2(self, tag: str, initial: str) -> None:
        """``user=<u>\x01auth=Bearer <token>\x01\x01``: a token of ``server.tokens[u]``
        (any token when the user has none) logs in; else the JSON error challenge, then
        NO after the client's empty answer (as Gmail and Microsoft do)."""
        s = self.server
        try:
            fields = dict(f.split("=", 1) for f in
                          base64.b64decode(initial).decode().split("\x01") if "=" in f)
        except ValueError:
            fields = {}
        user, token = fields.get("user"), fields.get("auth", "").removeprefix("Bearer ")
        wanted = s.tokens.get(user or "")
        if wanted is not None and token != wanted:
            s.logins += 1
            s.logins_by_user[user or ""] += 1
            s.oauth_rejections += 1
            challenge = json.dumps({"status": "401", "schemes": "bearer",
                                    "scope": "https://mail.example/"})
            self.pending_auth = tag
            self.send("+ " + base64.b64encode(challenge.encode()).decode())
            return
        self._logged_in(tag, None, user, oauth=True)

    def _logged_in(self, tag: str, password: str | None, user: str | None = None, *,
                   oauth: bool = False) -> None:
        s = self.server
        s.logins += 1
        s.logins_by_user[user or ""] += 1
        s.login_times.append(s.clock.seconds())
        if not oauth:
            wanted = s.passwords.get(user or "", s.password)
            if wanted is not None and password != wanted:
                self.send(f"{tag} {s.login_reply}")
                return
        if s.clock.seconds() < s.throttled_until and s.profile is not None:
            self.send(f"{tag} {s.profile.throttle_reply}")
            return
        profile = s.profile
        if profile is not None and profile.max_connections is not None and (
                s.logged_in(user) >= profile.max_connections):
            if profile.cap_reply.startswith("BAD"):  # Microsoft: login OK, then refusals
                self.send(f"{tag} OK LOGIN completed.")
                self.refusing = profile.cap_reply
            else:
                self.send(f"{tag} {profile.cap_reply}")
                if profile.cap_closes:
                    self.transport.loseConnection()
            return
        self.user = user
        self.send(f"{tag} OK [CAPABILITY {s.capabilities}] logged in")
        if profile is not None:
            self._arm(profile, oauth)
        if self.fault == "bye-login":
            self.send("* BYE [UNAVAILABLE] too many connections, closing")
            self.transport.loseConnection()

    def _arm(self, profile: Profile, oauth: bool) -> None:
        """The ends a provider has in store for a logged-in connection."""
        later = self.server.clock.callLater
        ttl = profile.token_ttl if oauth else None
        for after, what in ((profile.session_ttl, profile.session_bye),
                            (ttl, profile.token_bye), (profile.drop_after, None)):
            if after is not None:
                self.timers.append(later(after, self._end, what))

    def _end(self, bye: str | None) -> None:
        if self.lost:
            return
        self.server.ends.append((self.server.clock.seconds(), bye or "silent drop"))
        if bye:
            self.send(bye)
        self.transport.loseConnection()

    def _do_id(self, tag: str, args: str) -> None:
        self.sent_id = True
        self.server.ids.append(args)
        if self.server.id_reply is not None:
            self.send(f"{tag} {self.server.id_reply}")
            return
        self.send('* ID ("name" "scripted")')
        self.send(f"{tag} OK ID completed")

    def _do_select(self, tag: str, args: str) -> None:
        s = self.server
        if self.refusing:
            self.send(f"{tag} {self.refusing}")
            return
        if s.profile is not None and s.profile.require_id and not self.sent_id:
            self.send(f"{tag} {s.profile.id_refusal}")
            return
        self.selected = True
        self.announced = s.exists
        self.send(f"* {s.exists} EXISTS")
        self.send(f"* OK [UIDVALIDITY {s.uidvalidity}] UIDs valid")
        if s.select_uidnext:
            self.send(f"* OK [UIDNEXT {s.uidnext}] Predicted next UID")
        self.send(f"{tag} OK [READ-WRITE] Select completed")
        while s.after_select:
            s.after_select.pop(0)()

    def _do_status(self, tag: str, args: str) -> None:
        s = self.server
        if not s.status_enabled:
            self.send(f"{tag} BAD unknown command")
            return
        mailbox, _, items = args.rpartition(" (")
        folder = s.folders.get(mailbox.strip('"'))
        if folder is not None:
            values = folder.status(s)
        elif mailbox.strip('"').upper() == "INBOX":
            values = {"UIDNEXT": s.uidnext, "UIDVALIDITY": s.uidvalidity,
                      "MESSAGES": s.exists}
        else:
            self.send(f"{tag} NO [NONEXISTENT] Mailbox does not exist")
            return
        wanted = items.strip("()").upper().split()
        answer = " ".join(f"{k} {values[k]}" for k in wanted if k in values)
        self.send(f"* STATUS {mailbox} ({answer})")
        self.send(f"{tag} OK STATUS completed")

    def _do_list(self, tag: str, args: str) -> None:
        """``LIST [(SPECIAL-USE)] "" pattern``: ``*`` lists every folder, another
        pattern the folder of that name (as listed: modified UTF-7)."""
        s = self.server
        special = args.upper().startswith("(SPECIAL-USE)")
        pattern = args.rpartition(" ")[2].strip('"')
        for raw, folder in s.folders.items():
            if pattern not in ("*", raw) or (special and not folder.attributes):
                continue
            quoted = raw if raw.isalnum() else '"' + raw + '"'
            self.send(f"* LIST ({' '.join(folder.attributes)}) \".\" {quoted}")
        self.send(f"{tag} OK LIST completed")

    _do_examine = _do_select

    def _do_idle(self, tag: str, args: str) -> None:
        s = self.server
        if s.refuse_idle:
            s.refuse_idle -= 1
            self.send(f"{tag} NO [UNAVAILABLE] IDLE not possible right now")
            return
        self.idle_tag = tag
        self.send("+ idling")
        self.entered_idle = True
        s.fire_idle_waiters()
        if s.end_idle_after_continuation:
            s.end_idle_after_continuation = False
            self.send(f"{tag} OK IDLE ended by the server")
            self.idle_tag = None
        elif self.fault.endswith("-idle"):
            s.clock.callLater(0, self.misbehave)

    def _do_noop(self, tag: str, args: str) -> None:
        self.announce()
        self.send(f"{tag} OK NOOP completed")

    def _do_logout(self, tag: str, args: str) -> None:
        self.server.logouts += 1
        self.send("* BYE logging out")
        self.send(f"{tag} OK Logout completed")
        self.transport.loseConnection()

    # -- faults -------------------------------------------------------------------------

    def misbehave(self) -> None:
        if self.lost or self.misbehaved:
            return
        self.misbehaved = True  # once per connection, however often IDLE is entered
        fault = self.fault
        if fault == "bye-idle":
            self.send("* BYE [UNAVAILABLE] server shutting down")
            self.transport.loseConnection()
        elif fault == "garbage-idle":
            self.transport.write(b"\x16\x03\x01\x00\xff\xfe binary garbage \x07\r\n")
        elif fault == "unknown-tag-idle":
            self.send("Z999 OK completed something nobody asked for")
        elif fault == "huge-literal-idle":
            self.transport.write(b"* 1 FETCH (BODY[] {4000000000}\r\n")
            self._stream(b"\x00" * 65536)
        elif fault == "long-line-idle":
            self.transport.write(b"* OK ")
            self._stream(b"x" * 65536)
        elif fault == "fetch-60mb-idle":
            self.transport.write(b"* 1 FETCH (BODY[] {60000000}\r\n")
            self._stream(b"m" * 65536)
        elif fault == "exists-flood-idle":
            self._stream(self._rising_exists)
        elif fault == "big-exists-idle":
            self.send("* 4294967296 EXISTS")
        elif fault == "capability-flood-idle":
            self._stream(CAPABILITY_FLOOD_LINE * 4)
        elif fault == "parens-flood-idle":
            self._stream(PARENS_FLOOD_LINE * 4)

    def _rising_exists(self) -> bytes:
        """The next 1,000 lines of an EXISTS flood (``* N EXISTS``, N rising)."""
        start = self.server.exists + 1
        self.server.exists += 1000
        return b"".join(b"* %d EXISTS\r\n" % n for n in range(start, start + 1000))

    def _stream(self, chunk: bytes | Any) -> None:
        """Write ``chunk`` (bytes, or a callable giving the next chunk) repeatedly as fast
        as the client reads (a pull producer) until ``server.stream_limit`` bytes are out
        or the connection is gone."""
        proto = self

        class Producer:
            def resumeProducing(self) -> None:
                if proto.lost or proto.streamed >= proto.server.stream_limit:
                    proto.transport.unregisterProducer()
                    return
                data = chunk() if callable(chunk) else chunk
                proto.streamed += len(data)
                proto.transport.write(data)

            def stopProducing(self) -> None:
                pass

        self.transport.registerProducer(Producer(), False)


class Folder:
    """A folder besides INBOX: its LIST attributes and numbers. ``opened``: whether a
    client has opened it (a server with ``unstable_status_uidvalidity`` answers a new
    UIDVALIDITY to each STATUS until then)."""

    def __init__(self, attributes: tuple[str, ...] = (), exists: int = 0,
                 uidvalidity: int = 2000, uidnext: int = 1, opened: bool = False) -> None:
        self.attributes = attributes
        self.exists = exists
        self.uidvalidity = uidvalidity
        self.uidnext = uidnext
        self.opened = opened

    def deliver(self, count: int = 1) -> None:
        self.exists += count
        self.uidnext += count

    def status(self, server: ScriptedIMAPServer) -> dict[str, int]:
        profile = server.profile
        if profile is not None and profile.unstable_status_uidvalidity and not self.opened:
            self.uidvalidity += 1
        return {"UIDNEXT": self.uidnext, "UIDVALIDITY": self.uidvalidity,
                "MESSAGES": self.exists}


class ScriptedIMAPServer(Factory):
    """See the module docstring. ``clock``: the reactor (real TCP) or Clock (in memory)
    that schedules the faults. Counters: ``logins``, ``logouts``, ``commands`` (command
    names as bytes), ``connections``."""

    noisy = False

    def __init__(self, clock: Any, plan: list[str] | None = None, *,
                 password: str | None = None,
                 capabilities: str | None = None,
                 stream_limit: int = 32 * 1024 * 1024,
                 profile: Profile | None = None) -> None:
        self.clock = clock
        self.profile = profile
        if capabilities is None:
            capabilities = (profile.capabilities if profile is not None
                            else "IMAP4rev1 IDLE AUTH=PLAIN SASL-IR")
        self.plan = list(plan or [])
        self.password = password
        self.login_reply = "NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)"
        self.capabilities = capabilities
        self.stream_limit = stream_limit
        self.exists = 3
        self.uidvalidity = 1000
        self.uidnext = 4
        self.end_idle_after_continuation = False
        #: SELECT tells UIDNEXT; STATUS is answered; the next n IDLE commands get NO
        self.select_uidnext = profile.select_uidnext if profile is not None else True
        #: folders besides INBOX, by name as listed (LIST, STATUS)
        self.folders: dict[str, Folder] = {}
        #: called once after each SELECT was answered (a delivery "in between")
        self.after_select: list[Any] = []
        self.status_enabled = True
        #: a login answered NO with what the client sent, as given and decoded (a server
        #: that echoes: the secret must still be masked)
        self.echo_login = False
        self.refuse_idle = 0
        self.logins = 0
        self.logouts = 0
        self.logins_by_user: Counter[str] = Counter()
        self.login_times: list[float] = []
        self.oauth_rejections = 0
        self.passwords: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.throttled_until = 0.0
        self.ids: list[str] = []
        self.id_reply: str | None = None  # e.g. "BAD not today"; None: OK
        self.ends: list[tuple[float, str]] = []
        self.other_clients: Counter[str] = Counter()  # connections of other programs
        self.commands: list[bytes] = []
        self.connections: list[ScriptedConnection] = []
        self._port: Any = None
        self._idle_waiters: list[tuple[int, defer.Deferred]] = []

    def buildProtocol(self, addr: Any) -> ScriptedConnection:
        conn = ScriptedConnection(self)
        conn.factory = self
        return conn

    @property
    def idle_enabled(self) -> bool:
        """Advertise and accept IDLE; without it, new mail is told only in NOOP answers."""
        return "IDLE" in self.capabilities.split()

    @idle_enabled.setter
    def idle_enabled(self, enabled: bool) -> None:
        words = [w for w in self.capabilities.split() if w != "IDLE"]
        if enabled:
            words.insert(1, "IDLE")
        self.capabilities = " ".join(words)

    def logged_in(self, user: str | None) -> int:
        """Live connections logged in as ``user``."""
        return self.other_clients[user or ""] + sum(
            1 for c in self.connections if c.user == user and not c.lost)

    @property
    def current(self) -> ScriptedConnection:
        return self.connections[-1]

    # -- the mailbox --------------------------------------------------------------------

    def deliver(self, count: int = 1) -> None:
        """New messages: idling connections hear ``* N EXISTS`` at once, the others at
        their next NOOP (as servers without IDLE do)."""
        self.exists += count
        self.uidnext += count
        for conn in self.connections:
            conn.mailbox_grew()

    def expunge(self, seq: int) -> None:
        self.exists -= 1
        for conn in self.connections:
            if conn.selected and not conn.lost:
                conn.announced -= 1
                conn.send(f"* {seq} EXPUNGE")

    # -- running ------------------------------------------------------------------------

    def connect(self, client: Any, clock: Any = None) -> iosim.IOPump:
        """Join ``client`` (a protocol) to a new in-memory connection; the returned pump
        moves the bytes (``flush()``), advancing ``clock`` by 0 on each move."""
        conn = self.buildProtocol(None)
        peer = IPv4Address("TCP", "127.0.0.1", 143)
        return iosim.connect(conn, iosim.FakeTransport(conn, isServer=True),
                             client, _ClientTransport(client, isServer=False,
                                                      peerAddress=peer),
                             greet=False, clock=self.clock if clock is None else clock)

    def listen(self) -> int:
        """Listen on loopback TCP (``clock`` is the reactor); returns the port number."""
        self._port = self.clock.listenTCP(0, self, interface="127.0.0.1")
        return self._port.getHost().port

    def idling(self) -> int:
        return sum(1 for c in self.connections if c.idle_tag is not None and not c.lost)

    def wait_for_idle(self, n: int = 1) -> defer.Deferred:
        """Fires once ``n`` connections have entered IDLE in total."""
        d: defer.Deferred = defer.Deferred()
        self._idle_waiters.append((n, d))
        self.fire_idle_waiters()
        return d

    def fire_idle_waiters(self) -> None:
        """Fire the ``wait_for_idle`` Deferreds whose count of IDLE entries is reached."""
        entered = sum(1 for c in self.connections if c.entered_idle)
        keep = []
        for n, d in self._idle_waiters:
            if d.called:
                continue
            if entered >= n:
                d.callback(entered)
            else:
                keep.append((n, d))
        self._idle_waiters = keep

    def stop(self) -> defer.Deferred:
        ds = []
        if self._port is not None:
            ds.append(defer.maybeDeferred(self._port.stopListening))
        for c in self.connections:
            if not c.lost and c.transport is not None:
                c.transport.abortConnection()
        for _n, d in self._idle_waiters:
            if not d.called:
                d.cancel()
        return defer.gatherResults(ds, consumeErrors=True)
