"""LeanEPollReactor: real sockets, timers, an error in one connection that spares the others,
and busy polling."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from twisted.internet import protocol

from sftpd.reactor import LeanEPollReactor, SpinWindow


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


# ---- busy polling ----------------------------------------------------------------------


def test_spin_window_doubles_on_short_idles_and_halves_on_long_ones() -> None:
    w = SpinWindow(100e-6)
    assert w.window == 0.0
    w.idle_ended(1.0)  # a long idle from the start: stays off
    assert w.window == 0.0
    grown = []
    for _ in range(6):
        w.idle_ended(99e-6)  # within the limit: polling that long would have caught it
        grown.append(round(w.window * 1e6))
    assert grown == [10, 20, 40, 80, 100, 100]
    w.idle_ended(30e-6)  # caught by polling: the window stays
    assert round(w.window * 1e6) == 100
    shrunk = []
    for _ in range(4):
        w.idle_ended(0.5)  # longer than the limit: polling would have been wasted
        shrunk.append(round(w.window * 1e6, 1))
    assert shrunk == [50, 25, 12.5, 0]


class Counting:
    """The reactor's epoll object, recording the timeout of every poll."""

    def __init__(self, poller: Any) -> None:
        self.poller = poller
        self.timeouts: list[float] = []

    def poll(self, timeout: float, most: int) -> Any:
        self.timeouts.append(timeout)
        return self.poller.poll(timeout, most)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.poller, name)


def spin_until_timer(quiet: bool) -> tuple[list[float], float]:
    """Run a reactor whose spin window (30 s) is far longer than its only timer (0.2 s);
    return the poll timeouts and how late the timer fired."""
    reactor = LeanEPollReactor()
    reactor.busy_poll(30.0, quiet=lambda: quiet)
    assert reactor._spin is not None
    reactor._spin.window = 30.0
    counting = Counting(reactor._poller)
    reactor._poller = counting
    fired: list[float] = []
    due = reactor.seconds() + 0.2

    def timer() -> None:
        fired.append(reactor.seconds() - due)
        reactor.stop()

    reactor.callLater(0.2, timer)
    guard = reactor.callLater(60, reactor.stop)  # deadlock guard, not a timing assertion
    reactor.run(installSignalHandlers=False)
    if guard.active():
        guard.cancel()
    assert fired, "the timer never fired"
    return counting.timeouts, fired[0]


def test_spinning_ends_at_the_next_timer(monkeypatch: Any) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    timeouts, late = spin_until_timer(quiet=True)
    assert timeouts.count(0) > 3  # it polled without sleeping ...
    assert late < 10.0  # ... and still ran a 0.2 s timer long before its 30 s window ended


def test_no_spinning_while_a_worker_waits(monkeypatch: Any) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    timeouts, _ = spin_until_timer(quiet=False)
    assert timeouts.count(0) <= 3  # one non-blocking check per idle period, then a sleep


def test_no_busy_polling_on_one_cpu(monkeypatch: Any) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    reactor = LeanEPollReactor()
    reactor.busy_poll(100e-6)
    assert reactor._spin is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    reactor.busy_poll(0)
    assert reactor._spin is None
    reactor.busy_poll(100e-6)
    assert reactor._spin is not None


def test_echo_with_busy_polling_learns_the_window(monkeypatch: Any) -> None:
    """A client thread in ping-pong with an echo server: every reply arrives, and the idle
    periods between requests (all far below the 1 s limit) open the spin window."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    reactor = LeanEPollReactor()
    reactor.busy_poll(1.0)
    port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(Echo), interface="127.0.0.1")
    replies: list[bytes] = []

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=30) as s:
            for i in range(20):
                s.sendall(b"ping%02d" % i)
                replies.append(s.recv(100))
        reactor.callFromThread(reactor.stop)

    thread = threading.Thread(target=client)
    reactor.callWhenRunning(thread.start)
    guard = reactor.callLater(60, reactor.stop)  # deadlock guard, not a timing assertion
    reactor.run(installSignalHandlers=False)
    thread.join(30)
    if guard.active():
        guard.cancel()
    assert replies == [b"ping%02d" % i for i in range(20)]
    assert reactor._spin is not None and reactor._spin.window > 0
    port.stopListening()
