"""The sans-IO rsync opening (remote-shell client <-> daemon), byte by byte."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from sftpd.apps.rsync.args import ServerArgs
from sftpd.apps.rsync.opening import (
    MAX_PREAMBLE,
    ClientError,
    DaemonError,
    DaemonSays,
    Event,
    Opening,
    Running,
    ToClient,
    ToDaemon,
    daemon_arguments,
)

ARGS = ServerArgs(sender=True, options=(b"-vlogDtpre.iLsfxCIvu",), paths=(b"/d",))
GREETING = b"@RSYNCD: 32.0 sha512 md5\n"


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


Split = Callable[[bytes], list[bytes]]
SPLITS = [whole, bytewise]


def feed(opening: Opening, side: str, data: bytes, split: Split) -> list[Event]:
    events: list[Event] = []
    for chunk in split(data):
        events += opening.feed_client(chunk) if side == "client" else opening.feed_daemon(chunk)
    return events


@pytest.mark.parametrize("split", SPLITS)
def test_the_opening_translated_and_handed_over(split: Split) -> None:
    opening = Opening(ARGS, b"sftpd")
    assert opening.awaiting_version
    assert feed(opening, "client", struct.pack("<i", 31)[:3], split) == []
    assert opening.awaiting_version
    assert feed(opening, "client", struct.pack("<i", 31)[3:] + b"early", split) == []
    assert not opening.awaiting_version
    assert feed(opening, "daemon", GREETING, split) == [
        ToDaemon(b"@RSYNCD: 31.0 sha512 md5\nsftpd\n")
    ]
    assert feed(opening, "daemon", b"motd line\r\n", split) == [DaemonSays(b"motd line")]
    events = feed(opening, "daemon", b"@RSYNCD: OK\n", split)
    assert events == [
        ToDaemon(b"--server\x00--sender\x00-vlogDtpre.iLsfxCIvu\x00.\x00sftpd/d\x00\x00"),
        ToClient(struct.pack("<i", 32)),
        Running(daemon_rest=b"", client_rest=b"early"),
    ]
    assert opening.finished
    assert opening.feed_client(b"more") == [] and opening.feed_daemon(b"more") == []


def test_daemon_bytes_after_ok_and_client_bytes_held_back_are_handed_over() -> None:
    opening = Opening(ARGS, b"sftpd")
    opening.feed_client(struct.pack("<i", 32) + b"C1")
    assert opening.feed_daemon(GREETING) == [ToDaemon(b"@RSYNCD: 32.0 sha512 md5\nsftpd\n")]
    opening.feed_client(b"C2")
    events = opening.feed_daemon(b"@RSYNCD: OK\nD1")
    assert events[-1] == Running(daemon_rest=b"D1", client_rest=b"C1C2")


def test_the_daemon_first_then_the_client() -> None:
    opening = Opening(ARGS, b"sftpd")
    assert opening.feed_daemon(GREETING + b"@RSYNCD: OK\n") == []  # nothing before the version
    events = opening.feed_client(struct.pack("<i", 31))
    assert events[0] == ToDaemon(b"@RSYNCD: 31.0 sha512 md5\nsftpd\n")
    assert isinstance(events[-1], Running)


def test_an_old_client_gets_no_digests_and_newline_separated_arguments() -> None:
    opening = Opening(ARGS, b"m")
    opening.feed_client(struct.pack("<i", 29))
    assert opening.feed_daemon(GREETING) == [ToDaemon(b"@RSYNCD: 29.0\nm\n")]
    events = opening.feed_daemon(b"@RSYNCD: OK\n")
    assert events[0] == ToDaemon(b"--server\n--sender\n-vlogDtpre.iLsfxCIvu\n.\nm/d\n\n")
    assert events[1] == ToClient(struct.pack("<i", 32))


def test_arguments_use_the_lower_protocol() -> None:
    receiver = ServerArgs(sender=False, options=(b"-r",), paths=(b"/a", b"/b c"))
    assert daemon_arguments(receiver, 30, b"M") == b"--server\x00-r\x00.\x00M/a\x00M/b c\x00\x00"
    opening = Opening(receiver, b"M")
    opening.feed_client(struct.pack("<i", 32))
    opening.feed_daemon(b"@RSYNCD: 29.0\n")
    assert opening.feed_daemon(b"@RSYNCD: OK\n")[0] == ToDaemon(b"--server\n-r\n.\nM/a\nM/b c\n\n")


@pytest.mark.parametrize("version", [19, 1001, -1, 0x7FFFFFFF])
def test_client_version_out_of_range(version: int) -> None:
    opening = Opening(ARGS, b"sftpd")
    assert opening.feed_client(struct.pack("<i", version)) == []  # judged after the greeting
    assert opening.feed_daemon(GREETING) == [ClientError(f"client protocol version {version}")]
    assert opening.finished


@pytest.mark.parametrize(
    ("daemon", "reason"),
    [
        (b"HTTP/1.0 200 OK\n", "unexpected daemon greeting b'HTTP/1.0 200 OK'"),
        (b"@RSYNCD:\n", "unexpected daemon greeting b'@RSYNCD:'"),
        (b"@RSYNCD: x.0\n", "unexpected daemon greeting b'@RSYNCD: x.0'"),
        (b"\n", "unexpected daemon greeting b''"),
    ],
)
def test_bad_daemon_greeting(daemon: bytes, reason: str) -> None:
    opening = Opening(ARGS, b"sftpd")
    assert opening.feed_daemon(daemon) == [DaemonError(reason)]


def test_daemon_error_after_the_greeting() -> None:
    opening = Opening(ARGS, b"sftpd")
    opening.feed_client(struct.pack("<i", 31))
    events = opening.feed_daemon(GREETING + b"@ERROR: chroot failed\n@RSYNCD: OK\n")
    assert events == [
        ToDaemon(b"@RSYNCD: 31.0 sha512 md5\nsftpd\n"),
        DaemonError("daemon refused: b'@ERROR: chroot failed'"),
    ]


def test_preambles_are_bounded() -> None:
    opening = Opening(ARGS, b"sftpd")
    assert opening.feed_client(b"x" * MAX_PREAMBLE) == []
    assert opening.feed_client(b"x") == [ClientError("client preamble too long")]
    opening = Opening(ARGS, b"sftpd")
    assert opening.feed_daemon(b"y" * MAX_PREAMBLE) == []
    assert opening.feed_daemon(b"y") == [DaemonError("daemon greeting too long")]
