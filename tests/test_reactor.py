"""LeanEPollReactor: real sockets, timers, and an error in one connection that spares the others."""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol

from sftpd.reactor import LeanEPollReactor


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise ValueError("a bug in one connection's handler")
        self.transport.write(data)  # type: ignore[union-attr]


class Client(protocol.Protocol):
    def __init__(self, message: bytes, outcome: dict[str, Any]) -> None:
        self.message = message
        self.outcome = outcome

    def connectionMade(self) -> None:
        self.transport.write(self.message)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.outcome[self.message.decode()] = data

    def connectionLost(self, reason: Any = None) -> None:
        self.outcome.setdefault(self.message.decode() + " closed", True)


def test_serves_connections_and_survives_a_handler_error() -> None:
    reactor = LeanEPollReactor()
    outcome: dict[str, Any] = {}
    server = protocol.ServerFactory.forProtocol(Echo)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")

    def connect(message: bytes) -> None:
        factory = protocol.ClientFactory()
        factory.protocol = lambda: Client(message, outcome)
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)

    def check() -> None:
        if "hello" in outcome and "boom closed" in outcome:
            reactor.stop()
        else:
            reactor.callLater(0.01, check)

    connect(b"boom")
    connect(b"hello")
    reactor.callLater(0, check)
    guard = reactor.callLater(30, reactor.stop)  # deadlock guard, not a timing assertion
    reactor.run(installSignalHandlers=False)
    if guard.active():
        guard.cancel()
    assert outcome["hello"] == b"hello"  # the other connection was served
    assert outcome["boom closed"]  # the failing one was closed, not the reactor
    assert "boom" not in outcome
    port.stopListening()
