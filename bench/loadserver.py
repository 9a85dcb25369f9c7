"""Load IMAP server: one asyncio process that holds 10,000+ IDLE sessions on 127.0.0.1.

It accepts any login and speaks just what an IDLE client sends: greeting with
``CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN SASL-IR`` (plus ``STARTTLS`` on the plain port when a
certificate is given), CAPABILITY, LOGIN, AUTHENTICATE PLAIN / XOAUTH2 (SASL-IR and
continuation), SELECT/EXAMINE (``* N EXISTS``, ``[UIDVALIDITY n]``, ``[UIDNEXT n]``), IDLE
(``+ idling``) / DONE, NOOP, LOGOUT (BYE + OK), CLOSE/UNSELECT, ID, ENABLE and STARTTLS;
LIST (two extra folders, ``Junk`` with ``\\Junk`` and ``Unbekannt``) and STATUS.
Literals (``{n}`` and ``{n+}``) are accepted in any command.

Control: a line protocol on a TCP port of 127.0.0.1:

    inject <username>   → ok <username> <exists> <unix time>   (pushes "* N+1 EXISTS")
                          err <username> not-selected
    deliver <username>  → ok <username> <exists> <unix time>   (a new message, connected or
                          not: the next SELECT shows it; a selected connection hears
                          "* N+1 EXISTS")
    stats               → one JSON object (connections, idling, logins, commands by kind...)
    injections          → JSON list of [username, exists, unix time]
    kick <username>     → ok|err   (drops that user's connection)
    bye <username>      → ok|err   (``* BYE`` to that user's connection, then closes it)
    silent <username>   → ok|err   (that connection stops reading and writing, stays open:
                          a black-holed socket; aborted when the user logs in again)
    deaf <username>     → ok|err   (that connection accepts IDLE but never sends EXISTS and
                          never answers DONE; aborted when the user logs in again)
    watched             → JSON list of the users with a selected connection that is neither
                          silent nor deaf
    logins              → JSON object {username: [unix time of each login, ...]}
    quit                → bye, and the server stops

Run: ``python -m bench.loadserver --port 0 --tls-port 0 --cert server.pem --key server.key``;
it prints one JSON line ``{"ready": true, "port": ..., "tls_port": ..., "control_port": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import re
import resource
import ssl
import time
from collections import Counter
from typing import IO

from .loopback import announce_and_wait, parser, run

__all__ = ["LoadServer", "main"]

CAPABILITIES = b"IMAP4rev1 IDLE AUTH=PLAIN AUTH=XOAUTH2 SASL-IR"
MAX_LINE = 64 * 1024
MAX_LITERAL = 1024 * 1024
#: login times kept per user (``logins`` control command)
MAX_LOGIN_TIMES = 10_000
UIDVALIDITY = 1_700_000_000
_LITERAL = re.compile(rb"\{(\d{1,9})(\+?)\}$")
#: the folders LIST answers besides INBOX: (name, extra attributes)
_FOLDERS = ((b"Junk", b" \\Junk"), (b"Unbekannt", b""))


def tokenize(text: bytes) -> list[bytes]:
    """Atoms and quoted strings of one command line (parenthesised lists stay atoms)."""
    out: list[bytes] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == 0x20:
            i += 1
        elif c == 0x22:  # "quoted"
            i += 1
            chunk = bytearray()
            while i < n and text[i] != 0x22:
                if text[i] == 0x5C and i + 1 < n:
                    i += 1
                chunk.append(text[i])
                i += 1
            out.append(bytes(chunk))
            i += 1
        else:
            j = text.find(b" ", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
    return out


def _plain_user(response: bytes) -> str | None:
    try:
        fields = base64.b64decode(response, validate=True).split(b"\0")
    except (binascii.Error, ValueError):
        return None
    if len(fields) != 3 or not fields[1]:
        return None
    return fields[1].decode("utf-8", "replace")


def _xoauth2_user(response: bytes) -> str | None:
    try:
        text = base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        return None
    for part in text.split(b"\x01"):
        if part.startswith(b"user="):
            return part[5:].decode("utf-8", "replace")
    return None


class ImapConnection(asyncio.Protocol):
    """One client connection."""

    __slots__ = ("auth", "buf", "deaf", "idle_tag", "literal", "parts", "selected", "server",
                 "silent", "tls", "transport", "user")

    def __init__(self, server: LoadServer, tls: bool) -> None:
        self.server = server
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.user: str | None = None
        self.selected = False
        self.idle_tag: bytes | None = None
        self.auth: tuple[bytes, bytes] | None = None  # (tag, mechanism) awaiting a response
        self.literal = 0
        self.parts: list[bytes] = []
        self.silent = False  # fault: reads nothing, writes nothing, stays open
        self.deaf = False  # fault: IDLE without EXISTS, DONE never answered

    @property
    def watching(self) -> bool:
        """Selected, open, and neither silent nor deaf: new mail reaches the client."""
        return (self.transport is not None and self.selected and not self.silent
                and not self.deaf)

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        s = self.server
        s.accepted += 1
        s.conns.add(self)
        if self.tls:
            s.tls_accepted += 1
        s.peak = max(s.peak, len(s.conns))
        caps = s.caps(self.tls)
        self.write(b"* OK [CAPABILITY " + caps + b"] bench IMAP ready\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        s = self.server
        s.conns.discard(self)
        if self.idle_tag is not None:
            s.idling -= 1
            self.idle_tag = None
        if self.selected:
            s.selected -= 1
            self.selected = False
        if self.user is not None and s.by_user.get(self.user) is self:
            del s.by_user[self.user]
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while self.transport is not None:
            if self.literal:
                if len(buf) < self.literal:
                    return
                self.parts.append(bytes(buf[: self.literal]))
                del buf[: self.literal]
                self.literal = 0
                continue
            i = buf.find(b"\n")
            if i < 0:
                if len(buf) > MAX_LINE:
                    self.bad_and_close(b"line too long")
                return
            line = bytes(buf[:i]).rstrip(b"\r")
            del buf[: i + 1]
            if self.idle_tag is not None:
                self.idle_line(line)
                continue
            if self.auth is not None:
                self.auth_line(line)
                continue
            m = _LITERAL.search(line)
            if m:
                size = int(m.group(1))
                if size > MAX_LITERAL:
                    self.bad_and_close(b"literal too large")
                    return
                self.parts.extend(tokenize(line[: m.start()]))
                self.literal = size
                if not m.group(2):
                    self.write(b"+ Ready for literal data\r\n")
                if size == 0:
                    self.parts.append(b"")
                continue
            self.parts.extend(tokenize(line))
            tokens, self.parts = self.parts, []
            if tokens:
                self.command(tokens)

    # -- helpers -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.silent:
            self.transport.write(data)

    def bad_and_close(self, text: bytes) -> None:
        self.write(b"* BYE " + text + b"\r\n")
        if self.transport is not None:
            self.transport.close()

    def idle_line(self, line: bytes) -> None:
        tag = self.idle_tag
        if self.deaf:
            return  # nothing answered, DONE neither: the client's deadline has to notice
        if line.strip().upper() != b"DONE":
            self.write(b"* BAD expected DONE\r\n")
            return
        self.server.commands["DONE"] += 1
        self.idle_tag = None
        self.server.idling -= 1
        self.write(tag + b" OK IDLE terminated\r\n")

    def auth_line(self, line: bytes) -> None:
        tag, mech = self.auth  # type: ignore[misc]
        self.auth = None
        if line.strip() == b"*":
            self.write(tag + b" BAD AUTHENTICATE cancelled\r\n")
            return
        self.finish_auth(tag, mech, line.strip())

    def finish_auth(self, tag: bytes, mech: bytes, response: bytes) -> None:
        user = _plain_user(response) if mech == b"PLAIN" else _xoauth2_user(response)
        if user is None:
            self.write(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials\r\n")
            return
        self.logged_in(user)
        self.write(tag + b" OK [CAPABILITY " + self.server.caps(self.tls, True)
                   + b"] AUTHENTICATE completed\r\n")

    def logged_in(self, user: str) -> None:
        s = self.server
        s.logins += 1
        self.user = user
        times = s.login_times.setdefault(user, [])
        if len(times) < MAX_LOGIN_TIMES:
            times.append(time.time())
        previous = s.by_user.get(user)
        if (previous is not None and previous is not self and previous.transport is not None
                and (previous.silent or previous.deaf)):
            previous.transport.abort()  # the client gave it up: it logged in anew
        s.by_user[user] = self
        s.exists.setdefault(user, s.initial_exists)

    # -- commands ----------------------------------------------------------------------
    def command(self, tokens: list[bytes]) -> None:
        tag = tokens[0]
        if len(tokens) < 2:
            self.write(tag + b" BAD missing command\r\n")
            return
        cmd = tokens[1].upper()
        args = tokens[2:]
        s = self.server
        s.commands[cmd.decode("ascii", "replace")] += 1
        handler = _HANDLERS.get(cmd)
        if handler is None:
            self.write(tag + b" BAD unknown command\r\n")
            return
        handler(self, tag, args)

    def do_capability(self, tag: bytes, args: list[bytes]) -> None:
        caps = self.server.caps(self.tls, self.user is not None)
        self.write(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK CAPABILITY completed\r\n")

    def do_noop(self, tag: bytes, args: list[bytes]) -> None:
        self.write(tag + b" OK NOOP completed\r\n")

    def do_login(self, tag: bytes, args: list[bytes]) -> None:
        if len(args) != 2:
            self.write(tag + b" BAD LOGIN needs user and password\r\n")
            return
        self.logged_in(args[0].decode("utf-8", "replace"))
        self.write(tag + b" OK [CAPABILITY " + self.server.caps(self.tls, True)
                   + b"] LOGIN completed\r\n")

    def do_authenticate(self, tag: bytes, args: list[bytes]) -> None:
        if not args or args[0].upper() not in (b"PLAIN", b"XOAUTH2"):
            self.write(tag + b" NO [CANNOT] unsupported mechanism\r\n")
            return
        mech = args[0].upper()
        if len(args) > 1:
            self.finish_auth(tag, mech, b"" if args[1] == b"=" else args[1])
            return
        self.auth = (tag, mech)
        self.write(b"+ \r\n")

    def do_select(self, tag: bytes, args: list[bytes], readonly: bool = False) -> None:
        if self.user is None:
            self.write(tag + b" NO not authenticated\r\n")
            return
        s = self.server
        n = s.exists[self.user]
        if not self.selected:
            self.selected = True
            s.selected += 1
        s.by_user[self.user] = self
        mode = b"[READ-ONLY]" if readonly else b"[READ-WRITE]"
        self.write(
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] ok\r\n"
            b"* %d EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY %d] UIDs valid\r\n"
            b"* OK [UIDNEXT %d] Predicted next UID\r\n%s OK %s SELECT completed\r\n"
            % (n, UIDVALIDITY, n + 1, tag, mode))

    def do_examine(self, tag: bytes, args: list[bytes]) -> None:
        self.do_select(tag, args, readonly=True)

    def do_unselect(self, tag: bytes, args: list[bytes]) -> None:
        if self.selected:
            self.selected = False
            self.server.selected -= 1
        self.write(tag + b" OK done\r\n")

    def do_idle(self, tag: bytes, args: list[bytes]) -> None:
        if self.user is None:
            self.write(tag + b" NO not authenticated\r\n")
            return
        self.idle_tag = tag
        self.server.idling += 1
        self.write(b"+ idling\r\n")

    def do_logout(self, tag: bytes, args: list[bytes]) -> None:
        self.write(b"* BYE bench IMAP logging out\r\n" + tag + b" OK LOGOUT completed\r\n")
        if self.transport is not None:
            self.transport.close()

    def do_list(self, tag: bytes, args: list[bytes]) -> None:
        """Two extra folders (issue 19): ``Junk`` (special use ``\\Junk``) and
        ``Unbekannt``; ``LIST "" "*"`` lists both, ``LIST "" <name>`` that one."""
        pattern = args[-1] if args else b""
        lines = b"".join(b'* LIST (\\HasNoChildren%s) "/" %s\r\n' % (attrs, name)
                         for name, attrs in _FOLDERS if pattern in (b"*", name))
        self.write(lines + tag + b" OK LIST completed\r\n")

    def do_status(self, tag: bytes, args: list[bytes]) -> None:
        name = args[0] if args else b""
        if name not in (b"INBOX", *(f for f, _ in _FOLDERS)):
            self.write(tag + b" NO [NONEXISTENT] no such mailbox\r\n")
            return
        self.write(b"* STATUS %s (MESSAGES 0 UIDNEXT 1 UIDVALIDITY %d)\r\n%s OK STATUS "
                   b"completed\r\n" % (name, UIDVALIDITY, tag))

    def do_id(self, tag: bytes, args: list[bytes]) -> None:
        self.write(b'* ID ("name" "bench")\r\n' + tag + b" OK ID completed\r\n")

    def do_enable(self, tag: bytes, args: list[bytes]) -> None:
        self.write(b"* ENABLED\r\n" + tag + b" OK ENABLE completed\r\n")

    def do_starttls(self, tag: bytes, args: list[bytes]) -> None:
        ctx = self.server.ssl_context
        if ctx is None or self.tls:
            self.write(tag + b" BAD STARTTLS not available\r\n")
            return
        self.write(tag + b" OK Begin TLS negotiation now\r\n")
        self.buf.clear()
        self.tls = True
        task = asyncio.get_running_loop().create_task(self._upgrade(ctx))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _upgrade(self, ctx: ssl.SSLContext) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            new = await asyncio.get_running_loop().start_tls(
                transport, self, ctx, server_side=True, ssl_handshake_timeout=30)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError):
            transport.abort()
            return
        self.transport = new  # type: ignore[assignment]
        self.server.tls_accepted += 1


_HANDLERS = {
    b"CAPABILITY": ImapConnection.do_capability,
    b"NOOP": ImapConnection.do_noop,
    b"LOGIN": ImapConnection.do_login,
    b"AUTHENTICATE": ImapConnection.do_authenticate,
    b"SELECT": ImapConnection.do_select,
    b"EXAMINE": ImapConnection.do_examine,
    b"CLOSE": ImapConnection.do_unselect,
    b"UNSELECT": ImapConnection.do_unselect,
    b"IDLE": ImapConnection.do_idle,
    b"LOGOUT": ImapConnection.do_logout,
    b"ID": ImapConnection.do_id,
    b"LIST": ImapConnection.do_list,
    b"STATUS": ImapConnection.do_status,
    b"ENABLE": ImapConnection.do_enable,
    b"STARTTLS": ImapConnection.do_starttls,
}


class LoadServer:
    """State shared by all connections: the sessions by user, mailbox sizes, counters."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, initial_exists: int = 3,
                 injection_log: IO[str] | None = None) -> None:
        self.ssl_context = ssl_context
        self.initial_exists = initial_exists
        self.injection_log = injection_log
        self.conns: set[ImapConnection] = set()
        self.by_user: dict[str, ImapConnection] = {}
        self.exists: dict[str, int] = {}
        self.login_times: dict[str, list[float]] = {}
        self.commands: Counter[str] = Counter()
        self.injections: list[tuple[str, int, float]] = []
        self.tasks: set[asyncio.Task] = set()
        self.accepted = self.tls_accepted = self.logins = 0
        self.idling = self.selected = self.peak = 0
        self.inject_misses = 0
        self.started = time.time()

    def caps(self, tls: bool, authenticated: bool = False) -> bytes:
        if self.ssl_context is not None and not tls and not authenticated:
            return CAPABILITIES + b" STARTTLS"
        return CAPABILITIES

    def protocol(self, tls: bool):
        return lambda: ImapConnection(self, tls)

    def inject(self, user: str) -> tuple[int, float] | None:
        """Push ``* N+1 EXISTS`` to ``user``'s selected connection; (N+1, wall time)."""
        conn = self.by_user.get(user)
        if conn is None or conn.transport is None or not conn.selected:
            self.inject_misses += 1
            return None
        n = self.exists[user] + 1
        self.exists[user] = n
        now = time.time()
        conn.write(b"* %d EXISTS\r\n" % n)
        self.injections.append((user, n, now))
        if self.injection_log is not None:
            self.injection_log.write(f"{now:.6f} {user} {n}\n")
            self.injection_log.flush()
        return n, now

    def deliver(self, user: str) -> tuple[int, float]:
        """A new message for ``user`` whether or not a session watches (UIDNEXT moves);
        (its count, the wall time it was stored)."""
        n = self.exists.get(user, self.initial_exists) + 1
        self.exists[user] = n
        now = time.time()
        conn = self.by_user.get(user)
        if conn is not None and conn.watching:
            conn.write(b"* %d EXISTS\r\n" % n)
        return n, now

    def kick(self, user: str) -> bool:
        conn = self.by_user.get(user)
        if conn is None or conn.transport is None:
            return False
        conn.transport.abort()
        return True

    def fault(self, verb: str, user: str) -> bool:
        """``bye``, ``silent`` or ``deaf`` on ``user``'s current connection."""
        conn = self.by_user.get(user)
        if conn is None or conn.transport is None or conn.silent or conn.deaf:
            return False
        if verb == "bye":
            conn.write(b"* BYE [UNAVAILABLE] bench server going away\r\n")
            conn.transport.close()
        elif verb == "silent":
            conn.silent = True
            conn.transport.pause_reading()
        else:
            conn.deaf = True
        return True

    def watched(self) -> list[str]:
        return [user for user, conn in self.by_user.items() if conn.watching]

    def stats(self) -> dict:
        return {
            "connections": len(self.conns),
            "idling": self.idling,
            "selected": self.selected,
            "users": len(self.by_user),
            "accepted": self.accepted,
            "tls_accepted": self.tls_accepted,
            "peak_connections": self.peak,
            "logins": self.logins,
            "commands": dict(self.commands),
            "injections": len(self.injections),
            "inject_misses": self.inject_misses,
            "uptime": round(time.time() - self.started, 3),
        }


async def _control(server: LoadServer, stop: asyncio.Event, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
    try:
        for _ in range(10_000_000):
            line = await reader.readline()
            if not line:
                break
            words = line.decode("utf-8", "replace").split()
            if not words:
                continue
            verb = words[0].lower()
            if verb == "inject" and len(words) == 2:
                got = server.inject(words[1])
                if got is None:
                    reply = f"err {words[1]} not-selected\n"
                else:
                    reply = f"ok {words[1]} {got[0]} {got[1]:.6f}\n"
            elif verb == "deliver" and len(words) == 2:
                n, at = server.deliver(words[1])
                reply = f"ok {words[1]} {n} {at:.6f}\n"
            elif verb == "stats":
                reply = json.dumps(server.stats()) + "\n"
            elif verb == "injections":
                reply = json.dumps(server.injections) + "\n"
            elif verb == "kick" and len(words) == 2:
                reply = "ok\n" if server.kick(words[1]) else "err\n"
            elif verb in ("bye", "silent", "deaf") and len(words) == 2:
                reply = "ok\n" if server.fault(verb, words[1]) else "err\n"
            elif verb == "watched":
                reply = json.dumps(server.watched()) + "\n"
            elif verb == "logins":
                reply = json.dumps(server.login_times) + "\n"
            elif verb == "quit":
                writer.write(b"bye\n")
                await writer.drain()
                stop.set()
                break
            else:
                reply = "err unknown command\n"
            writer.write(reply.encode())
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        pass  # a closed control connection, or the server stopping
    finally:
        writer.close()


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    # TLS 1.3 session tickets sent after the handshake (OpenSSL's default is 2); for
    # attributing client memory only (bench.tlscost): real servers send them
    ctx.num_tickets = int(os.environ.get("BENCH_TLS_TICKETS", "2"))
    return ctx


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    ctx = server_ssl_context(args.cert, args.key) if args.cert else None
    log = open(args.injection_log, "a", encoding="utf-8") if args.injection_log else None
    server = LoadServer(ctx, args.initial_exists, log)
    stop = asyncio.Event()
    listeners = [await loop.create_server(server.protocol(False), args.host, args.port,
                                          backlog=args.backlog, reuse_address=True)]
    ready = {"ready": True, "host": args.host, "port": listeners[0].sockets[0].getsockname()[1]}
    if ctx is not None and args.tls_port >= 0:
        tls = await loop.create_server(server.protocol(True), args.host, args.tls_port,
                                       ssl=ctx, backlog=args.backlog, reuse_address=True,
                                       ssl_handshake_timeout=30)
        listeners.append(tls)
        ready["tls_port"] = tls.sockets[0].getsockname()[1]
    # more listening ports (any free), so that one client can hold more connections than
    # loopback's ephemeral port range gives it towards one address and port
    ready["ports"], ready["tls_ports"] = [ready["port"]], [ready.get("tls_port")]
    for _ in range(args.listeners - 1):
        plain = await loop.create_server(server.protocol(False), args.host, 0,
                                         backlog=args.backlog, reuse_address=True)
        listeners.append(plain)
        ready["ports"].append(plain.sockets[0].getsockname()[1])
        if ctx is not None and args.tls_port >= 0:
            tls = await loop.create_server(server.protocol(True), args.host, 0, ssl=ctx,
                                           backlog=args.backlog, reuse_address=True,
                                           ssl_handshake_timeout=30)
            listeners.append(tls)
            ready["tls_ports"].append(tls.sockets[0].getsockname()[1])
    control = await asyncio.start_server(
        lambda r, w: _control(server, stop, r, w), args.host, args.control_port)
    listeners.append(control)
    ready["control_port"] = control.sockets[0].getsockname()[1]
    ready["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        await announce_and_wait(ready, stop, args.max_seconds)
    finally:
        for listener in listeners:
            listener.close()
        for conn in list(server.conns):
            if conn.transport is not None:
                conn.transport.abort()
        if log is not None:
            log.close()


def main(argv: list[str] | None = None) -> None:
    p = parser("python -m bench.loadserver", __doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="plain IMAP port (0: any free)")
    p.add_argument("--tls-port", type=int, default=0, help="implicit-TLS port (-1: none)")
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--cert", help="PEM certificate chain (enables TLS and STARTTLS)")
    p.add_argument("--key", help="PEM private key")
    p.add_argument("--initial-exists", type=int, default=3)
    p.add_argument("--backlog", type=int, default=4096)
    p.add_argument("--listeners", type=int, default=1,
                   help="plain and TLS ports each (ready: 'ports', 'tls_ports')")
    p.add_argument("--injection-log", help="append '<unix time> <user> <exists>' per injection")
    run(p, argv, "load server", serve)


if __name__ == "__main__":
    main()
