"""Backend sink: a raw asyncio HTTP/1.1 keep-alive server on 127.0.0.1.

``POST /api/mail/scan-internal`` answers ``{"scanned":0,"blocked":0}`` at once and records
the wall-clock arrival time (when the whole request has been read) with the body's
``connectionId``, ``reason`` and ``exists``. Requests whose ``x-admin-secret`` differs
from ``--admin-secret`` (when given) get 401 and are counted, not recorded.

Read-out routes for the runner (same port):

    GET /_bench/stats              → {"requests": .., "scans": .., "unauthorized": .., ...}
    GET /_bench/arrivals?since=K   → [[unix time, connectionId, reason, exists], ...] from K

Run: ``python -m bench.sink --port 0 --admin-secret S``; prints one JSON line
``{"ready": true, "port": ...}``.
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


class Sink:
    """What the sink has seen."""

    def __init__(self, admin_secret: str | None = None) -> None:
        self.admin_secret = admin_secret.encode() if admin_secret else None
        self.arrivals: list[tuple[float, str, str, int | None]] = []
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
                "uptime": round(time.time() - self.started, 3)}


class HttpConnection(asyncio.Protocol):
    __slots__ = ("buf", "sink", "transport")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sink.connections += 1
        self.sink.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.open -= 1
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
        if method == b"POST" and path == SCAN_PATH:
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
            except (ValueError, KeyError, TypeError):
                sink.bad += 1
                self.respond(400, b'{"error":"bad body"}', keep)
                return
            sink.arrivals.append((now, conn_id, reason, exists))
            self.respond(200, _SCAN_BODY, keep)
        elif method == b"GET" and path == b"/_bench/stats":
            self.respond(200, json.dumps(sink.stats()).encode(), keep)
        elif method == b"GET" and path == b"/_bench/arrivals":
            query = parse_qs(urlsplit(target.decode("latin-1")).query)
            since = int(query.get("since", ["0"])[0])
            self.respond(200, json.dumps(sink.arrivals[since:]).encode(), keep)
        else:
            self.respond(404, b'{"error":"not found"}', keep)

    def respond(self, status: int, body: bytes, keep: bool) -> None:
        reason = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
                  413: b"Payload Too Large", 431: b"Request Header Fields Too Large"}[status]
        if self.transport is None:
            return
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: %s\r\n\r\n%s"
            % (status, reason, len(body), b"keep-alive" if keep else b"close", body))
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
    server = await loop.create_server(lambda: HttpConnection(sink), args.host, args.port,
                                      backlog=4096, reuse_address=True)
    ready = {"ready": True, "host": args.host, "port": server.sockets[0].getsockname()[1]}
    try:
        await announce_and_wait(ready, asyncio.Event(), args.max_seconds)
    finally:
        server.close()


def main(argv: list[str] | None = None) -> None:
    p = parser("python -m bench.sink", __doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--admin-secret", help="expected x-admin-secret (401 otherwise)")
    run(p, argv, "sink", serve)


if __name__ == "__main__":
    main()
