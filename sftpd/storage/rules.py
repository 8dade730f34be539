"""Per-user permission rules, applied once above storage so every protocol obeys them."""

from __future__ import annotations

import errno
import os

from sftpd.storage.base import File, Storage

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _denied() -> OSError:
    return OSError(errno.EACCES, os.strerror(errno.EACCES))


class ReadOnlyFile:
    """A file opened by a read-only user: reads pass, every change (even fchmod) is refused."""

    def __init__(self, inner: File) -> None:
        self._inner = inner

    def fileno(self) -> int:
        return self._inner.fileno()

    def pread(self, size: int, offset: int) -> bytes:
        return self._inner.pread(size, offset)

    def pread_cached(self, size: int, offset: int, limit: int) -> bytes | memoryview | None:
        return self._inner.pread_cached(size, offset, limit)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        raise _denied()

    def pwrite_nowait(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        raise _denied()

    def fstat(self) -> os.stat_result:
        return self._inner.fstat()

    def truncate(self, size: int) -> None:
        raise _denied()

    def chmod(self, mode: int) -> None:
        raise _denied()

    def utime(self, atime: int, mtime: int) -> None:
        raise _denied()

    def fsync(self) -> None:
        self._inner.fsync()

    def statvfs(self) -> os.statvfs_result:
        return self._inner.statvfs()

    def close(self) -> None:
        self._inner.close()

    def close_nowait(self) -> bool:
        return self._inner.close_nowait()


class ReadOnlyStorage:
    """Wraps a Storage and refuses every change with EACCES (reads pass through)."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner

    def open(self, path: str, flags: int, mode: int) -> File:
        if flags & _WRITE_FLAGS:
            raise _denied()
        return ReadOnlyFile(self._inner.open(path, flags, mode))

    def open_nowait(self, path: str, flags: int, mode: int) -> File | None:
        if flags & _WRITE_FLAGS:
            raise _denied()
        inner = self._inner.open_nowait(path, flags, mode)
        return None if inner is None else ReadOnlyFile(inner)

    def opendir(self, path: str):  # type: ignore[no-untyped-def]
        return self._inner.opendir(path)

    def stat(self, path: str, *, follow: bool = True) -> os.stat_result:
        return self._inner.stat(path, follow=follow)

    def truncate(self, path: str, size: int) -> None:
        raise _denied()

    def chmod(self, path: str, mode: int, *, follow: bool = True) -> None:
        raise _denied()

    def utime(self, path: str, atime: int, mtime: int, *, follow: bool = True) -> None:
        raise _denied()

    def remove(self, path: str) -> None:
        raise _denied()

    def mkdir(self, path: str, mode: int) -> None:
        raise _denied()

    def rmdir(self, path: str) -> None:
        raise _denied()

    def rename(self, old: str, new: str, *, overwrite: bool) -> None:
        raise _denied()

    def readlink(self, path: str) -> str:
        return self._inner.readlink(path)

    def symlink(self, target: str, linkpath: str) -> None:
        raise _denied()

    def link(self, old: str, new: str) -> None:
        raise _denied()

    def realpath(self, path: str) -> str:
        return self._inner.realpath(path)

    def statvfs(self, path: str) -> os.statvfs_result:
        return self._inner.statvfs(path)

    def copy_range(
        self, src: File, src_offset: int, length: int, dst: File, dst_offset: int
    ) -> None:
        # dst can only be open for writing if open() allowed it, which it never does here.
        raise _denied()

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def apply_policy(storage: Storage, *, read_only: bool) -> Storage:
    """The storage a user's protocols see, with that user's rules in force."""
    return ReadOnlyStorage(storage) if read_only else storage
