"""One session stuck in a slow storage call must not delay another session's requests."""

from __future__ import annotations

import os
import queue
import struct
import threading
import time
from pathlib import Path
from typing import Any

from sftpd.apps.contract import SessionContext
from sftpd.apps.sftp.protocol import make_sftp_app
from sftpd.runtime.threads import WorkerPool
from sftpd.storage.local import LocalStorage

FXP_INIT, FXP_VERSION, FXP_STATUS, FXP_STAT, FXP_ATTRS = 1, 2, 101, 17, 105


class QueueReactor:
    """The only reactor method thread-pool results need: callFromThread, run by the test."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Any, tuple[Any, ...], dict[str, Any]]] = queue.Queue()

    def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
        self.calls.put((f, a, kw))

    def pump_until(self, cond: Any, guard: float = 30.0) -> bool:
        deadline = time.monotonic() + guard  # a deadlock guard, not a timing assertion
        while not cond():
            try:
                f, a, kw = self.calls.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            f(*a, **kw)
        return True


class SlowStorage(LocalStorage):
    """Real storage whose stat of /slow blocks until released (the injected slowness)."""

    def __init__(self, root: Path, gate: threading.Event, entered: threading.Event) -> None:
        super().__init__(root)
        self.gate = gate
        self.entered = entered

    def stat(self, path: str, *, follow: bool = True) -> os.stat_result:
        if path == "/slow":
            self.entered.set()
            self.gate.wait(60)
        return super().stat(path, follow=follow)


class Recorder:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def write_parts(self, head: bytes, body: bytes | memoryview) -> None:
        self.write(head + body)

    def write_stderr(self, data: bytes) -> None:
        pass

    def exit(self, status: int) -> None:
        pass

    def pending_output(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def replies(self) -> list[tuple[int, int]]:
        """(type, request id) of every complete reply so far (VERSION has id 0)."""
        out, i, buf = [], 0, bytes(self.out)
        while i + 5 <= len(buf):
            (n,) = struct.unpack(">I", buf[i : i + 4])
            kind = buf[i + 4]
            rid = struct.unpack(">I", buf[i + 5 : i + 9])[0] if kind != FXP_VERSION else 0
            out.append((kind, rid))
            i += 4 + n
        return out


def _packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def _stat(rid: int, path: bytes) -> bytes:
    return _packet(FXP_STAT, struct.pack(">II", rid, len(path)) + path)


def test_slow_storage_call_does_not_delay_other_session(tmp_path: Path) -> None:
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    root_a.mkdir()
    root_b.mkdir()
    (root_a / "slow").write_bytes(b"x")
    (root_b / "file").write_bytes(b"y")
    reactor = QueueReactor()
    gate, entered = threading.Event(), threading.Event()
    blocking = WorkerPool(reactor, max_threads=4)  # type: ignore[arg-type]
    try:
        ctx_a = SessionContext(
            "a", "/", SlowStorage(root_a, gate, entered), blocking, reactor=reactor
        )
        ctx_b = SessionContext("b", "/", LocalStorage(root_b), blocking, reactor=reactor)
        io_a, io_b = Recorder(), Recorder()
        app_a, app_b = make_sftp_app(ctx_a, io_a), make_sftp_app(ctx_b, io_b)
        init = _packet(FXP_INIT, struct.pack(">I", 3))
        app_a.data_received(init + _stat(1, b"/slow"))
        assert entered.wait(30), "session A never reached its storage call"
        app_b.data_received(init + _stat(7, b"/file") + _stat(8, b"/file"))
        assert reactor.pump_until(lambda: len(io_b.replies()) == 3)
        assert io_b.replies()[1:] == [(FXP_ATTRS, 7), (FXP_ATTRS, 8)]
        assert (FXP_ATTRS, 1) not in io_a.replies()  # A is still stuck, B was served
        gate.set()
        assert reactor.pump_until(lambda: (FXP_ATTRS, 1) in io_a.replies())
        app_a.connection_lost()
        app_b.connection_lost()
    finally:
        gate.set()
        blocking.stop()
