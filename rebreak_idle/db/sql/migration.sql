-- Idempotent: adds the three status columns the daemon writes (CONTRACT §3).
ALTER TABLE rebreak.mail_connections ADD COLUMN IF NOT EXISTS last_connect_error text;
ALTER TABLE rebreak.mail_connections ADD COLUMN IF NOT EXISTS last_connect_error_at timestamptz;
ALTER TABLE rebreak.mail_connections ADD COLUMN IF NOT EXISTS last_idle_heartbeat_at timestamptz;

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
