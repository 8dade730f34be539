"""The storage-layer recorder over a real jail: inline (nowait) paths, refusals, logout."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from sftpd.events.model import Event
from sftpd.events.recorder import Events
from sftpd.events.storage import EventsStorage
from sftpd.storage.enforce import RulesStorage
from sftpd.storage.local import LocalStorage
from sftpd.storage.rules import Rules
from tests.test_storage_nowait import shm_root  # noqa: F401  (fixture)

WRITE_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


def _storage(root: Path, *, read_only: bool = False) -> tuple[EventsStorage, Sink]:
    sink = Sink()
    hub = Events([sink], Clock())
    rules = Rules(read_only=read_only)
    storage = EventsStorage(RulesStorage(LocalStorage(root), rules), hub, threading.Lock())
    storage.identify("alice", "password", "127.0.0.1:5", "c1")
    return storage, sink


def test_inline_open_write_read_close_are_recorded(shm_root: Path) -> None:  # noqa: F811
    storage, sink = _storage(shm_root)
    f = storage.open_nowait("/a.bin", WRITE_NEW, 0o644)
    assert f is not None
    assert f.pwrite_nowait(b"abc", 0) and f.pwrite_nowait(b"def", 3)
    assert f.close_nowait()
    r = storage.open_nowait("/a.bin", os.O_RDONLY, 0)
    assert r is not None
    assert r.pread_cached(100, 0, 1 << 20) == b"abcdef"
    assert r.close_nowait()
    up, down = sink.events
    assert (up.op, up.path, up.bytes, up.size) == ("upload", "/a.bin", 6, 6)
    assert up.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert (down.op, down.bytes) == ("download", 6)


def test_events_come_only_once_the_login_is_identified(tmp_path: Path) -> None:
    sink = Sink()
    storage = EventsStorage(LocalStorage(tmp_path), Events([sink], Clock()), threading.Lock())
    storage.mkdir("/early", 0o755)
    storage.identify("alice", "password", "127.0.0.1:5", "c1")
    storage.mkdir("/late", 0o755)
    assert [(e.op, e.path) for e in sink.events] == [("mkdir", "/late")]


def test_a_server_side_copy_counts_as_a_read_and_a_write_and_drops_the_sha(
    tmp_path: Path,
) -> None:
    storage, sink = _storage(tmp_path)
    (tmp_path / "src").write_bytes(b"0123456789")
    src = storage.open("/src", os.O_RDONLY, 0)
    dst = storage.open("/dst", WRITE_NEW, 0o644)
    storage.copy_range(src, 0, 0, dst, 0)  # 0: to the end of the source
    storage.copy_range(src, 8, 100, dst, 10)  # a length past the end: what there is
    src.close()
    dst.close()
    assert (tmp_path / "dst").read_bytes() == b"012345678989"
    (down,) = [e for e in sink.events if e.op == "download"]
    (up,) = [e for e in sink.events if e.op == "upload"]
    assert (down.path, down.bytes) == ("/src", 12)
    assert (up.path, up.bytes, up.size, up.sha256) == ("/dst", 12, 12, None)


def test_refusals_are_denied_and_errors_carry_the_errno_text(tmp_path: Path) -> None:
    storage, sink = _storage(tmp_path, read_only=True)
    with pytest.raises(PermissionError):
        storage.open("/x", WRITE_NEW, 0o644)
    with pytest.raises(PermissionError):
        storage.mkdir("/d", 0o755)
    rw, sink2 = _storage(tmp_path)
    with pytest.raises(FileNotFoundError):
        rw.remove("/missing")
    with pytest.raises(FileNotFoundError):
        rw.open("/missing", os.O_RDONLY, 0)
    assert [(e.op, e.outcome, e.reason) for e in sink.events] == [
        ("upload", "denied", "read_only"),
        ("mkdir", "denied", "read_only"),
    ]
    assert [(e.op, e.outcome, e.reason) for e in sink2.events] == [
        ("delete", "error", "No such file or directory"),
        ("download", "error", "No such file or directory"),
    ]


def test_logout_turns_an_open_upload_into_incomplete_once(tmp_path: Path) -> None:
    storage, sink = _storage(tmp_path)
    scp = storage.for_protocol("scp")
    f = scp.open("/u.bin", WRITE_NEW, 0o644)
    f.pwrite(b"half", 0)
    storage.close()
    storage.close()
    (up,) = sink.events
    assert (up.op, up.outcome, up.who.protocol, up.bytes) == ("upload", "incomplete", "scp", 4)
    f.close()  # the late close of a handle after logout adds nothing
    assert len(sink.events) == 1


def test_files_an_app_closes_for_a_vanished_client_are_incomplete(tmp_path: Path) -> None:
    storage, sink = _storage(tmp_path)
    one, two = storage.for_protocol("sftp"), storage.for_protocol("sftp")
    left = one.open("/left.bin", WRITE_NEW, 0o644)
    left.pwrite(b"part", 0)
    other = two.open("/other.bin", WRITE_NEW, 0o644)
    other.pwrite(b"whole", 0)
    one.abandon()  # the first app's channel closed with /left.bin open
    left.close()  # ... and the app closes it: nothing more
    other.close()  # the other channel's upload completes normally
    assert [(e.path, e.outcome, e.bytes) for e in sink.events] == [
        ("/left.bin", "incomplete", 4),
        ("/other.bin", "ok", 5),
    ]
