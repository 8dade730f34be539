"""The storage contract every protocol uses: normalised virtual paths in, OSError out."""

from __future__ import annotations

import os
from typing import Protocol


class File(Protocol):
    """An open regular file inside a jail. Every method blocks (call it through Blocking)
    except the ``*_cached``/``*_nowait`` ones, which answer only when the kernel can do so
    without waiting for a disk or a server, and are safe on the reactor thread."""

    def fileno(self) -> int: ...

    def pread(self, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset``; b"" at end of file."""
        ...

    def pread_cached(self, size: int, offset: int, limit: int) -> bytes | memoryview | None:
        """Exactly the bytes ``pread(size, offset)`` returns (perhaps as a memoryview of a
        fresh buffer), if that is at most ``limit`` bytes and all of it is in memory; else
        None. Never waits for a disk or a server: the one File call that is safe on the
        reactor thread."""
        ...

    def pwrite_nowait(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        """``pwrite`` at once and True, where a write cannot wait for a device (a file in
        memory); else False, having done nothing."""
        ...

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (at the end when opened with O_APPEND)."""
        ...

    def fstat(self) -> os.stat_result: ...

    def fstat_nowait(self) -> os.stat_result | None:
        """``fstat`` at once where that cannot wait for a server (a local file system or
        memory: an open file's inode is in memory); else None, having done nothing."""
        ...

    def truncate(self, size: int) -> None: ...

    def chmod(self, mode: int) -> None: ...

    def utime(self, atime: int, mtime: int) -> None: ...

    def fsync(self) -> None: ...

    def statvfs(self) -> os.statvfs_result: ...

    def close(self) -> None: ...

    def close_nowait(self) -> bool:
        """``close`` at once and True, where that cannot wait for a device or a server;
        else False, having done nothing."""
        ...


class Directory(Protocol):
    """An open directory listing. ``read`` returns the next batch, [] when exhausted."""

    def read(self, count: int) -> list[tuple[str, os.stat_result]]:
        """Up to ``count`` entries as (name, lstat result); '.' and '..' included first."""
        ...

    def close(self) -> None: ...


class Storage(Protocol):
    """One user's file tree. Paths are normalised absolute virtual paths (see vpath).

    Every method blocks and raises OSError (errno set, no host path in the message).
    The root itself can never be removed or renamed (EPERM / EBUSY).
    Non-regular files are never opened (OSError with errno EINVAL or ENXIO).
    """

    def open(self, path: str, flags: int, mode: int) -> File:
        """``flags`` is a combination of os.O_RDONLY/O_WRONLY/O_RDWR, O_CREAT, O_TRUNC,
        O_EXCL, O_APPEND; ``mode`` is used when creating (the rules layer above the jail
        has applied the umask and dropped setuid/setgid/sticky)."""
        ...

    def open_nowait(self, path: str, flags: int, mode: int) -> File | None:
        """What ``open`` does, done at once where the kernel can promise not to wait for a
        disk or a server (safe on the reactor thread); None, having done nothing, where it
        cannot (then call ``open`` through Blocking). Errors are ``open``'s."""
        ...

    def opendir(self, path: str) -> Directory: ...

    def stat(self, path: str, *, follow: bool = True) -> os.stat_result: ...

    def truncate(self, path: str, size: int) -> None: ...

    def chmod(self, path: str, mode: int, *, follow: bool = True) -> None: ...

    def utime(self, path: str, atime: int, mtime: int, *, follow: bool = True) -> None: ...

    def remove(self, path: str) -> None: ...

    def mkdir(self, path: str, mode: int) -> None: ...

    def rmdir(self, path: str) -> None: ...

    def rename(self, old: str, new: str, *, overwrite: bool) -> None:
        """Without ``overwrite`` an existing target fails with EEXIST (atomically)."""
        ...

    def readlink(self, path: str) -> str:
        """The link's own text, exactly as stored (never a host path)."""
        ...

    def symlink(self, target: str, linkpath: str) -> None: ...

    def link(self, old: str, new: str) -> None: ...

    def realpath(self, path: str) -> str:
        """Canonical virtual path with symlinks resolved inside the jail; a missing tail
        is appended lexically."""
        ...

    def statvfs(self, path: str) -> os.statvfs_result: ...

    def copy_range(
        self, src: File, src_offset: int, length: int, dst: File, dst_offset: int
    ) -> None:
        """Copy ``length`` bytes (0 = to end of file) between two open files, in kernel
        (copy_file_range, reflinks where the file system has them) where possible."""
        ...

    def close(self) -> None:
        """Release the jail (the root fd); idempotent. Called when the user logs out."""
        ...
