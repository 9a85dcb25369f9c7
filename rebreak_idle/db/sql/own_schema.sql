-- The daemon's own schema and tables (never the backend's): created by the migration,
-- and by the daemon itself at start when they are missing (db/migrate.py, ensure_schema).

-- The daemon's own table (issue 15): the last acknowledged mark of each watched mailbox,
-- one row per (connection, mailbox); read at start and at a replica takeover.
CREATE SCHEMA IF NOT EXISTS rebreak_idle;
CREATE TABLE IF NOT EXISTS rebreak_idle.mailbox_state (
    connection_id uuid        NOT NULL,
    mailbox       text        NOT NULL,
    uidvalidity   bigint,
    uidnext       bigint,
    message_count bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, mailbox)
);

-- The daemon's own table: credential hold-offs that survive restarts (db/holdoffs.py).
CREATE TABLE IF NOT EXISTS rebreak_idle.account_holdoff (
    connection_id uuid PRIMARY KEY,
    strikes       integer NOT NULL,
    until         timestamptz NOT NULL,
    secret_tag    text NOT NULL
);
