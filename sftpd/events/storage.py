"""Recording at the storage layer: every protocol's file operations become events, unchanged apps.

The assembly wraps each login's storage (above the rules layer, so a refusal is seen as
"denied" with its rule) in an :class:`EventsStorage`. Nothing is recorded until the login
is identified (``identify``, called on authentication success); the app dispatcher asks
``for_protocol("scp")`` (or "hashes", "rsync") for a view that names its protocol, sftp is
the default. The sessions metric counts, per login, each protocol that touched a file.
``close`` (the avatar's logout) turns open transfers into "incomplete".

Storage calls run on worker threads (and the ``*_nowait`` ones on the reactor thread), so
one lock, shared by the whole server (the per-user upload tracker is shared across a
user's connections), guards the recorders; a file's reads and writes (and its hashing)
take only that file's own lock. Per READ/WRITE only byte counts (and the
SHA-256 of sequential writes) are kept; the events are built at close.
"""

from __future__ import annotations

import os
import posixpath
import threading
from typing import Any

from sftpd.events.model import Identity
from sftpd.events.recorder import Events, SessionEvents
from sftpd.storage.base import File, Storage
from sftpd.storage.delegate import DelegatingFile, DelegatingStorage
from sftpd.storage.rules import Op, RuleDenied

_WRITING = os.O_WRONLY | os.O_RDWR
# What a refused rule means as an event operation (others, e.g. chmod, are not events).
_DENIED_AS = {
    Op.DOWNLOAD: "download",
    Op.UPLOAD: "upload",
    Op.OVERWRITE: "upload",
    Op.DELETE_FILES: "delete",
    Op.DELETE_DIRS: "rmdir",
    Op.RENAME_FILES: "rename",
    Op.RENAME_DIRS: "rename",
    Op.CREATE_DIRS: "mkdir",
}


def _text(exc: OSError) -> str:
    return exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__


def _range_length(src: File, offset: int, length: int) -> int:
    """The bytes a copy of ``length`` (0: to the end) from ``offset`` of ``src`` moves."""
    try:
        available = max(src.fstat().st_size - offset, 0)
    except OSError:
        return length
    return min(length, available) if length else available


class _Login:
    """What the views of one login share: the identity and one recorder per protocol."""

    def __init__(self, hub: Events, lock: threading.Lock, metrics: Any = None) -> None:
        self.hub = hub
        self.lock = lock
        self.metrics = metrics
        self.base: Identity | None = None
        self.recorders: dict[str, SessionEvents] = {}
        self.closed = False

    def recorder(self, protocol: str) -> SessionEvents | None:
        """The recorder for ``protocol`` (call with the lock held); None before identify."""
        if self.base is None or self.closed:
            return None
        rec = self.recorders.get(protocol)
        if rec is None:
            who = Identity(
                self.base.user, self.base.auth, protocol, self.base.client, self.base.session
            )
            rec = self.recorders[protocol] = self.hub.session(who)
            if self.metrics is not None:
                self.metrics.session_started(protocol)
        return rec


class EventsStorage(DelegatingStorage):
    """A Storage that reports what happens through it to the server's event hub."""

    def __init__(
        self,
        inner: Storage,
        hub: Events,
        lock: threading.Lock,
        *,
        protocol: str = "sftp",
        login: _Login | None = None,
        metrics: Any = None,
    ) -> None:
        super().__init__(inner)
        self.protocol = protocol
        self._login = login or _Login(hub, lock, metrics)
        self._lock = lock
        self._files: set[EventsFile] = set()  # opened through this view and still open

    # -- wiring

    def identify(self, user: str, auth: str, client: str, session: str) -> None:
        """The login is authenticated: from now on operations are recorded."""
        self._login.base = Identity(user, auth, "ssh", client, session)

    def for_protocol(self, protocol: str) -> EventsStorage:
        """A view of the same storage whose operations are recorded under ``protocol``."""
        return EventsStorage(
            self.inner, self._login.hub, self._lock, protocol=protocol, login=self._login
        )

    def abandon(self) -> None:
        """The app's client went away (its channel closed): what is still open through
        this view is incomplete, and the app's closing of it records nothing more."""
        with self._lock:
            files, self._files = self._files, set()
            for file in files:
                file.lost()

    def _rec(self) -> SessionEvents | None:
        return self._login.recorder(self.protocol)

    def _denied(self, exc: RuleDenied, path: str, target: str = "") -> None:
        op = _DENIED_AS.get(exc.op)
        if op is None:
            return
        with self._lock:
            rec = self._rec()
            if rec is not None:
                rec.denied(op, exc.path or path, exc.rule, target)

    def rsync_transferred(self, op: str, name: bytes, size: int, count: int) -> None:
        """One line of the rsync daemon's transfer log (``op`` recv, send, del., or
        summary): an event under the path relative to the user's root."""
        if name.endswith(b"/") and op != "del.":
            return  # a directory's line
        text = name.rstrip(b"/").decode("utf-8", "backslashreplace")
        path = posixpath.normpath("/" + text.lstrip("/")) if text else ""
        kind = {"recv": "upload", "send": "download", "summary": "session"}.get(op)
        if op == "del.":
            kind = "rmdir" if name.endswith(b"/") else "delete"
        if kind is None or (kind != "session" and path in ("", "/")):
            return
        with self._lock:
            rec = self._rec()
            if rec is not None:
                rec.transferred(kind, path, count, size if kind != "delete" else None)

    # -- files

    def wrap_file(self, file: File, path: str, flags: int) -> File:
        if self._login.base is None:
            return file  # not identified yet (an app's own files before login)
        write = bool(flags & _WRITING)
        truncate = bool(flags & os.O_TRUNC)
        size = 0
        if write and not truncate:
            try:
                size = file.fstat().st_size
            except OSError:
                size = 1  # unknown: not a fresh file, no SHA-256
        with self._lock:  # once per open: the recorder, and the file recorded in it
            rec = self._rec()
            if rec is None:
                return file
            wrapped = EventsFile(file, rec, self._lock, write=write, owner=self._files)
            rec.opened(wrapped, path, write=write, truncate=truncate, size=size)
            self._files.add(wrapped)
        return wrapped

    def _open_failed(self, exc: OSError, path: str, flags: int) -> None:
        if isinstance(exc, RuleDenied):
            self._denied(exc, path)
            return
        with self._lock:
            rec = self._rec()
            if rec is None:
                return
            key = object()
            write = bool(flags & _WRITING)
            rec.opened(key, path, write=write, truncate=False, size=1)
            rec.failed(key, _text(exc))
            rec.closed(key)

    def open(self, path: str, flags: int, mode: int) -> File:
        try:
            return super().open(path, flags, mode)
        except OSError as exc:
            self._open_failed(exc, path, flags)
            raise

    def open_nowait(self, path: str, flags: int, mode: int) -> File | None:
        try:
            return super().open_nowait(path, flags, mode)
        except OSError as exc:
            self._open_failed(exc, path, flags)
            raise

    def copy_range(
        self, src: File, src_offset: int, length: int, dst: File, dst_offset: int
    ) -> None:
        # A server-side copy (SFTP copy-data) counts as the client reading the range and
        # writing it: download bytes on the source, upload bytes on the target.
        count = _range_length(src, src_offset, length)
        super().copy_range(src, src_offset, length, dst, dst_offset)
        if isinstance(src, EventsFile):
            src.copied_from(count)
        if isinstance(dst, EventsFile):
            dst.copied_into(dst_offset, count)

    # -- names

    def _simple(self, what: str, path: str, call: Any, *args: Any, target: str = "") -> None:
        try:
            call(*args)
        except RuleDenied as exc:
            self._denied(exc, path, target)
            raise
        except OSError as exc:
            self._record(what, path, target, _text(exc))
            raise
        self._record(what, path, target, "")

    def _record(self, what: str, path: str, target: str, error: str) -> None:
        with self._lock:
            rec = self._rec()
            if rec is None:
                return
            if what == "rename":
                rec.renamed(path, target, error=error)
            elif what == "delete":
                rec.removed(path, error=error)
            elif what == "mkdir":
                rec.mkdir(path, error=error)
            else:
                rec.rmdir(path, error=error)

    def remove(self, path: str) -> None:
        self._simple("delete", path, self.inner.remove, path)

    def mkdir(self, path: str, mode: int) -> None:
        self._simple("mkdir", path, self.inner.mkdir, path, mode)

    def rmdir(self, path: str) -> None:
        self._simple("rmdir", path, self.inner.rmdir, path)

    def rename(self, old: str, new: str, *, overwrite: bool) -> None:
        def call() -> None:
            self.inner.rename(old, new, overwrite=overwrite)

        self._simple("rename", old, call, target=new)

    def close(self) -> None:
        """The logout: every transfer still open is incomplete."""
        with self._lock:
            login = self._login
            if not login.closed:
                login.closed = True
                for protocol, rec in login.recorders.items():
                    rec.connection_lost()
                    if login.metrics is not None:
                        login.metrics.session_ended(protocol)
        super().close()


class EventsFile(DelegatingFile):
    """Counts the bytes through one open file; the recorder builds its event at close."""

    def __init__(
        self,
        inner: File,
        rec: SessionEvents,
        lock: threading.Lock,
        *,
        write: bool,
        owner: set[EventsFile] | None = None,
    ) -> None:
        super().__init__(inner)
        self._owner = owner
        self._rec = rec
        self._lock = lock  # the server's: opening, closing, names
        # This file's own: its reads and writes (and the hashing) never wait for other
        # files' (the recorder keeps one record per handle).
        self._own = threading.Lock()
        self._write = write
        self._done = False

    def pread(self, size: int, offset: int) -> bytes:
        data = self.inner.pread(size, offset)
        with self._own:
            self._rec.read(self, len(data))
        return data

    def pread_cached(self, size: int, offset: int, limit: int) -> bytes | memoryview | None:
        data = self.inner.pread_cached(size, offset, limit)
        if data is not None:
            with self._own:
                self._rec.read(self, len(data))
        return data

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        try:
            self.inner.pwrite(data, offset)
        except OSError as exc:
            with self._own:
                self._rec.failed(self, _text(exc))
            raise
        with self._own:
            self._rec.wrote(self, offset, data)

    def pwrite_nowait(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        done = self.inner.pwrite_nowait(data, offset)
        if done:
            with self._own:
                self._rec.wrote(self, offset, data)
        return done

    def copied_from(self, count: int) -> None:
        """``count`` bytes were read from this file by a server-side copy."""
        with self._own:
            self._rec.read(self, count)

    def copied_into(self, offset: int, count: int) -> None:
        """``count`` bytes arrived at ``offset`` by a server-side copy: counted as written,
        and the content is no longer known here (no SHA-256)."""
        with self._own:
            self._rec.copied(self, offset, count)

    def _closing_size(self) -> int | None:
        if not self._write:
            return None
        try:
            return self.inner.fstat().st_size
        except OSError:
            return None

    def _closed(self, size: int | None, error: str = "") -> None:
        with self._lock, self._own:
            if not self._done:
                self._done = True
                self._rec.closed(self, error=error, size=size)
                if self._owner is not None:
                    self._owner.discard(self)

    def lost(self) -> None:
        """Incomplete: the client went away with this file open (the server lock held)."""
        with self._own:
            if not self._done:
                self._done = True
                self._rec.lost(self)

    def close(self) -> None:
        size = self._closing_size()
        try:
            self.inner.close()
        except OSError as exc:
            self._closed(size, _text(exc))
            raise
        self._closed(size)

    def close_nowait(self) -> bool:
        size = self._closing_size()
        if not self.inner.close_nowait():
            return False
        self._closed(size)
        return True
