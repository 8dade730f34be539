"""The server's reactor: Twisted's epoll reactor, leaner per event, with adaptive busy polling."""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import epollreactor

# The first spin window after a short sleep, as the kernel's haltpoll governor grows its own.
SPIN_START = 10e-6


class SpinWindow:
    """How long the reactor polls without sleeping before it sleeps: adapted to the last
    idle periods, like the kernel's haltpoll cpuidle governor.

    An idle period is the time from the reactor running out of work to the next event.
    One that ends within ``limit`` would have been caught by polling that long, so the
    window doubles (from SPIN_START, up to ``limit``); one that lasts longer halves it
    (to 0 below SPIN_START). A session whose client answers within the limit keeps the
    reactor polling between its requests; an idle server stops after a few halvings,
    having spent at most about twice the limit."""

    __slots__ = ("limit", "window")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.window = 0.0

    def idle_ended(self, idle: float) -> None:
        """Record an idle period that an event ended after ``idle`` seconds."""
        window = self.window
        if idle <= window:
            return  # polling caught it
        if idle <= self.limit:
            self.window = min(self.limit, max(window * 2, SPIN_START))
        else:
            self.window = window / 2 if window >= 2 * SPIN_START else 0.0


class LeanEPollReactor(epollreactor.EPollReactor):
    """EPollReactor whose ``doPoll`` calls each ready descriptor directly, and may poll
    for a short while before it sleeps.

    Twisted wraps every event in ``log.callWithLogger``, which sets up a legacy logging
    context (about ten Python calls) only so that old-style log lines carry the
    descriptor's prefix. sftpd logs through ``twisted.logger`` with its own namespaces,
    and ``_doReadOrWrite`` still catches and logs any error. With two events per small
    SFTP request, that context was about a fifth of the Python calls of a small-file
    transfer (cProfile of ``get -r``).

    Busy polling (``busy_poll``, off until called): a small-file transfer is a strict
    request-reply exchange, and on a virtual machine every sleep of the reactor thread
    costs its wake-up tens of microseconds (the host must deliver an interrupt to an idle
    vCPU: a loopback TCP ping-pong between two processes measured 62 µs per round trip on
    two cores and 23 µs when one side polls). So after running out of work the reactor
    keeps polling epoll without sleeping for a ``SpinWindow``, never longer than the next
    timer, and only while ``quiet()`` says no job is out on a worker thread (the polling
    thread holds the GIL such a thread would need).
    """

    _spin: SpinWindow | None = None
    _quiet: Callable[[], bool] = staticmethod(lambda: True)

    def busy_poll(
        self, limit: float, quiet: Callable[[], bool] | None = None, processes: int = 1
    ) -> None:
        """Poll up to ``limit`` seconds before sleeping (adaptive; 0 turns it off). It is
        not used unless the usable CPUs (affinity and cgroup quota) outnumber the
        ``processes`` serving on this machine: polling would only take a CPU from a peer."""
        spare = usable_cpus() > processes
        self._spin = SpinWindow(limit) if limit > 0 and spare else None
        if quiet is not None:
            self._quiet = quiet

    # Replaces EPollReactor.doPoll (no super()): the same epoll wait and dispatch through
    # Twisted's private _selectables, _poller and _doReadOrWrite, minus callWithLogger.
    # tests/test_conch_contract.py checks those names against the installed Twisted.
    def doPoll(self, timeout: float | None) -> None:
        selectables = self._selectables
        spin = self._spin
        try:
            if spin is None or timeout == 0:
                events = self._poller.poll(-1 if timeout is None else timeout, len(selectables))
            else:
                events = self._idle_poll(spin, timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                handle(selectable, fd, event)  # type: ignore[no-untyped-call]

    doIteration = doPoll

    def _idle_poll(self, spin: SpinWindow, timeout: float | None, most: int) -> list[Any]:
        poll, clock = self._poller.poll, time.perf_counter
        events: list[Any] = poll(0, most)
        if events:
            return events  # not idle at all
        start = clock()
        # Only an idle period in which polling was allowed says how quickly the client
        # answers; one with a worker job out ends when the job does.
        quiet = self._quiet()
        window = spin.window
        if window and quiet:
            deadline = start + (window if timeout is None else min(window, timeout))
            while not events and clock() < deadline:
                events = poll(0, most)
            if events:
                return events  # caught by polling: the window stays
        if timeout is not None:
            timeout = max(0.0, timeout - (clock() - start))
        events = poll(-1 if timeout is None else timeout, most)
        if quiet:
            idle = clock() - start
            if events or idle > spin.limit:  # a timer that long also says: do not poll
                spin.idle_ended(idle)
        return events


def usable_cpus(cgroups: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> float:
    """The CPUs this process may use: its affinity, reduced by a CPU quota on its own
    cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), as a container's ``--cpus`` sets.
    Quotas of parent cgroups are not looked at."""
    if hasattr(os, "sched_getaffinity"):
        cpus = float(len(os.sched_getaffinity(0)))
    else:
        cpus = float(os.cpu_count() or 1)
    try:
        with open(cgroups) as f:
            lines = f.read().splitlines()
    except OSError:
        return cpus
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers and "cpu" not in controllers.split(","):
            continue
        mount = os.path.join(root, controllers)  # v2: root itself; v1: root/cpu[,cpuacct]
        # The cgroup's own directory; without a cgroup namespace a container sees its own
        # cgroup at the mount point instead.
        for where in (os.path.join(mount, path.lstrip("/")), mount):
            try:
                quota = _cpu_quota(where, v2=not controllers)
            except (OSError, ValueError, IndexError, ZeroDivisionError):
                continue
            if quota is not None:
                cpus = min(cpus, quota)
            break
    return cpus


def _cpu_quota(where: str, *, v2: bool) -> float | None:
    """CPUs allowed by the quota in cgroup directory ``where`` (None: no quota)."""
    if v2:  # "quota period", or "max period"
        with open(os.path.join(where, "cpu.max")) as f:
            fields = f.read().split()
        return None if fields[0] == "max" else int(fields[0]) / int(fields[1])
    with open(os.path.join(where, "cpu.cfs_quota_us")) as f:
        quota = int(f.read())  # -1: none
    with open(os.path.join(where, "cpu.cfs_period_us")) as f:
        period = int(f.read())
    return quota / period if quota > 0 else None


def default_reactor() -> Any:
    """The reactor already installed, or else a new LeanEPollReactor, installed.

    Call it before importing Conch's modules: they import the default reactor."""
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet.main import installReactor

        installReactor(LeanEPollReactor())  # type: ignore[no-untyped-call]
    from twisted.internet import reactor

    return reactor
