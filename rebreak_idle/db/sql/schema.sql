-- Development schema of the backend's table (CONTRACT §3), for local use and tests.
-- The production table belongs to the backend; the daemon only applies migration.sql there.
CREATE SCHEMA IF NOT EXISTS rebreak;

CREATE TABLE IF NOT EXISTS rebreak.mail_connections (
    id                     uuid PRIMARY KEY,
    user_id                uuid NOT NULL,
    email                  text NOT NULL,
    imap_host              text NOT NULL,
    imap_port              integer NOT NULL DEFAULT 993,
    imap_security          text NOT NULL DEFAULT 'tls',
    imap_username          text,
    auth_method            text NOT NULL DEFAULT 'password',
    encrypted_secret       text NOT NULL,
    is_active              boolean NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL DEFAULT now(),
    last_connect_error     text,
    last_connect_error_at  timestamptz,
    last_idle_heartbeat_at timestamptz
);
