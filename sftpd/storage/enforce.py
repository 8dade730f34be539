"""Rules applied to storage: RulesStorage asks a login's Rules before the jail sees a request."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from sftpd.storage import vpath
from sftpd.storage.base import Directory, File, Storage
from sftpd.storage.delegate import DelegatingFile, OpeningStorage
from sftpd.storage.rules import Op, RuleDenied, Rules

_WRITE_FLAGS = os.O_CREAT | os.O_TRUNC | os.O_APPEND

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


class RulesStorage(OpeningStorage):
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
