"""Jailed local storage: every path is resolved by the kernel beneath one user's root."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator

from sftpd.errors import JailError
from sftpd.storage import vpath
from sftpd.storage.base import File
from sftpd.storage.beside import Beside
from sftpd.storage.files import (
    LocalDirectory,
    LocalFile,
    _check_offsets,
    _copy,
    _error,
    _FdGuard,
    _held,
    _require_regular,
    _scrubbed,
)
from sftpd.storage.fsinfo import LOCAL_FS, TMPFS_MAGIC, fs_type, swap_configured
from sftpd.storage.resolve import RESOLVE_CACHED, RESOLVE_NO_XDEV, Resolver

_RENAME_NOREPLACE = 1
_OPEN_FLAGS = os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND
_OPEN_EXTRA = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_EXTRA = os.O_NOCTTY | os.O_CLOEXEC  # a file O_EXCL creates is never a FIFO
_PROC_FD = "/proc/self/fd/"  # the server's own magic links, never built from client input
_WRITE_ACCESS = os.O_WRONLY | os.O_RDWR
_DIRECTORY = os.O_PATH | os.O_DIRECTORY


class LocalStorage:
    """One user's file tree beneath a host directory (implements storage.base.Storage).

    Confinement is the kernel's: an O_PATH fd of the root is kept open and every path is
    resolved from it per call, by openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) or, when
    that is missing (or ``use_openat2=False``), by a component-by-component O_NOFOLLOW walk
    that resolves symlinks itself inside the root. Symlinks behave as in a chroot. Name-level
    calls resolve the parent and act on the last name without following it.

    Modes are applied as given: the caller drops setuid/setgid/sticky bits and applies the
    session umask (the process umask still applies on creation, as for open(2)/mkdir(2)).
    Needs /proc (realpath, path chmod/utime and the reopen of files). Thread-safe.
    """

    def __init__(self, root: str | os.PathLike[str], *, use_openat2: bool | None = None) -> None:
        if not os.path.isdir(_PROC_FD):
            raise JailError("/proc/self/fd is not available; jailed storage needs /proc")
        try:
            fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise JailError(f"cannot open the storage root: {exc.strerror}") from exc
        self._root = _FdGuard(fd)
        root_stat = os.fstat(fd)
        self._root_key = (root_stat.st_dev, root_stat.st_ino)
        self._libc = ctypes.CDLL(None, use_errno=True)
        # tmpfs pages cannot be swapped out when there is no swap: reading them never
        # waits for a device (checked once: an admin adding swap later should restart)
        self._memory_files = not swap_configured()
        root_fs = fs_type(self._libc, fd)
        self._root_fs = root_fs
        self._root_in_memory = self._memory_files and root_fs == TMPFS_MAGIC
        self._root_local = root_fs in LOCAL_FS
        self._resolver = Resolver(self._root, self._libc, use_openat2)
        self._renameat2_nr: int | None = self._resolver.renameat2_nr
        if use_openat2 and not self.uses_openat2:
            self.close()
            raise JailError("openat2(2) is not available on this system")

    @property
    def uses_openat2(self) -> bool:
        """Whether paths are resolved by openat2 (else by the O_NOFOLLOW walk)."""
        return self._resolver.openat2_nr is not None

    def close(self) -> None:
        """Release the root fd (idempotent); later calls fail with EBADF."""
        self._root.close()

    # --- resolution -------------------------------------------------------------------

    def _open_beneath(
        self, path: str, flags: int, mode: int = 0, *, follow: bool = True, resolve: int = 0
    ) -> int:
        return self._resolver.open_beneath(path, flags, mode, follow=follow, resolve=resolve)

    @contextlib.contextmanager
    def _resolved(self, path: str, *, follow: bool = True) -> Iterator[int]:
        fd = self._open_beneath(vpath.normalize(path), os.O_PATH, follow=follow)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _at(self, path: str, root_errno: int) -> Iterator[tuple[int, str]]:
        """(parent directory fd, last name); ``root_errno`` when ``path`` is the root."""
        fd, name = self._parent(path, root_errno)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def _parent(self, path: str, root_errno: int) -> tuple[int, str]:
        """``_at`` for the hot callers, without a generator: the caller closes the fd."""
        parent, name = vpath.split(vpath.normalize(path))
        if not name:
            raise _error(root_errno)
        return self._open_beneath(parent, os.O_PATH | os.O_DIRECTORY), name

    def _virtual(self, fd: int) -> str:
        """The virtual path of resolved ``fd``, read back from /proc; "/" if not below root."""
        host = os.readlink(_PROC_FD + str(fd))
        with self._root as root_fd:
            root_host = os.readlink(_PROC_FD + str(root_fd))
        prefix = root_host.rstrip("/") + "/"
        if host == root_host or not host.startswith(prefix):
            return "/"
        return vpath.normalize(host[len(prefix) :])

    # --- the Storage protocol ---------------------------------------------------------

    @_scrubbed
    def open(self, path: str, flags: int, mode: int) -> LocalFile:
        """Open a regular file. An existing file is first resolved with O_PATH and checked,
        then reopened through /proc: a FIFO or device is never opened at all."""
        flags &= _OPEN_FLAGS
        fd = self._open_fd(vpath.normalize(path), flags, mode, 0)
        kind = fs_type(self._libc, fd)
        return LocalFile(
            fd,
            in_memory=self._memory_files and kind == TMPFS_MAGIC,
            local=kind in LOCAL_FS,
            writable=bool(flags & _WRITE_ACCESS),
            readable=not flags & os.O_WRONLY,
        )

    @_scrubbed
    def open_nowait(self, path: str, flags: int, mode: int) -> LocalFile | None:
        """``open`` on the caller's thread where nothing can wait for a device: the lookup
        stays on the root's own file system (RESOLVE_NO_XDEV), which is local, and either
        lives in memory (tmpfs without swap) or the file is only read and every step of
        its path is in the dentry cache (RESOLVE_CACHED). Else None."""
        flags &= _OPEN_FLAGS
        if self._resolver.openat2_nr is None:
            return None
        if self._root_in_memory:
            resolve = RESOLVE_NO_XDEV
        elif self._root_local and not flags & (os.O_CREAT | os.O_TRUNC | _WRITE_ACCESS):
            resolve = RESOLVE_NO_XDEV | RESOLVE_CACHED
        else:
            return None
        try:
            fd = self._open_fd(vpath.normalize(path), flags, mode, resolve)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EXDEV):
                return None  # not cached, or on another mount: a worker opens it
            raise
        return LocalFile(
            fd,
            in_memory=self._root_in_memory,
            local=True,
            writable=bool(flags & _WRITE_ACCESS),
            readable=not flags & os.O_WRONLY,
        )

    def _open_fd(self, path: str, flags: int, mode: int, resolve: int) -> int:
        if flags & os.O_CREAT:
            # An upload usually creates a new file: try exactly that first (one system
            # call; O_EXCL only ever creates a regular file and never follows a link, so
            # the new fd needs neither O_NONBLOCK nor a check of what it is).
            try:
                return self._open_beneath(
                    path, flags | os.O_EXCL | _CREATE_EXTRA, mode, resolve=resolve
                )
            except FileExistsError:
                pass
            if flags & os.O_EXCL:
                raise _error(errno.EEXIST)
        fd = self._open_existing(path, flags, mode, resolve)
        try:
            _require_regular(os.fstat(fd))  # also catches a node swapped in meanwhile
            os.set_blocking(fd, True)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _open_existing(self, path: str, flags: int, mode: int, resolve: int) -> int:
        try:
            ref = self._open_beneath(path, os.O_PATH, resolve=resolve)
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                raise
            # a dangling link
            return self._open_beneath(path, flags | _OPEN_EXTRA, mode, resolve=resolve)
        else:
            try:
                if flags & os.O_CREAT and flags & os.O_EXCL:
                    raise _error(errno.EEXIST)
                _require_regular(os.fstat(ref))
                reopen = flags & ~(os.O_CREAT | os.O_EXCL) | _OPEN_EXTRA
                return os.open(_PROC_FD + str(ref), reopen)
            finally:
                os.close(ref)

    @_scrubbed
    def beside(self, path: str, *, nowait: bool = False) -> Beside | None:
        """The directory holding ``path``, resolved once, for an atomic upload's calls
        beside its name (see storage.beside); None for the root. With ``nowait``, only
        where nothing can wait for a device (as ``open_nowait`` creating a file: a root in
        memory, the lookup kept on its file system), else None."""
        parent, name = vpath.split(vpath.normalize(path))
        if not name:
            return None
        if nowait:
            if self._resolver.openat2_nr is None or not self._root_in_memory:
                return None
            try:
                fd = self._open_beneath(parent, _DIRECTORY, resolve=RESOLVE_NO_XDEV)
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    return None  # another mount: a worker does it
                raise
        else:
            fd = self._open_beneath(parent, _DIRECTORY)
        try:
            if nowait:
                in_memory = local = True
            else:  # (the root's own file system, as nearly always, needs no fstatfs)
                same = os.fstat(fd).st_dev == self._root_key[0]
                kind = self._root_fs if same else fs_type(self._libc, fd)
                in_memory, local = self._memory_files and kind == TMPFS_MAGIC, kind in LOCAL_FS
            return Beside(fd, name, self._rename_at, in_memory=in_memory, local=local)
        except BaseException:
            os.close(fd)
            raise

    @_scrubbed
    def opendir(self, path: str) -> LocalDirectory:
        fd = self._open_beneath(vpath.normalize(path), os.O_RDONLY | os.O_DIRECTORY)
        return LocalDirectory(fd, self._root_key)

    @_scrubbed
    def stat(self, path: str, *, follow: bool = True) -> os.stat_result:
        fd = self._open_beneath(vpath.normalize(path), os.O_PATH, follow=follow)
        try:  # not _resolved(): a stat per request is hot, a generator context is not free
            return os.fstat(fd)
        finally:
            os.close(fd)

    @_scrubbed
    def truncate(self, path: str, size: int) -> None:
        _check_offsets(size)
        file = self.open(path, os.O_WRONLY, 0)
        try:
            file.truncate(size)
        finally:
            file.close()

    @_scrubbed
    def chmod(self, path: str, mode: int, *, follow: bool = True) -> None:
        """Without ``follow``, a symlink's own mode cannot be changed on Linux: EOPNOTSUPP."""
        with self._resolved(path, follow=follow) as fd:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise _error(errno.EOPNOTSUPP)
            os.chmod(_PROC_FD + str(fd), mode & 0o7777)

    @_scrubbed
    def utime(self, path: str, atime: int, mtime: int, *, follow: bool = True) -> None:
        path = vpath.normalize(path)
        if follow or path == "/":
            with self._resolved(path) as fd:
                os.utime(_PROC_FD + str(fd), (atime, mtime))
            return
        with self._at(path, errno.EPERM) as (dirfd, name):
            os.utime(name, (atime, mtime), dir_fd=dirfd, follow_symlinks=False)

    @_scrubbed
    def remove(self, path: str) -> None:
        dirfd, name = self._parent(path, errno.EPERM)
        try:
            os.unlink(name, dir_fd=dirfd)
        finally:
            os.close(dirfd)

    @_scrubbed
    def mkdir(self, path: str, mode: int) -> None:
        with self._at(path, errno.EEXIST) as (dirfd, name):
            os.mkdir(name, mode & 0o7777, dir_fd=dirfd)

    @_scrubbed
    def rmdir(self, path: str) -> None:
        with self._at(path, errno.EPERM) as (dirfd, name):
            os.rmdir(name, dir_fd=dirfd)

    @_scrubbed
    def rename(self, old: str, new: str, *, overwrite: bool) -> None:
        old_parent, old_base = vpath.split(vpath.normalize(old))
        new_parent, new_base = vpath.split(vpath.normalize(new))
        if old_parent == new_parent and old_base and new_base:
            # One directory (an atomic upload landing): resolve it once.
            fd = self._open_beneath(old_parent, os.O_PATH | os.O_DIRECTORY)
            try:
                self._rename_at(fd, old_base, fd, new_base, overwrite)
            finally:
                os.close(fd)
            return
        with self._at(old, errno.EPERM) as (old_fd, old_name):
            with self._at(new, errno.EPERM) as (new_fd, new_name):
                self._rename_at(old_fd, old_name, new_fd, new_name, overwrite)

    def _rename_at(self, old_fd: int, old: str, new_fd: int, new: str, overwrite: bool) -> None:
        if overwrite:
            os.rename(old, new, src_dir_fd=old_fd, dst_dir_fd=new_fd)
        else:
            self._rename_noreplace(old_fd, old, new_fd, new)

    def _rename_noreplace(self, old_fd: int, old: str, new_fd: int, new: str) -> None:
        """renameat2(RENAME_NOREPLACE); where missing, link + unlink (atomic EEXIST for
        files; a directory then gets a check-and-rename, which is not atomic)."""
        if self._renameat2_nr is not None:
            old_b, new_b = ctypes.c_char_p(os.fsencode(old)), ctypes.c_char_p(os.fsencode(new))
            try:
                nr, flag = self._renameat2_nr, ctypes.c_uint(_RENAME_NOREPLACE)
                fds = ctypes.c_int(old_fd), ctypes.c_int(new_fd)
                self._resolver.syscall(nr, fds[0], old_b, fds[1], new_b, flag)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                    raise
        try:
            os.link(old, new, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:
                os.stat(new, dir_fd=new_fd, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(old, new, src_dir_fd=old_fd, dst_dir_fd=new_fd)
                return
            raise _error(errno.EEXIST) from None
        os.unlink(old, dir_fd=old_fd)

    @_scrubbed
    def readlink(self, path: str) -> str:
        with self._at(path, errno.EINVAL) as (dirfd, name):
            return os.readlink(name, dir_fd=dirfd)

    @_scrubbed
    def symlink(self, target: str, linkpath: str) -> None:
        """The target is stored as given: whatever it says, it resolves inside the root."""
        if "\x00" in target:
            raise _error(errno.EINVAL)
        with self._at(linkpath, errno.EEXIST) as (dirfd, name):
            os.symlink(target, name, dir_fd=dirfd)

    @_scrubbed
    def link(self, old: str, new: str) -> None:
        """A hard link to ``old`` itself (a symlink is linked, not followed)."""
        with self._at(old, errno.EPERM) as (old_fd, old_name):
            with self._at(new, errno.EEXIST) as (new_fd, new_name):
                os.link(
                    old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False
                )

    @_scrubbed
    def realpath(self, path: str) -> str:
        parts = [part for part in vpath.normalize(path).split("/") if part]
        keep = len(parts)
        while True:  # the longest existing prefix; the rest is appended lexically
            try:
                fd = self._open_beneath("/" + "/".join(parts[:keep]), os.O_PATH)
                break
            except FileNotFoundError:
                if keep == 0:
                    raise
                keep -= 1
        try:
            return vpath.normalize("/".join(parts[keep:]), self._virtual(fd))
        finally:
            os.close(fd)

    @_scrubbed
    def open_directory(self, path: str) -> int:
        """An O_PATH fd of the directory at ``path`` (for a sandbox to bind); caller closes."""
        return self._open_beneath(vpath.normalize(path), os.O_PATH | os.O_DIRECTORY)

    @_scrubbed
    def statvfs(self, path: str) -> os.statvfs_result:
        with self._resolved(path) as fd:
            return os.fstatvfs(fd)

    @_scrubbed
    def copy_range(
        self, src: File, src_offset: int, length: int, dst: File, dst_offset: int
    ) -> None:
        """copy_file_range(2) (reflinks where the file system has them), else pread/pwrite.
        Overlapping ranges of one file are refused (EINVAL)."""
        _check_offsets(src_offset, length, dst_offset)
        with _held(src) as src_fd, _held(dst) as dst_fd:
            src_st, dst_st = os.fstat(src_fd), os.fstat(dst_fd)
            if (src_st.st_dev, src_st.st_ino) == (dst_st.st_dev, dst_st.st_ino):
                end = src_offset + (length or max(src_st.st_size - src_offset, 0))
                if src_offset < dst_offset + (end - src_offset) and dst_offset < end:
                    raise _error(errno.EINVAL)
            _copy(src_fd, src_offset, length, dst_fd, dst_offset)


def open_directory(root: str | os.PathLike[str], path: str) -> int:
    """:meth:`LocalStorage.open_directory` of a jail at ``root`` opened for this one call."""
    jail = LocalStorage(root)
    try:
        return jail.open_directory(path)
    finally:
        jail.close()
