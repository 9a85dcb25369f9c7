"""Floor of the per-connection memory under Twisted, without the daemon.

``python -m bench.tlscost --n 2000`` starts the load server, opens N plain and then N TLS
connections from one Twisted process (``HostnameEndpoint`` + ``wrapClientTLS`` with the
daemon's own ``client_tls_options``), each reading the greeting, logging in, selecting
and entering IDLE with a bare ``LineReceiver``, and prints the resident memory per
connection of each kind: what any Twisted client pays before the daemon's own objects.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tlscost")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rate", type=float, default=500.0)
    args = p.parse_args(argv)

    from twisted.internet import defer, reactor, task
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    from rebreak_idle.tls import client_tls_options

    from .certs import make_test_certificates
    from .loopback import raise_nofile_limit
    from .runner import Children, Control, _ready_line

    raise_nofile_limit()
    certs = make_test_certificates(Path(tempfile.mkdtemp(prefix="bench-tlscost-")))
    children = Children()
    import subprocess

    ls = children.spawn([sys.executable, "-m", "bench.loadserver", "--cert", certs["cert"],
                         "--key", certs["key"], "--max-seconds", "600"],
                        stdout=subprocess.PIPE, text=True)
    ready = _ready_line(ls, "load server")
    control = Control("127.0.0.1", ready["control_port"])
    creator = client_tls_options("127.0.0.1", certs["ca"])
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
    results: dict[str, float] = {}

    async def run() -> None:
        for kind, port in (("plain", ready["port"]), ("tls", ready["tls_port"])):
            before_idle = control.stats()["idling"]
            base = _rss_kb()
            for i in range(args.n):
                endpoint = HostnameEndpoint(reactor, "127.0.0.1", port)
                if kind == "tls":
                    endpoint = wrapClientTLS(creator, endpoint)
                conns.append(await endpoint.connect(Factory.forProtocol(Idle)))
                if i % 50 == 49:
                    await task.deferLater(reactor, 50 / args.rate, lambda: None)
            for _ in range(600):
                if control.stats()["idling"] >= before_idle + args.n:
                    break
                await task.deferLater(reactor, 0.1, lambda: None)
            await task.deferLater(reactor, 2, lambda: None)
            results[f"{kind}_kb_per_connection"] = round((_rss_kb() - base) / args.n, 2)

    def done(_: object) -> None:
        print(json.dumps({"n": args.n, **results}))
        reactor.stop()

    def failed(f: object) -> None:
        print(f, file=sys.stderr)
        reactor.stop()

    t0 = time.monotonic()
    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()).addCallbacks(done, failed))
    reactor.callLater(300, reactor.stop)
    reactor.run()
    control.close()
    children.kill_all()
    sys.stderr.write(f"took {time.monotonic() - t0:.1f}s\n")


if __name__ == "__main__":
    main()
