# twistd -ny rebreak.tac — the daemon configured from the environment only (CONTRACT §1).
from twisted.application.service import Application

from rebreak_idle.options import settings_or_exit
from rebreak_idle.service import makeService

application = Application("rebreak-idle")
makeService(settings_or_exit()).setServiceParent(application)
