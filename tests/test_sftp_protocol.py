"""SftpApp glue: dispatch, in-order replies, barriers, backpressure, bounds, framing, EOF, close."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs, formatEvent

from sftpd.apps.contract import ChannelApp
from sftpd.apps.sftp.constants import OpenFlag, PacketType, Status
from sftpd.apps.sftp.protocol import SftpApp, make_sftp_app
from sftpd.runtime.threads import CallViaRun
from sftpd.storage.files import LocalFile
from sftpd.storage.local import LocalStorage
from tests.test_sftp_handler import (
    Client,
    FakeIO,
    TrackingStorage,
    frame,
    make_storage,
    s,
    u32,
    u64,
)
from tests.test_sftp_handler import root as root  # the fixture

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _no_cached_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every storage call here must wait in QueuedBlocking (these tests hold requests in
    flight), as on a file system without RWF_NOWAIT or RESOLVE_CACHED; the inline paths
    are covered by tests/test_sftp_cached_reads.py and tests/test_storage_nowait.py."""
    monkeypatch.setattr(LocalFile, "pread_cached", lambda self, size, offset, limit: None)
    monkeypatch.setattr(LocalFile, "pwrite_nowait", lambda self, data, offset: False)
    monkeypatch.setattr(LocalFile, "close_nowait", lambda self: False)
    monkeypatch.setattr(LocalStorage, "open_nowait", lambda self, path, flags, mode: None)


class QueuedBlocking(CallViaRun):
    """Runs the real blocking calls only when the test says so (to hold requests in flight)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any]] = []

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        d: defer.Deferred[T] = defer.Deferred()
        self.calls.append((fn, args, kwargs, d))
        return d

    def release(self, index: int = 0) -> None:
        fn, args, kwargs, d = self.calls.pop(index)
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            d.errback()
        else:
            d.callback(result)

    def release_all(self) -> None:
        while self.calls:
            self.release()


class WindowIO(FakeIO):
    """A channel whose peer window is closed: everything written stays pending."""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.pending += len(data)

    def drain(self, app: SftpApp) -> None:
        self.pending = 0
        app.output_drained()


def stat_packet(rid: int, path: str = "/") -> bytes:
    return frame(bytes([PacketType.STAT]) + u32(rid) + s(path))


def test_make_sftp_app_is_a_channel_app(root: Path) -> None:
    c = Client(root)
    app: ChannelApp = make_sftp_app(c.ctx, c.io)
    assert isinstance(app, SftpApp)


def test_many_requests_in_one_chunk_each_get_one_reply(root: Path) -> None:
    c = Client(root)
    c.feed(b"".join(stat_packet(i) for i in range(50)))
    assert sorted(r.id for r in c.replies() if r.id is not None) == list(range(50))


def read_packet(rid: int, handle: bytes, offset: int = 0, length: int = 4) -> bytes:
    return frame(bytes([PacketType.READ]) + u32(rid) + s(handle) + u64(offset) + u32(length))


def _open_handle(c: Client, blocking: QueuedBlocking, name: str = "f") -> bytes:
    c.send(PacketType.OPEN, s(name), u32(OpenFlag.READ), u32(0))
    blocking.release_all()
    handle: bytes = c.replies()[0].handle
    return handle


def test_reads_run_concurrently_but_replies_keep_request_order(root: Path) -> None:
    """OpenSSH's client truncates an in-place download at the first reordered READ reply."""
    blocking = QueuedBlocking()
    (root / "f").write_bytes(b"0123456789ab")
    c = Client(root, blocking=blocking)
    h = _open_handle(c, blocking)
    c.feed(read_packet(1, h, 0) + read_packet(2, h, 4) + read_packet(3, h, 8))
    assert c.replies() == [] and c.app.in_flight == 3
    blocking.release(2)  # the third completes first: held back
    assert c.replies() == []
    blocking.release(0)  # the first: written at once
    assert [(r.id, r.data) for r in c.replies()] == [(1, b"0123")]
    blocking.release(0)  # the second: written, then the third that was waiting
    assert [(r.id, r.data) for r in c.replies()] == [(2, b"4567"), (3, b"89ab")]
    assert c.app.in_flight == 0


def test_other_requests_are_barriers(root: Path) -> None:
    blocking = QueuedBlocking()
    (root / "f").write_bytes(b"0123456789ab")
    c = Client(root, blocking=blocking)
    h = _open_handle(c, blocking)
    c.feed(read_packet(1, h) + read_packet(2, h) + stat_packet(3) + read_packet(4, h))
    assert c.app.in_flight == 2  # the STAT waits for both reads
    blocking.release_all()
    assert [r.id for r in c.replies()] == [1, 2, 3, 4]
    c.feed(stat_packet(5) + stat_packet(6))
    assert c.app.in_flight == 1  # one barrier at a time
    blocking.release_all()
    assert [r.id for r in c.replies()] == [5, 6]


def test_pending_output_pauses_dispatch_until_drained(root: Path) -> None:
    c = Client(root)
    c.io.pending = 5 * 1024 * 1024
    c.feed(b"".join(stat_packet(i) for i in range(10)))
    assert c.replies() == [] and c.app.queued() > 0
    c.io.pending = 0
    c.app.output_drained()
    assert [r.id for r in c.replies()] == list(range(10))
    assert c.app.queued() == 0


def test_slow_reader_stops_big_reads_at_the_output_limit(root: Path) -> None:
    io = WindowIO()
    (root / "big").write_bytes(os.urandom(1 << 20))
    c = Client(root, init=False)
    c.io = io
    c.app = SftpApp(c.ctx, io)
    c.feed(frame(bytes([PacketType.INIT]) + u32(3)))
    assert c.replies()[0].type == PacketType.VERSION
    io.pending = 0
    handle = c.open("big", OpenFlag.READ)
    read = bytes([PacketType.READ])
    packets = [frame(read + u32(i) + s(handle) + u64(0) + u32(261120)) for i in range(40)]
    c.feed(b"".join(packets))
    first = c.replies()
    # Dispatch stops once more than 4 MiB wait for the window: 17 * 255 KiB > 4 MiB.
    assert len(first) == 17 and all(r.type == PacketType.DATA for r in first)
    assert io.pending > 4 * 1024 * 1024
    c.feed(stat_packet(999))  # still queued behind the reads
    assert c.replies() == []
    io.drain(c.app)
    assert len(c.replies()) == 17
    io.drain(c.app)
    io.drain(c.app)
    rest = c.replies()
    assert [r.id for r in rest][-1] == 999 and len(first) + 17 + len(rest) == 41


def test_in_flight_requests_are_bounded(root: Path) -> None:
    blocking = QueuedBlocking()
    c = Client(root, blocking=blocking)
    (root / "f").write_bytes(b"x" * 1000)
    h = _open_handle(c, blocking)
    c.feed(b"".join(read_packet(i, h, i) for i in range(200)))
    assert c.app.in_flight == 128 and len(blocking.calls) == 128
    blocking.release_all()  # completing replies lets the queued 72 in, and they complete too
    ids = [r.id for r in c.replies()]
    assert ids == list(range(200))
    assert c.app.in_flight == 0


def test_in_flight_bytes_are_bounded_for_big_reads_and_writes(root: Path) -> None:
    """Replies leave in order: a slow first READ must not let 128 full replies pile up."""
    blocking = QueuedBlocking()
    c = Client(root, blocking=blocking)
    (root / "f").write_bytes(b"x" * 300_000)
    h = _open_handle(c, blocking)
    c.feed(b"".join(read_packet(i, h, 0, 261120) for i in range(100)))
    assert c.app.in_flight == 33  # 32 * 255 KiB < 8 MiB <= 33 * 255 KiB
    blocking.release_all()
    assert [r.id for r in c.replies()] == list(range(100))
    w = bytes([PacketType.WRITE])
    handles = []
    for i in range(60):  # one handle each: writes on one handle run one at a time
        c.send(PacketType.OPEN, s(f"g{i}"), u32(OpenFlag.WRITE | OpenFlag.CREAT), u32(0))
        blocking.release_all()
        handles.append(c.replies()[0].handle)
    c.feed(
        b"".join(frame(w + u32(i) + s(handles[i]) + u64(0) + s(b"y" * 200_000)) for i in range(60))
    )
    assert c.app.in_flight == 42  # 41 * 200 KB < 8 MiB <= 42 * 200 KB
    blocking.release_all()
    assert [r.id for r in c.replies()] == list(range(60))


def test_flooding_without_reading_closes_the_session(root: Path) -> None:
    c = Client(root)
    c.io.pending = 1 << 30  # the client never reads
    write = bytes([PacketType.WRITE]) + u32(1) + s(b"h") + u64(0) + s(b"x" * 200_000)
    for _ in range(120):  # a client ignoring the window: past 16 MiB queued, it is dropped
        c.feed(frame(write))
        if c.io.exited is not None:
            break
    assert c.io.exited == 1
    assert c.app.queued() == 0  # buffers released
    c.feed(frame(write))  # ignored after close
    assert c.app.queued() == 0


def test_oversized_packet_closes_channel(root: Path) -> None:
    c = Client(root)
    c.feed(stat_packet(1) + b"\xff\xff\xff\xff" + b"\x00" * 100)
    assert c.io.exited == 1
    assert c.app.queued() == 0


def test_packet_without_request_id_closes_channel(root: Path) -> None:
    c = Client(root)
    c.feed(frame(b"\x11\x00"))
    assert c.io.exited == 1 and c.replies() == []


def test_bad_message_is_answered_and_session_continues(root: Path) -> None:
    c = Client(root)
    c.feed(frame(bytes([PacketType.STAT]) + u32(5) + b"\x00\x00\x00\x09ab") + stat_packet(6))
    replies = c.replies()
    assert [(r.id, r.code) for r in replies[:1]] == [(5, Status.BAD_MESSAGE)]
    assert replies[1].id == 6 and replies[1].type == PacketType.ATTRS
    assert c.io.exited is None


def test_bad_message_is_logged_once_per_session_without_paths(root: Path) -> None:
    c = Client(root)
    bad = frame(bytes([PacketType.OPEN]) + u32(7) + s(str(root / "x")) + u32(1))  # no attrs
    with capturedLogs() as events:
        c.feed(bad + bad + bad)
    assert [r.code for r in c.replies()] == [Status.BAD_MESSAGE] * 3
    lines = [(e["log_level"], formatEvent(e)) for e in events]
    loud = [text for level, text in lines if level >= LogLevel.info]
    assert len(loud) == 1 and len(lines) == 3, lines
    assert "BAD_MESSAGE to OPEN request 7 of alice" in loud[0]
    assert "truncated uint32" in loud[0]
    assert all(str(root) not in text for _, text in lines)


@pytest.mark.parametrize(
    "first",
    [
        stat_packet(1),
        frame(bytes([PacketType.EXTENDED]) + u32(2) + s("limits@openssh.com")),
        frame(bytes([PacketType.VERSION]) + u32(3)),
        frame(b"\x99" + u32(3)),
        frame(b""),
    ],
    ids=["stat", "extended", "version", "unknown", "empty"],
)
def test_a_request_before_init_closes_the_session(root: Path, first: bytes) -> None:
    """OpenSSH's sftp-server: "Received N request before init" is fatal. No reply, exit
    status 1 (the channel then closes); what follows is not served, not even an INIT."""
    (root / "f").write_bytes(b"x")
    c = Client(root, init=False)
    with capturedLogs() as events:
        c.feed(first + frame(bytes([PacketType.INIT]) + u32(3)) + stat_packet(5, "/f"))
    assert c.replies() == [] and c.io.exited == 1 and c.io.exit_calls == 1
    assert c.app.queued() == 0
    c.feed(stat_packet(6))
    assert c.replies() == []
    (warn,) = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]
    assert "before SSH_FXP_INIT" in warn and "alice" in warn


def test_init_first_then_requests_in_the_same_chunk(root: Path) -> None:
    c = Client(root, init=False)
    c.feed(frame(bytes([PacketType.INIT]) + u32(3)) + stat_packet(1) + stat_packet(2))
    assert [(r.type, r.id) for r in c.replies()] == [
        (PacketType.VERSION, None),
        (PacketType.ATTRS, 1),
        (PacketType.ATTRS, 2),
    ]
    c.feed(frame(bytes([PacketType.INIT]) + u32(3)) + stat_packet(3))  # OpenSSH answers again
    assert [r.type for r in c.replies()] == [PacketType.VERSION, PacketType.ATTRS]
    assert c.io.exited is None


def test_eof_exits_after_the_last_reply(root: Path) -> None:
    blocking = QueuedBlocking()
    c = Client(root, blocking=blocking)
    c.feed(stat_packet(1) + stat_packet(2))
    c.app.eof_received()
    assert c.io.exited is None
    blocking.release_all()
    assert [r.id for r in c.replies()] == [1, 2]
    assert c.io.exited == 0 and c.io.exit_calls == 1


def test_eof_with_nothing_pending_exits_at_once(root: Path) -> None:
    c = Client(root)
    c.app.eof_received()
    assert c.io.exited == 0


def test_close_waits_for_in_flight_read(root: Path) -> None:
    blocking = QueuedBlocking()
    tracking = TrackingStorage(make_storage(root))
    (root / "f").write_bytes(b"content")
    c = Client(root, blocking=blocking, storage=tracking)
    c.send(PacketType.OPEN, s("f"), u32(OpenFlag.READ), u32(0))
    blocking.release_all()
    handle = c.replies()[0].handle
    file = tracking.opened[0]
    read_id = c.send(PacketType.READ, s(handle), u64(0), u32(100))
    close_id = c.send(PacketType.CLOSE, s(handle))
    late_id = c.send(PacketType.READ, s(handle), u64(0), u32(1))
    assert len(blocking.calls) == 1  # only the pread: the close (a barrier) waits for it
    blocking.release()  # the pread completes; now the close is scheduled
    assert [(r.id, r.data) for r in c.replies()] == [(read_id, b"content")]
    assert len(blocking.calls) == 1 and not file.closed
    blocking.release()
    assert file.closed
    replies = c.replies()
    assert (replies[0].id, replies[0].code) == (close_id, Status.OK)
    # the READ sent after the CLOSE runs after it, on a handle that is gone
    assert (replies[1].id, replies[1].message) == (late_id, "invalid handle")
    assert c.app.handler.handles.used == 0


def test_connection_lost_drops_late_replies_and_closes_handles(root: Path) -> None:
    blocking = QueuedBlocking()
    tracking = TrackingStorage(make_storage(root))
    (root / "f").write_bytes(b"content")
    c = Client(root, blocking=blocking, storage=tracking)
    c.send(PacketType.OPEN, s("f"), u32(OpenFlag.READ), u32(0))
    blocking.release_all()
    handle = c.replies()[0].handle
    c.send(PacketType.READ, s(handle), u64(0), u32(100))
    c.send(PacketType.OPEN, s("f"), u32(OpenFlag.READ), u32(0))  # waits behind the READ
    c.app.connection_lost()
    blocking.release_all()
    assert c.replies() == []
    assert len(tracking.opened) == 1  # the queued OPEN never ran
    assert all(f.closed for f in tracking.opened)
    assert c.app.handler.handles.used == 0


def test_a_big_input_backlog_pauses_reading_and_resumes_when_served(root: Path) -> None:
    blocking = QueuedBlocking()
    (root / "f").write_bytes(b"0123456789ab")
    c = Client(root, blocking=blocking)
    h = _open_handle(c, blocking)
    c.feed(stat_packet(1))  # a barrier held in flight: nothing behind it is dispatched
    write = bytes([PacketType.WRITE]) + u32(2) + s(h) + u64(0) + s(b"x" * 200_000)
    for _ in range(6):
        c.feed(frame(write))
    assert c.io.reading_paused  # > 1 MiB queued: the window is no longer granted
    assert c.io.exited is None
    blocking.release_all()
    assert not c.io.reading_paused


def test_a_write_runs_alone_on_its_handle(root: Path) -> None:
    """Overlapping I/O on one handle must not be reordered (filexfer draft)."""
    blocking = QueuedBlocking()
    (root / "f").write_bytes(b"0123456789ab")
    (root / "g").write_bytes(b"0123456789ab")
    c = Client(root, blocking=blocking)
    c.send(PacketType.OPEN, s("f"), u32(OpenFlag.READ | OpenFlag.WRITE), u32(0))
    blocking.release_all()
    h = c.replies()[0].handle
    c.send(PacketType.OPEN, s("g"), u32(OpenFlag.READ), u32(0))
    blocking.release_all()
    g = c.replies()[0].handle
    write = frame(bytes([PacketType.WRITE]) + u32(2) + s(h) + u64(0) + s(b"WXYZ"))
    c.feed(read_packet(1, h) + read_packet(9, g) + write + read_packet(3, h) + read_packet(4, g))
    assert c.app.in_flight == 2  # read 1 on f and read 9 on g; the write waits for read 1
    blocking.release(0)  # read 1 done: the write starts, alone on f
    assert c.app.in_flight == 2 and len(blocking.calls) == 2
    blocking.release_all()
    replies = c.replies()
    assert [r.id for r in replies] == [1, 9, 2, 3, 4]
    assert replies[0].data == b"0123" and replies[3].data == b"WXYZ"  # read 3 saw the write
