"""The rules layer's decisions: one frozen Rules object per login, asked for every protocol.

Every protocol's file operations go through ``sftpd.storage.enforce.RulesStorage``, which
asks :meth:`Rules.check` with an :class:`Op` and a virtual path before anything reaches the
jail, and applies the creation mode (umask, no setuid/setgid/sticky) in one place.
rsync cannot go through a Storage; :meth:`Rules.rsync` grants it (with what the sandbox
may do) or refuses it, with the reason.
"""

from __future__ import annotations

import enum
import errno
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from sftpd.storage import vpath
from sftpd.storage.permissions import SINGLE, Table, matching

# Only the permission bits are ever applied: setuid, setgid and sticky are dropped.
PERMISSION_BITS = 0o777


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
    chmod: bool = True  # without it the receiver sets no modes on what exists (--no-perms)
    chtimes: bool = True  # without it the receiver sets no times (--no-times)
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
            chmod=self.allowed_everywhere(Op.CHMOD),
            chtimes=self.allowed_everywhere(Op.CHTIMES),
        )
