"""Atomic uploads: a new or truncated file is written under a hidden temporary, renamed on close.

:class:`AtomicStorage` sits below the rules layer (the rules judge the name the client
asked for; the temporary is sftpd's own) and above the quota layer (which counts what
lands on disk). An open that creates or truncates a regular file opens
``.sftpd-upload.<pid>.<random>.tmp`` in the same directory instead; a clean ``close``
renames it over the target, atomically. A failed write, :func:`abandon` (a dropped
connection, an unfinished scp file) or a failed close removes the temporary and leaves the
target exactly as it was. An open of an existing file without O_TRUNC (a resume, random
writes) writes in place. Temporary names never show in listings and a client can neither
see, open nor create one; :func:`clean_temporaries` removes those a crash left behind.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import stat
from collections.abc import Callable

from sftpd.storage import vpath
from sftpd.storage.base import Directory, File, Storage
from sftpd.storage.beside import Beside
from sftpd.storage.delegate import DelegatingFile, DelegatingStorage
from sftpd.storage.walk import non_directories

TEMP_PREFIX = ".sftpd-upload."
TEMP_SUFFIX = ".tmp"
_RESERVED = "reserved name (sftpd's upload temporaries)"


def is_own_temporary(name: str) -> bool:
    """Whether the file name (or the last part of a virtual path) is one of sftpd's own
    upload temporaries; every name with the prefix is reserved."""
    return name.rpartition("/")[2].startswith(TEMP_PREFIX)


def temporary_name(pid: int) -> str:
    return f"{TEMP_PREFIX}{pid}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


class _TempNames:
    """Temporary names of one storage: the same form as ``temporary_name``, from a random
    start and a counter (no getrandom call per upload; O_EXCL refuses a clash anyway)."""

    def __init__(self, pid: int) -> None:
        self._prefix = f"{TEMP_PREFIX}{pid}."
        self._start = secrets.randbits(64)
        self._count = itertools.count()

    def next(self) -> str:
        serial = (self._start + next(self._count)) & 0xFFFFFFFFFFFFFFFF
        return f"{self._prefix}{serial:016x}{TEMP_SUFFIX}"


def _owner_pid(name: str) -> int | None:
    middle = name[len(TEMP_PREFIX) :].partition(".")[0]
    return int(middle) if middle.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def abandon(file: File) -> None:
    """Mark ``file`` (or the atomic upload beneath its wrappers) unfinished: its ``close``
    then removes the temporary instead of renaming it. No-op for any other file."""
    while isinstance(file, DelegatingFile):
        if isinstance(file, AtomicFile):
            file.failed = True
            return
        file = file.inner


class AtomicFile(DelegatingFile):
    """The temporary of one upload; renamed over ``target`` by a clean close."""

    def __init__(
        self,
        inner: File,
        storage: Storage,
        temp: str,
        target: str,
        *,
        overwrite: bool,
        inflight: dict[str, AtomicFile] | None = None,
        beside: Beside | None = None,
    ) -> None:
        super().__init__(inner)
        self.storage, self.temp, self.target, self.overwrite = storage, temp, target, overwrite
        self.failed = self.landed = False
        self.inflight = {} if inflight is None else inflight
        self.inflight[target] = self
        # The directory the jail resolved for this upload (its calls then need no lookup
        # of their own), while the target stays the name it was opened for.
        self.beside = beside
        self._opened_as = target

    def _forget(self) -> None:
        if self.inflight.get(self.target) is self:
            del self.inflight[self.target]
        if self.beside is not None:
            self.beside.close()
            self.beside = None

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        try:
            self.inner.pwrite(data, offset)
        except BaseException:
            self.failed = True
            raise

    def pwrite_nowait(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        try:
            return self.inner.pwrite_nowait(data, offset)
        except BaseException:
            self.failed = True
            raise

    def truncate(self, size: int) -> None:
        try:
            self.inner.truncate(size)
        except BaseException:
            self.failed = True
            raise

    def fsync(self) -> None:
        """The client wants the data durable under its name: the upload lands now, and
        the rest of it (same file, same descriptor) is written in place."""
        self.inner.fsync()
        if not self.failed and not self.landed:
            try:
                self._land()
            finally:
                self._forget()
            self.landed = True

    def close_nowait(self) -> bool:
        if self.landed:
            return self.inner.close_nowait()
        # Where the jail closes a written file inline, the file lives in memory (tmpfs): the
        # rename cannot wait for a device either, and is done here too.
        if self.failed or not self.inner.close_nowait():
            return False
        try:
            self._land()
        finally:
            self._forget()
        return True

    def _land(self) -> None:
        try:
            if self.beside is not None and self.target == self._opened_as:
                self.beside.land(self.temp.rpartition("/")[2], overwrite=self.overwrite)
            else:  # renamed while being written (perhaps elsewhere): by path
                self.storage.rename(self.temp, self.target, overwrite=self.overwrite)
        except BaseException:
            self._discard()
            raise

    def close(self) -> None:
        if self.landed:
            self.inner.close()
            return
        try:
            self.inner.close()
        except BaseException:
            self.failed = True
            raise
        finally:
            if self.failed:
                self._discard()
                self._forget()
        if self.failed:
            return  # the client heard of the failed write; the old file stays
        try:
            self._land()
        finally:
            self._forget()

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            if self.beside is not None:
                self.beside.remove(self.temp.rpartition("/")[2])
            else:
                self.storage.remove(self.temp)


class _HidingDirectory:
    """A listing without sftpd's temporaries."""

    def __init__(self, inner: Directory) -> None:
        self.inner = inner

    def read(self, count: int) -> list[tuple[str, os.stat_result]]:
        while True:
            batch = self.inner.read(count)
            kept = [entry for entry in batch if not entry[0].startswith(TEMP_PREFIX)]
            if kept or not batch:
                return kept

    def close(self) -> None:
        self.inner.close()


def _exists(storage: Storage, path: str) -> bool:
    try:
        storage.stat(path, follow=False)
    except FileNotFoundError:
        return False
    return True


def _absent() -> OSError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))


def _reserved() -> OSError:
    return PermissionError(errno.EACCES, _RESERVED)


class AtomicStorage(DelegatingStorage):
    """Uploads that create or truncate a file land atomically on a clean close."""

    def __init__(self, inner: Storage, *, pid: int | None = None) -> None:
        super().__init__(inner)
        self.pid = os.getpid() if pid is None else pid
        self._names = _TempNames(self.pid)
        # The jail itself beneath (no quota layer between): an upload's lstat, create and
        # rename share one lookup of its directory (storage.beside).
        self._beside: Callable[..., Beside | None] | None = getattr(inner, "beside", None)
        # This session's uploads not closed yet, by target: the session itself (sshfs
        # stats, reopens and setstats what it is writing) sees the temporary there; other
        # sessions see the old file until the clean close.
        self.inflight: dict[str, AtomicFile] = {}

    def _live(self, path: str) -> str:
        upload = self.inflight.get(path)
        return path if upload is None else upload.temp

    def _reopen_flags(self, path: str, flags: int) -> int | None:
        """Flags to open this session's in-flight upload of ``path`` in place, or None."""
        if path not in self.inflight or flags & os.O_TRUNC:
            return None
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        return flags & ~(os.O_CREAT | os.O_EXCL)

    # -- client names ---------------------------------------------------------------
    @staticmethod
    def _hidden(path: str) -> None:
        if path.rpartition("/")[2].startswith(TEMP_PREFIX):
            raise _absent()

    @staticmethod
    def _refused(path: str) -> None:
        if path.rpartition("/")[2].startswith(TEMP_PREFIX):
            raise _reserved()

    # -- opening --------------------------------------------------------------------
    @staticmethod
    def _replaces(flags: int) -> bool:
        """Whether an open with ``flags`` may start an upload (create or truncate a file)."""
        return (
            flags & os.O_ACCMODE != os.O_RDONLY
            and bool(flags & (os.O_CREAT | os.O_TRUNC))
            and not flags & os.O_APPEND
        )

    def _temp_path(self, path: str) -> str:
        parent, _ = vpath.split(path)
        return vpath.normalize(self._names.next(), parent)

    def _plan(self, path: str, flags: int) -> bool | None:
        """After an lstat of ``path``: True to upload through a temporary (replacing an
        existing file), False for a new file through a temporary, None to open in place."""
        return self._decide(lambda: self.inner.stat(path, follow=False), flags)

    @staticmethod
    def _decide(lstat: Callable[[], os.stat_result], flags: int) -> bool | None:
        try:
            st = lstat()
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                raise
            return False
        except OSError:
            return None  # the open itself reports it
        if flags & os.O_EXCL:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        if not stat.S_ISREG(st.st_mode) or not flags & os.O_TRUNC:
            return None  # a resume, a random write, a link (the jail follows it), a device
        return True

    @staticmethod
    def _temp_flags(flags: int) -> int:
        return (flags & ~(os.O_TRUNC | os.O_APPEND)) | os.O_CREAT | os.O_EXCL

    def _directory(self, path: str, nowait: bool) -> Beside | None:
        """The jail's directory of ``path`` for an upload beside it; None: the general way
        (no jail beneath, the root, or a lookup error, which the general way reports)."""
        if self._beside is None:
            return None
        try:
            return self._beside(path, nowait=nowait)
        except OSError:
            return None

    def _open_beside(
        self, beside: Beside, path: str, flags: int, mode: int, nowait: bool
    ) -> File | None:
        """``open`` (or ``open_nowait``) through the directory the jail resolved."""
        try:
            replacing = self._decide(beside.lstat, flags)
            if replacing is not None:
                name = self._names.next()
                file = beside.create(name, self._temp_flags(flags), mode)
        except BaseException:
            beside.close()
            raise
        if replacing is None:  # in place
            beside.close()
            if nowait:
                return self.inner.open_nowait(path, flags, mode)
            return self.inner.open(path, flags, mode)
        temp = vpath.normalize(name, vpath.split(path)[0])
        return AtomicFile(
            file,
            self.inner,
            temp,
            path,
            overwrite=not flags & os.O_EXCL,
            inflight=self.inflight,
            beside=beside,
        )

    def open(self, path: str, flags: int, mode: int) -> File:
        self._refused(path) if flags & os.O_CREAT else self._hidden(path)
        if (again := self._reopen_flags(path, flags)) is not None:
            return self.inner.open(self._live(path), again, mode)
        if not self._replaces(flags):
            return self.inner.open(path, flags, mode)
        beside = self._directory(path, nowait=False)
        if beside is not None:
            opened = self._open_beside(beside, path, flags, mode, nowait=False)
            assert opened is not None
            return opened
        replacing = self._plan(path, flags)
        if replacing is None:
            return self.inner.open(path, flags, mode)
        temp = self._temp_path(path)
        file = self.inner.open(temp, self._temp_flags(flags), mode)
        return self._upload(file, temp, path, flags)

    def _upload(self, file: File, temp: str, path: str, flags: int) -> AtomicFile:
        overwrite = not flags & os.O_EXCL
        return AtomicFile(file, self.inner, temp, path, overwrite=overwrite, inflight=self.inflight)

    def open_nowait(self, path: str, flags: int, mode: int) -> File | None:
        self._refused(path) if flags & os.O_CREAT else self._hidden(path)
        if (again := self._reopen_flags(path, flags)) is not None:
            return self.inner.open_nowait(self._live(path), again, mode)
        if not self._replaces(flags):
            return self.inner.open_nowait(path, flags, mode)
        beside = self._directory(path, nowait=True)
        if beside is not None:
            return self._open_beside(beside, path, flags, mode, nowait=True)
        temp = self._temp_path(path)
        # Where the jail can create a file without waiting for a device (a root in
        # memory), its lstat cannot wait either: the whole decision is made inline.
        file = self.inner.open_nowait(temp, self._temp_flags(flags), mode)
        if file is None:
            return None
        try:
            replacing = self._plan(path, flags)
        except BaseException:
            self._drop(file, temp)
            raise
        if replacing is None:
            self._drop(file, temp)
            return self.inner.open_nowait(path, flags, mode)
        return self._upload(file, temp, path, flags)

    def _drop(self, file: File, temp: str) -> None:
        file.close()
        with contextlib.suppress(OSError):
            self.inner.remove(temp)

    # -- the tree: temporaries are invisible and untouchable --------------------------
    def opendir(self, path: str) -> Directory:
        self._hidden(path)
        return _HidingDirectory(self.inner.opendir(path))

    def stat(self, path: str, *, follow: bool = True) -> os.stat_result:
        self._hidden(path)
        return self.inner.stat(self._live(path), follow=follow)

    def truncate(self, path: str, size: int) -> None:
        self._hidden(path)
        self.inner.truncate(self._live(path), size)

    def chmod(self, path: str, mode: int, *, follow: bool = True) -> None:
        self._hidden(path)
        self.inner.chmod(self._live(path), mode, follow=follow)

    def utime(self, path: str, atime: int, mtime: int, *, follow: bool = True) -> None:
        self._hidden(path)
        self.inner.utime(self._live(path), atime, mtime, follow=follow)

    def remove(self, path: str) -> None:
        self._hidden(path)
        upload = self.inflight.pop(path, None)
        if upload is None:
            self.inner.remove(path)
            return
        upload.failed = True  # removed while being written: it never lands,
        self.inner.remove(upload.temp)
        with contextlib.suppress(FileNotFoundError):  # and the name is gone, as in place
            self.inner.remove(path)

    def mkdir(self, path: str, mode: int) -> None:
        self._refused(path)
        self.inner.mkdir(path, mode)

    def rmdir(self, path: str) -> None:
        self._hidden(path)
        self.inner.rmdir(path)

    def rename(self, old: str, new: str, *, overwrite: bool) -> None:
        self._hidden(old)
        self._refused(new)
        upload = self.inflight.get(old)
        if upload is None:
            self.inner.rename(old, new, overwrite=overwrite)
            return
        # Renamed while being written: it lands under the new name on its clean close.
        if not overwrite and (new in self.inflight or _exists(self.inner, new)):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        del self.inflight[old]
        upload.target, upload.overwrite = new, overwrite
        self.inflight[new] = upload

    def readlink(self, path: str) -> str:
        self._hidden(path)
        return self.inner.readlink(path)

    def symlink(self, target: str, linkpath: str) -> None:
        self._refused(linkpath)
        self.inner.symlink(target, linkpath)

    def link(self, old: str, new: str) -> None:
        self._hidden(old)
        self._refused(new)
        self.inner.link(self._live(old), new)  # an upload in flight: the same file


def clean_temporaries(storage: Storage, path: str = "/") -> int:
    """Remove the upload temporaries under ``path`` whose process is gone (a crash or a
    kill left them); a living process's (another worker's upload) stays. Returns how many
    were removed. ``storage`` is the jail itself (beneath AtomicStorage)."""
    removed = 0
    for directory, name, _ in non_directories(storage, path):
        if name.startswith(TEMP_PREFIX):
            owner = _owner_pid(name)
            if owner is not None and _alive(owner):
                continue
            with contextlib.suppress(OSError):
                storage.remove(vpath.normalize(name, directory))
                removed += 1
    return removed
