"""Jailed local storage: every path is resolved by the kernel beneath one user's root."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
from collections.abc import Iterator
from typing import ParamSpec, TypeVar

from sftpd.errors import JailError
from sftpd.storage import vpath
from sftpd.storage.base import File
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

P = ParamSpec("P")
T = TypeVar("T")

_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_RESOLVE_CACHED = 0x20  # Linux 5.12: EAGAIN unless every step is in the dentry cache
_RENAME_NOREPLACE = 1
_MAX_SYMLINKS = 40  # the kernel's MAXSYMLINKS, so both resolvers agree
_EAGAIN_RETRIES = 64  # openat2 answers EAGAIN when a rename races a '..' step
_MAX_READ = 1 << 24  # one pread never allocates more than 16 MiB (short reads are legal)
_COPY_CHUNK = 1 << 30
_BUFFER_CHUNK = 1 << 18
_OPEN_FLAGS = os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND
_OPEN_EXTRA = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_PATH = os.O_PATH | os.O_CLOEXEC
_PROC_FD = "/proc/self/fd/"  # the server's own magic links, never built from client input


# (openat2, renameat2) system call numbers per CPU; elsewhere we use the portable paths
_SYSCALLS = (("x86_64", (437, 316)), ("aarch64", (437, 276)), ("riscv64", (437, 276)))


class _OpenHow(ctypes.Structure):
    """``struct open_how`` of openat2(2)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_WRITE_ACCESS = os.O_WRONLY | os.O_RDWR

_OPEN_HOW_SIZE = ctypes.sizeof(_OpenHow)
_SYSCALL_OPENAT2 = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,  # number
    ctypes.c_int,  # dirfd
    ctypes.c_char_p,  # path
    ctypes.POINTER(_OpenHow),  # how
    ctypes.c_size_t,  # size
    use_errno=True,
)


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
        # syscall(2) with openat2's argument types declared once: no conversion objects
        # built per call (x86-64/aarch64/riscv64 pass these in registers either way).
        self._openat2_call = _SYSCALL_OPENAT2(("syscall", self._libc))
        self._hows: dict[tuple[int, int, int], _OpenHow] = {}
        # tmpfs pages cannot be swapped out when there is no swap: reading them never
        # waits for a device (checked once: an admin adding swap later should restart)
        self._memory_files = not swap_configured()
        root_fs = fs_type(self._libc, fd)
        self._root_in_memory = self._memory_files and root_fs == TMPFS_MAGIC
        self._root_local = root_fs in LOCAL_FS
        openat2_nr, renameat2_nr = dict(_SYSCALLS).get(platform.machine(), (None, None))
        self._renameat2_nr: int | None = renameat2_nr
        self._openat2_nr: int | None = None
        if use_openat2 is not False and openat2_nr is not None:
            self._openat2_nr = openat2_nr
            try:
                os.close(self._openat2(openat2_nr, fd, ".", os.O_PATH | os.O_DIRECTORY, 0))
            except OSError:  # ENOSYS, or EPERM from a seccomp filter
                self._openat2_nr = None
        if use_openat2 and self._openat2_nr is None:
            self.close()
            raise JailError("openat2(2) is not available on this system")

    @property
    def uses_openat2(self) -> bool:
        """Whether paths are resolved by openat2 (else by the O_NOFOLLOW walk)."""
        return self._openat2_nr is not None

    def close(self) -> None:
        """Release the root fd (idempotent); later calls fail with EBADF."""
        self._root.close()

    # --- resolution -------------------------------------------------------------------

    def _openat2(
        self, nr: int, dirfd: int, rel: str, flags: int, mode: int, resolve: int = 0
    ) -> int:
        key = (flags, mode & 0o7777 if flags & os.O_CREAT else 0, resolve)
        how = self._hows.get(key)
        if how is None:  # one read-only struct per (flags, mode, resolve), shared by all threads
            if len(self._hows) > 256:
                self._hows.clear()
            how = _OpenHow(
                key[0] | os.O_CLOEXEC, key[1], _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS | resolve
            )
            self._hows[key] = how
        path = os.fsencode(rel)
        call = self._openat2_call
        for _ in range(_EAGAIN_RETRIES):
            result: int = call(nr, dirfd, path, how, _OPEN_HOW_SIZE)
            if result >= 0:
                return result
            code = ctypes.get_errno()
            if code != errno.EAGAIN or resolve & _RESOLVE_CACHED:
                raise _error(code)  # (else a rename raced a '..' step: try again)
        raise _error(errno.EAGAIN)

    def _syscall(self, nr: int, *args: object) -> int:
        result = int(self._libc.syscall(ctypes.c_long(nr), *args))
        if result < 0:
            raise _error(ctypes.get_errno())
        return result

    def _open_beneath(
        self, path: str, flags: int, mode: int = 0, *, follow: bool = True, resolve: int = 0
    ) -> int:
        """An fd for virtual ``path`` opened with ``flags``, resolved inside the root
        (``resolve``: more RESOLVE_* flags, for openat2 only)."""
        with self._root as root_fd:
            nr = self._openat2_nr
            if nr is not None:
                if not follow:
                    flags |= os.O_NOFOLLOW
                return self._openat2(nr, root_fd, path.lstrip("/") or ".", flags, mode, resolve)
            return self._walk(root_fd, path, flags, mode & 0o7777, follow)

    @staticmethod
    def _link_text(dirfd: int, name: str, otherwise: OSError) -> str:
        """The target of symlink ``name`` in ``dirfd``; ``otherwise`` if it is no symlink."""
        try:
            target = os.readlink(name, dir_fd=dirfd)
        except OSError:
            raise otherwise from None
        if not target:
            raise _error(errno.ENOENT)
        return target

    def _walk(self, root_fd: int, path: str, flags: int, mode: int, follow: bool) -> int:
        """The fallback resolver: the kernel never follows a symlink (O_NOFOLLOW on every
        step) and never sees '..'; we read links and pop our own stack of directory fds,
        which never goes above the root."""
        flags |= os.O_CLOEXEC | os.O_NOFOLLOW
        pending = path.split("/")[::-1]
        stack: list[int] = []  # fds of the directories below the root we are in
        links = 0
        try:
            while True:
                here = stack[-1] if stack else root_fd
                while pending and pending[-1] in ("", "."):
                    pending.pop()
                if not pending:
                    return os.open(".", flags, mode, dir_fd=here)
                name = pending.pop()
                if name == "..":
                    if stack:
                        os.close(stack.pop())
                    continue
                if pending:  # an intermediate component: a directory, or a link to one
                    stack.append(os.open(name, _PATH | os.O_NOFOLLOW, dir_fd=here))
                    if stat.S_ISDIR(os.fstat(stack[-1]).st_mode):
                        continue
                    os.close(stack.pop())
                    target = self._link_text(here, name, _error(errno.ENOTDIR))
                elif not follow:
                    return os.open(name, flags, mode, dir_fd=here)
                else:
                    try:
                        fd = os.open(name, flags, mode, dir_fd=here)
                    except OSError as exc:
                        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                            raise
                        target = self._link_text(here, name, _error(exc.errno))
                    else:
                        try:
                            is_link = flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode)
                        except OSError:
                            os.close(fd)
                            raise
                        if not is_link:
                            return fd
                        os.close(fd)
                        target = self._link_text(here, name, _error(errno.ENOENT))
                links += 1
                if links > _MAX_SYMLINKS:
                    raise _error(errno.ELOOP)
                if target.startswith("/"):  # absolute targets restart at the user's root
                    while stack:
                        os.close(stack.pop())
                pending.extend(target.split("/")[::-1])
        finally:
            for fd in stack:
                os.close(fd)

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
        parent, name = vpath.split(vpath.normalize(path))
        if not name:
            raise _error(root_errno)
        fd = self._open_beneath(parent, os.O_PATH | os.O_DIRECTORY)
        try:
            yield fd, name
        finally:
            os.close(fd)

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
        if self._openat2_nr is None:
            return None
        if self._root_in_memory:
            resolve = _RESOLVE_NO_XDEV
        elif self._root_local and not flags & (os.O_CREAT | os.O_TRUNC | _WRITE_ACCESS):
            resolve = _RESOLVE_NO_XDEV | _RESOLVE_CACHED
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
        fd = -1
        if flags & os.O_CREAT:
            # An upload usually creates a new file: try exactly that first (one system
            # call; O_EXCL only ever creates a regular file and never follows a link).
            with contextlib.suppress(FileExistsError):
                fd = self._open_beneath(
                    path, flags | os.O_EXCL | _OPEN_EXTRA, mode, resolve=resolve
                )
            if fd < 0 and flags & os.O_EXCL:
                raise _error(errno.EEXIST)
        if fd < 0:
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
        with self._at(path, errno.EPERM) as (dirfd, name):
            os.unlink(name, dir_fd=dirfd)

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
            with self._at(old, errno.EPERM) as (fd, _):
                self._rename_at(fd, old_base, fd, new_base, overwrite)
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
                self._syscall(nr, ctypes.c_int(old_fd), old_b, ctypes.c_int(new_fd), new_b, flag)
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
