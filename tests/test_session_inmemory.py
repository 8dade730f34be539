"""In-memory tests of the session channel and connection guards over Conch's connection service."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.conch.ssh import connection
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.transport import DISCONNECT_PROTOCOL_ERROR
from twisted.internet.task import Clock

from sftpd.avatar import Avatar, Connection
from sftpd.blocking import InlineBlocking
from sftpd.session_api import SessionContext
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
    ctx = SessionContext(
        "alice", "/", False, LocalStorage(tmp), InlineBlocking(), tmp, reactor=clock
    )
    avatar = Avatar(ctx, clock=clock, max_sessions=max_sessions)
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
