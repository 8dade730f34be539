"""A directory the jail resolved once: the name-level calls of one atomic upload beside its name."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from sftpd.storage.files import LocalFile, _error, _FdGuard, _scrubbed

_OPEN_FLAGS = os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND
# O_CREAT|O_EXCL only ever makes a new regular file, and never follows a link
_CREATE = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_WRITE_ACCESS = os.O_WRONLY | os.O_RDWR

RenameAt = Callable[[int, str, int, str, bool], None]


def _one_name(name: str) -> str:
    """``name`` if it is one path component (a name in the directory, not a path)."""
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise _error(errno.EINVAL)
    return name


class Beside:
    """An O_PATH fd of the directory holding ``name``, which the jail resolved inside the
    root, and the calls an atomic upload makes there: the lstat of ``name``, creating its
    temporary, renaming the temporary over ``name``, removing the temporary.

    Every name is a single component acted on without following a symlink (O_NOFOLLOW,
    AT_SYMLINK_NOFOLLOW; rename and unlink never follow the last one), so nothing done
    here leaves that directory. One directory lookup serves the whole upload, where a
    lookup per call (lstat, open, rename) cost three. ``close`` releases the fd; it is
    held until every call using it has returned (thread-safe).
    """

    def __init__(
        self, fd: int, name: str, rename_at: RenameAt, *, in_memory: bool, local: bool
    ) -> None:
        self._guard = _FdGuard(fd)
        self.name = _one_name(name)
        self._rename_at = rename_at
        self._in_memory = in_memory
        self._local = local

    @_scrubbed
    def lstat(self) -> os.stat_result:
        """The lstat of ``name`` (FileNotFoundError when there is none)."""
        with self._guard as fd:
            return os.stat(self.name, dir_fd=fd, follow_symlinks=False)

    @_scrubbed
    def create(self, temp: str, flags: int, mode: int) -> LocalFile:
        """A new regular file ``temp`` in the directory (O_CREAT|O_EXCL added to ``flags``)."""
        flags &= _OPEN_FLAGS
        with self._guard as fd:
            new = os.open(_one_name(temp), flags | _CREATE, mode & 0o7777, dir_fd=fd)
        return LocalFile(
            new,
            in_memory=self._in_memory,
            local=self._local,
            writable=bool(flags & _WRITE_ACCESS),
            readable=not flags & os.O_WRONLY,
        )

    @_scrubbed
    def land(self, temp: str, *, overwrite: bool) -> None:
        """Rename ``temp`` over ``name`` (without ``overwrite``: EEXIST if it exists)."""
        with self._guard as fd:
            self._rename_at(fd, _one_name(temp), fd, self.name, overwrite)

    @_scrubbed
    def remove(self, temp: str) -> None:
        with self._guard as fd:
            os.unlink(_one_name(temp), dir_fd=fd)

    def close(self) -> None:
        """Release the directory's fd (idempotent)."""
        self._guard.close()
