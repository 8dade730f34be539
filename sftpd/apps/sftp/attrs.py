"""SFTP v3 file attributes: the Attrs value, its wire encoding, and ls -l style longnames."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import struct
import time
from typing import NamedTuple

from sftpd.apps.sftp.constants import (
    ATTR_ACMODTIME,
    ATTR_EXTENDED,
    ATTR_PERMISSIONS,
    ATTR_SIZE,
    ATTR_UIDGID,
)

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U32X2 = struct.Struct(">II")

_SIX_MONTHS = 182 * 24 * 3600
_FULL = ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME
_FULL_STRUCT = struct.Struct(">IQIIIII")  # flags, size, uid, gid, permissions, atime, mtime
_U64_MAX = 0xFFFFFFFFFFFFFFFF


class Attrs(NamedTuple):
    """An SSH_FILEXFER ATTRS structure; None means the field is absent.

    ``uid`` and ``gid`` travel together (UIDGID), as do ``atime`` and ``mtime``.
    A NamedTuple, not a frozen dataclass: listings build one per entry, and a frozen
    dataclass's ``__init__`` costs three times as much.
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
            flags |= ATTR_SIZE
        if self.uid is not None or self.gid is not None:
            flags |= ATTR_UIDGID
        if self.permissions is not None:
            flags |= ATTR_PERMISSIONS
        if self.atime is not None or self.mtime is not None:
            flags |= ATTR_ACMODTIME
        if self.extended:
            flags |= ATTR_EXTENDED
        return flags


EMPTY_ATTRS = Attrs()


def _u32(value: int) -> int:
    """Clamp a value into uint32 (times past 2106, ids above 2**32-1)."""
    return min(max(value, 0), 0xFFFFFFFF)


def encode_attrs(attrs: Attrs) -> bytes:
    """Encode ``attrs`` in the v3 wire format."""
    if not attrs.extended:
        try:  # every stat result: one pack (listings encode thousands)
            return _FULL_STRUCT.pack(
                _FULL,
                attrs.size,
                attrs.uid,
                attrs.gid,
                attrs.permissions,
                attrs.atime,
                attrs.mtime,
            )
        except struct.error:
            pass  # a field is absent or out of range (negative, or a time past 2106)
    flags = attrs.flags
    if flags == _FULL:
        return _FULL_STRUCT.pack(
            _FULL,
            min(max(attrs.size or 0, 0), _U64_MAX),
            _u32(attrs.uid or 0),
            _u32(attrs.gid or 0),
            _u32(attrs.permissions or 0),
            _u32(attrs.atime or 0),
            _u32(attrs.mtime or 0),
        )
    parts = [_U32.pack(flags)]
    if attrs.size is not None:
        parts.append(_U64.pack(min(max(attrs.size, 0), _U64_MAX)))
    if flags & ATTR_UIDGID:
        parts.append(_U32X2.pack(_u32(attrs.uid or 0), _u32(attrs.gid or 0)))
    if attrs.permissions is not None:
        parts.append(_U32.pack(_u32(attrs.permissions)))
    if flags & ATTR_ACMODTIME:
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
    # positional, and by index (stat_result[7], [8] are the whole-second times as ints):
    # a listing builds one per entry
    return Attrs(st[6], st[4], st[5], st[0], st[7], st[8])  # type: ignore[arg-type]


class IdNames:
    """uid/gid -> name lookups, cached for the session; the number when there is no name."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}
        # Formatted dates and modes recur across a listing (files written in the same
        # second): caching them saves most of a longname's cost. Bounded.
        self._dates: dict[tuple[int, bool], str] = {}
        self._modes: dict[int, str] = {}
        self._owner_group: dict[tuple[int, int], str] = {}
        self._heads: dict[tuple[int, int, int, int], str] = {}

    def longname(self, name: str, st: os.stat_result, now: float) -> str:
        """``longname`` with every column but size, links and name from a cache."""
        # mode, links, owner and group recur across a listing: one lookup for all four
        key = (st[0], st[3], st[4], st[5])  # st_mode, st_nlink, st_uid, st_gid
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) > 4096:
                self._heads.clear()
            head = self._heads[key] = self._head(*key)
        mtime: int = st[8]  # type: ignore[assignment]  # the whole seconds, an int
        date = self.date(mtime, abs(now - mtime) < _SIX_MONTHS)
        return f"{head} {st[6]:>8} {date} {name}"

    def wire_entries(
        self, entries: list[tuple[str, os.stat_result]], now: float, out: list[bytes]
    ) -> int:
        """Append each entry's NAME wire form (filename, ``longname``, attributes, as
        encode_name writes them) to ``out``; the number of bytes appended.

        One pass, no objects per entry but the strings: a listing spends most of its time
        here, so this repeats what longname and encode_attrs do, inline."""
        heads, dates, u32, full = self._heads, self._dates, _U32.pack, _FULL_STRUCT.pack
        added = 0
        for name, st in entries:
            # the first ten fields, the times as whole seconds (ints)
            fields: tuple[int, ...] = st  # type: ignore[assignment]
            mode, _ino, _dev, nlink, uid, gid, size, atime, mtime, _ctime = fields
            key = (mode, nlink, uid, gid)
            head = heads.get(key)
            if head is None:
                if len(heads) > 4096:
                    heads.clear()
                head = heads[key] = self._head(*key)
            dkey = (mtime, -_SIX_MONTHS < now - mtime < _SIX_MONTHS)
            date = dates.get(dkey)
            if date is None:
                date = self.date(*dkey)
            filename = name.encode("utf-8", "surrogateescape")
            long = f"{head} {size:>8} {date} {name}".encode("utf-8", "surrogateescape")
            try:
                attrs = full(_FULL, size, uid, gid, mode, atime, mtime)
            except struct.error:  # out of range (negative, or a time past 2106)
                attrs = encode_attrs(Attrs(size, uid, gid, mode, atime, mtime))
            out += (u32(len(filename)), filename, u32(len(long)), long, attrs)
            added += len(filename) + len(long) + len(attrs) + 8
        return added

    def _head(self, st_mode: int, nlink: int, uid: int, gid: int) -> str:
        """The columns before the size: mode, links, owner, group."""
        ids = (uid, gid)
        owner_group = self._owner_group.get(ids)
        if owner_group is None:
            if len(self._owner_group) > 4096:
                self._owner_group.clear()
            owner = self.user(uid) or str(uid)
            group = self.group(gid) or str(gid)
            owner_group = self._owner_group[ids] = f"{owner:<8} {group:<8}"
        return f"{self.mode(st_mode)} {nlink:>4} {owner_group}"

    def date(self, mtime: int, recent: bool) -> str:
        """The ``ls -l`` date column for ``mtime``."""
        key = (mtime, recent)
        text = self._dates.get(key)
        if text is None:
            if len(self._dates) > 4096:
                self._dates.clear()
            text = self._dates[key] = _date_text(mtime, recent)
        return text

    def mode(self, st_mode: int) -> str:
        """The ``ls -l`` mode column (``-rw-r--r--``)."""
        text = self._modes.get(st_mode)
        if text is None:
            text = self._modes[st_mode] = stat.filemode(st_mode)
        return text

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
    current = time.time() if now is None else now
    if names is not None:
        return names.longname(name, st, current)
    mtime = int(st.st_mtime)
    date = _date_text(mtime, abs(current - mtime) < _SIX_MONTHS)
    owner_group = f"{st.st_uid:<8} {st.st_gid:<8}"
    return (
        f"{stat.filemode(st.st_mode)} {st.st_nlink:>4} {owner_group} {st.st_size:>8} {date} {name}"
    )


def _date_text(mtime: int, recent: bool) -> str:
    try:
        tm = time.localtime(mtime)
    except (OverflowError, OSError, ValueError):
        tm = time.localtime(0)
    return time.strftime("%b %e %H:%M" if recent else "%b %e  %Y", tm)
