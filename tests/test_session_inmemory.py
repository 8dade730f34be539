"""In-memory tests of the session channel and connection guards over Conch's connection service."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.conch.ssh import connection
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.transport import DISCONNECT_PROTOCOL_ERROR
from twisted.internet import abstract
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.task import Clock

from sftpd.apps.contract import SessionContext
from sftpd.apps.sftp.codec import Framer
from sftpd.apps.sftp.constants import PacketType
from sftpd.apps.sftp.protocol import MAX_BYTES_PER_TURN, MAX_PENDING_OUTPUT
from sftpd.auth.avatar import Avatar
from sftpd.runtime.threads import InlineBlocking
from sftpd.ssh.channel import SessionChannel
from sftpd.ssh.connection import Connection
from sftpd.storage.local import LocalStorage

MSG = {v: k for k, v in connection.messages.items()}


class RecordingTransport:
    """Stands in for the SSH transport: records (message name, payload)."""

    def __init__(self, avatar: Avatar) -> None:
        self.avatar = avatar
        self.sent: list[tuple[str, bytes]] = []
        self.disconnects: list[int] = []
        self.otherVersionString = b"SSH-2.0-OpenSSH_9.2"

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.sent.append((connection.messages.get(kind, str(kind)), bytes(payload)))

    def sendDisconnect(self, code: int, desc: bytes) -> None:
        self.disconnects.append(code)


def _setup(tmp: Path, max_sessions: int = 10) -> tuple[Connection, RecordingTransport, Clock]:
    clock = Clock()
    ctx = SessionContext("alice", "/", LocalStorage(tmp), InlineBlocking(), reactor=clock)
    avatar = Avatar(ctx, clock=clock, max_sessions=max_sessions, make_channel=SessionChannel)
    conn = Connection()
    t = RecordingTransport(avatar)
    conn.transport = t
    conn.serviceStarted()
    return conn, t, clock


def _open(
    conn: Connection,
    sender: int = 0,
    window: int = 1 << 20,
    maxpkt: int = 32768,
    kind: bytes = b"session",
) -> None:
    conn.ssh_CHANNEL_OPEN(NS(kind) + struct.pack(">3L", sender, window, maxpkt))


def _names(t: RecordingTransport) -> list[str]:
    return [n for n, _ in t.sent]


def test_shell_gets_message_then_exit_status_then_close(tmp_path: Path) -> None:
    conn, t, clock = _setup(tmp_path)
    _open(conn)
    assert _names(t) == ["MSG_CHANNEL_OPEN_CONFIRMATION"]
    conn.ssh_CHANNEL_REQUEST(struct.pack(">L", 0) + NS(b"shell") + b"\x01")
    assert _names(t)[-1] == "MSG_CHANNEL_SUCCESS"  # the reply comes before any output
    clock.advance(0)
    names = _names(t)[2:]
    assert names == [
        "MSG_CHANNEL_EXTENDED_DATA",
        "MSG_CHANNEL_REQUEST",
        "MSG_CHANNEL_EOF",
        "MSG_CHANNEL_CLOSE",
    ]
    assert b"This service allows SFTP connections only." in t.sent[2][1]
    assert t.sent[3][1].endswith(NS(b"exit-status") + b"\x00" + struct.pack(">L", 1))


def test_only_session_channels_and_session_limit(tmp_path: Path) -> None:
    conn, t, clock = _setup(tmp_path, max_sessions=2)
    _open(conn, kind=b"direct-tcpip")
    _open(conn, sender=1)
    _open(conn, sender=2)
    _open(conn, sender=3)
    assert _names(t) == [
        "MSG_CHANNEL_OPEN_FAILURE",
        "MSG_CHANNEL_OPEN_CONFIRMATION",
        "MSG_CHANNEL_OPEN_CONFIRMATION",
        "MSG_CHANNEL_OPEN_FAILURE",
    ]


def test_max_packet_zero_is_refused_not_looped(tmp_path: Path) -> None:
    conn, t, clock = _setup(tmp_path)
    _open(conn, maxpkt=0)
    assert _names(t) == ["MSG_CHANNEL_OPEN_FAILURE"]


@pytest.mark.parametrize(
    "message",
    [
        "ssh_CHANNEL_DATA",
        "ssh_CHANNEL_EXTENDED_DATA",
        "ssh_CHANNEL_EOF",
        "ssh_CHANNEL_CLOSE",
        "ssh_CHANNEL_REQUEST",
        "ssh_CHANNEL_WINDOW_ADJUST",
        "ssh_CHANNEL_SUCCESS",
        "ssh_CHANNEL_FAILURE",
        "ssh_CHANNEL_OPEN_CONFIRMATION",
        "ssh_CHANNEL_OPEN_FAILURE",
    ],
)
def test_late_messages_for_closed_channels_are_ignored(tmp_path: Path, message: str) -> None:
    conn, t, clock = _setup(tmp_path)
    _open(conn)
    conn.ssh_CHANNEL_CLOSE(struct.pack(">L", 0))  # client closes; we answer close; channel gone
    before = list(t.sent)
    payload = struct.pack(">LL", 0, 0) + NS(b"x") + b"\x00" + b"\x00" * 16
    getattr(conn, message)(payload)  # well formed, for a channel that is gone: ignored
    assert t.sent == before
    assert t.disconnects == []  # the connection stays up
    getattr(conn, message)(b"\x00")  # too short to name a channel: protocol error
    assert t.disconnects == [DISCONNECT_PROTOCOL_ERROR]
    assert t.sent == before  # and nothing else is sent for it


def test_output_waits_for_window_and_exit_waits_for_output(tmp_path: Path) -> None:
    conn, t, clock = _setup(tmp_path)
    _open(conn, window=10, maxpkt=4)
    ch: Any = conn.channels[0]
    ch._holding = False
    ch.write(b"0123456789abcdef")
    data = [p for n, p in t.sent if n == "MSG_CHANNEL_DATA"]
    assert [d[8:] for d in data] == [b"0123", b"4567", b"89"]
    assert ch.pending_output() == 6
    ch.exit(0)
    assert "MSG_CHANNEL_REQUEST" not in _names(t)  # exit-status only after the data
    conn.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", 0, 100))
    data = [p[8:] for n, p in t.sent if n == "MSG_CHANNEL_DATA"]
    assert b"".join(data) == b"0123456789abcdef"
    assert _names(t)[-3:] == ["MSG_CHANNEL_REQUEST", "MSG_CHANNEL_EOF", "MSG_CHANNEL_CLOSE"]
    assert ch.pending_output() == 0


def test_paused_reading_withholds_window_until_resumed(tmp_path: Path) -> None:
    conn, t, clock = _setup(tmp_path)
    _open(conn)
    ch: Any = conn.channels[0]
    ch.pause_reading()
    chunk = b"y" * 200_000
    for _ in range(15):  # 3 MB: past half the 4 MiB window
        conn.ssh_CHANNEL_DATA(struct.pack(">L", 0) + NS(chunk))
    assert "MSG_CHANNEL_WINDOW_ADJUST" not in _names(t)
    assert ch.localWindowLeft == ch.localWindowSize - 3_000_000
    ch.resume_reading()
    adjust = [p for n, p in t.sent if n == "MSG_CHANNEL_WINDOW_ADJUST"]
    assert len(adjust) == 1 and struct.unpack(">2L", adjust[0])[1] == 3_000_000
    assert ch.localWindowLeft == ch.localWindowSize


def test_write_parts_packs_head_with_body_and_keeps_packets_full(tmp_path: Path) -> None:
    conn, t, clock = _setup(tmp_path)
    _open(conn, window=1 << 20, maxpkt=1000)
    ch: Any = conn.channels[0]
    ch._holding = False
    body = bytes(range(256)) * 10  # 2560 bytes
    ch.write_parts(b"HEAD", body)
    data = [p[8:] for n, p in t.sent if n == "MSG_CHANNEL_DATA"]
    assert b"".join(data) == b"HEAD" + body
    assert [len(d) for d in data] == [1000, 1000, 564]  # no 4-byte packet for the head


def _capturing(tmp: Path) -> tuple[Connection, RecordingTransport, Any, list[bytes]]:
    """An open session channel whose incoming data is collected in the returned list."""
    conn, t, clock = _setup(tmp)
    _open(conn)
    ch: Any = conn.channels[0]
    got: list[bytes] = []
    ch.dataReceived = got.append
    return conn, t, ch, got


def test_channel_data_through_packet_received(tmp_path: Path) -> None:
    """The CHANNEL_DATA fast path: exact bytes in, window kept, malformed data refused."""
    conn, t, ch, got = _capturing(tmp_path)
    window = ch.localWindowLeft
    conn.packetReceived(connection.MSG_CHANNEL_DATA, struct.pack(">L", 0) + NS(b"hello") + b"pad")
    assert got == [b"hello"]  # trailing bytes after the string are not data
    assert ch.localWindowLeft == window - 5
    conn.packetReceived(connection.MSG_CHANNEL_DATA, struct.pack(">LL", 0, 10) + b"short")
    assert t.disconnects and got == [b"hello"]  # a string longer than the packet


def test_channel_data_beyond_the_window_closes_the_channel(tmp_path: Path) -> None:
    conn, t, ch, got = _capturing(tmp_path)
    too_much = b"z" * (ch.localWindowLeft + 1)
    conn.packetReceived(connection.MSG_CHANNEL_DATA, struct.pack(">L", 0) + NS(too_much))
    assert got == [] and _names(t)[-1] == "MSG_CHANNEL_CLOSE"


# ---- the connection's window rules and its socket's write buffer ----------------------


def test_window_adjust_past_2_32_minus_1_disconnects(tmp_path: Path) -> None:
    """RFC 4254 5.2: a window may not exceed 2^32-1. 1,000 adjusts of 2^32-1 used to be
    added up without complaint; the first one that overflows is a protocol error."""
    conn, t, clock = _setup(tmp_path)
    _open(conn, window=(1 << 32) - 11)
    ch: Any = conn.channels[0]
    conn.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", 0, 10))  # exactly 2^32-1: fine
    assert ch.remoteWindowLeft == (1 << 32) - 1 and t.disconnects == []
    for _ in range(1000):
        conn.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", 0, (1 << 32) - 1))
        if t.disconnects:
            break
    assert t.disconnects == [DISCONNECT_PROTOCOL_ERROR]
    assert ch.remoteWindowLeft == (1 << 32) - 1
    conn.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">L", 0) + b"\x00\x00")  # short: also an error
    assert t.disconnects == [DISCONNECT_PROTOCOL_ERROR] * 2


class _Reactor:
    """Just enough reactor for a FileDescriptor: whether it waits to write."""

    writing = False

    def addReader(self, r: Any) -> None: ...
    def removeReader(self, r: Any) -> None: ...

    def addWriter(self, w: Any) -> None:
        self.writing = True

    def removeWriter(self, w: Any) -> None:
        self.writing = False


class StalledTCP(abstract.FileDescriptor):
    """Twisted's own write buffer and producer logic over a "kernel" that takes only
    ``accept`` more bytes: a TCP connection whose client stopped reading."""

    def __init__(self) -> None:
        self.loop = _Reactor()
        super().__init__(reactor=self.loop)
        self.connected = 1
        self.accept = 0
        self.taken = 0

    def writeSomeData(self, data: bytes) -> int:
        n = min(len(data), self.accept)
        self.accept -= n
        self.taken += n
        return n

    def backlog(self) -> int:
        return len(self.dataBuffer) - self.offset + self._tempDataLen


class StreamTransport:
    """The SSH transport over a StalledTCP: every packet payload goes into its buffer; the
    channel's data is parsed back into SFTP replies as (type, id, length)."""

    def __init__(self, avatar: Avatar, tcp: StalledTCP) -> None:
        self.avatar = avatar
        self.transport = tcp
        self.otherVersionString = b"SSH-2.0-OpenSSH_9.2"
        self.disconnects: list[int] = []
        self.framer = Framer()
        self.replies: list[tuple[int, int, int]] = []
        self.handle = b""

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.transport.write(bytes(payload))
        if kind != connection.MSG_CHANNEL_DATA:
            return
        for packet in self.framer.feed(payload[8:]):
            ptype = packet[0]
            rid = struct.unpack_from(">I", packet, 1)[0] if ptype != PacketType.VERSION else 0
            self.replies.append((ptype, rid, len(packet)))
            if ptype == PacketType.HANDLE:
                self.handle = bytes(packet[9:])

    def sendDisconnect(self, code: int, desc: bytes) -> None:
        self.disconnects.append(code)
        self.transport.loseConnection()


def _sftp_over_stalled_tcp(tmp: Path) -> tuple[Connection, StreamTransport, StalledTCP, Clock]:
    clock = Clock()
    ctx = SessionContext("alice", "/", LocalStorage(tmp), InlineBlocking(), reactor=clock)
    avatar = Avatar(ctx, clock=clock, max_sessions=10, make_channel=SessionChannel)
    conn = Connection()
    tcp = StalledTCP()
    t = StreamTransport(avatar, tcp)
    conn.transport = t
    conn.serviceStarted()
    _open(conn, window=(1 << 32) - 1, maxpkt=32768)
    conn.ssh_CHANNEL_REQUEST(struct.pack(">L", 0) + NS(b"subsystem") + b"\x01" + NS(b"sftp"))
    clock.advance(0)
    return conn, t, tcp, clock


def _sftp(conn: Connection, ptype: int, rid: int, body: bytes) -> None:
    packet = bytes([ptype]) + struct.pack(">I", rid) + body
    conn.ssh_CHANNEL_DATA(struct.pack(">L", 0) + NS(struct.pack(">I", len(packet)) + packet))


def _run(clock: Clock) -> None:
    for _ in range(10_000):
        if not clock.getDelayedCalls():
            return
        clock.advance(0)
    raise AssertionError("the session never went idle")


def test_a_client_that_stops_reading_stops_the_sftp_pump(tmp_path: Path) -> None:
    """Window 2^32-1, a 256 MiB file, 4,096 READs of 32 KiB, and a socket that takes
    nothing: what the server buffers stays bounded (it used to queue all 128 MiB). Once
    the client reads again, every READ is answered, in order."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    conn, t, tcp, clock = _sftp_over_stalled_tcp(tmp_path)
    _sftp(conn, PacketType.INIT, 3, b"")
    _sftp(conn, PacketType.OPEN, 1, NS(b"big.bin") + struct.pack(">II", 1, 0))
    _run(clock)
    assert t.handle
    for i in range(4096):
        _sftp(conn, PacketType.READ, 100 + i, NS(t.handle) + struct.pack(">QI", i * 32768, 32768))
        _run(clock)
    bound = MAX_PENDING_OUTPUT + MAX_BYTES_PER_TURN
    assert tcp.taken == 0 and 0 < tcp.backlog() <= bound, tcp.backlog()
    answered = sum(1 for ptype, _, _ in t.replies if ptype == PacketType.DATA)
    assert 0 < answered < 4096 // 16
    # the client reads again: the socket drains, the app is woken, and so on to the end
    for _ in range(10_000):
        if tcp.backlog() == 0 and not clock.getDelayedCalls():
            break
        tcp.accept = 1 << 40
        if tcp.loop.writing:
            tcp.doWrite()
        _run(clock)
        assert tcp.backlog() <= bound
    data = [(rid, size) for ptype, rid, size in t.replies if ptype == PacketType.DATA]
    assert data == [(100 + i, 13 - 4 + 32768) for i in range(4096)]
    assert t.disconnects == []


def test_a_disconnect_while_the_client_stalls_still_closes_once_flushed(tmp_path: Path) -> None:
    """A paused streaming producer keeps Twisted from closing a flushed connection: the
    watch steps aside when the connection is closing."""
    conn, t, tcp, clock = _sftp_over_stalled_tcp(tmp_path)
    (tmp_path / "f.bin").write_bytes(bytes(1 << 20))
    _sftp(conn, PacketType.INIT, 3, b"")
    _sftp(conn, PacketType.OPEN, 1, NS(b"f.bin") + struct.pack(">II", 1, 0))
    for i in range(32):
        _sftp(conn, PacketType.READ, 100 + i, NS(t.handle) + struct.pack(">QI", i * 32768, 32768))
    _run(clock)
    assert tcp.producerPaused and tcp.backlog() > 2**16
    t.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"test")
    tcp.accept = 1 << 40
    result = None
    for _ in range(10):  # what the reactor does: doWrite while the socket is watched
        if not tcp.loop.writing:
            break
        result = tcp.doWrite()
    assert result is CONNECTION_DONE and tcp.backlog() == 0
