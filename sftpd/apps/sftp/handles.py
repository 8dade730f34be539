"""Per-session table of open files and directories: counter ids, a bound, and safe closing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer

from sftpd.apps.sftp.constants import Status
from sftpd.apps.sftp.messages import StatusError
from sftpd.runtime.threads import Blocking
from sftpd.storage.atomic import abandon
from sftpd.storage.base import Directory, File

INVALID_HANDLE = "invalid handle"
TOO_MANY_HANDLES = "too many open handles"


@dataclass(eq=False)
class _Entry:
    busy: int = field(default=0, init=False)
    # Fired when the last in-flight operation ends on an entry being closed.
    on_idle: defer.Deferred[None] | None = field(default=None, init=False)

    def close(self) -> None:
        raise NotImplementedError

    def close_nowait(self) -> bool:
        """Close at once where that cannot wait for a device (True); else do nothing."""
        return False


@dataclass(eq=False)
class FileHandle(_Entry):
    """An open regular file and how it was opened."""

    file: File
    path: str
    readable: bool
    writable: bool

    def close(self) -> None:
        self.file.close()

    def close_nowait(self) -> bool:
        return self.file.close_nowait()


@dataclass(eq=False)
class DirHandle(_Entry):
    """An open directory listing; reads are serialised through ``lock``."""

    directory: Directory
    path: str
    lock: defer.DeferredLock = field(default_factory=defer.DeferredLock, init=False)
    # The next batch, read ahead while the client works on this one: (True, entries) or
    # (False, Failure); it never fails itself, so an unread one logs nothing.
    ahead: defer.Deferred[tuple[bool, Any]] | None = field(default=None, init=False)
    forgotten: bool = field(default=False, init=False)  # closed by the client or session

    def close(self) -> None:
        self.directory.close()


E = TypeVar("E", FileHandle, DirHandle)


class HandleTable:
    """Open handles of one session.

    Ids come from a counter and are never reused in a session. At most ``limit``
    handles exist at once, counting opens in progress (``reserve``) and handles whose
    close waits for in-flight operations. A handle in use (``acquire``) is closed only
    after its last operation is ``release``d, so a file descriptor is never closed
    under a running pread and never reused for another file meanwhile.
    """

    def __init__(self, blocking: Blocking, limit: int) -> None:
        self._blocking = blocking
        self._limit = limit
        self._entries: dict[bytes, FileHandle | DirHandle] = {}
        self._used = 0
        self._counter = 0
        self._closed = False
        # Called with each entry the table forgets (closed by the client or the session).
        self.on_forget: Callable[[FileHandle | DirHandle], None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used(self) -> int:
        """Slots taken: open handles, opens in progress and closes still pending."""
        return self._used

    def reserve(self) -> None:
        """Take a slot before opening; raises StatusError past the limit."""
        if self._closed:
            raise StatusError(Status.FAILURE, "session closed")
        if self._used >= self._limit:
            raise StatusError(Status.FAILURE, TOO_MANY_HANDLES)
        self._used += 1

    def unreserve(self) -> None:
        """Give back a slot taken by ``reserve`` when the open failed."""
        self._used -= 1

    def add(self, entry: FileHandle | DirHandle) -> bytes:
        """Register an opened entry in its reserved slot; returns the new handle."""
        if self._closed:
            self._close_entry(entry)
            raise StatusError(Status.FAILURE, "session closed")
        self._counter += 1
        handle = str(self._counter).encode("ascii")
        self._entries[handle] = entry
        return handle

    def _get(self, handle: bytes, kind: type[E]) -> E:
        entry = self._entries.get(handle)
        if not isinstance(entry, kind):
            raise StatusError(Status.FAILURE, INVALID_HANDLE)
        return entry

    def acquire_file(self, handle: bytes) -> FileHandle:
        """The open file behind ``handle``, marked in use until ``release``."""
        entry = self._get(handle, FileHandle)
        entry.busy += 1
        return entry

    def acquire_dir(self, handle: bytes) -> DirHandle:
        """The open directory behind ``handle``, marked in use until ``release``."""
        entry = self._get(handle, DirHandle)
        entry.busy += 1
        return entry

    def release(self, entry: FileHandle | DirHandle) -> None:
        entry.busy -= 1
        if entry.busy == 0 and entry.on_idle is not None:
            waiter, entry.on_idle = entry.on_idle, None
            self._close_entry(entry).chainDeferred(waiter)

    def close(self, handle: bytes) -> defer.Deferred[None]:
        """Forget ``handle`` now and close it once idle; fails with StatusError if unknown."""
        entry = self._entries.pop(handle, None)
        if entry is None:
            return defer.fail(StatusError(Status.FAILURE, INVALID_HANDLE))
        if self.on_forget is not None:
            self.on_forget(entry)
        return self._close_when_idle(entry)

    def close_all(self) -> defer.Deferred[None]:
        """Close every handle (the channel is gone); later ``add`` calls close at once."""
        self._closed = True
        entries = list(self._entries.values())
        self._entries.clear()
        if self.on_forget is not None:
            for entry in entries:
                self.on_forget(entry)
        for entry in entries:
            if isinstance(entry, FileHandle):
                abandon(entry.file)  # never CLOSEd: an atomic upload is dropped, not landed
        waits = [self._close_when_idle(entry) for entry in entries]
        for d in waits:
            d.addErrback(lambda _: None)  # errors closing a dead session's files are moot
        done: defer.Deferred[None] = defer.gatherResults(waits).addCallback(lambda _: None)
        return done

    def _close_when_idle(self, entry: FileHandle | DirHandle) -> defer.Deferred[None]:
        if entry.busy:
            if entry.on_idle is None:
                entry.on_idle = defer.Deferred()
            return entry.on_idle
        return self._close_entry(entry)

    def _close_entry(self, entry: FileHandle | DirHandle) -> defer.Deferred[None]:
        try:
            closed = entry.close_nowait()
        except Exception:
            self._used -= 1
            return defer.fail()
        if closed:
            self._used -= 1
            return defer.succeed(None)
        d = self._blocking.run(entry.close)

        def freed(result: object) -> object:
            self._used -= 1
            return result

        d.addBoth(freed)
        return d
