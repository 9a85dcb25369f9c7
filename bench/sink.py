"""Backend sink: a raw asyncio HTTP/1.1 keep-alive server on 127.0.0.1.

``POST /api/mail/scan-internal`` answers ``{"scanned":0,"blocked":0}`` at once and records
the wall-clock arrival time (when the whole request has been read) with the body's
``connectionId``, ``reason`` and ``exists``. Requests whose ``x-admin-secret`` differs
from ``--admin-secret`` (when given) get 401 and are counted, not recorded.

Read-out and control routes (on the scan port, and on a control port of their own that
stays open while the scan port refuses connections):

    GET /_bench/stats              → {"requests": .., "scans": .., "unauthorized": .., ...}
    GET /_bench/arrivals?since=K   → [[unix time, connectionId, reason, exists], ...] from K
                                     (the answered 2xx scans)
    GET /_bench/requests?since=K   → [[received, answered, status, connectionId, mailbox,
                                     reason, exists], ...] from K (every scan request)
    GET /_bench/mode?answer=A[&retry_after=S]
                                   → the scan port from now on: A = ``ok`` (200), ``503``
                                     (with ``Retry-After: S`` when given) or ``refuse`` (the
                                     listener closed, open connections aborted; ``ok`` or
                                     ``503`` listens again on the same port)

Run: ``python -m bench.sink --port 0 --admin-secret S``; prints one JSON line
``{"ready": true, "port": ..., "control_port": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import parse_qs, urlsplit

from .loopback import announce_and_wait, parser, run

__all__ = ["Sink", "main"]

SCAN_PATH = b"/api/mail/scan-internal"
MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
_SCAN_BODY = b'{"scanned":0,"blocked":0}'


#: how the scan port answers (``GET /_bench/mode?answer=...``)
MODES = ("ok", "503", "refuse")


class Sink:
    """What the sink has seen, and how it answers."""

    def __init__(self, admin_secret: str | None = None) -> None:
        self.admin_secret = admin_secret.encode() if admin_secret else None
        self.arrivals: list[tuple[float, str, str, int | None]] = []
        #: every scan request: received, answered, status, connectionId, mailbox, reason,
        #: exists
        self.scan_log: list[list] = []
        self.mode = "ok"
        self.retry_after: int | None = None
        self.scan_conns: set[HttpConnection] = set()
        self.listener: asyncio.Server | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.requests = 0
        self.unauthorized = 0
        self.bad = 0
        self.connections = 0
        self.open = 0
        self.started = time.time()

    def stats(self) -> dict:
        reasons: dict[str, int] = {}
        for _, _, reason, _ in self.arrivals:
            reasons[reason] = reasons.get(reason, 0) + 1
        return {"requests": self.requests, "scans": len(self.arrivals), "by_reason": reasons,
                "unauthorized": self.unauthorized, "bad_requests": self.bad,
                "connections": self.connections, "open_connections": self.open,
                "mode": self.mode, "uptime": round(time.time() - self.started, 3)}

    async def listen(self) -> None:
        self.listener = await asyncio.get_running_loop().create_server(
            lambda: HttpConnection(self, scan=True), self.host, self.port, backlog=4096,
            reuse_address=True)
        self.port = self.listener.sockets[0].getsockname()[1]

    async def set_mode(self, mode: str, retry_after: int | None) -> str | None:
        """Answer ``ok`` / ``503`` from now on, or ``refuse`` connections; None, or why
        the port could not be listened on again (tried for 10 s)."""
        self.mode, self.retry_after = mode, retry_after
        if mode == "refuse":
            if self.listener is not None:
                listener, self.listener = self.listener, None
                listener.close()
            for conn in list(self.scan_conns):
                if conn.transport is not None:
                    conn.transport.abort()
            return None
        error = None
        for _ in range(50):
            if self.listener is not None:
                return None
            try:
                await self.listen()
            except OSError as e:  # e.g. a client's connection holds the port meanwhile
                error = f"listening again on port {self.port}: {e}"
                await asyncio.sleep(0.2)
        return error


class HttpConnection(asyncio.Protocol):
    __slots__ = ("buf", "scan", "sink", "transport")

    def __init__(self, sink: Sink, scan: bool = True) -> None:
        self.sink = sink
        self.scan = scan  # a connection of the scan port (False: the control port)
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sink.connections += 1
        self.sink.open += 1
        if self.scan:
            self.sink.scan_conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.open -= 1
        self.sink.scan_conns.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf
        buf += data
        while self.transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self.fail(431, b"header too large")
                return
            head = bytes(buf[:end]).split(b"\r\n")
            try:
                method, target, version = head[0].split(b" ", 2)
            except ValueError:
                self.fail(400, b"bad request line")
                return
            headers: dict[bytes, bytes] = {}
            for raw in head[1:]:
                name, _, value = raw.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                body, used = _dechunk(buf, end + 4)
                if body is None:
                    if len(buf) > MAX_BODY:
                        self.fail(413, b"body too large")
                    return
            else:
                try:
                    length = int(headers.get(b"content-length", b"0"))
                except ValueError:
                    self.fail(400, b"bad content-length")
                    return
                if length > MAX_BODY:
                    self.fail(413, b"body too large")
                    return
                if len(buf) < end + 4 + length:
                    return
                body, used = bytes(buf[end + 4: end + 4 + length]), end + 4 + length
            del buf[:used]
            keep = (version == b"HTTP/1.1" and headers.get(b"connection", b"").lower() != b"close"
                    ) or headers.get(b"connection", b"").lower() == b"keep-alive"
            self.request(now, method, target, headers, body, keep)

    def request(self, now: float, method: bytes, target: bytes, headers: dict[bytes, bytes],
                body: bytes, keep: bool) -> None:
        sink = self.sink
        sink.requests += 1
        path = target.split(b"?", 1)[0]
        query = parse_qs(urlsplit(target.decode("latin-1")).query)
        if method == b"POST" and path == SCAN_PATH and self.scan:
            self.scan_request(now, headers, body, keep)
        elif method == b"GET" and path == b"/_bench/stats":
            self.respond(200, json.dumps(sink.stats()).encode(), keep)
        elif method == b"GET" and path == b"/_bench/arrivals":
            since = int(query.get("since", ["0"])[0])
            self.respond(200, json.dumps(sink.arrivals[since:]).encode(), keep)
        elif method == b"GET" and path == b"/_bench/requests":
            since = int(query.get("since", ["0"])[0])
            self.respond(200, json.dumps(sink.scan_log[since:]).encode(), keep)
        elif method == b"GET" and path == b"/_bench/mode":
            mode = query.get("answer", [""])[0]
            retry = query.get("retry_after", [""])[0]
            if mode not in MODES or (retry and not retry.isdigit()):
                self.respond(400, b'{"error":"answer=ok|503|refuse, retry_after=<s>"}', keep)
                return
            task = asyncio.get_running_loop().create_task(
                sink.set_mode(mode, int(retry) if retry else None))
            task.add_done_callback(lambda t: self.mode_set(t, keep))
        else:
            self.respond(404, b'{"error":"not found"}', keep)

    def mode_set(self, task: asyncio.Task, keep: bool) -> None:
        error = task.exception() or task.result()
        if error:
            self.respond(500, json.dumps({"error": str(error)}).encode(), keep)
        else:
            self.respond(200, json.dumps(self.sink.stats()).encode(), keep)

    def scan_request(self, now: float, headers: dict[bytes, bytes], body: bytes,
                     keep: bool) -> None:
        sink = self.sink
        secret = headers.get(b"x-admin-secret")
        if sink.admin_secret is not None and secret != sink.admin_secret:
            sink.unauthorized += 1
            self.respond(401, b'{"error":"unauthorized"}', keep)
            return
        try:
            doc = json.loads(body)
            conn_id = str(doc["connectionId"])
            reason = str(doc.get("reason", ""))
            exists = doc.get("exists")
            mailbox = str(doc.get("mailbox", "INBOX"))
        except (ValueError, KeyError, TypeError, AttributeError):
            sink.bad += 1
            self.respond(400, b'{"error":"bad body"}', keep)
            return
        if sink.mode == "503":
            extra = {} if sink.retry_after is None else {b"retry-after": b"%d" % sink.retry_after}
            self.respond(503, b'{"error":"unavailable"}', keep, extra)
            sink.scan_log.append([now, time.time(), 503, conn_id, mailbox, reason, exists])
            return
        sink.arrivals.append((now, conn_id, reason, exists))
        self.respond(200, _SCAN_BODY, keep)
        sink.scan_log.append([now, time.time(), 200, conn_id, mailbox, reason, exists])

    def respond(self, status: int, body: bytes, keep: bool,
                headers: dict[bytes, bytes] | None = None) -> None:
        reason = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
                  413: b"Payload Too Large", 431: b"Request Header Fields Too Large",
                  500: b"Internal Server Error", 503: b"Service Unavailable"}[status]
        if self.transport is None:
            return
        extra = b"".join(b"%s: %s\r\n" % item for item in (headers or {}).items())
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"%sconnection: %s\r\n\r\n%s"
            % (status, reason, len(body), extra, b"keep-alive" if keep else b"close", body))
        if not keep:
            self.transport.close()

    def fail(self, status: int, text: bytes) -> None:
        self.sink.bad += 1
        self.respond(status, b'{"error":"%s"}' % text, False)


def _dechunk(buf: bytearray, start: int) -> tuple[bytes | None, int]:
    """Decode a complete chunked body from ``buf[start:]``; (None, 0) if incomplete."""
    out = bytearray()
    pos = start
    for _ in range(100_000):
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(bytes(buf[pos:eol]).split(b";")[0] or b"0", 16)
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            if trailer_end < 0:
                return None, 0
            return bytes(out), trailer_end + 2
        if len(buf) < pos + size + 2:
            return None, 0
        out += buf[pos: pos + size]
        pos += size + 2
    return None, 0


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    sink = Sink(args.admin_secret)
    sink.host, sink.port = args.host, args.port
    await sink.listen()
    control = await loop.create_server(lambda: HttpConnection(sink, scan=False), args.host,
                                       args.control_port, reuse_address=True)
    ready = {"ready": True, "host": args.host, "port": sink.port,
             "control_port": control.sockets[0].getsockname()[1]}
    try:
        await announce_and_wait(ready, asyncio.Event(), args.max_seconds)
    finally:
        if sink.listener is not None:
            sink.listener.close()
        control.close()


def main(argv: list[str] | None = None) -> None:
    p = parser("python -m bench.sink", __doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--control-port", type=int, default=0,
                   help="port of the /_bench routes alone (0: any free)")
    p.add_argument("--admin-secret", help="expected x-admin-secret (401 otherwise)")
    run(p, argv, "sink", serve)


if __name__ == "__main__":
    main()
