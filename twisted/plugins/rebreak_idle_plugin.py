"""``twist rebreak-idle`` / ``twistd rebreak-idle``: flags parsed, daemon built by tap.py."""

from twisted.application.service import ServiceMaker

rebreakIdle = ServiceMaker(
    "rebreak-idle",
    "rebreak_idle.tap",
    "Real-time IMAP IDLE watcher that triggers Rebreak backend scans on new mail.",
    "rebreak-idle",
)
