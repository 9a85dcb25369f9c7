"""An IdleClient on a StringTransport and a Clock: a TestCase base that connects
one, greets it and reads what it wrote; and a recording link for a CommandQueue on its
own."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.imap import (
    IdleClient,
)

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN SASL-IR STARTTLS] ready\r\n"


class Events:
    """Records the client's callbacks in arrival order."""

    def __init__(self, client: IdleClient) -> None:
        self.seen: list[tuple[Any, ...]] = []
        client.on_exists = lambda n: self.seen.append(("exists", n))
        client.on_expunge = lambda n: self.seen.append(("expunge", n))
        client.on_bye = lambda t: self.seen.append(("bye", t))
        client.on_idle_ended = lambda t: self.seen.append(("idle-ended", t))
        client.on_connection_lost = lambda f: self.seen.append(("lost", f.value))


class QueueLink:
    """A CommandLink that records what the queue writes and the deadlines it reports."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.timeouts: list[str] = []

    def write_bytes(self, data: bytes) -> None:
        self.written.append(data)

    def command_timed_out(self, message: str) -> None:
        self.timeouts.append(message)


def result_of(d: Any) -> list[Any]:
    box: list[Any] = []
    d.addBoth(box.append)
    return box


class ClientTestCase(SynchronousTestCase):
    peer = "127.0.0.1"

    def connect(self, greeting: bytes = GREETING, **kw: Any) -> IdleClient:
        self.clock = Clock()
        self.client = IdleClient(clock=self.clock, **kw)
        self.events = Events(self.client)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", self.peer, 143))
        self.client.makeConnection(self.transport)
        self.greeted = result_of(self.client.greeted)
        if greeting:
            self.client.dataReceived(greeting)
        return self.client

    def sent(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def server(self, data: bytes) -> None:
        self.client.dataReceived(data)

    def lose(self) -> None:
        self.client.connectionLost(Failure(ConnectionDone()))
