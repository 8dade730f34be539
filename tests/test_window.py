"""In-memory tests of the adaptive receive window: top-ups, growth, budget, pauses, guard."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.conch.ssh import connection
from twisted.conch.ssh.common import NS
from twisted.internet import defer
from twisted.internet.task import Clock

from sftpd.apps.contract import SessionContext
from sftpd.apps.sftp.constants import PacketType
from sftpd.auth.avatar import Avatar
from sftpd.config.loader import load_config
from sftpd.errors import ConfigError
from sftpd.runtime.threads import CallViaRun, InlineBlocking
from sftpd.ssh.channel import LOCAL_WINDOW, SessionChannel
from sftpd.ssh.connection import Connection
from sftpd.ssh.window import WindowBudget, WindowPolicy
from sftpd.storage.local import LocalStorage

MiB = 1 << 20
PACKET = 131072
ADJUST = connection.MSG_CHANNEL_WINDOW_ADJUST


class Link:
    """The SSH transport of one connection over a simulated link of ``rtt`` seconds,
    with a client that sends CHANNEL_DATA as fast as its window allows: each adjust
    reaches it rtt/2 after it left, and its data reaches the server rtt/2 after that.
    Bandwidth is unlimited, so the window is all that bounds the transfer."""

    def __init__(self, clock: Clock, avatar: Avatar, rtt: float) -> None:
        self.clock = clock
        self.avatar = avatar
        self.rtt = rtt
        self.otherVersionString = b"SSH-2.0-OpenSSH_9.2"
        self.sent: list[tuple[int, bytes]] = []
        self.disconnects: list[int] = []
        self.conn = Connection()
        self.conn.transport = self
        self.conn.serviceStarted()
        self.credit = 0
        self.sending = False
        self.delivered = 0
        self.payload = b"x" * PACKET  # what each CHANNEL_DATA carries

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.sent.append((kind, bytes(payload)))
        if kind == ADJUST:
            add = struct.unpack(">2L", payload)[1]
            self.clock.callLater(self.rtt / 2, self._adjusted, add)

    def sendDisconnect(self, code: int, desc: bytes) -> None:
        self.disconnects.append(code)

    def open(self, remote_window: int = 1 << 30) -> Any:
        self.conn.ssh_CHANNEL_OPEN(NS(b"session") + struct.pack(">3L", 0, remote_window, 32768))
        ch = self.conn.channels[0]
        self.credit = ch.localWindowLeft
        return ch

    def start(self) -> None:
        self.sending = True
        self._send()

    def _adjusted(self, add: int) -> None:
        self.credit += add
        self._send()

    def _send(self) -> None:
        while self.sending and self.credit >= PACKET:
            self.credit -= PACKET
            self.clock.callLater(self.rtt / 2, self.deliver)

    def deliver(self) -> None:
        if 0 in self.conn.channels:
            self.delivered += len(self.payload)
            self.conn.ssh_CHANNEL_DATA(struct.pack(">L", 0) + NS(self.payload))

    def adjusts(self) -> list[int]:
        return [struct.unpack(">2L", p)[1] for k, p in self.sent if k == ADJUST]

    def closed(self) -> bool:
        return any(k == connection.MSG_CHANNEL_CLOSE for k, _ in self.sent)


def _avatar(tmp: Path, clock: Clock, policy: WindowPolicy | None, blocking: Any = None) -> Avatar:
    ctx = SessionContext(
        "alice", "/", LocalStorage(tmp), blocking or InlineBlocking(), reactor=clock
    )
    return Avatar(
        ctx,
        clock=clock,
        max_sessions=10,
        make_channel=lambda *a, **kw: SessionChannel(*a, window=policy, **kw),
    )


def _link(tmp: Path, clock: Clock, policy: WindowPolicy | None, rtt: float = 0.05) -> Link:
    return Link(clock, _avatar(tmp, clock, policy), rtt)


def _run(clock: Clock, seconds: float, step: float = 0.005) -> None:
    clock.pump([step] * int(seconds / step))


def test_window_is_topped_up_each_eighth_not_at_half(tmp_path: Path) -> None:
    """Conch adjusts when half the window is used: a client then waits for the adjust
    with only half a window in flight. Now every eighth is given back at once."""
    clock = Clock()
    link = _link(tmp_path, clock, None)
    ch = link.open()
    for _ in range(LOCAL_WINDOW // 8 // PACKET - 1):
        link.deliver()
    assert link.adjusts() == []
    link.deliver()
    assert link.adjusts() == [LOCAL_WINDOW // 8]
    assert ch.localWindowLeft == LOCAL_WINDOW


def test_window_grows_for_a_client_that_fills_it_each_round_trip(tmp_path: Path) -> None:
    """50 ms round trip, unlimited bandwidth: each refill comes one round trip after the
    adjust, so the window doubles, 4 -> 8 -> 16 MiB, and stops at max_window. The client
    never has more in flight than it was granted (no close), and the round trip it
    measured is the link's."""
    clock = Clock()
    budget = WindowBudget(256 * MiB)
    link = _link(tmp_path, clock, WindowPolicy(16 * MiB, budget))
    ch = link.open()
    link.start()
    sizes = set()
    for _ in range(40):
        _run(clock, 0.05)
        sizes.add(ch.window_state()[0])
    size, rtt = ch.window_state()
    assert sizes == {4 * MiB, 8 * MiB, 16 * MiB}
    assert size == 16 * MiB and ch.localWindowSize == 16 * MiB
    assert rtt == pytest.approx(0.05, abs=0.006)
    assert budget.used == 12 * MiB
    assert not link.closed() and link.disconnects == []
    # ten round trips: most of a full window each
    before = link.delivered
    _run(clock, 0.5)
    assert link.delivered - before >= 7 * 16 * MiB  # 8 MiB would allow 5
    ch.closed()
    assert budget.used == 0  # a closed channel gives back what it took


def test_without_a_policy_the_window_stays_put(tmp_path: Path) -> None:
    clock = Clock()
    link = _link(tmp_path, clock, None)
    ch = link.open()
    link.start()
    _run(clock, 1.0)
    assert ch.window_state()[0] == LOCAL_WINDOW and not link.closed()


def test_the_budget_caps_growth_across_connections(tmp_path: Path) -> None:
    """Two connections share a 6 MiB budget: the first to grow takes it, the other stays
    at 4 MiB until the first closes and gives it back."""
    clock = Clock()
    budget = WindowBudget(6 * MiB)
    policy = WindowPolicy(16 * MiB, budget)
    a, b = _link(tmp_path, clock, policy), _link(tmp_path, clock, policy, rtt=0.02)
    ch_a = a.open()
    a.start()
    _run(clock, 1.0)
    assert ch_a.window_state()[0] == 10 * MiB and budget.used == 6 * MiB
    ch_b = b.open()
    b.start()
    _run(clock, 1.0)
    assert ch_b.window_state()[0] == 4 * MiB  # no room: it does not grow
    assert ch_a.window_state()[0] == 10 * MiB and budget.used == 6 * MiB
    a.sending = False
    a.conn.ssh_CHANNEL_CLOSE(struct.pack(">L", 0))  # the client closes: channel gone
    assert 0 not in a.conn.channels and budget.used == 0
    _run(clock, 1.0)
    assert ch_b.window_state()[0] == 10 * MiB and budget.used == 6 * MiB
    assert not b.closed()


def test_a_paused_app_shrinks_the_window_and_bounds_what_arrives(tmp_path: Path) -> None:
    """Grown to 16 MiB, the app pauses (its input waits for the disk): no adjust goes
    out and the client can send only the credit it held. It runs dry before the app reads
    again, so the window halves and the budget gets back all but the smaller window's
    growth."""
    clock = Clock()
    budget = WindowBudget(256 * MiB)
    link = _link(tmp_path, clock, WindowPolicy(16 * MiB, budget))
    ch = link.open()
    link.start()
    _run(clock, 2.0)
    assert ch.window_state()[0] == 16 * MiB
    ch.pause_reading()
    bound = ch.localWindowLeft  # all the client may still send, adjusts in flight included
    at_pause = link.delivered
    adjusts = len(link.adjusts())
    _run(clock, 2.0)
    assert len(link.adjusts()) == adjusts  # nothing granted while paused
    assert link.delivered - at_pause <= bound <= 16 * MiB
    assert ch.localWindowLeft < PACKET and not link.closed()
    assert ch.window_state()[0] == 16 * MiB  # not grown while paused
    left = ch.localWindowLeft
    ch.resume_reading()  # the client ran dry meanwhile: the app is the limit
    assert ch.window_state()[0] == 8 * MiB and ch.localWindowSize == 8 * MiB
    assert budget.used == 4 * MiB  # only the smaller window's growth is still held
    assert link.adjusts()[-1] == 8 * MiB - left and ch.localWindowLeft == 8 * MiB
    _run(clock, 2.0)  # reading again, the window grows back
    assert ch.window_state()[0] == 16 * MiB and not link.closed()


class StuckDisk(CallViaRun):
    """A storage executor whose jobs never finish: a disk that stopped answering."""

    def __init__(self) -> None:
        self.jobs = 0

    def run(self, fn: Any, /, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        self.jobs += 1
        return defer.Deferred()


def _sftp_packet(ptype: int, rid: int, body: bytes) -> bytes:
    packet = bytes([ptype]) + struct.pack(">I", rid) + body
    return struct.pack(">I", len(packet)) + packet


# The two ways to start SFTP: the subsystem, and an exec of the server's binary (what
# `sftp -s /usr/lib/openssh/sftp-server` and some GUI clients send).
SFTP_REQUESTS = {
    "subsystem": NS(b"subsystem") + b"\x01" + NS(b"sftp"),
    "exec": NS(b"exec") + b"\x01" + NS(b"/usr/lib/openssh/sftp-server"),
}


@pytest.mark.parametrize("start", sorted(SFTP_REQUESTS))
def test_a_client_that_ignores_the_window_is_dropped_at_the_grown_window(
    tmp_path: Path, start: str
) -> None:
    """An sftp session whose window grew to 32 MiB, then whose disk stops answering: the
    app pauses, and the client still sends everything it was granted. All of that is
    taken (the app's guard scales with the window: it used to drop the session at 16 MiB
    of queued input, an honest client inside its window, and the exec path still did);
    a packet past the window closes the channel."""
    clock = Clock()
    policy = WindowPolicy(32 * MiB, WindowBudget(256 * MiB))
    disk = StuckDisk()
    link = Link(clock, _avatar(tmp_path, clock, policy, blocking=disk), 0.05)
    ch = link.open()
    conn = link.conn
    conn.ssh_CHANNEL_REQUEST(struct.pack(">L", 0) + SFTP_REQUESTS[start])
    clock.advance(0)
    init = _sftp_packet(PacketType.INIT, 3, b"")
    conn.ssh_CHANNEL_DATA(struct.pack(">L", 0) + NS(init))
    link.credit -= len(init)
    # a fast client over 50 ms, each packet one SFTP WRITE (to a handle that does not
    # exist: answered at once, without the disk)
    head = NS(b"nohandle") + struct.pack(">Q", 0)
    link.payload = _sftp_packet(PacketType.WRITE, 9, head + NS(b"w" * (PACKET - 33)))
    assert len(link.payload) == PACKET
    link.start()
    _run(clock, 3.0)
    assert ch.window_state()[0] == 32 * MiB and not ch.reading_paused and disk.jobs == 0
    # the disk stops: a request waits for it, and holds every request after it
    link.sending = False  # a pause in the stream: what is in flight arrives
    _run(clock, 0.1)
    opendir = _sftp_packet(PacketType.OPENDIR, 1, NS(b"/"))
    conn.ssh_CHANNEL_DATA(struct.pack(">L", 0) + NS(opendir))
    link.credit -= len(opendir)  # sent from the client's credit, like everything else
    assert disk.jobs == 1
    before = link.delivered
    link.start()
    _run(clock, 2.0)
    assert ch.reading_paused and ch.localWindowLeft < PACKET  # the client used it all
    assert not link.closed() and link.disconnects == []
    assert link.delivered - before > 16 * MiB + 1 * MiB  # past the old fixed guard
    link.payload = b"x" * PACKET  # the client ignores the window
    link.deliver()
    assert link.closed()


def test_config_sizes(tmp_path: Path) -> None:
    cfg = tmp_path / "sftpd.toml"
    users = '[[users]]\nname = "a"\nroot = "r"\npassword_hash = "$2b$12$' + "x" * 53 + '"\n'
    cfg.write_text('[server]\nmax_window = "64MiB"\nwindow_budget = 1048576\n' + users)
    s = load_config(cfg).server
    assert (s.max_window, s.window_budget) == (64 * MiB, MiB)
    for bad in ('"16MB"', '"1.5GiB"', "true", '"2GiB"', '"100KiB"'):
        cfg.write_text(f"[server]\nmax_window = {bad}\n" + users)
        with pytest.raises(ConfigError) as e:
            load_config(cfg)
        text = str(e.value)
        assert "sftpd.toml" in text and "server.max_window" in text, text
        assert "KiB, MiB or GiB" in text and "256KiB to 1GiB" in text, text
