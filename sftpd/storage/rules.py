"""The rules layer: one frozen Rules object per login, applied above the jail for every protocol.

Every protocol's file operations go through :class:`RulesStorage`, which asks
:meth:`Rules.check` with an :class:`Op` and a virtual path before anything reaches the
jail, and applies the creation mode (umask, no setuid/setgid/sticky) in one place.
rsync cannot go through a Storage; :meth:`Rules.rsync` grants it (with what the sandbox
may do) or refuses it, with the reason.
"""

from __future__ import annotations

import enum
import errno
import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sftpd.storage import vpath
from sftpd.storage.base import Directory, File, Storage
from sftpd.storage.delegate import DelegatingFile, DelegatingStorage
from sftpd.storage.permissions import SINGLE, Table, matching

# Only the permission bits are ever applied: setuid, setgid and sticky are dropped.
PERMISSION_BITS = 0o777
_WRITE_FLAGS = os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Op(enum.Enum):
    """What a request does, named as the permissions are (SFTPGo's names)."""

    LIST = "list"
    DOWNLOAD = "download"
    UPLOAD = "upload"  # create a new file
    OVERWRITE = "overwrite"  # replace, truncate, append to or write into an existing file
    DELETE_FILES = "delete_files"
    DELETE_DIRS = "delete_dirs"
    RENAME_FILES = "rename_files"
    RENAME_DIRS = "rename_dirs"
    CREATE_DIRS = "create_dirs"
    CREATE_SYMLINKS = "create_symlinks"
    CHMOD = "chmod"
    CHTIMES = "chtimes"


READ_OPS = frozenset({Op.LIST, Op.DOWNLOAD})
WRITE_OPS = frozenset(Op) - READ_OPS
# Operations that make a new name: on a hidden name they are refused (EACCES); every other
# operation on a hidden name answers as if it did not exist (ENOENT).
CREATE_OPS = frozenset({Op.UPLOAD, Op.CREATE_DIRS, Op.CREATE_SYMLINKS})


class RuleDenied(PermissionError):
    """A rule refused ``op`` at ``path``: an OSError with errno EACCES.

    ``strerror`` is ``reason``, which names the operation, the virtual path and the rule:
    the text the SFTP status message, scp and rsync show the client, and the log line.
    """

    def __init__(self, op: Op, path: str, rule: str) -> None:
        reason = f'permission denied: "{op.value}" is not allowed in {path} ({rule})'
        super().__init__(errno.EACCES, reason)
        self.op, self.path, self.rule, self.reason = op, path, rule, reason


@dataclass(frozen=True)
class RsyncGrant:
    """rsync may run: the sandbox binds ``host_root`` (read-only unless ``receive``) and the
    daemon applies ``incoming_chmod`` to what it receives. ``host_root`` never reaches a client."""

    host_root: Path
    receive: bool
    incoming_chmod: str
    # What a receiving rsync may do besides creating files (each mapped to rsync's options:
    # no delete refuses every --delete* and --remove-source-files, no overwrite adds
    # --ignore-existing, no symlinks adds --no-links).
    send: bool = True  # may run as the sender (a download)
    delete: bool = True
    overwrite: bool = True
    symlinks: bool = True
    max_size: int = 0  # the receiver's --max-size (max_upload_size); 0 = none
    # rrsync DIR: the sandbox is rooted at this directory (as the user sees it) instead of
    # the user's root; the jail resolves it when rsync starts (see open_root).
    directory: str | None = None

    @property
    def sender_only(self) -> bool:
        return not self.receive

    def open_root(self) -> int | None:
        """An O_PATH fd of ``directory`` resolved by the jail beneath ``host_root`` (symlinks
        followed inside it, never out), for the sandbox to bind: None without a directory.
        The caller closes it. Blocking; OSError (ENOENT, ENOTDIR) when it is missing."""
        if self.directory is None:
            return None
        from sftpd.storage.local import open_directory

        return open_directory(self.host_root, self.directory)


@dataclass(frozen=True)
class RsyncRefusal:
    """rsync may not run for this login; ``reason`` names the rule that prevents it."""

    reason: str


NO_RSYNC = RsyncRefusal("no rsync grant for this session")


def incoming_chmod(umask: int) -> str:
    """rsync's ``incoming chmod`` for ``umask``: no setuid/setgid/sticky, the umask's bits off."""
    parts = ["ug-s", "a-t"]
    for who, shift in (("u", 6), ("g", 3), ("o", 0)):
        bits = (umask >> shift) & 0o7
        text = "".join(c for c, b in (("r", 4), ("w", 2), ("x", 1)) if bits & b)
        if text:
            parts.append(f"{who}-{text}")
    return ",".join(parts)


@dataclass(frozen=True)
class Rules:
    """What one login may do. Built once from the user record (and the key); immutable.

    ``read_only`` (only list and download), ``table`` (the user's ``permissions``, by
    directory), ``key_permissions`` (the key's own list, which narrows: None for a key
    without one, or a password), ``deny_files``/``hide_files`` (glob patterns) and the
    ``umask`` applied on creation. Decisions go through :meth:`decide`, the one place a
    rule is looked up.
    """

    read_only: bool = False
    umask: int = 0o022
    table: Table = field(default_factory=Table)
    key_permissions: frozenset[str] | None = None
    deny_files: tuple[str, ...] = ()
    hide_files: tuple[str, ...] = ()

    # -- decisions ------------------------------------------------------------------
    def decide(self, op: Op, path: str) -> str | None:
        """The name of the rule that refuses ``op`` at the canonical virtual ``path``, or
        None when it is allowed."""
        if self.unrestricted:
            return None  # the default: no rule to look up, per request or per entry
        hidden = self.hidden(path)
        if hidden is not None:
            return hidden
        denied = matching(self.deny_files, path)
        if denied is not None:
            return f'deny_files "{denied}"'
        if self.read_only and op in WRITE_OPS:
            return "read_only"
        found = self.table.lookup(path)
        if found is not None and op.value not in found[1]:
            return f"permissions of {found[0]}"
        if self.key_permissions is not None and op.value not in self.key_permissions:
            return "the key's permissions"
        return None

    @functools.cached_property
    def unrestricted(self) -> bool:
        """Whether every operation is allowed everywhere (no rule refuses anything; only
        the creation and chmod modes apply)."""
        return (
            not self.read_only
            and not self.deny_files
            and not self.hide_files
            and not self.table.per_directory
            and self.table.everywhere == frozenset(SINGLE)
            and (self.key_permissions is None or self.key_permissions >= frozenset(SINGLE))
        )

    def hidden(self, path: str) -> str | None:
        """The ``hide_files`` rule that hides ``path`` (it looks absent), or None."""
        pattern = matching(self.hide_files, path)
        return None if pattern is None else f'hide_files "{pattern}"'

    def hides_entry(self, directory: str, name: str) -> bool:
        """Whether a listing of ``directory`` leaves ``name`` out."""
        return bool(self.hide_files) and self.hidden(vpath.normalize(name, directory)) is not None

    def allows(self, op: Op, path: str) -> bool:
        return self.decide(op, path) is None

    def check(self, op: Op, path: str) -> None:
        """Raise :class:`RuleDenied` unless ``op`` is allowed at ``path``."""
        rule = self.decide(op, path)
        if rule is None:
            return
        if op not in CREATE_OPS and self.hidden(path) is not None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        raise RuleDenied(op, path, rule)

    def read_only_at(self, path: str) -> bool:
        """Whether nothing may be written at ``path`` (statvfs's read-only flag)."""
        return not any(self.allows(op, path) for op in WRITE_OPS)

    @property
    def path_dependent(self) -> bool:
        """Whether a decision depends on the path: then the storage judges the path the jail
        resolves (symlinks followed inside it), not the one the client wrote."""
        return self.table.per_directory or bool(self.deny_files or self.hide_files)

    def allowed_everywhere(self, op: Op) -> bool:
        """Whether ``op`` is allowed at every path (what rsync, which bypasses the storage,
        may then be let do)."""
        if self.read_only and op in WRITE_OPS:
            return False
        if op.value not in self.table.everywhere:
            return False
        return self.key_permissions is None or op.value in self.key_permissions

    # -- modes ----------------------------------------------------------------------
    def create_mode(self, mode: int) -> int:
        """The mode a new file or directory gets: permission bits only, umask applied."""
        return mode & PERMISSION_BITS & ~self.umask

    def chmod_mode(self, mode: int) -> int:
        """The mode an explicit chmod sets: permission bits only (no umask, as OpenSSH)."""
        return mode & PERMISSION_BITS

    # -- rsync ----------------------------------------------------------------------
    def rsync_refusal(self) -> str | None:
        """Why rsync cannot obey these rules (it bypasses the storage), or None."""
        if self.table.per_directory:
            return "per-directory permissions cannot be enforced for rsync; use sftp or scp"
        for key in ("deny_files", "hide_files"):
            if getattr(self, key):
                return f"{key} cannot be enforced for rsync; use sftp or scp"
        if not self.allowed_everywhere(Op.LIST):
            return 'rsync needs "list", which is not allowed'
        receive = self.allowed_everywhere(Op.UPLOAD)
        download = self.allowed_everywhere(Op.DOWNLOAD)
        if not receive and not download:
            return 'rsync needs "download" or "upload", and neither is allowed'
        if receive and not download and self.allowed_everywhere(Op.OVERWRITE):
            # the receiver reads an existing file to update it by delta
            return 'an rsync upload over an existing file reads it, and "download" is not allowed'
        if receive and not self.allowed_everywhere(Op.CREATE_DIRS):
            return 'an rsync upload may create directories, and "create_dirs" is not allowed'
        return None

    def rsync(self, host_root: Path) -> RsyncGrant | RsyncRefusal:
        """The rsync capability of this login: what its sandbox may do, or why it may not run."""
        reason = self.rsync_refusal()
        if reason is not None:
            return RsyncRefusal(reason)
        receive = self.allowed_everywhere(Op.UPLOAD)
        return RsyncGrant(
            host_root,
            receive=receive,
            incoming_chmod=incoming_chmod(self.umask),
            send=self.allowed_everywhere(Op.DOWNLOAD),
            delete=all(self.allowed_everywhere(op) for op in (Op.DELETE_FILES, Op.DELETE_DIRS)),
            overwrite=self.allowed_everywhere(Op.OVERWRITE),
            symlinks=self.allowed_everywhere(Op.CREATE_SYMLINKS),
        )


OnDenied = Callable[[RuleDenied], None]


def verdict(rules: Rules, op: Op, path: str, on_denied: OnDenied | None) -> None:
    """``rules.check``, telling ``on_denied`` (the server's denial log) of a refusal."""
    try:
        rules.check(op, path)
    except RuleDenied as denied:
        if on_denied is not None:
            on_denied(denied)
        raise


class RulesFile(DelegatingFile):
    """A file opened through RulesStorage: changes through the handle are judged at ``path``.

    ``created``: this open made the file (O_EXCL). Then truncating it, and setting its mode
    and times through the handle, are part of the upload (``put -p`` and scp -p set them on
    the file they just wrote), not an overwrite, chmod or chtimes of someone's file."""

    def __init__(
        self,
        inner: File,
        rules: Rules,
        path: str,
        *,
        writable: bool,
        created: bool = False,
        on_denied: OnDenied | None = None,
    ) -> None:
        super().__init__(inner)
        self.rules, self.path, self.writable, self.created = rules, path, writable, created
        self.on_denied = on_denied

    def _verdict(self, op: Op, path: str) -> None:
        verdict(self.rules, op, path, self.on_denied)

    def _check(self, op: Op) -> None:
        if not self.created:
            self._verdict(op, self.path)

    def _check_write(self) -> None:
        if not self.writable:  # the kernel refuses it anyway (EBADF); a rule says why
            self._verdict(Op.OVERWRITE, self.path)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self._check_write()
        self.inner.pwrite(data, offset)

    def pwrite_nowait(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        self._check_write()
        return self.inner.pwrite_nowait(data, offset)

    def truncate(self, size: int) -> None:
        self._check(Op.OVERWRITE)
        self.inner.truncate(size)

    def chmod(self, mode: int) -> None:
        self._check(Op.CHMOD)
        self.inner.chmod(self.rules.chmod_mode(mode))

    def utime(self, atime: int, mtime: int) -> None:
        self._check(Op.CHTIMES)
        self.inner.utime(atime, mtime)


class HidingDirectory:
    """A listing without the names ``hide_files`` hides."""

    def __init__(self, inner: Directory, rules: Rules, path: str) -> None:
        self.inner, self.rules, self.path = inner, rules, path

    def read(self, count: int) -> list[tuple[str, os.stat_result]]:
        while True:
            batch = self.inner.read(count)
            kept = [e for e in batch if not self.rules.hides_entry(self.path, e[0])]
            if kept or not batch:
                return kept

    def close(self) -> None:
        self.inner.close()


class RulesStorage(DelegatingStorage):
    """The storage a login's protocols see: ``rules`` asked before every change or read."""

    def __init__(self, inner: Storage, rules: Rules, on_denied: OnDenied | None = None) -> None:
        super().__init__(inner)
        self.rules, self.on_denied = rules, on_denied

    def _verdict(self, op: Op, path: str) -> None:
        verdict(self.rules, op, path, self.on_denied)

    def judged(self, path: str, *, follow: bool = True) -> str:
        """The path a rule judges for ``path``: the canonical path inside the jail (the final
        symlink followed only with ``follow``) when the rules depend on the path, else
        ``path`` as is (no system call)."""
        if not self.rules.path_dependent:
            return path
        if follow:
            return self.inner.realpath(path)
        parent, name = vpath.split(path)
        return vpath.normalize(name, self.inner.realpath(parent)) if name else "/"

    def _check(self, op: Op, path: str, *, follow: bool = True) -> None:
        self._verdict(op, self.judged(path, follow=follow))

    # -- files ----------------------------------------------------------------------
    def _open_flags(self, path: str, flags: int) -> tuple[str, int, bool]:
        """(judged path, flags to open with, whether ENOENT means "upload" was refused).

        With O_CREAT and no O_EXCL the same request is an upload (no such file) or an
        overwrite (the file exists); where only one of them is allowed, the flags make the
        kernel tell them apart atomically (O_EXCL, or no O_CREAT) instead of a stat first.
        """
        judged = self.judged(path)
        access = flags & os.O_ACCMODE
        if access != os.O_WRONLY:
            self._verdict(Op.DOWNLOAD, judged)
        if access == os.O_RDONLY and not flags & _WRITE_FLAGS:
            return judged, flags, False
        if not flags & os.O_CREAT:
            self._verdict(Op.OVERWRITE, judged)
            return judged, flags, False
        if flags & os.O_EXCL:
            self._verdict(Op.UPLOAD, judged)
            return judged, flags, False
        upload = self.rules.allows(Op.UPLOAD, judged)
        overwrite = self.rules.allows(Op.OVERWRITE, judged)
        if upload and overwrite:
            return judged, flags, False
        if upload:
            return judged, flags | os.O_EXCL, False  # EEXIST: "overwrite" is refused
        if overwrite:
            return judged, flags & ~os.O_CREAT, True  # ENOENT: "upload" is refused
        self._verdict(Op.UPLOAD, judged)
        raise AssertionError("unreachable: upload was refused")

    def _denied(self, op: Op, path: str) -> RuleDenied:
        denied = RuleDenied(op, path, self.rules.decide(op, path) or "?")
        if self.on_denied is not None:
            self.on_denied(denied)
        return denied

    def _opened(self, path: str, flags: int, mode: int, nowait: bool) -> File | None:
        judged, actual, upload_denied = self._open_flags(path, flags)
        mode = self.rules.create_mode(mode) if actual & os.O_CREAT else mode
        try:
            if nowait:
                file = self.inner.open_nowait(path, actual, mode)
            else:
                file = self.inner.open(path, actual, mode)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            raise self._denied(Op.OVERWRITE, judged) from None
        except FileNotFoundError:
            if not upload_denied:
                raise
            raise self._denied(Op.UPLOAD, judged) from None
        if file is None:
            return None
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        created = bool(actual & os.O_CREAT and actual & os.O_EXCL)
        return RulesFile(
            file, self.rules, judged, writable=writable, created=created, on_denied=self.on_denied
        )

    def open(self, path: str, flags: int, mode: int) -> File:
        file = self._opened(path, flags, mode, nowait=False)
        assert file is not None
        return file

    def open_nowait(self, path: str, flags: int, mode: int) -> File | None:
        return self._opened(path, flags, mode, nowait=True)

    def copy_range(
        self, src: File, src_offset: int, length: int, dst: File, dst_offset: int
    ) -> None:
        if isinstance(dst, RulesFile):
            dst._check_write()
        super().copy_range(src, src_offset, length, dst, dst_offset)

    # -- the tree -------------------------------------------------------------------
    def opendir(self, path: str) -> Directory:
        judged = self.judged(path)
        self._verdict(Op.LIST, judged)
        listing = self.inner.opendir(path)
        return HidingDirectory(listing, self.rules, judged) if self.rules.hide_files else listing

    def stat(self, path: str, *, follow: bool = True) -> os.stat_result:
        self._hidden(path, follow=follow)
        return self.inner.stat(path, follow=follow)

    def readlink(self, path: str) -> str:
        self._hidden(path, follow=False)
        return self.inner.readlink(path)

    def _hidden(self, path: str, *, follow: bool) -> None:
        if self.rules.hide_files and self.rules.hidden(self.judged(path, follow=follow)):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))

    def truncate(self, path: str, size: int) -> None:
        self._check(Op.OVERWRITE, path)
        self.inner.truncate(path, size)

    def chmod(self, path: str, mode: int, *, follow: bool = True) -> None:
        self._check(Op.CHMOD, path, follow=follow)
        self.inner.chmod(path, self.rules.chmod_mode(mode), follow=follow)

    def utime(self, path: str, atime: int, mtime: int, *, follow: bool = True) -> None:
        self._check(Op.CHTIMES, path, follow=follow)
        self.inner.utime(path, atime, mtime, follow=follow)

    def remove(self, path: str) -> None:
        self._check(Op.DELETE_FILES, path, follow=False)
        self.inner.remove(path)

    def mkdir(self, path: str, mode: int) -> None:
        self._check(Op.CREATE_DIRS, path, follow=False)
        self.inner.mkdir(path, self.rules.create_mode(mode))

    def rmdir(self, path: str) -> None:
        self._check(Op.DELETE_DIRS, path, follow=False)
        self.inner.rmdir(path)

    def rename(self, old: str, new: str, *, overwrite: bool) -> None:
        src, dst = self.judged(old, follow=False), self.judged(new, follow=False)
        allowed = [
            op
            for op in (Op.RENAME_FILES, Op.RENAME_DIRS)
            if self.rules.allows(op, src) and self.rules.allows(op, dst)
        ]
        if len(allowed) == 1:  # the kind decides: a file or a directory
            is_dir = stat.S_ISDIR(self.inner.stat(old, follow=False).st_mode)
            op = Op.RENAME_DIRS if is_dir else Op.RENAME_FILES
        else:
            op = allowed[0] if allowed else Op.RENAME_FILES
        self._verdict(op, src)
        self._verdict(op, dst)
        if overwrite and not self.rules.allows(Op.OVERWRITE, dst):
            try:
                self.inner.rename(old, new, overwrite=False)
            except FileExistsError:
                raise self._denied(Op.OVERWRITE, dst) from None
            return
        self.inner.rename(old, new, overwrite=overwrite)

    def symlink(self, target: str, linkpath: str) -> None:
        self._check(Op.CREATE_SYMLINKS, linkpath, follow=False)
        self.inner.symlink(target, linkpath)

    def link(self, old: str, new: str) -> None:
        self._check(Op.UPLOAD, new, follow=False)
        self._check(Op.DOWNLOAD, old)
        self.inner.link(old, new)
