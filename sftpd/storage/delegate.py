"""Storage and File bases forwarding the whole contract; a wrapper overrides what it changes."""

from __future__ import annotations

import os

from sftpd.storage.base import Directory, File, Storage


class DelegatingFile:
    """A File that forwards every call to ``inner``. Subclasses override what they change."""

    def __init__(self, inner: File) -> None:
        self.inner = inner

    def fileno(self) -> int:
        return self.inner.fileno()

    def pread(self, size: int, offset: int) -> bytes:
        return self.inner.pread(size, offset)

    def pread_cached(self, size: int, offset: int, limit: int) -> bytes | memoryview | None:
        return self.inner.pread_cached(size, offset, limit)

    def pwrite_nowait(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        return self.inner.pwrite_nowait(data, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self.inner.pwrite(data, offset)

    def fstat(self) -> os.stat_result:
        return self.inner.fstat()

    def fstat_nowait(self) -> os.stat_result | None:
        return self.inner.fstat_nowait()

    def truncate(self, size: int) -> None:
        self.inner.truncate(size)

    def chmod(self, mode: int) -> None:
        self.inner.chmod(mode)

    def utime(self, atime: int, mtime: int) -> None:
        self.inner.utime(atime, mtime)

    def fsync(self) -> None:
        self.inner.fsync()

    def statvfs(self) -> os.statvfs_result:
        return self.inner.statvfs()

    def close(self) -> None:
        self.inner.close()

    def close_nowait(self) -> bool:
        return self.inner.close_nowait()


def innermost(file: File) -> File:
    """The file beneath every DelegatingFile layer (what the jail itself opened)."""
    while isinstance(file, DelegatingFile):
        file = file.inner
    return file


class DelegatingStorage:
    """A Storage that forwards every call to ``inner``. Subclasses override what they change.

    ``wrap_file`` is the one hook for the files it opens (identity here); ``copy_range``
    hands the jail its own files, so it can keep their descriptors from closing mid-copy.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    def wrap_file(self, file: File, path: str, flags: int) -> File:
        """The File handed out for ``file``, opened at ``path`` with ``flags``."""
        return file

    def open(self, path: str, flags: int, mode: int) -> File:
        return self.wrap_file(self.inner.open(path, flags, mode), path, flags)

    def open_nowait(self, path: str, flags: int, mode: int) -> File | None:
        file = self.inner.open_nowait(path, flags, mode)
        return None if file is None else self.wrap_file(file, path, flags)

    def opendir(self, path: str) -> Directory:
        return self.inner.opendir(path)

    def stat(self, path: str, *, follow: bool = True) -> os.stat_result:
        return self.inner.stat(path, follow=follow)

    def truncate(self, path: str, size: int) -> None:
        self.inner.truncate(path, size)

    def chmod(self, path: str, mode: int, *, follow: bool = True) -> None:
        self.inner.chmod(path, mode, follow=follow)

    def utime(self, path: str, atime: int, mtime: int, *, follow: bool = True) -> None:
        self.inner.utime(path, atime, mtime, follow=follow)

    def remove(self, path: str) -> None:
        self.inner.remove(path)

    def mkdir(self, path: str, mode: int) -> None:
        self.inner.mkdir(path, mode)

    def rmdir(self, path: str) -> None:
        self.inner.rmdir(path)

    def rename(self, old: str, new: str, *, overwrite: bool) -> None:
        self.inner.rename(old, new, overwrite=overwrite)

    def readlink(self, path: str) -> str:
        return self.inner.readlink(path)

    def symlink(self, target: str, linkpath: str) -> None:
        self.inner.symlink(target, linkpath)

    def link(self, old: str, new: str) -> None:
        self.inner.link(old, new)

    def realpath(self, path: str) -> str:
        return self.inner.realpath(path)

    def statvfs(self, path: str) -> os.statvfs_result:
        return self.inner.statvfs(path)

    def copy_range(
        self, src: File, src_offset: int, length: int, dst: File, dst_offset: int
    ) -> None:
        if not isinstance(self.inner, DelegatingStorage):  # the jail: its own files
            src, dst = innermost(src), innermost(dst)
        self.inner.copy_range(src, src_offset, length, dst, dst_offset)

    def close(self) -> None:
        self.inner.close()


class OpeningStorage(DelegatingStorage):
    """A DelegatingStorage that changes how files open, in one ``_opened`` serving both
    ``open`` and ``open_nowait`` (``nowait``: the jail may answer None, "would block")."""

    def _opened(self, path: str, flags: int, mode: int, nowait: bool) -> File | None:
        raise NotImplementedError

    def open(self, path: str, flags: int, mode: int) -> File:
        file = self._opened(path, flags, mode, nowait=False)
        assert file is not None
        return file

    def open_nowait(self, path: str, flags: int, mode: int) -> File | None:
        return self._opened(path, flags, mode, nowait=True)
