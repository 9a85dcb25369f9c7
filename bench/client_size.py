"""What one ``IdleClient`` costs in memory and per line, without a server: N clients on
``StringTransport``s, greeted, logged in, a mailbox selected and idling, measured with
``tracemalloc`` and the garbage collector's count of tracked objects; then the time one
idling client takes per ``* N EXISTS`` line.

    python -m bench.client_size --n 2000

prints one JSON line: bytes and tracked objects per idling client, and the median
microseconds per EXISTS line (fed one line per read, and 100 lines per read) over
``--repeat`` runs. It uses only the client's public methods: run it on two checkouts to
compare (``PYTHONPATH=/path/to/other/tree python -m bench.client_size``).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import tracemalloc
from typing import Any

__all__ = ["main"]

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN SASL-IR] ready\r\n"


def _idling_client(clock: Any) -> tuple[Any, Any]:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from rebreak_idle.imap import IdleClient

    client = IdleClient(clock=clock)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 143))
    client.makeConnection(transport)
    client.dataReceived(GREETING)
    client.login("user", "password")
    client.dataReceived(b"0001 OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n")
    client.select()
    client.dataReceived(b"* 3 EXISTS\r\n* 0 RECENT\r\n0002 OK [READ-WRITE] done\r\n")
    client.idle()
    client.dataReceived(b"+ idling\r\n")
    assert client.idling, "the client did not reach IDLE"
    transport.clear()
    return client, transport


def measure_memory(n: int) -> dict[str, Any]:
    from twisted.internet.task import Clock

    clock = Clock()
    _idling_client(clock)  # imports and one-off allocations before measuring
    gc.collect()
    tracemalloc.start()
    objects_before = len(gc.get_objects())
    before = tracemalloc.take_snapshot()
    clients = [_idling_client(clock) for _ in range(n)]
    gc.collect()
    after = tracemalloc.take_snapshot()
    objects_after = len(gc.get_objects())
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(clients) == n
    return {"bytes_per_client": round(grown / n, 1),
            "tracked_objects_per_client": round((objects_after - objects_before) / n, 2)}


def measure_lines(repeat: int, lines: int) -> dict[str, Any]:
    from twisted.internet.task import Clock

    clock = Clock()
    client, _ = _idling_client(clock)
    seen: list[int] = []
    client.on_exists = seen.append
    one = [b"* %d EXISTS\r\n" % i for i in range(lines)]
    batch = b"".join(one[:100])
    single: list[float] = []
    batched: list[float] = []
    for _ in range(repeat):
        clock.advance(3600)  # the input budget full again (it would close a flood)
        start = time.perf_counter()
        for line in one:
            client.dataReceived(line)
        single.append((time.perf_counter() - start) / lines * 1e6)
        clock.advance(3600)
        start = time.perf_counter()
        for _ in range(lines // 100):
            client.dataReceived(batch)
        batched.append((time.perf_counter() - start) / (lines // 100 * 100) * 1e6)
    assert not client.closed, client.close_error
    return {"exists_line_us": round(statistics.median(single), 3),
            "exists_line_in_100_line_reads_us": round(statistics.median(batched), 3)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="idling clients to measure")
    p.add_argument("--repeat", type=int, default=21, help="runs of the per-line timing")
    p.add_argument("--lines", type=int, default=10_000, help="lines per timing run")
    args = p.parse_args(argv)
    import rebreak_idle
    result = {"tree": rebreak_idle.__file__.rsplit("/rebreak_idle/", 1)[0], "n": args.n}
    result.update(measure_memory(args.n))
    result.update(measure_lines(args.repeat, args.lines))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
