"""Directory listings: READDIR batches with ls -l longnames, sized for a client's packets,
the next batch of one directory per session read ahead."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from sftpd.apps.sftp import messages as m
from sftpd.apps.sftp.attrs import IdNames
from sftpd.apps.sftp.handles import DirHandle, FileHandle, HandleTable
from sftpd.runtime.threads import Blocking
from sftpd.storage.base import Directory

_EMPTY = m.NameBatch(0, b"")

# A READDIR answers up to this many entries, and stops adding steps of READDIR_STEP once
# about READDIR_BYTES are in (a step is at most ~45 KB: names are at most 255 bytes), so a
# NAME reply stays under ~110 KB, below the 256 KiB packets clients accept. Bigger batches
# than OpenSSH's 100 save round trips: each costs both sides more than 100 entries do.
READDIR_BATCH = 1000
READDIR_STEP = 50
READDIR_BYTES = 64 * 1024


def read_names(
    directory: Directory, count: int, names: IdNames, budget: int = READDIR_BYTES
) -> m.NameBatch:
    """The next batch of a listing, NAME entries with ls -l longnames in their wire form
    (blocking): up to ``count`` entries, read in steps until about ``budget`` bytes are in."""
    now = time.time()  # once per batch, not per entry
    wire, out = names.wire_entries, list[bytes]()
    n = size = 0
    while n < count and size < budget:
        want = min(READDIR_STEP, count - n)
        step = directory.read(want)
        size += wire(step, now, out)
        n += len(step)
        if len(step) < want:
            break  # the listing is exhausted
    return m.NameBatch(n, b"".join(out))


class Listings:
    """The READDIR batches of one session's open directories.

    After answering a batch, the next one of that directory is read on a worker at once,
    while the batch travels to the client and the client formats it: a client asks for
    the next batch only after that (OpenSSH's sftp keeps one READDIR out), so a big
    listing would otherwise wait for each read in turn. The read starts on the reactor
    turn after the answer went out. One directory per session is
    read ahead at a time, as a batch can be ~100 KB. An error met
    reading ahead is the answer to the next READDIR, as it would have been."""

    def __init__(
        self, handles: HandleTable, blocking: Blocking, names: IdNames, clock: Any = None
    ) -> None:
        self._handles = handles
        self._blocking = blocking
        self._names = names
        self._clock = clock  # IReactorTime; None: read ahead at once (tests)
        self._ahead: DirHandle | None = None  # the directory whose next batch is read ahead
        handles.on_forget = self._forget

    async def next_batch(self, handle: bytes) -> m.NameBatch:
        """The next entries of ``handle``'s listing (empty at its end)."""
        entry = self._handles.acquire_dir(handle)
        try:
            ahead, entry.ahead = entry.ahead, None
            if ahead is None:
                batch: m.NameBatch = await self._read(entry)
            else:
                ok, result = await ahead
                if not ok:
                    result.raiseException()
                batch = result
        finally:
            self._handles.release(entry)
            # (also after an error: else read-ahead would stop for the whole session)
            if self._ahead is entry and entry.ahead is None:
                self._ahead = None
        if batch.entries:
            if self._clock is None:
                self._read_ahead(handle)
            else:
                # On the next reactor turn, once this batch is sent: the read is mostly
                # Python (longnames) and would hold the GIL the reply needs.
                self._clock.callLater(0, self._read_ahead, handle)
        return batch

    def _read(self, entry: DirHandle) -> defer.Deferred[m.NameBatch]:
        return entry.lock.run(self._read_locked, entry)

    def _read_locked(self, entry: DirHandle) -> defer.Deferred[m.NameBatch]:
        if entry.forgotten:
            return defer.succeed(_EMPTY)  # closed while this read waited for the lock
        return self._blocking.run(read_names, entry.directory, READDIR_BATCH, self._names)

    def _read_ahead(self, handle: bytes) -> None:
        if self._ahead is not None:
            return
        try:
            entry = self._handles.acquire_dir(handle)
        except m.StatusError:
            return  # closed meanwhile
        if entry.ahead is not None:
            # Never a second read-ahead on one handle: it would replace a batch that
            # no READDIR has taken yet (pipelined READDIRs lost one that way).
            self._handles.release(entry)
            return
        self._ahead = entry

        def settled(result: Any) -> tuple[bool, Any]:
            self._handles.release(entry)
            return not isinstance(result, Failure), result

        entry.ahead = self._read(entry).addBoth(settled)

    def _forget(self, entry: FileHandle | DirHandle) -> None:
        if isinstance(entry, DirHandle):
            entry.forgotten = True
        if entry is self._ahead:
            self._ahead = None
