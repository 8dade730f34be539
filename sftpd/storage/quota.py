"""Quotas and the upload size limit: a wrapper that counts what lands on disk, below atomic uploads.

:class:`QuotaStorage` sits beneath the atomic layer, right above the jail, so it sees every
byte that reaches the disk (a temporary's writes, the rename over a target, the removal of
an abandoned one). Usage lives in a :class:`QuotaUsage` shared by every session of the user
in this process (:class:`UserStates`); it is scanned once, at the user's first login after
start, and waited for (in the worker threads, never on the reactor) before a change is
judged. With a user database, :mod:`sftpd.storage.usage` keeps it in the database
instead, shared by every node and worker process. A write that would pass ``quota_size``
or ``max_upload_size`` fails with a :class:`LimitExceeded` (an OSError whose strerror is
the client's message).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from sftpd.storage.atomic import is_own_temporary
from sftpd.storage.base import File, Storage
from sftpd.storage.delegate import DelegatingFile, DelegatingStorage, OpeningStorage
from sftpd.storage.walk import non_directories

U = TypeVar("U")


def human_size(n: int) -> str:
    """``n`` bytes as the messages show it: "10.0 MB" (powers of 1000), "512 B"."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000 or unit == "PB":
            break
    return f"{value:.1f} {unit}"


class LimitExceeded(OSError):
    """A quota or the upload size limit refused a change; ``strerror`` says which, with numbers."""


def quota_exceeded(used: int, limit: int) -> LimitExceeded:
    return LimitExceeded(
        errno.EDQUOT, f"quota exceeded: {human_size(used)} of {human_size(limit)} used"
    )


def files_exceeded(used: int, limit: int) -> LimitExceeded:
    return LimitExceeded(errno.EDQUOT, f"quota exceeded: {used} of {limit} files used")


def too_large(limit: int) -> LimitExceeded:
    return LimitExceeded(errno.EFBIG, f"file too large: max_upload_size is {human_size(limit)}")


@dataclass(frozen=True)
class Limits:
    """One user's limits in bytes and files; 0 = unlimited."""

    quota_size: int = 0
    quota_files: int = 0
    max_upload_size: int = 0

    @property
    def counted(self) -> bool:
        """Whether usage must be known (a quota is set)."""
        return bool(self.quota_size or self.quota_files)

    @property
    def active(self) -> bool:
        return self.counted or bool(self.max_upload_size)


class QuotaUsage(Protocol):
    """A user's usage, shared by all their sessions. ``wait`` blocks (worker threads only)
    until the first scan is in; ``ready`` says whether it is, without blocking.
    ``reserve`` adds a growth atomically with the check against ``limits`` (raising
    :class:`LimitExceeded`, having added nothing); ``change`` adds without a check (a
    shrink, or undoing a reservation); neither blocks, both may run on the reactor thread.
    ``admit`` (worker threads) refuses a new write when the usage cannot be known;
    ``settle`` (worker threads) ends an operation: a shared usage sends its changes.
    ``shared``: the usage lives in a store (sftpd.storage.usage), so a file's close must
    run in a worker thread, where the rename it lands and ``settle`` may query."""

    shared: bool

    @property
    def ready(self) -> bool: ...

    def wait(self) -> None: ...

    def admit(self) -> None: ...

    def settle(self) -> None: ...

    def used(self) -> tuple[int, int]: ...

    def reserve(self, nbytes: int, files: int, limits: Limits) -> None: ...

    def change(self, nbytes: int, files: int) -> None: ...


class MemoryQuotaUsage:
    """Usage held in this process, behind a lock; ``scanned`` delivers the first scan."""

    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._bytes = self._files = 0

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self) -> None:
        self._ready.wait()

    def admit(self) -> None:
        pass

    def settle(self) -> None:
        pass

    def scanned(self, nbytes: int, files: int) -> None:
        with self._lock:
            self._bytes += nbytes
            self._files += files
        self._ready.set()

    def used(self) -> tuple[int, int]:
        with self._lock:
            return self._bytes, self._files

    def reserve(self, nbytes: int, files: int, limits: Limits) -> None:
        with self._lock:
            if nbytes > 0 and limits.quota_size and self._bytes + nbytes > limits.quota_size:
                raise quota_exceeded(self._bytes, limits.quota_size)
            if files > 0 and limits.quota_files and self._files + files > limits.quota_files:
                raise files_exceeded(self._files, limits.quota_files)
            self._bytes += nbytes
            self._files += files

    def change(self, nbytes: int, files: int) -> None:
        with self._lock:
            self._bytes += nbytes
            self._files += files


def scan_usage(storage: Storage, path: str = "/") -> tuple[int, int]:
    """(bytes, files) of the regular files under ``path``, sftpd's temporaries left out
    of the file count (their bytes are on disk: they count)."""
    nbytes = files = 0
    for _, name, st in non_directories(storage, path):
        if stat.S_ISREG(st.st_mode):
            nbytes += st.st_size
            files += 0 if is_own_temporary(name) else 1
    return nbytes, files


class UserStates(Generic[U]):
    """Per process: each user's shared usage, and the work of their first login.

    ``first_login(name, start)`` returns the user's usage (made by ``make(name)``), calling
    ``start(usage)`` (which schedules the scan on the worker pool) only the first time the
    name is seen."""

    def __init__(self, make: Callable[[str], U]) -> None:
        self._make = make
        self._users: dict[str, U] = {}
        self._lock = threading.Lock()

    def first_login(self, name: str, start: Callable[[U], object]) -> U:
        with self._lock:
            usage = self._users.get(name)
            if usage is not None:
                return usage
            usage = self._users[name] = self._make(name)
        start(usage)
        return usage

    def all(self) -> list[U]:
        with self._lock:
            return list(self._users.values())


class QuotaFile(DelegatingFile):
    """A file open for writing: growth is checked and counted before it reaches the disk."""

    def __init__(
        self, inner: File, storage: QuotaStorage, size: int, *, append: bool, temporary: bool
    ) -> None:
        super().__init__(inner)
        self.storage, self.size, self.append = storage, size, append
        self.temporary = temporary  # an upload's: its rename or removal settles next
        self._lock = threading.Lock()

    def _grow(self, end: int) -> int:
        """Reserve the growth to ``end`` bytes; returns it (0 if none)."""
        limits = self.storage.limits
        if limits.max_upload_size and end > limits.max_upload_size:
            raise too_large(limits.max_upload_size)
        with self._lock:
            growth = end - self.size
            if growth <= 0:
                return 0
            self.storage.usage.reserve(growth, 0, limits)
            self.size = end
            return growth

    def _undo(self, growth: int) -> None:
        if growth:
            with self._lock:
                self.size -= growth
            self.storage.usage.change(-growth, 0)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self.storage.usage.wait()
        growth = self._grow((self.size if self.append else offset) + len(data))
        try:
            self.inner.pwrite(data, offset)
        except BaseException:
            self._undo(growth)
            raise

    def pwrite_nowait(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        if not self.storage.usage.ready:
            return False  # a worker waits for the scan
        growth = self._grow((self.size if self.append else offset) + len(data))
        try:
            written = self.inner.pwrite_nowait(data, offset)
        except BaseException:
            self._undo(growth)
            raise
        if not written:
            self._undo(growth)
        return written

    def truncate(self, size: int) -> None:
        self.storage.usage.wait()
        growth = self._grow(size)
        try:
            self.inner.truncate(size)
        except BaseException:
            self._undo(growth)
            raise
        with self._lock:
            shrink, self.size = self.size - size, size
        if shrink > 0:
            self.storage.usage.change(-shrink, 0)
        self.storage.usage.settle()

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            if not self.temporary:
                self.storage.usage.settle()

    def close_nowait(self) -> bool:
        if self.storage.usage.shared:
            return False  # settle (and a rename above) may query the store: a worker's work
        return self.inner.close_nowait()

    def statvfs(self) -> os.statvfs_result:
        return self.storage.report(self.inner.statvfs())


def _regular_size(st: os.stat_result | None) -> int | None:
    return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None


class QuotaStorage(OpeningStorage):
    """Every change through it is checked against ``limits`` and counted in ``usage``."""

    def __init__(self, inner: Storage, limits: Limits, usage: QuotaUsage) -> None:
        super().__init__(inner)
        self.limits, self.usage = limits, usage

    def _stat(self, path: str, *, follow: bool) -> os.stat_result | None:
        try:
            return self.inner.stat(path, follow=follow)
        except OSError:
            return None

    @staticmethod
    def _file_count(path: str) -> int:
        return 0 if is_own_temporary(path) else 1

    def report(self, st: os.statvfs_result) -> os.statvfs_result:
        """``st`` with the quota as the file system's size (total = quota, free = the rest)."""
        if not self.limits.counted:
            return st
        used, files = self.usage.used()
        values = list(st)
        frsize = st.f_frsize or st.f_bsize or 1
        if self.limits.quota_size:
            values[2] = self.limits.quota_size // frsize  # f_blocks
            values[3] = values[4] = max(0, self.limits.quota_size - used) // frsize
        if self.limits.quota_files:
            values[5] = self.limits.quota_files  # f_files
            values[6] = values[7] = max(0, self.limits.quota_files - files)
        return os.statvfs_result(values, {"f_fsid": st.f_fsid})

    def statvfs(self, path: str) -> os.statvfs_result:
        self.usage.wait()
        return self.report(self.inner.statvfs(path))

    def check_upload(self, size: int) -> None:
        """Refuse an upload of ``size`` bytes known in advance (the scp ``C`` line)."""
        if self.limits.max_upload_size and size > self.limits.max_upload_size:
            raise too_large(self.limits.max_upload_size)
        self.usage.wait()
        self.usage.admit()
        used, _ = self.usage.used()
        if self.limits.quota_size and used + size > self.limits.quota_size:
            raise quota_exceeded(used, self.limits.quota_size)

    def _opened(self, path: str, flags: int, mode: int, nowait: bool) -> File | None:
        writes = flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_CREAT | os.O_TRUNC)
        if not writes:
            return (
                self.inner.open_nowait(path, flags, mode)
                if nowait
                else self.inner.open(path, flags, mode)
            )
        if nowait:
            return self._created_nowait(path, flags, mode)
        self.usage.wait()
        self.usage.admit()
        before = _regular_size(self._stat(path, follow=True))
        new = before is None and bool(flags & os.O_CREAT)
        files = self._file_count(path) if new else 0
        file = self._reserving(files, lambda: self.inner.open(path, flags, mode))
        assert file is not None
        size = file.fstat().st_size
        if before is None and not new:
            before = size
        self.usage.change(size - (before or 0), 0)
        self.usage.settle()
        return self._counted(file, path, flags, size)

    def _created_nowait(self, path: str, flags: int, mode: int) -> File | None:
        """An exclusive create (an atomic upload's temporary, an SFTP CREAT|EXCL) on the
        caller's thread, where the jail can do it without waiting: the file is new, so no
        lookup is needed to know what it adds. Anything else, or a usage that lives in a
        store (queries) or is still being counted, goes the blocking way (None)."""
        excl = os.O_CREAT | os.O_EXCL
        if flags & excl != excl or self.usage.shared or not self.usage.ready:
            return None
        file = self._reserving(
            self._file_count(path), lambda: self.inner.open_nowait(path, flags, mode)
        )
        return None if file is None else self._counted(file, path, flags, 0)

    def _reserving(self, files: int, opener: Callable[[], File | None]) -> File | None:
        """``opener()`` with ``files`` new files reserved first (given back if it fails or
        answers None)."""
        self.usage.reserve(0, files, self.limits)
        try:
            file = opener()
        except BaseException:
            self.usage.change(0, -files)
            raise
        if file is None:
            self.usage.change(0, -files)
        return file

    def _counted(self, file: File, path: str, flags: int, size: int) -> QuotaFile:
        temporary = is_own_temporary(path)
        return QuotaFile(file, self, size, append=bool(flags & os.O_APPEND), temporary=temporary)

    def truncate(self, path: str, size: int) -> None:
        self.usage.wait()
        before = _regular_size(self._stat(path, follow=True)) or 0
        if self.limits.max_upload_size and size > self.limits.max_upload_size:
            raise too_large(self.limits.max_upload_size)
        if size > before:
            self.usage.admit()
        self.usage.reserve(max(0, size - before), 0, self.limits)
        try:
            self.inner.truncate(path, size)
        except BaseException:
            self.usage.change(-max(0, size - before), 0)
            raise
        self.usage.change(min(0, size - before), 0)
        self.usage.settle()

    def remove(self, path: str) -> None:
        self.usage.wait()
        size = _regular_size(self._stat(path, follow=False))
        self.inner.remove(path)
        if size is not None:
            self.usage.change(-size, -self._file_count(path))
            self.usage.settle()

    def rename(self, old: str, new: str, *, overwrite: bool) -> None:
        self.usage.wait()
        moved = _regular_size(self._stat(old, follow=False))
        replaced = _regular_size(self._stat(new, follow=False)) if overwrite else None
        files = 0
        if moved is not None:
            files += self._file_count(new) - self._file_count(old)
        if replaced is not None:
            files -= self._file_count(new)
        self.usage.reserve(0, max(0, files), self.limits)
        try:
            self.inner.rename(old, new, overwrite=overwrite)
        except BaseException:
            self.usage.change(0, -max(0, files))
            raise
        self.usage.change(-(replaced or 0), min(0, files))
        self.usage.settle()

    def link(self, old: str, new: str) -> None:
        self.usage.wait()
        self.usage.admit()
        size = _regular_size(self._stat(old, follow=True)) or 0
        self.usage.reserve(size, self._file_count(new), self.limits)
        try:
            self.inner.link(old, new)
        except BaseException:
            self.usage.change(-size, -self._file_count(new))
            raise
        self.usage.settle()

    def copy_range(
        self, src: File, src_offset: int, length: int, dst: File, dst_offset: int
    ) -> None:
        target = _quota_file(dst)
        growth = 0
        if target is not None:
            self.usage.wait()
            if not length:
                length = max(0, src.fstat().st_size - src_offset)
            growth = target._grow(dst_offset + length)
        try:
            super().copy_range(src, src_offset, length, dst, dst_offset)
        except BaseException:
            if target is not None:
                target._undo(growth)
            raise
        finally:
            if target is not None:
                self.usage.settle()


def _quota_file(file: File) -> QuotaFile | None:
    while isinstance(file, DelegatingFile):
        if isinstance(file, QuotaFile):
            return file
        file = file.inner
    return None


def check_upload(storage: Storage, size: int) -> None:
    """Refuse an upload of ``size`` bytes known in advance, if a limit in ``storage``'s
    layers would refuse it (raises :class:`LimitExceeded`); no-op without limits."""
    while isinstance(storage, DelegatingStorage):
        if isinstance(storage, QuotaStorage):
            storage.check_upload(size)
            return
        storage = storage.inner
