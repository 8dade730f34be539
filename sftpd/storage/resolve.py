"""Resolving virtual paths beneath a jail's root fd: openat2(RESOLVE_IN_ROOT) or our own walk."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat

from sftpd.storage.files import _error, _FdGuard

RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20  # Linux 5.12: EAGAIN unless every step is in the dentry cache
_MAX_SYMLINKS = 40  # the kernel's MAXSYMLINKS, so both resolvers agree
_EAGAIN_RETRIES = 64  # openat2 answers EAGAIN when a rename races a '..' step
_PATH = os.O_PATH | os.O_CLOEXEC

# (openat2, renameat2) system call numbers per CPU; elsewhere we use the portable paths
_SYSCALLS = (("x86_64", (437, 316)), ("aarch64", (437, 276)), ("riscv64", (437, 276)))


class _OpenHow(ctypes.Structure):
    """``struct open_how`` of openat2(2)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


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


class Resolver:
    """Opens virtual paths beneath ``root`` (an O_PATH fd of the jail's root, guarded).

    By openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) where the kernel has it (and
    ``use_openat2`` is not False), else by a component-by-component O_NOFOLLOW walk that
    resolves symlinks itself inside the root. Either way no path leaves the root: symlinks
    behave as in a chroot. Thread-safe.
    """

    def __init__(self, root: _FdGuard, libc: ctypes.CDLL, use_openat2: bool | None) -> None:
        self._root = root
        self._libc = libc
        # syscall(2) with openat2's argument types declared once: no conversion objects
        # built per call (x86-64/aarch64/riscv64 pass these in registers either way).
        self._openat2_call = _SYSCALL_OPENAT2(("syscall", libc))
        self._hows: dict[tuple[int, int, int], _OpenHow] = {}
        openat2_nr, renameat2_nr = dict(_SYSCALLS).get(platform.machine(), (None, None))
        self.renameat2_nr: int | None = renameat2_nr
        self.openat2_nr: int | None = None
        if use_openat2 is not False and openat2_nr is not None:
            self.openat2_nr = openat2_nr
            try:
                with root as fd:
                    os.close(self._openat2(openat2_nr, fd, ".", os.O_PATH | os.O_DIRECTORY, 0))
            except OSError:  # ENOSYS, or EPERM from a seccomp filter
                self.openat2_nr = None

    def open_beneath(
        self, path: str, flags: int, mode: int = 0, *, follow: bool = True, resolve: int = 0
    ) -> int:
        """An fd for the normalised virtual ``path`` opened with ``flags``, resolved inside
        the root (``resolve``: more RESOLVE_* flags, for openat2 only)."""
        with self._root as root_fd:
            nr = self.openat2_nr
            if nr is not None:
                if not follow:
                    flags |= os.O_NOFOLLOW
                return self._openat2(nr, root_fd, path.lstrip("/") or ".", flags, mode, resolve)
            return self._walk(root_fd, path, flags, mode & 0o7777, follow)

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
            if code != errno.EAGAIN or resolve & RESOLVE_CACHED:
                raise _error(code)  # (else a rename raced a '..' step: try again)
        raise _error(errno.EAGAIN)

    def syscall(self, nr: int, *args: object) -> int:
        result = int(self._libc.syscall(ctypes.c_long(nr), *args))
        if result < 0:
            raise _error(ctypes.get_errno())
        return result

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
