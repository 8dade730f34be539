"""Upload completion, sans-IO: temp-name rules and a per-user tracker of files being written.

A file written and closed under a temporary name (``*.filepart``, ``*.partial``, ``*.part``,
``*.tmp``, rsync's ``.NAME.XXXXXX``, or a name the injected predicate recognises, such as
sftpd's own atomic temporaries) produces no upload event; the rename to the final name
produces one, with the final path, the size and the SHA-256 computed while writing. The
SHA-256 is only reported when the content was written sequentially from offset 0 through
one handle onto a new or truncated file; otherwise it is null. Time comes from a clock.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sftpd.events.model import Event, Identity

TEMP_SUFFIXES = (".filepart", ".partial", ".part", ".tmp")
# rsync's temporaries: ".NAME.XXXXXX" with six letters/digits (mkstemp style).
_RSYNC_TEMP = re.compile(r"\.(.+)\.[A-Za-z0-9]{6}")
# How many closed-but-not-renamed temporaries a user may have before the oldest is forgotten,
# and how long (seconds) one is remembered.
MAX_PENDING = 1000
# Writes that complete out of order (several in flight, finished by different worker
# threads) are held, up to this many bytes per file, until the gap before them is filled.
MAX_HELD = 8 << 20
PENDING_TTL = 24 * 3600.0


class Clock(Protocol):
    def seconds(self) -> float: ...


class TempNames:
    """Decides whether a virtual path is a client's (or sftpd's) temporary upload name."""

    def __init__(self, extra: Callable[[str], bool] | None = None) -> None:
        self._extra = extra

    def __call__(self, path: str) -> bool:
        name = path.rpartition("/")[2]
        if not name or name in (".", ".."):
            return False
        lower = name.lower()
        if lower.endswith(TEMP_SUFFIXES) and lower not in TEMP_SUFFIXES:
            return True
        if name[0] == "." and _RSYNC_TEMP.fullmatch(name):
            return True
        return self._extra is not None and self._extra(path)


@dataclass(eq=False)
class _Written:
    """A file being written through one handle (or closed under a temporary name)."""

    path: str
    started: float
    hasher: Any  # hashlib sha256 object, or None once the writes stop being sequential
    next_offset: int = 0
    hashed_to: int = 0  # the hash covers [0, hashed_to)
    held: dict[int, bytes] = field(default_factory=dict)  # offset -> data ahead of hashed_to
    held_bytes: int = 0
    bytes: int = 0
    size: int = 0
    error: str = ""


@dataclass
class _Read:
    path: str
    started: float
    bytes: int = 0
    error: str = ""


@dataclass
class _Pending:
    """A temporary closed after writing: it becomes an upload when renamed to a final name."""

    written: _Written
    ended: float
    who: Identity


@dataclass
class UserUploads:
    """Per user, shared by the user's sessions: who writes which path, and closed temps."""

    writers: dict[str, list[_Written]] = field(default_factory=dict)
    pending: OrderedDict[str, _Pending] = field(default_factory=OrderedDict)

    def expire(self, now: float) -> None:
        """Forget temporaries closed more than :data:`PENDING_TTL` seconds ago."""
        while self.pending:
            first = next(iter(self.pending.values()))
            if now - first.ended <= PENDING_TTL:
                break
            self.pending.popitem(last=False)


def _hash_in_order(w: _Written, offset: int, data: bytes | bytearray | memoryview) -> None:
    """Feed ``data`` to the hash in file order; a rewrite or too much held drops the hash.

    Another handle opening the same path may drop the hash meanwhile (``hasher = None``
    from another thread): the hasher is read once, and a dropped one stays dropped."""
    hasher = w.hasher
    if hasher is None:
        return
    if offset == w.hashed_to:
        hasher.update(data)
        w.hashed_to += len(data)
        while w.held:
            piece = w.held.pop(w.hashed_to, None)
            if piece is None:
                break
            w.held_bytes -= len(piece)
            hasher.update(piece)
            w.hashed_to += len(piece)
        return
    if offset > w.hashed_to and offset not in w.held and w.held_bytes + len(data) <= MAX_HELD:
        w.held[offset] = bytes(data)
        w.held_bytes += len(data)
        return
    w.hasher = None
    w.held.clear()
    w.held_bytes = 0


class SessionTransfers:
    """The open files of one session; every method returns the events it completes."""

    def __init__(
        self,
        who: Identity,
        user: UserUploads,
        clock: Clock,
        temp: Callable[[str], bool] | None = None,
        *,
        hash_uploads: bool = True,
    ) -> None:
        self.who = who
        self._hash = hash_uploads
        self._user = user
        self._clock = clock
        self._temp = temp or TempNames()
        self._writes: dict[object, _Written] = {}
        self._reads: dict[object, _Read] = {}

    # -- opening, reading, writing

    def opened(self, handle: object, path: str, *, write: bool, truncate: bool, size: int) -> None:
        """``handle`` was opened on ``path``; ``size`` is the file's size once opened
        (0 for a new or truncated file). Opening for writing starts an upload."""
        now = self._clock.seconds()
        if not write:
            self._reads[handle] = _Read(path, now)
            return
        fresh = truncate or size == 0
        hasher = hashlib.sha256() if fresh and self._hash else None
        w = self._writes[handle] = _Written(path, now, hasher, size=0 if truncate else size)
        others = self._user.writers.setdefault(path, [])
        others.append(w)
        if len(others) > 1:  # two handles write the same file: neither knows the whole content
            for each in others:
                each.hasher = None
        self._user.pending.pop(path, None)

    def wrote(self, handle: object, offset: int, data: bytes | bytearray | memoryview) -> None:
        """``data`` was written at ``offset`` through ``handle``."""
        w = self._writes.get(handle)
        if w is None:
            return
        if w.hasher is not None:
            _hash_in_order(w, offset, data)
        end = offset + len(data)
        w.next_offset = end
        w.bytes += len(data)
        w.size = max(w.size, end)

    def copied(self, handle: object, offset: int, count: int) -> None:
        """``count`` bytes whose content is not seen here arrived at ``offset`` through
        ``handle`` (a server-side copy): counted, and the SHA-256 is dropped."""
        w = self._writes.get(handle)
        if w is None:
            return
        w.hasher = None
        w.held.clear()
        w.held_bytes = 0
        w.bytes += count
        w.size = max(w.size, offset + count)

    def read(self, handle: object, count: int) -> None:
        r = self._reads.get(handle)
        if r is not None:
            r.bytes += count

    def failed(self, handle: object, error: str) -> None:
        """A read or write through ``handle`` failed with ``error`` (the errno text)."""
        target: _Written | _Read | None = self._writes.get(handle) or self._reads.get(handle)
        if target is not None and not target.error:
            target.error = error

    # -- completion

    def closed(self, handle: object, *, error: str = "", size: int | None = None) -> list[Event]:
        """``handle`` was closed (``error``: the close failed). ``size``: the file's size
        after closing, when the caller knows it (else the largest end written)."""
        now = self._clock.seconds()
        r = self._reads.pop(handle, None)
        if r is not None:
            problem = r.error or error
            return [
                Event(
                    "download",
                    self.who,
                    r.started,
                    r.path,
                    bytes=r.bytes,
                    size=size,
                    duration=now - r.started,
                    outcome="error" if problem else "ok",
                    reason=problem,
                )
            ]
        w = self._writes.pop(handle, None)
        if w is None:
            return []
        self._release(w)
        if size is not None:
            if size != w.hashed_to:
                w.hasher = None
            w.size = size
        if w.held:  # a gap never filled: the hash does not cover the content
            w.hasher = None
            w.held.clear()
        w.error = w.error or error
        if not w.error and self._temp(w.path):
            self._remember(w, now)
            return []
        return [self._upload(w, w.path, now, "error" if w.error else "ok", w.error)]

    def renamed(self, old: str, new: str, *, error: str = "") -> list[Event]:
        """``old`` was renamed to ``new`` (``error``: the rename failed, with this text)."""
        now = self._clock.seconds()
        if error:
            return [self._simple("rename", old, now, target=new, outcome="error", reason=error)]
        moved = self._user.writers.pop(old, None)
        if moved:  # renamed while open: the close completes the upload under the new name
            for w in moved:
                w.path = new
            self._user.writers.setdefault(new, []).extend(moved)
        self._user.pending.pop(new, None)
        self._user.expire(now)
        pending = self._user.pending.pop(old, None)
        if pending is None:
            return [self._simple("rename", old, now, target=new)]
        if self._temp(new):
            pending.written.path = new
            self._user.pending[new] = pending
            return []
        return [self._upload(pending.written, new, now, "ok", "", who=pending.who)]

    def removed(self, path: str, *, error: str = "") -> list[Event]:
        """``path`` was deleted: a closed temporary under it will never be an upload."""
        now = self._clock.seconds()
        if not error:
            self._user.pending.pop(path, None)
        return [self._simple("delete", path, now, outcome="error" if error else "ok", reason=error)]

    def lost(self, handle: object) -> list[Event]:
        """The client went away with ``handle`` open: its transfer is incomplete."""
        now = self._clock.seconds()
        w = self._writes.pop(handle, None)
        if w is not None:
            self._release(w)
            w.hasher = None
            return [self._upload(w, w.path, now, "incomplete", "")]
        r = self._reads.pop(handle, None)
        if r is None:
            return []
        return [
            Event(
                "download",
                self.who,
                r.started,
                r.path,
                bytes=r.bytes,
                duration=now - r.started,
                outcome="incomplete",
            )
        ]

    def connection_lost(self) -> list[Event]:
        """The session ended: every open transfer is incomplete."""
        now = self._clock.seconds()
        out: list[Event] = []
        for w in self._writes.values():
            self._release(w)
            w.hasher = None
            out.append(self._upload(w, w.path, now, "incomplete", ""))
        for r in self._reads.values():
            out.append(
                Event(
                    "download",
                    self.who,
                    r.started,
                    r.path,
                    bytes=r.bytes,
                    duration=now - r.started,
                    outcome="incomplete",
                )
            )
        self._writes.clear()
        self._reads.clear()
        return out

    # -- helpers

    def _simple(self, op: str, path: str, now: float, **fields: Any) -> Event:
        return Event(op, self.who, now, path, **fields)

    def _upload(
        self,
        w: _Written,
        path: str,
        now: float,
        outcome: str,
        reason: str,
        who: Identity | None = None,
    ) -> Event:
        sha = w.hasher.hexdigest() if (w.hasher is not None and outcome == "ok") else None
        return Event(
            "upload",
            who or self.who,
            w.started,
            path,
            bytes=w.bytes,
            size=w.size,
            duration=now - w.started,
            outcome=outcome,
            reason=reason,
            sha256=sha,
        )

    def _release(self, w: _Written) -> None:
        writers = self._user.writers.get(w.path, [])
        if w in writers:
            writers.remove(w)
            if not writers:
                del self._user.writers[w.path]

    def _remember(self, w: _Written, now: float) -> None:
        pending = self._user.pending
        pending.pop(w.path, None)
        pending[w.path] = _Pending(w, now, self.who)
        while len(pending) > MAX_PENDING:
            pending.popitem(last=False)
