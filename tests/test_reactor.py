"""LeanEPollReactor: real sockets, timers, an error in one connection that spares the others,
and busy polling."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import protocol

from sftpd.runtime import reactor as reactor_module
from sftpd.runtime.reactor import LeanEPollReactor, SpinWindow, usable_cpus


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

    def longest_spin(self) -> int:
        """The longest run of non-blocking polls in a row."""
        longest = run = 0
        for t in self.timeouts:
            run = run + 1 if t == 0 else 0
            longest = max(longest, run)
        return longest


def spinning_reactor(quiet: bool, window: float = 30.0) -> tuple[LeanEPollReactor, Counting]:
    reactor = LeanEPollReactor()
    reactor.busy_poll(window, quiet=lambda: quiet)
    assert reactor._spin is not None
    reactor._spin.window = window
    counting = Counting(reactor._poller)
    reactor._poller = counting
    return reactor, counting


def spin_until_timer(quiet: bool) -> tuple[Counting, float]:
    """Run a reactor whose spin window (30 s) is far longer than its only timer (0.2 s);
    return its polls and how late the timer fired."""
    reactor, counting = spinning_reactor(quiet)
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
    return counting, fired[0]


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reactor_module, "usable_cpus", lambda: 2.0)


@pytest.mark.usefixtures("two_cpus")
def test_spinning_ends_at_the_next_timer() -> None:
    counting, late = spin_until_timer(quiet=True)
    assert counting.longest_spin() > 10  # it polled without sleeping ...
    assert late < 10.0  # ... and still ran a 0.2 s timer long before its 30 s window ended


@pytest.mark.usefixtures("two_cpus")
def test_no_spinning_while_a_worker_job_is_out() -> None:
    counting, _ = spin_until_timer(quiet=False)
    # per idle period one non-blocking check, then a sleep (and one more poll at stop)
    assert counting.longest_spin() <= 2


def connect_later(port: int, delay: float) -> subprocess.Popen[bytes]:
    """Another process that connects to ``port`` after ``delay`` seconds."""
    code = "import socket, sys, time; time.sleep(float(sys.argv[1]))\n"
    code += "socket.create_connection(('127.0.0.1', int(sys.argv[2])))"
    return subprocess.Popen([sys.executable, "-c", code, str(delay), str(port)])


class StopOnConnect(protocol.Protocol):
    def connectionMade(self) -> None:
        reactor: Any = self.factory.reactor  # type: ignore[attr-defined]
        reactor.stop()


@pytest.mark.usefixtures("two_cpus")
def test_spinning_without_timers_ends_at_an_event() -> None:
    """No timer at all (poll's timeout is None): polling ends when an event comes, here a
    connection from another process, long before the 30 s window."""
    reactor, counting = spinning_reactor(quiet=True)
    factory = protocol.ServerFactory.forProtocol(StopOnConnect)
    factory.reactor = reactor  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    peer = connect_later(port.getHost().port, 0.2)
    # deadlock guard outside the reactor (a reactor timer would set a timeout)
    guard = threading.Timer(60, reactor.callFromThread, (reactor.stop,))
    guard.start()
    assert not reactor.getDelayedCalls()
    began = time.monotonic()
    reactor.run(installSignalHandlers=False)
    took = time.monotonic() - began
    guard.cancel()
    peer.wait(30)
    port.stopListening()
    assert counting.longest_spin() > 10
    assert took < 20.0  # the event ended the 30 s window


def test_busy_polling_needs_a_spare_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    reactor = LeanEPollReactor()
    for cpus, processes, limit, on in [
        (1.0, 1, 100e-6, False),  # one CPU: polling would only delay the client
        (2.0, 1, 100e-6, True),
        (2.0, 2, 100e-6, False),  # workers = 2 on two CPUs: each would take its sibling's
        (0.5, 1, 100e-6, False),  # a container quota of half a CPU
        (4.0, 1, 0.0, False),  # busy_poll_us = 0
    ]:
        monkeypatch.setattr(reactor_module, "usable_cpus", lambda cpus=cpus: cpus)
        reactor.busy_poll(limit, processes=processes)
        assert (reactor._spin is not None) == on, (cpus, processes, limit)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_usable_cpus_reads_cgroup_quotas(tmp_path: Path) -> None:
    affinity = float(len(os.sched_getaffinity(0)))
    cg = tmp_path / "cgroup"
    fs = tmp_path / "fs"
    # v2, own cgroup with a quota of 1.5 CPUs
    write(cg, "0::/svc/sftpd\n")
    write(fs / "svc/sftpd/cpu.max", "150000 100000\n")
    assert usable_cpus(str(cg), str(fs)) == min(affinity, 1.5)
    # v2 without a quota
    write(fs / "svc/sftpd/cpu.max", "max 100000\n")
    assert usable_cpus(str(cg), str(fs)) == affinity
    # v1, "cpu,cpuacct" hierarchy; a container without a cgroup namespace sees its own
    # cgroup at the mount point, not under the path /proc/self/cgroup names
    write(cg, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    write(fs / "cpu,cpuacct/cpu.cfs_quota_us", "50000\n")
    write(fs / "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert usable_cpus(str(cg), str(fs)) == 0.5
    write(fs / "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    assert usable_cpus(str(cg), str(fs)) == affinity
    # nothing readable: the affinity
    assert usable_cpus(str(tmp_path / "missing"), str(fs)) == affinity
    write(cg, "0::/elsewhere\n")
    assert usable_cpus(str(cg), str(tmp_path / "empty")) == affinity


PING_PONG = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30) as s:
    for i in range(40):
        s.sendall(b"ping%02d" % i)
        assert s.recv(100) == b"ping%02d" % i, i
print("ok")
"""


@pytest.mark.usefixtures("two_cpus")
@pytest.mark.parametrize("quiet", [True, False])
def test_echo_with_busy_polling_learns_only_when_quiet(quiet: bool) -> None:
    """A client process in ping-pong with an echo server: every reply arrives, and the idle
    periods between requests (all far below the 1 s limit) open the spin window, unless a
    worker job was out (quiet false): then those idle periods measure the job, not the
    client, and teach nothing."""
    reactor = LeanEPollReactor()
    reactor.busy_poll(1.0, quiet=lambda: quiet)
    port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(Echo), interface="127.0.0.1")
    result: dict[str, Any] = {}

    def client() -> None:
        result["out"] = subprocess.run(
            [sys.executable, "-c", PING_PONG, str(port.getHost().port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        reactor.callFromThread(reactor.stop)

    thread = threading.Thread(target=client)  # it waits in subprocess.run, off the GIL
    reactor.callWhenRunning(thread.start)
    guard = reactor.callLater(90, reactor.stop)  # deadlock guard, not a timing assertion
    reactor.run(installSignalHandlers=False)
    thread.join(60)
    if guard.active():
        guard.cancel()
    port.stopListening()
    assert result["out"].stdout.strip() == "ok", result["out"].stderr
    assert reactor._spin is not None
    assert (reactor._spin.window > 0) == quiet
