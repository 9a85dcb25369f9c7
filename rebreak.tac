# twistd -ny rebreak.tac — the daemon configured from the environment only (CONTRACT §1).
from twisted.application.service import Application

from rebreak_idle.startup import daemon_or_exit, settings_or_exit

application = Application("rebreak-idle")
daemon_or_exit(settings_or_exit()).setServiceParent(application)
