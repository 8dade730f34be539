"""The server's reactor: Twisted's epoll reactor without a logging context per I/O event."""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet import epollreactor


class LeanEPollReactor(epollreactor.EPollReactor):
    """EPollReactor whose ``doPoll`` calls each ready descriptor directly.

    Twisted wraps every event in ``log.callWithLogger``, which sets up a legacy logging
    context (about ten Python calls) only so that old-style log lines carry the
    descriptor's prefix. sftpd logs through ``twisted.logger`` with its own namespaces,
    and ``_doReadOrWrite`` still catches and logs any error. With two events per small
    SFTP request, that context was about a fifth of the Python calls of a small-file
    transfer (cProfile of ``get -r``).
    """

    def doPoll(self, timeout: float | None) -> None:
        selectables = self._selectables
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(selectables))
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


def default_reactor() -> Any:
    """The reactor already installed, or else a new LeanEPollReactor, installed.

    Call it before importing Conch's modules: they import the default reactor."""
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet.main import installReactor

        installReactor(LeanEPollReactor())  # type: ignore[no-untyped-call]
    from twisted.internet import reactor

    return reactor
