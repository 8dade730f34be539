"""The audit log: one JSON line per completed operation, written by a thread off the reactor.

The reactor only puts the encoded line on a bounded queue (a full queue drops the line and
counts it, never blocks a client). The writer thread wakes once per ``flush_interval``
while lines come, writing and flushing the whole batch, so a crash loses at most about a
second, and a busy server pays one wake-up a second, not one per line.
At each flush it checks the path: renamed or removed (logrotate ``create``) means reopen
under the name; a file shorter than what was written (``copytruncate``) is noted in the
server log and writing continues at its new end (the file is opened in append mode).
``reopen()`` (call it on SIGHUP) reopens at the next flush.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import IO

from twisted.logger import Logger

from sftpd.events.model import Event
from sftpd.log import clip

_log = Logger(namespace="sftpd.audit")
_STOP = object()


class AuditFile:
    """The ``[audit] file`` sink. ``start()`` starts the writer thread, ``stop()`` drains it."""

    def __init__(
        self, path: Path, *, queue_size: int = 100_000, flush_interval: float = 1.0
    ) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self.dropped = 0  # lines lost to a full queue or a failing file
        self.reopened = 0
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        self._reopen = threading.Event()
        self._hurry = threading.Event()  # write the batch now (stop, reopen)
        self._thread: threading.Thread | None = None
        self._file: IO[str] | None = None
        self._written = 0  # bytes written since opening (to notice a truncation)
        self._failing = False

    # -- reactor thread

    def emit(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event.to_json() + "\n")
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                _log.warn("audit queue full: {dropped} lines dropped", dropped=self.dropped)

    def reopen(self) -> None:
        """Reopen the file at the next flush (SIGHUP after log rotation)."""
        self._reopen.set()
        self._hurry.set()
        try:
            self._queue.put_nowait(None)  # wake the writer
        except queue.Full:
            pass  # the writer is busy and will see the flag at its next flush

    def start(self) -> None:
        self._open()
        self._thread = threading.Thread(target=self._run, name="sftpd-audit", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, close the file and end the thread."""
        if self._thread is None:
            return
        self._hurry.set()
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def queued(self) -> int:
        return self._queue.qsize()

    # -- writer thread

    def _run(self) -> None:
        # One wake-up per batch, not per line: after the first line the writer sleeps out
        # the flush interval (unless stopped or asked to reopen), then writes and flushes
        # everything queued at once. Idle, it still looks at the path once an interval.
        while True:
            try:
                first = self._queue.get(timeout=self.flush_interval)
            except queue.Empty:
                first = None
            if first is not None and first is not _STOP:
                self._hurry.wait(self.flush_interval)
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            for item in batch:
                if item is _STOP:
                    stop = True
                elif isinstance(item, str):
                    self._write(item)
            self._flush()
            if stop:
                self._close()
                return
            if not self._reopen.is_set():
                self._hurry.clear()

    def _write(self, line: str) -> None:
        if self._file is None:
            self.dropped += 1
            return
        try:
            self._file.write(line)
            self._written += len(line)
        except OSError as e:
            self._failed("write", e)
            self.dropped += 1

    def _flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as e:
                self._failed("flush", e)
        if self._reopen.is_set():
            self._reopen.clear()
            self._reopen_now("reopened on request")
            return
        self._check_path()

    def _check_path(self) -> None:
        if self._file is None:
            self._reopen_now("reopened after an error")
            return
        try:
            st = os.stat(self.path)
            mine = os.fstat(self._file.fileno())
        except OSError:
            self._reopen_now("reopened: the file was renamed or removed")
            return
        if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            self._reopen_now("reopened: the file was renamed or removed")
        elif mine.st_size < self._written:
            _log.info("audit file truncated; writing on at its new end")
            self._written = mine.st_size

    def _reopen_now(self, why: str) -> None:
        self._close()
        if self._open():
            self.reopened += 1
            _log.info("audit file {cause}", cause=why)

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._file = os.fdopen(fd, "a", encoding="ascii", buffering=1 << 16)
            self._written = os.fstat(fd).st_size
        except OSError as e:
            self._failed("open", e)
            return False
        self._failing = False
        return True

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                self._failed("close", e)
            self._file = None

    def _failed(self, what: str, error: OSError) -> None:
        if not self._failing:  # once per failure streak, not once per line
            self._failing = True
            _log.error("audit file {what} failed: {error}", what=what, error=error.strerror or "")


class AuditToLog:
    """``[audit] file = "-"``: every event as one line of the server log."""

    def emit(self, event: Event) -> None:
        d = event.to_dict()
        d["path"] = clip(event.path)
        d["target"] = clip(event.target) if event.target else ""
        d["started"] = d.pop("time")
        _log.info(
            "audit op={op} user={user} protocol={protocol} client={client} session={session} "
            "path={path} target={target} bytes={bytes} size={size} outcome={outcome} "
            "reason={reason} sha256={sha256}",
            **d,
        )
