"""rebreak-idle: one IMAP IDLE session per active mail connection, a scan trigger per new mail."""

__version__ = "0.1.0"
