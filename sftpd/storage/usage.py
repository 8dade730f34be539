"""Quota usage in a store that nodes and workers share: deltas, a short cache, outages.

:class:`StoreQuotaUsage` is the :class:`~sftpd.storage.quota.QuotaUsage` of one user when a
user database is configured. Its numbers are the store's totals as last read plus this
process's changes not yet sent; a limit is judged against them without a query (so a write
on the reactor thread never waits for the database). Changes go to the store as deltas
(one atomic ``UPDATE ... SET bytes = bytes + ?``, which returns the new totals) when a
worker-thread operation ends (``settle``: before the client hears the reply) and from a
periodic ``sync`` (every 0.5 s, sftpd.contexts) for writes made on the reactor thread.
The totals are read again before a new write (``admit``) when they are older than
``fresh`` (0.1 s), and at any other worker-thread operation when older than ``max_age``
(1 s): a new upload at one node is judged with what another node finished more than
``fresh`` ago; an upload in progress sees the other nodes' within ``max_age``.

The store down: changes are kept and sent when it answers again (``sync``, retried every
``retry`` seconds by the caller's timer); writes already open go on, judged by the last
totals plus this process's own changes; a new write (an OPEN for writing, a truncate, a
hard link, an scp file) is refused with :func:`usage_unavailable` until the store answers,
since what other nodes wrote meanwhile cannot be known. Nothing blocks on a dead store
beyond its own timeouts, once per ``retry``.
"""

from __future__ import annotations

import errno
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sftpd.storage.quota import LimitExceeded, Limits, files_exceeded, quota_exceeded

Scan = Callable[[], tuple[int, int]]


class UsageUnavailable(Exception):
    """The usage store could not answer (database down, timeout); the message is for the log."""


class UsageStore(Protocol):
    """Where usage lives beyond this process. Blocking calls, worker threads only; each
    raises :class:`UsageUnavailable` when the store cannot be reached."""

    def load(self, name: str) -> tuple[str, int, int] | None:
        """(root counted in, bytes, files), or None if never counted."""

    def add(self, name: str, nbytes: int, files: int) -> tuple[int, int] | None:
        """Add deltas atomically; the new totals, or None (no row: nothing added)."""

    def store(
        self, name: str, root: str, nbytes: int, files: int, *, replace: bool
    ) -> tuple[int, int]:
        """Store a scan (``replace=False``: keep a row stored meanwhile); the stored totals."""


def usage_unavailable() -> LimitExceeded:
    return LimitExceeded(
        errno.EAGAIN,
        "quota usage unavailable: the user database cannot be reached; try again later",
    )


class StoreQuotaUsage:
    """One user's usage in a :class:`UsageStore`, shared with the other nodes and workers.

    ``start`` (a worker thread, at the user's first login in this process) reads the
    stored totals, or scans the root (``scan``) and stores the count when there are none or
    they were counted in another root. ``report(up, reason)`` hears when the store stops and
    starts answering (for the log)."""

    shared = True

    def __init__(
        self,
        name: str,
        store: UsageStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_age: float = 1.0,
        fresh: float = 0.1,
        retry: float = 5.0,
        report: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.name = name
        self.max_age, self.fresh, self.retry = max_age, fresh, retry
        self._store, self._clock, self._report = store, clock, report
        self._lock = threading.Lock()  # the numbers
        self._io = threading.Lock()  # one store exchange at a time
        self._ready = threading.Event()
        self._root = ""
        self._scan: Scan = lambda: (0, 0)
        self._base: tuple[int, int] | None = None  # the store's totals as last read
        self._pending = (0, 0)  # changes not sent yet
        self._sending = (0, 0)  # changes being sent
        self._read_at = -math.inf
        self.down: str | None = None  # why the store did not answer the last exchange
        self._retry_at = -math.inf

    # -- the first login, the exchange with the store ----------------------------------

    def start(self, root: str, scan: Scan) -> None:
        """Read or count the usage (a worker thread); sessions wait for it."""
        self._root, self._scan = root, scan
        try:
            self.sync()
        finally:
            self._ready.set()

    @property
    def dirty(self) -> bool:
        """Whether changes wait to be sent, or the store must be asked again after an outage."""
        return self._pending != (0, 0) or self._base is None or self.down is not None

    def due(self) -> bool:
        """Whether a periodic ``sync`` has something to do now (changes, or a retry due)."""
        if self.down is not None or self._base is None:
            return self._clock() >= self._retry_at
        return self._pending != (0, 0)

    def sync(self, *, wait: bool = True) -> bool:
        """Send the changes and read the totals (a worker thread). False: the store did not
        answer; the changes are kept for the next try. ``wait=False``: skip (True) when
        another thread is exchanging already."""
        if not self._io.acquire(blocking=wait):
            return True
        try:
            with self._lock:
                send, self._pending, self._sending = self._pending, (0, 0), self._pending
            try:
                totals = self._exchange(send)
            except Exception as e:  # any failure keeps the changes
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                with self._lock:
                    self._pending = _plus(self._pending, send)
                    self._sending = (0, 0)
                    first, self.down = self.down is None, reason
                    self._retry_at = self._clock() + self.retry
                if first and self._report is not None:
                    self._report(False, reason)
                return False
            with self._lock:
                self._base, self._sending = totals, (0, 0)
                self._read_at = self._clock()
                was, self.down = self.down, None
            if was is not None and self._report is not None:
                self._report(True, was)
            return True
        finally:
            self._io.release()

    def _exchange(self, send: tuple[int, int]) -> tuple[int, int]:
        if self._base is not None:
            totals = self._store.add(self.name, *send)
            if totals is not None:
                return totals
            # The row is gone (the user deleted and added again): count afresh.
        row = self._store.load(self.name)
        if row is not None and row[0] == self._root:
            if send == (0, 0):
                return row[1], row[2]
            totals = self._store.add(self.name, *send)
            if totals is not None:
                return totals
            row = None
        # Never counted, or counted in another root: the scan sees what the changes did.
        nbytes, files = self._scan()
        return self._store.store(self.name, self._root, nbytes, files, replace=row is not None)

    # -- QuotaUsage ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self) -> None:
        """Until the first count is in; then read the totals again if they are older than
        ``max_age`` (skipped while the store is down: the periodic sync retries)."""
        self._ready.wait()
        if self.down is None and self._clock() - self._read_at >= self.max_age:
            self.sync(wait=False)

    def settle(self) -> None:
        """Send this process's changes now (end of a worker-thread operation)."""
        if self.down is None and self._pending != (0, 0):
            self.sync()

    def admit(self) -> None:
        """Before a new write: read the totals again unless they are ``fresh``; refuse
        while the store cannot say what the other nodes wrote."""
        if self.down is None and self._clock() - self._read_at >= self.fresh:
            self.sync()
        if self.down is not None or self._base is None:
            raise usage_unavailable()

    def used(self) -> tuple[int, int]:
        with self._lock:
            return self._used()

    def _used(self) -> tuple[int, int]:
        base = self._base or (0, 0)
        return _plus(_plus(base, self._sending), self._pending)

    def reserve(self, nbytes: int, files: int, limits: Limits) -> None:
        with self._lock:
            if self._base is None and (nbytes > 0 or files > 0):
                raise usage_unavailable()
            used, count = self._used()
            if nbytes > 0 and limits.quota_size and used + nbytes > limits.quota_size:
                raise quota_exceeded(used, limits.quota_size)
            if files > 0 and limits.quota_files and count + files > limits.quota_files:
                raise files_exceeded(count, limits.quota_files)
            self._pending = _plus(self._pending, (nbytes, files))

    def change(self, nbytes: int, files: int) -> None:
        with self._lock:
            self._pending = _plus(self._pending, (nbytes, files))


def _plus(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] + b[0], a[1] + b[1]
