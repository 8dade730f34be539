"""Open files and directory listings of the jailed local storage, and in-kernel copies."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import os
import stat
import threading
import weakref
from collections.abc import Callable, Generator
from typing import Concatenate, ParamSpec, TypeVar

from sftpd.storage.base import File

P = ParamSpec("P")
T = TypeVar("T")

# preadv2 flag: fail with EAGAIN rather than wait for the disk (Linux 4.14+)
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_MAX_READ = 1 << 24  # one pread never allocates more than 16 MiB (short reads are legal)
_COPY_CHUNK = 1 << 30
_BUFFER_CHUNK = 1 << 18


def _error(code: int, message: str | None = None) -> OSError:
    """A fresh OSError (the errno's subclass) that carries no file name."""
    return OSError(code, message or os.strerror(code))


# The classes OSError(errno, text) builds: one of these without a file name or a chain
# is already what _scrubbed would make of it.
_CLEAN = frozenset(
    (
        OSError,
        BlockingIOError,
        ChildProcessError,
        FileExistsError,
        FileNotFoundError,
        InterruptedError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        ProcessLookupError,
        TimeoutError,
    )
)


def _scrubbed(fn: Callable[P, T]) -> Callable[P, T]:
    """Re-raise every OSError as a fresh one with the same errno, no file name, no chain
    (one that already is such, as ``_error`` makes them, goes on as it is)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            if type(exc) in _CLEAN and exc.filename is None and exc.filename2 is None:
                if exc.__context__ is None and exc.__cause__ is None and exc.errno:
                    if exc.strerror:
                        raise  # already one of ours (_error): no second exception per miss
            code = exc.errno or errno.EIO
            message = exc.strerror or os.strerror(code)
        raise _error(code, message)  # raised outside the handler: no __context__ either

    return wrapper


def _require_regular(st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise _error(errno.EISDIR)
    if not stat.S_ISREG(st.st_mode):
        raise _error(errno.EINVAL, "Not a regular file")


def _check_offsets(*values: int) -> None:
    if min(values) < 0:
        raise _error(errno.EINVAL)


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        written = os.pwrite(fd, view[done:], offset + done)
        if written <= 0:
            raise _error(errno.EIO)
        done += written


class _FdGuard:
    """An fd shared by threads: it is closed once, only after every call using it returned,
    so a late call can never reach a recycled descriptor number."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False
        self._finalizer = weakref.finalize(self, os.close, fd)

    def __enter__(self) -> int:
        with self._lock:
            if self._closing:
                raise _error(errno.EBADF)
            self._users += 1
            return self._fd

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            self._finalizer()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            last = self._users == 0
        if last:
            self._finalizer()


class LocalFile:
    """An open regular file (implements storage.base.File), usable from several threads.

    With O_APPEND, Linux ``pwrite`` appends whatever offset it is given. ``pread`` reads at
    most 16 MiB per call (a short read, as POSIX allows). After ``close`` (idempotent)
    every call fails with EBADF.
    """

    def __init__(
        self,
        fd: int,
        *,
        in_memory: bool = False,
        local: bool = False,
        writable: bool = True,
        readable: bool = True,
    ) -> None:
        self._guard = _FdGuard(fd)
        # A file in memory (tmpfs without swap: no device to wait for) is written at once.
        # On a local file system (local.LOCAL_FS) fstat never waits, and neither does the
        # close of a file opened read-only; in memory, no close does.
        self._in_memory = in_memory
        self._sized = in_memory or local
        self._quick_close = in_memory or (local and not writable)
        # pread_cached is tried until the kernel says RWF_NOWAIT reads are not honoured
        # here (EOPNOTSUPP on NFS, CIFS, FUSE; EBADF for a write-only fd). A file that
        # lives in memory is read without the flag, which tmpfs does not take.
        self._read_flags = 0 if in_memory else _RWF_NOWAIT
        # (a write-only fd is never read here: pread fails, so must every answer)
        self._nowait = readable and (in_memory or bool(_RWF_NOWAIT))

    @_scrubbed
    def _do(self, fn: Callable[Concatenate[int, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(fd, ...)`` with the fd held open for the duration of the call."""
        with self._guard as fd:
            return fn(fd, *args, **kwargs)

    def fileno(self) -> int:
        return self._do(int)

    def pread(self, size: int, offset: int) -> bytes:
        _check_offsets(size, offset)
        return self._do(os.pread, min(size, _MAX_READ), offset)

    def pread_cached(self, size: int, offset: int, limit: int) -> bytes | memoryview | None:
        """preadv2(RWF_NOWAIT) only (plain preadv for a file in memory), which fails with
        EAGAIN rather than wait for a disk; plus, on a local file system, an fstat for the
        size. An answer counts only if it is what pread would return: all the bytes up to
        ``size`` or the end of the file. Anything else gives None."""
        if not self._nowait or offset < 0 or size <= 0:
            return None
        try:
            with self._guard as fd:
                if self._sized:
                    return self._read_sized(fd, size, offset, limit)
                return self._read_probing(fd, size, offset, limit)
        except BlockingIOError:
            return None  # not cached
        except OSError:
            self._nowait = False  # not here: every later read goes to a worker, which
            return None  # also reports any real error

    def _read_sized(self, fd: int, size: int, offset: int, limit: int) -> bytes | memoryview | None:
        """The file's size says how much pread would return: read exactly that."""
        want = min(size, os.fstat(fd).st_size - offset)
        if want <= 0:
            return b""  # at or past the end
        if want > limit:
            return None  # a bulk read, for a worker
        if self._in_memory:
            data = os.pread(fd, want, offset)
            return data if len(data) == want else None
        buf = bytearray(want)
        count = os.preadv(fd, [buf], offset, self._read_flags)
        # the buffer itself (fresh, never reused): no second copy of up to 255 KiB
        return memoryview(buf) if count == want else None  # short: not all cached

    def _read_probing(
        self, fd: int, size: int, offset: int, limit: int
    ) -> bytes | memoryview | None:
        """No fstat (it may wait on a server): a one-byte read past the answer tells
        whether pread would have returned more."""
        flags = self._read_flags
        if size > limit and os.preadv(fd, [bytearray(1)], offset + limit, flags):
            return None  # the file goes on past the limit: a bulk read, whose
            # bytes a worker reads (no 64 KiB read here only to be thrown away)
        buf = bytearray(min(size, limit))
        count = os.preadv(fd, [buf], offset, flags)
        if count == len(buf):
            return memoryview(buf) if size <= limit else None  # pread would read on
        if count and os.preadv(fd, [bytearray(1)], offset + count, flags):
            return None  # short only because the rest is not cached
        return memoryview(buf)[:count]  # up to the end of the file

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        _check_offsets(offset)
        self._do(_pwrite_all, data, offset)

    def pwrite_nowait(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        if not self._in_memory:
            return False
        self.pwrite(data, offset)
        return True

    def fstat(self) -> os.stat_result:
        return self._do(os.fstat)

    def fstat_nowait(self) -> os.stat_result | None:
        # (NFS, CIFS, FUSE may ask their server: there a worker does it)
        return self._do(os.fstat) if self._sized else None

    def truncate(self, size: int) -> None:
        _check_offsets(size)
        self._do(os.ftruncate, size)

    def chmod(self, mode: int) -> None:
        self._do(os.fchmod, mode & 0o7777)

    def utime(self, atime: int, mtime: int) -> None:
        self._do(os.utime, (atime, mtime))

    def fsync(self) -> None:
        self._do(os.fsync)

    def statvfs(self) -> os.statvfs_result:
        return self._do(os.fstatvfs)

    def close(self) -> None:
        self._guard.close()

    def close_nowait(self) -> bool:
        if not self._quick_close:
            return False
        self._guard.close()
        return True


class LocalDirectory:
    """An open directory listing (implements storage.base.Directory): '.', '..', then the
    entries, each with its lstat; entries that vanish before their lstat are skipped."""

    def __init__(self, fd: int, root_key: tuple[int, int]) -> None:
        self._guard = _FdGuard(fd)
        self._root_key = root_key
        self._entries: Generator[tuple[str, os.stat_result], None, None] | None = None

    def _generate(self, fd: int) -> Generator[tuple[str, os.stat_result], None, None]:
        here = os.fstat(fd)
        yield ".", here
        if (here.st_dev, here.st_ino) == self._root_key:
            yield "..", here  # the root is its own parent, as in a chroot
        else:
            yield "..", os.stat("..", dir_fd=fd, follow_symlinks=False)
        with os.scandir(fd) as scan:
            for entry in scan:
                try:
                    st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield entry.name, st

    @_scrubbed
    def read(self, count: int) -> list[tuple[str, os.stat_result]]:
        if count < 1:
            raise _error(errno.EINVAL)
        with self._guard as fd:
            if self._entries is None:
                self._entries = self._generate(fd)
            return list(itertools.islice(self._entries, count))

    def close(self) -> None:
        self._guard.close()
        entries, self._entries = self._entries, None
        if entries is not None:
            with contextlib.suppress(ValueError):  # still running in another thread
                entries.close()


def _held(file: File) -> contextlib.AbstractContextManager[int]:
    """The file's fd, kept from being closed underneath us when it is one of ours."""
    if isinstance(file, LocalFile):
        return file._guard
    return contextlib.nullcontext(file.fileno())


def _copy(src: int, src_offset: int, length: int, dst: int, dst_offset: int) -> None:
    remaining = length or None
    # copy_file_range refuses an O_APPEND target (EBADF); pwrite appends there anyway.
    in_kernel = not fcntl.fcntl(dst, fcntl.F_GETFL) & os.O_APPEND
    while remaining is None or remaining > 0:
        chunk = min(remaining or _COPY_CHUNK, _COPY_CHUNK)
        if in_kernel:
            try:
                copied = os.copy_file_range(src, dst, chunk, src_offset, dst_offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                in_kernel = False
                continue
        else:
            data = os.pread(src, min(chunk, _BUFFER_CHUNK), src_offset)
            _pwrite_all(dst, data, dst_offset)
            copied = len(data)
        if copied == 0:
            return
        src_offset += copied
        dst_offset += copied
        if remaining is not None:
            remaining -= copied
