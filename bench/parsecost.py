"""What a hostile server's lines cost the IMAP client (issue 24): per line, and as CPU
share of a flood. Not a test; prints its figures.

    python -m bench.parsecost                 # both parts
    python -m bench.parsecost --lines-only    # part 1 only
    python -m bench.parsecost --seconds 10    # part 2's flood length

1. **Per line**, in memory: one ``IdleClient`` idling on a StringTransport; each kind of
   line is fed one at a time at 16 KiB and 64 KiB (the daemon's lines stop at 16 KiB; the
   64 KiB figure shows how the cost grows: a ratio of about 4 is linear, about 16
   quadratic). Median microseconds per line over ``--repeat`` lines:
   ``capability`` (``* CAPABILITY A= A= ...``), ``capability-code`` (``* OK [CAPABILITY
   A= ...]``), ``unknown`` (``* X (a a a ...)``), ``fetch`` (``* 1 FETCH (FLAGS (a a
   ...))``), ``no`` (``* NO xxx...``).
2. **Flood**, over loopback on the real reactor: a server in a child process greets, lets
   the client log in, select and idle, then sends 16,369-byte ``* CAPABILITY A= A= ...``
   lines at 64 a second (1 MiB/s, the input budget's sustained rate) for ``--seconds``.
   ``core_share_to_keep_up``: the client's process CPU (``getrusage``) from IDLE until the
   connection closes, per second of flood sent (the share of one core the flood takes,
   whatever else the machine runs); ``cpu_share_of_a_core`` is the same CPU over the wall
   time, which a busy machine stretches. ``--flood-kind unknown`` sends ``* X (a a ...)``.

Run it against another tree to compare (``PYTHONPATH=/path/to/other/tree python -m
bench.parsecost``): it uses only the client's public methods.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

__all__ = ["main"]

KINDS = {
    "capability": lambda n: b"* CAPABILITY " + b"A= " * ((n - 13) // 3),
    "capability-code": lambda n: b"* OK [CAPABILITY " + b"A= " * ((n - 22) // 3) + b"] x",
    "unknown": lambda n: b"* X (" + b"a " * ((n - 6) // 2) + b")",
    "fetch": lambda n: b"* 1 FETCH (FLAGS (" + b"a " * ((n - 20) // 2) + b"))",
    "no": lambda n: b"* NO " + b"x" * (n - 5),
}
SIZES = (16 * 1024 - 16, 64 * 1024 - 16)


def _idling_client(max_line: int) -> Any:
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from rebreak_idle.imap import IdleClient

    client = IdleClient(clock=Clock(), max_line=max_line)
    client.input_burst_bytes = client.input_burst_lines = 10**12  # no budget here
    client.makeConnection(StringTransport())
    client.dataReceived(b"* OK [CAPABILITY IMAP4rev1 IDLE] hi\r\n")
    client.idle()
    client.dataReceived(b"+ idling\r\n")
    return client


def per_line(repeat: int) -> dict[str, Any]:
    """Median microseconds per line, by kind and size, and the 64 KiB / 16 KiB ratio."""
    out: dict[str, Any] = {}
    for kind, make in KINDS.items():
        row: dict[str, Any] = {}
        for size in SIZES:
            line = make(size) + b"\r\n"
            client = _idling_client(max_line=len(line) + 16)
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                client.dataReceived(line)
                times.append(time.perf_counter() - start)
            if client.closed:
                row[f"{size // 1024}k_us"] = "closed"
                continue
            row[f"{size // 1024 + 1}k_us"] = round(statistics.median(times) * 1e6, 1)
        small, big = row.get("16k_us"), row.get("64k_us")
        if isinstance(small, float) and isinstance(big, float) and small > 0:
            row["ratio_64k_16k"] = round(big / small, 1)
        out[kind] = row
    return out


_SERVER = r'''
import socket, sys, time
if sys.argv[1] == "unknown":
    line = b"* X (" + b"a " * 8180 + b")\r\n"
else:
    line = b"* CAPABILITY " + b"A= " * 5452 + b"\r\n"
seconds, rate = float(sys.argv[2]), 64
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
f = conn.makefile("rb")
conn.sendall(b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] hi\r\n")
while True:
    req = f.readline()
    if not req:
        sys.exit(0)
    tag, cmd = req.split()[0], req.split()[1].upper()
    if cmd == b"SELECT":
        conn.sendall(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 1] x\r\n" + tag + b" OK done\r\n")
    elif cmd == b"IDLE":
        conn.sendall(b"+ idling\r\n")
        break
    else:
        conn.sendall(tag + b" OK done\r\n")
start = time.monotonic()
sent = 0
while time.monotonic() - start < seconds:
    due = int((time.monotonic() - start) * rate) + 1
    if sent < due:
        conn.sendall(line * (due - sent))
        sent = due
    time.sleep(0.005)
print(sent, flush=True)
conn.close()
'''


def flood(kind: str, seconds: float) -> dict[str, Any]:
    """CPU share of one core the client spent while the child server flooded."""
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from rebreak_idle.imap import IdleClient

    child = subprocess.Popen([sys.executable, "-c", _SERVER, kind, str(seconds)],
                             stdout=subprocess.PIPE)
    assert child.stdout is not None
    port = int(child.stdout.readline())
    result: dict[str, Any] = {"kind": kind, "seconds": seconds}

    async def run() -> None:
        client = IdleClient(clock=reactor, command_timeout=seconds + 30,
                            noop_timeout=seconds + 30)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        await client.greeted
        await client.login("bench", "bench-password")
        await client.select()
        await client.idle()
        cpu0 = _cpu()
        wall0 = time.monotonic()
        lost: defer.Deferred = defer.Deferred()
        client.on_connection_lost = lambda f: lost.callback(None) if not lost.called else None
        await lost
        wall = time.monotonic() - wall0
        cpu = _cpu() - cpu0
        result.update(cpu_s=round(cpu, 2), wall_s=round(wall, 2),
                      cpu_share_of_a_core=round(cpu / wall, 3))
        result["closed_as"] = str(client._close_error) if client._close_error else None

    d = defer.Deferred.fromCoroutine(run())
    d.addErrback(lambda f: result.update(error=f.getErrorMessage()))
    d.addBoth(lambda _: reactor.stop())
    reactor.run(installSignalHandlers=False)
    out = child.stdout.read().strip()
    child.wait(10)
    result["lines_sent"] = sent = int(out) if out else None
    if sent and "cpu_s" in result:
        # the CPU the client needs per second of flood (64 lines, 1 MiB): the share of a
        # core it takes to keep up, whatever else the machine was doing meanwhile
        result["core_share_to_keep_up"] = round(result["cpu_s"] / (sent / 64), 3)
    return result


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.parsecost")
    parser.add_argument("--repeat", type=int, default=31)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--lines-only", action="store_true")
    parser.add_argument("--flood-kind", choices=("capability", "unknown"),
                        default="capability")
    args = parser.parse_args(argv)
    import rebreak_idle

    print(json.dumps({"tree": str(rebreak_idle.__file__).rsplit("/rebreak_idle/", 1)[0],
                      "per_line": per_line(args.repeat)}), flush=True)
    if not args.lines_only:
        print(json.dumps({"flood": flood(args.flood_kind, args.seconds)}), flush=True)


if __name__ == "__main__":
    main()
