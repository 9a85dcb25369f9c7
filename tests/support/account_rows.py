"""Rows of the accounts table in the suite's throwaway PostgreSQL: adding a row,
reading its status, counting statements, and a TestCase base with a fresh database."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from rebreak_idle.db.store import AccountStore
from rebreak_idle.testing.pg import sql


def inline(f: Callable[..., Coroutine]) -> Callable[..., Deferred]:
    @wraps(f)
    def run(*a: Any, **kw: Any) -> Deferred:
        return Deferred.fromCoroutine(f(*a, **kw))

    return run


def add_row(dsn: str, active: bool = True, secret: str = "iv:tag:ct",  # noqa: S107
            **cols: Any) -> str:
    row_id = str(uuid.uuid4())
    values = {"id": row_id, "user_id": str(uuid.uuid4()), "email": f"{row_id[:8]}@example.org",
              "imap_host": "127.0.0.1", "imap_port": 993, "imap_security": "tls",
              "encrypted_secret": secret, "is_active": active, **cols}
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    sql(dsn, f"INSERT INTO rebreak.mail_connections ({names}) VALUES ({marks})",  # noqa: S608
        tuple(values.values()))
    return row_id


def status(dsn: str, row_id: str) -> tuple:
    return sql(dsn, "SELECT last_connect_error, last_connect_error_at, last_idle_heartbeat_at "
                    "FROM rebreak.mail_connections WHERE id = %s", (row_id,))[0]


def statement_calls(dsn: str, prefix: str) -> int:
    rows = sql(dsn, "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
                    "JOIN pg_database d ON d.oid = s.dbid "
                    "WHERE d.datname = current_database() AND s.query LIKE %s",
               (prefix + "%",))
    return int(rows[0][0])


class StoreTestCase(TestCase):
    timeout = 60

    def make_store(self, dsn: str, **kw: Any) -> AccountStore:
        kw.setdefault("shutdown_timeout", 5)
        store = AccountStore(dsn, reactor, **kw)
        self.addCleanup(store.stopService)
        return store
