"""What IdleClient inherits from Twisted's IMAP4Client: each public method works or
fails clearly (inherited.py)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.mail import imap4
from twisted.python.failure import Failure

from rebreak_idle.imap import IdleClient
from rebreak_idle.imap.inherited import UNSUPPORTED_COMMANDS, UNSUPPORTED_HOOKS, Unsupported
from tests.support.imap_client import ClientTestCase, result_of

#: inherited from IMAP4Client and its bases, working as they are (tested below)
WORKING = {"makeConnection", "makeTag", "logPrefix", "clearLineBuffer", "sendLine",
           "pauseProducing", "resumeProducing", "stopProducing"}


def _public_methods(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))
            and not isinstance(getattr(cls, n), type)}


class InheritedMethodTests(ClientTestCase):
    def test_every_inherited_public_method_works_or_fails_clearly(self) -> None:
        self.connect()
        own = set()
        for cls in IdleClient.__mro__[: IdleClient.__mro__.index(imap4.IMAP4Client)]:
            if cls is not Unsupported:
                own |= set(vars(cls))
        inherited = _public_methods(imap4.IMAP4Client)
        self.assertLessEqual(set(UNSUPPORTED_COMMANDS) | set(UNSUPPORTED_HOOKS), inherited)
        checked = 0
        for name in sorted(inherited - own - WORKING):
            expected = f"IdleClient does not implement {name}; "
            try:
                result = getattr(self.client, name)("any", "arguments")
            except NotImplementedError as e:
                self.assertIn(name, UNSUPPORTED_HOOKS)
                self.assertTrue(str(e).startswith(expected), str(e))
            else:
                self.assertIn(name, UNSUPPORTED_COMMANDS)
                self.assertIsInstance(result, Deferred)
                failure = result_of(result)[0]
                self.assertIsInstance(failure, Failure)
                self.assertIsInstance(failure.value, NotImplementedError)
                self.assertTrue(str(failure.value).startswith(expected), str(failure.value))
            checked += 1
        self.assertGreater(checked, 40)
        self.assertEqual(self.sent(), b"")
        self.assertFalse(self.transport.disconnecting)

    def test_authenticate_names_the_replacement(self) -> None:
        self.connect()
        failure = result_of(self.client.authenticate("secret"))[0]
        self.assertIn("use login()", str(failure.value))

    def test_the_inherited_methods_that_work(self) -> None:
        self.connect()
        c = self.client
        self.assertEqual(c.makeTag(), b"0001")
        c.sendLine(b"0001 NOOP")
        self.assertEqual(self.sent(), b"0001 NOOP\r\n")
        self.assertIsInstance(c.logPrefix(), str)
        c.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        c.resumeProducing()
        self.server(b"* 4 EXISTS\r\n")
        self.assertEqual(self.events.seen, [("exists", 4)])
        result_of(c.noop())
        self.assertEqual(self.sent(), b"0002 NOOP\r\n")
        c.clearLineBuffer()
        c.stopProducing()
        self.assertEqual(self.transport.producerState, "stopped")
