"""The audit log: one JSON line per completed operation, written by a thread off the reactor.

The emitting thread (the reactor's or a storage thread) only appends the event to a bounded
deque: no lock, no wake-up, no encoding (a full deque drops the event and counts it, never
blocks a client). The writer thread wakes once per ``flush_interval``, encodes the whole
batch and writes and flushes it, so a crash loses at most about a second, and a busy
server pays one wake-up a second, not one per line (``put -r`` of small files: an event
per file, benchmarks/results/2026-12-04-events-cost.md).
At each flush it checks the path: renamed or removed (logrotate ``create``) means reopen
under the name; a file shorter than what was written (``copytruncate``) is noted in the
server log and writing continues at its new end (the file is opened in append mode).
``reopen()`` (call it on SIGHUP) reopens at the next flush.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path
from typing import IO

from twisted.logger import Logger

from sftpd.events.model import Event
from sftpd.log import clip

_log = Logger(namespace="sftpd.audit")


class AuditFile:
    """The ``[audit] file`` sink. ``start()`` starts the writer thread, ``stop()`` drains it."""

    def __init__(
        self, path: Path, *, queue_size: int = 100_000, flush_interval: float = 1.0
    ) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self.dropped = 0  # lines lost to a full queue or a failing file
        self.reopened = 0
        self._size = queue_size
        # deque.append and popleft are atomic: the emitting threads and the writer share it
        # without a lock (one writer thread takes from the left).
        self._queue: deque[Event] = deque()
        self._reopen = threading.Event()
        self._hurry = threading.Event()  # write the batch now (stop, reopen)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._file: IO[str] | None = None
        self._written = 0  # bytes written since opening (to notice a truncation)
        self._failing = False

    # -- reactor thread

    def emit(self, event: Event) -> None:
        if len(self._queue) < self._size:
            self._queue.append(event)  # encoded by the writer thread
            return
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 10_000 == 0:
            _log.warn("audit queue full: {dropped} lines dropped", dropped=self.dropped)

    def reopen(self) -> None:
        """Reopen the file at the next flush (SIGHUP after log rotation)."""
        self._reopen.set()
        self._hurry.set()  # wake the writer

    def start(self) -> None:
        self._open()
        self._thread = threading.Thread(target=self._run, name="sftpd-audit", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, close the file and end the thread."""
        if self._thread is None:
            return
        self._stopping = True
        self._hurry.set()
        self._thread.join(timeout)
        self._thread = None

    def queued(self) -> int:
        return len(self._queue)

    # -- writer thread

    def _run(self) -> None:
        # One wake-up per interval (sooner when stopped or asked to reopen): encode, write
        # and flush everything queued at once, then look at the path. Idle, it only looks
        # at the path once an interval.
        while True:
            self._hurry.wait(self.flush_interval)
            stop = self._stopping
            if not self._reopen.is_set():
                self._hurry.clear()
            lines = self._encode_queued()
            if lines:
                self._write("\n".join(lines) + "\n", len(lines))
            self._flush()
            if stop:
                self._close()
                return

    def _encode_queued(self) -> list[str]:
        take = self._queue.popleft
        lines: list[str] = []
        while True:
            try:
                event = take()
            except IndexError:
                return lines
            try:
                lines.append(event.to_json())
            except Exception:  # never the writer thread's end: the line is lost, counted
                self.dropped += 1
                _log.failure("audit line not encoded")

    def _write(self, text: str, count: int) -> None:
        if self._file is None:
            self.dropped += count
            return
        try:
            self._file.write(text)
            self._written += len(text)
        except OSError as e:
            self._failed("write", e)
            self.dropped += count

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
