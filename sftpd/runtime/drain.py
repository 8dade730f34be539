"""Draining restarts: SIGTERM stops accepting, lets sessions finish, then stops the reactor."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

log = Logger(namespace="sftpd.runtime")


class Drain:
    """What SIGTERM and SIGINT do to a serving process.

    The first SIGTERM calls ``stop_accepting`` (the listening sockets close, so a load
    balancer's health check fails and new clients go elsewhere), then waits until
    ``live()`` is 0 (``connection_closed`` is called after each close) or ``grace``
    seconds have passed, and stops the reactor (its shutdown closes what is left). A
    second SIGTERM, or a SIGINT at any time, stops at once. ``on_draining`` (e.g. a
    health endpoint turning 503) is called when draining starts.
    """

    def __init__(
        self,
        reactor: Any,
        stop_accepting: Callable[[], Any],
        live: Callable[[], int],
        grace: float,
        on_draining: Callable[[], Any] | None = None,
    ) -> None:
        self._reactor = reactor
        self._stop_accepting = stop_accepting
        self._live = live
        self.grace = grace
        self.on_draining = on_draining
        self.draining = False
        self._stopped = False
        self._timer: IDelayedCall | None = None

    def install(self) -> None:
        """Replace the reactor's SIGTERM/SIGINT handlers (call once the reactor runs)."""

        def handler(signum: int, frame: Any) -> None:
            self._reactor.callFromThread(self.signalled, signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def signalled(self, signum: int) -> None:
        if signum == signal.SIGTERM and not self.draining:
            self.start()
        else:
            log.info("signal {signum}: closing every connection now", signum=signum)
            self._stop()

    def start(self) -> None:
        """Stop accepting and wait for the sessions (at most ``grace`` seconds)."""
        self.draining = True
        live = self._live()
        log.info(
            "draining: no new connections; {live} open, waiting up to {grace:g} s",
            live=live,
            grace=self.grace,
            event="draining",
        )
        self._stop_accepting()
        if self.on_draining is not None:
            self.on_draining()
        if live == 0:
            self._stop()
            return
        self._timer = self._reactor.callLater(self.grace, self._grace_over)

    def connection_closed(self) -> None:
        if self.draining and self._live() == 0:
            log.info("drained: every session finished", event="drained")
            self._stop()

    def _grace_over(self) -> None:
        self._timer = None
        log.info(
            "shutdown_grace over: closing {live} connections",
            live=self._live(),
            event="drain_timeout",
        )
        self._stop()

    def _stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._stopped:
            self._stopped = True
            self._reactor.stop()
