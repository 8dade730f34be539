"""SFTP v3 file attributes: the Attrs value, its wire encoding, and ls -l style longnames."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import struct
import time
from dataclasses import dataclass

from sftpd.sftp.constants import AttrFlag

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U32X2 = struct.Struct(">II")

_SIX_MONTHS = 182 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Attrs:
    """An SSH_FILEXFER ATTRS structure; None means the field is absent.

    ``uid`` and ``gid`` travel together (UIDGID), as do ``atime`` and ``mtime``.
    """

    size: int | None = None
    uid: int | None = None
    gid: int | None = None
    permissions: int | None = None
    atime: int | None = None
    mtime: int | None = None
    extended: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def flags(self) -> int:
        flags = 0
        if self.size is not None:
            flags |= AttrFlag.SIZE
        if self.uid is not None or self.gid is not None:
            flags |= AttrFlag.UIDGID
        if self.permissions is not None:
            flags |= AttrFlag.PERMISSIONS
        if self.atime is not None or self.mtime is not None:
            flags |= AttrFlag.ACMODTIME
        if self.extended:
            flags |= AttrFlag.EXTENDED
        return flags


EMPTY_ATTRS = Attrs()


def _u32(value: int) -> int:
    """Clamp a value into uint32 (times past 2106, ids above 2**32-1)."""
    return min(max(value, 0), 0xFFFFFFFF)


def encode_attrs(attrs: Attrs) -> bytes:
    """Encode ``attrs`` in the v3 wire format."""
    flags = attrs.flags
    parts = [_U32.pack(flags)]
    if attrs.size is not None:
        parts.append(_U64.pack(min(max(attrs.size, 0), 0xFFFFFFFFFFFFFFFF)))
    if flags & AttrFlag.UIDGID:
        parts.append(_U32X2.pack(_u32(attrs.uid or 0), _u32(attrs.gid or 0)))
    if attrs.permissions is not None:
        parts.append(_U32.pack(_u32(attrs.permissions)))
    if flags & AttrFlag.ACMODTIME:
        parts.append(_U32X2.pack(_u32(attrs.atime or 0), _u32(attrs.mtime or 0)))
    if attrs.extended:
        parts.append(_U32.pack(len(attrs.extended)))
        for name, value in attrs.extended:
            parts.append(_U32.pack(len(name)))
            parts.append(name)
            parts.append(_U32.pack(len(value)))
            parts.append(value)
    return b"".join(parts)


def attrs_from_stat(st: os.stat_result) -> Attrs:
    """The attributes v3 can carry, taken from a stat result."""
    return Attrs(
        size=st.st_size,
        uid=st.st_uid,
        gid=st.st_gid,
        permissions=st.st_mode,
        atime=int(st.st_atime),
        mtime=int(st.st_mtime),
    )


class IdNames:
    """uid/gid -> name lookups, cached for the session; the number when there is no name."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str | None:
        """The user name of ``uid``, or None when the system has none."""
        try:
            return self._users[uid] or None
        except KeyError:
            pass
        try:
            name = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            name = ""
        self._users[uid] = name
        return name or None

    def group(self, gid: int) -> str | None:
        """The group name of ``gid``, or None when the system has none."""
        try:
            return self._groups[gid] or None
        except KeyError:
            pass
        try:
            name = grp.getgrgid(gid).gr_name
        except (KeyError, OverflowError):
            name = ""
        self._groups[gid] = name
        return name or None


def longname(
    name: str, st: os.stat_result, names: IdNames | None = None, now: float | None = None
) -> str:
    """An ``ls -l`` line: type and mode, links, owner, group, size, date, name.

    FileZilla and WinSCP parse it and take the first character as the file type.
    """
    owner = (names.user(st.st_uid) if names else None) or str(st.st_uid)
    group = (names.group(st.st_gid) if names else None) or str(st.st_gid)
    mtime = int(st.st_mtime)
    current = time.time() if now is None else now
    try:
        tm = time.localtime(mtime)
    except (OverflowError, OSError, ValueError):
        tm = time.localtime(0)
    if abs(current - mtime) < _SIX_MONTHS:
        date = time.strftime("%b %e %H:%M", tm)
    else:
        date = time.strftime("%b %e  %Y", tm)
    return (
        f"{stat.filemode(st.st_mode)} {st.st_nlink:>4} {owner:<8} {group:<8} "
        f"{st.st_size:>8} {date} {name}"
    )
