"""``python -m bench.prune --n 50000``: what the pruning of ``db/prune.py`` costs each
refresh (issue 24.6), on a throwaway PostgreSQL: N accounts with two marks each (INBOX and
one folder) and N/10 hold-offs, then

- **nothing to prune**: the usual refresh (every row's account still exists);
- **after deleting ``--deleted`` accounts**: the refreshes that clean them up (1,000 rows per
  statement, at most 10 statements per table and refresh).

It runs ``prune_gone`` itself (the same statements) over a blocking psycopg2 connection and
prints one JSON line: the median, lowest and highest milliseconds of ``--repeat`` passes
with nothing to prune, and the passes and milliseconds of the clean-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

import psycopg2
from twisted.internet.defer import Deferred, fail, succeed

from rebreak_idle.db.prune import prune_gone
from rebreak_idle.testing.pg import fresh_database

__all__ = ["main"]


def seed(dsn: str, n: int) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        ids = [str(uuid.uuid4()) for _ in range(n)]
        cur.execute(
            "INSERT INTO rebreak.mail_connections (id, user_id, email, imap_host, imap_port, "
            "imap_security, auth_method, encrypted_secret) SELECT i, i, i::text || '@b.test', "
            "'imap.b.test', 993, 'tls', 'password', 'x' FROM unnest(%s::uuid[]) AS i", (ids,))
        for mailbox in ("INBOX", "Junk"):
            cur.execute(
                "INSERT INTO rebreak_idle.mailbox_state (connection_id, mailbox, uidvalidity, "
                "uidnext, message_count) SELECT i, %s, 1, 2, 3 FROM unnest(%s::uuid[]) AS i",
                (mailbox, ids))
        cur.execute("INSERT INTO rebreak_idle.account_holdoff SELECT i, 1, now(), 't' "
                    "FROM unnest(%s::uuid[]) AS i", (ids[: n // 10],))
        cur.execute("ANALYZE")


def one_pass(conn: Any) -> tuple[float, dict[str, int]]:
    def run_query(sql: str, params: Any = None) -> Deferred:
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return succeed(cur.fetchall())
        except Exception as e:
            return fail(e)

    box: list[Any] = []
    started = time.perf_counter()
    Deferred.fromCoroutine(prune_gone(run_query)).addBoth(box.append)
    return (time.perf_counter() - started) * 1000, box[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prune")
    parser.add_argument("--n", type=int, default=50_000, help="accounts")
    parser.add_argument("--deleted", type=int, default=5_000, help="accounts deleted")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    dsn = fresh_database()
    seed(dsn, args.n)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    idle = [one_pass(conn)[0] for _ in range(args.repeat)]
    with conn.cursor() as cur:
        cur.execute("DELETE FROM rebreak.mail_connections WHERE id IN (SELECT id FROM "
                    "rebreak.mail_connections LIMIT %s)", (args.deleted,))
    cleanup: list[float] = []
    pruned = 0
    while True:
        ms, counts = one_pass(conn)
        if not any(counts.values()):
            break
        cleanup.append(ms)
        pruned += sum(counts.values())
    conn.close()
    print(json.dumps({
        "accounts": args.n, "marks": 2 * args.n, "holdoffs": args.n // 10,
        "nothing_to_prune_ms": {"median": round(statistics.median(idle), 1),
                                "min": round(min(idle), 1), "max": round(max(idle), 1)},
        "deleted_accounts": args.deleted, "rows_pruned": pruned,
        "cleanup_refreshes": len(cleanup),
        "cleanup_ms_per_refresh": [round(ms, 1) for ms in cleanup],
    }))


if __name__ == "__main__":
    main()
