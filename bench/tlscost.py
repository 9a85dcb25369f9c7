"""Where a connection's memory goes, per layer, without the daemon.

``python -m bench.tlscost --n 10000 --kinds tls`` starts the load server and opens N
connections from one Twisted process through the daemon's own transport
(``rebreak_idle.net.tls.TLSClientEndpoint`` with ``client_tls_options``, or bare TCP for
``plain``), each reading the greeting, logging in, selecting and entering IDLE with a bare
``LineReceiver``. For each kind it prints one JSON line with, per connection:

- ``rss_kb``: resident memory (``/proc/self/status`` VmRSS);
- ``heap_in_use_kb`` / ``heap_free_kb``: glibc ``mallinfo2()`` ``uordblks`` (bytes handed
  out by malloc: OpenSSL, and Python objects over 512 bytes) and ``fordblks`` (freed but
  kept by the allocator: fragmentation);
- ``python_kb`` (``--tracemalloc``): bytes Python allocated (pyOpenSSL ``Connection``,
  ``TLSMemoryBIOProtocol``, the transport, the protocol);
- ``rss_after_trim_kb``: after ``malloc_trim(0)`` (what the allocator gives back);

and checks on every connection: ``release_buffers`` (``SSL_MODE_RELEASE_BUFFERS`` set),
``shared_context`` (share of connections made from the one context), ``peer_chain``
(certificates the SSL object keeps), ``session_kept``, ``group`` (the key exchange);
``bio_buffers_kb``: heap freed by swapping in two fresh memory BIOs after the ramp.
``--variant`` applies one of the cuts
tried for issue 20 to the client context before connecting (``base`` = the daemon as it is).
Run each variant in its own process: allocator state is not comparable otherwise.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "mallinfo2", "rss_kb"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def mallinfo2() -> dict[str, int]:
    """glibc's allocator figures (bytes), main arena plus the others."""
    f = _libc.mallinfo2
    f.restype = _MallInfo2
    info = f()
    return {name: int(getattr(info, name)) for name, _ in _MallInfo2._fields_}


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


#: (the shared client context, its mode as SSL_CTX_set_mode returned it before first use)
_CONTEXT: list = [None, 0]


def _ssl_checks(conns: list) -> dict[str, float]:
    """Per-connection facts read through pyOpenSSL (the cffi bindings of cryptography do
    not export ``SSL_ctrl``; OpenSSL is linked into cryptography's extension, so ctypes
    cannot reach it either): the context mode that ``SSL_new`` copied into every
    connection, the peer chain each keeps, and whether each keeps a session."""
    release = chain = sessions = n = 0
    group = None
    for p in conns:
        tls = getattr(p.transport, "_tlsConnection", None)
        if tls is None:
            continue
        n += 1
        release += tls.get_context() is _CONTEXT[0]
        chain += len(tls.get_peer_cert_chain() or [])
        sessions += tls.get_session() is not None
        group = tls.get_group_name()
    if not n:
        return {}
    return {"release_buffers": bool(_CONTEXT[1] & 0x10),  # SSL_MODE_RELEASE_BUFFERS
            "shared_context": round(release / n, 3), "peer_chain": round(chain / n, 2),
            "session_kept": round(sessions / n, 3), "group": group}


def _fresh_bios(conns: list) -> None:
    """Give every idle TLS connection two new, empty memory BIOs (``SSL_set_bio`` frees the
    old ones): what the old ones' buffers kept is the BIO layer's share."""
    from OpenSSL._util import lib

    for p in conns:
        tls = getattr(p.transport, "_tlsConnection", None)
        if tls is None:
            continue
        into, out = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
        lib.SSL_set_bio(tls._ssl, into, out)
        tls._into_ssl, tls._from_ssl = into, out


def _creator(variant: str, ca: str) -> object:
    from OpenSSL import SSL

    from rebreak_idle.net.tls import client_tls_options

    creator = client_tls_options("127.0.0.1", ca)
    if variant == "no-release":
        creator._context.clear_mode(SSL.MODE_RELEASE_BUFFERS)
    elif variant == "no-ticket":
        creator._context.set_options(SSL.OP_NO_TICKET)
    elif variant.startswith("groups="):  # e.g. groups=X25519:P-256 (no ML-KEM key share)
        from OpenSSL._util import lib

        lib.SSL_CTX_set1_curves_list(creator._context._context, variant[7:].encode())
    elif variant == "tls12":  # for attribution only: the daemon keeps TLS 1.3
        creator._context.set_max_proto_version(SSL.TLS1_2_VERSION)
    _CONTEXT[:] = [creator._context, creator._context.set_mode(0)]  # ORs in nothing
    return creator


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tlscost")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--kinds", default="plain,tls")
    p.add_argument("--variant", default="base",
                   help="base | no-release | no-ticket | tls12 | groups=<list>")
    p.add_argument("--tracemalloc", action="store_true")
    args = p.parse_args(argv)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(1)

    from twisted.internet import defer, reactor, task
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    from rebreak_idle.net.tls import TLSClientEndpoint

    from .certs import make_test_certificates
    from .loopback import raise_nofile_limit
    from .runner import Children, Control, ready_line

    raise_nofile_limit()
    certs = make_test_certificates(Path(tempfile.mkdtemp(prefix="bench-tlscost-")))
    children = Children()
    ls = children.spawn([sys.executable, "-m", "bench.loadserver", "--cert", certs["cert"],
                         "--key", certs["key"], "--max-seconds", "900"],
                        stdout=subprocess.PIPE, text=True)
    ready = ready_line(ls, "load server")
    control = Control("127.0.0.1", ready["control_port"])
    creator = _creator(args.variant, certs["ca"])
    ir = base64.b64encode(b"\0u\0p")

    class Idle(LineReceiver):
        step = 0

        def lineReceived(self, line: bytes) -> None:
            if self.step == 0:
                self.sendLine(b"a1 AUTHENTICATE PLAIN " + ir)
            elif line.startswith(b"a1 "):
                self.sendLine(b"a2 SELECT INBOX")
            elif line.startswith(b"a2 "):
                self.sendLine(b"a3 IDLE")
            self.step += 1

    conns: list = []
    results: list[dict] = []

    def traced() -> int:
        if not args.tracemalloc:
            return 0
        import tracemalloc

        return tracemalloc.get_traced_memory()[0]

    async def run() -> None:
        for kind in args.kinds.split(","):
            port = ready["tls_port"] if kind == "tls" else ready["port"]
            before_idle = control.stats()["idling"]
            start = len(conns)
            base, heap0, py0 = rss_kb(), mallinfo2(), traced()
            t0 = time.monotonic()
            for i in range(args.n):
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
                if kind == "tls":
                    endpoint = TLSClientEndpoint(creator, endpoint)
                conns.append(await endpoint.connect(Factory.forProtocol(Idle)))
                if i % 50 == 49:
                    await task.deferLater(reactor, 50 / args.rate, lambda: None)
            for _ in range(900):
                if control.stats()["idling"] >= before_idle + args.n:
                    break
                await task.deferLater(reactor, 0.1, lambda: None)
            ramp = time.monotonic() - t0
            await task.deferLater(reactor, 2, lambda: None)
            n = args.n
            heap = mallinfo2()
            r: dict = {
                "kind": kind, "variant": args.variant, "n": n, "ramp_s": round(ramp, 1),
                "rss_kb": round((rss_kb() - base) / n, 2),
                "heap_in_use_kb": round((heap["uordblks"] - heap0["uordblks"]) / n / 1024, 2),
                "heap_free_kb": round((heap["fordblks"] - heap0["fordblks"]) / n / 1024, 2),
                "mmap_kb": round((heap["hblkhd"] - heap0["hblkhd"]) / n / 1024, 2),
                "arena_kb": round((heap["arena"] - heap0["arena"]) / n / 1024, 2),
            }
            if args.tracemalloc:
                r["python_kb"] = round((traced() - py0) / n / 1024, 2)
            r.update(_ssl_checks(conns[start:]))
            if kind == "tls":
                in_use = mallinfo2()["uordblks"]
                _fresh_bios(conns[start:])
                r["bio_buffers_kb"] = round((in_use - mallinfo2()["uordblks"]) / n / 1024, 2)
            _libc.malloc_trim(0)
            heap2 = mallinfo2()
            r["rss_after_trim_kb"] = round((rss_kb() - base) / n, 2)
            r["heap_free_after_trim_kb"] = round(
                (heap2["fordblks"] - heap0["fordblks"]) / n / 1024, 2)
            results.append(r)
            print(json.dumps(r), flush=True)

    def done(_: object) -> None:
        reactor.stop()

    def failed(f: object) -> None:
        print(f, file=sys.stderr)
        reactor.stop()

    t0 = time.monotonic()
    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()).addCallbacks(done, failed))
    reactor.callLater(900, reactor.stop)
    reactor.run()
    control.close()
    children.kill_all()
    sys.stderr.write(f"took {time.monotonic() - t0:.1f}s (MALLOC_ARENA_MAX="
                     f"{os.environ.get('MALLOC_ARENA_MAX', 'unset')})\n")


if __name__ == "__main__":
    main()
