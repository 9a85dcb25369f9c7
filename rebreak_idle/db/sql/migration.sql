-- Idempotent: adds the three status columns the daemon writes (CONTRACT §3).
ALTER TABLE rebreak.mail_connections ADD COLUMN IF NOT EXISTS last_connect_error text;
ALTER TABLE rebreak.mail_connections ADD COLUMN IF NOT EXISTS last_connect_error_at timestamptz;
ALTER TABLE rebreak.mail_connections ADD COLUMN IF NOT EXISTS last_idle_heartbeat_at timestamptz;
