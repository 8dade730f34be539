"""Dead-session detection: idle_timeout without channel data, client_alive_interval probes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

# OpenSSH's ClientAliveCountMax default: this many unanswered probes and the client is gone.
CLIENT_ALIVE_COUNT_MAX = 3
KEEPALIVE_REQUEST = b"keepalive@openssh.com"


class IdleTimer:
    """Calls ``on_idle`` once ``timeout`` seconds pass without a ``touch()``.

    ``touch`` is cheap enough for every data packet (one clock read); the timer is only
    rescheduled when it fires early. The channel layer touches on channel data in either
    direction, so a long download (server sending, client only adjusting its window) is
    never idle. ``timeout`` 0 disables it.
    """

    def __init__(self, clock: IReactorTime, timeout: float, on_idle: Callable[[], Any]) -> None:
        self._clock = clock
        self._now = clock.seconds
        self.timeout = timeout
        self._on_idle = on_idle
        self._last = 0.0
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        if self.timeout > 0 and self._call is None:
            self._last = self._now()
            self._call = self._clock.callLater(self.timeout, self._check)

    def touch(self) -> None:
        self._last = self._now()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        due = self._last + self.timeout
        now = self._now()
        if now < due:
            self._call = self._clock.callLater(due - now, self._check)
            return
        self._call = None
        self._on_idle()


class KeepAlive:
    """OpenSSH's ClientAliveInterval: probe a quiet client, give up after unanswered probes.

    Every ``interval`` seconds with nothing received (``touch``), ``send_probe`` sends a
    ``keepalive@openssh.com`` global request with want-reply; any answer (success or
    failure: both prove the client is there) or any received packet resets the count.
    After ``count_max`` probes without an answer, the next due probe calls ``on_dead``
    instead. ``send_probe`` may return a Deferred that fires (or fails) on the answer, or
    the caller reports it with ``answered``. ``interval`` 0 disables it.
    """

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        send_probe: Callable[[], defer.Deferred[Any] | None],
        on_dead: Callable[[], Any],
        count_max: int = CLIENT_ALIVE_COUNT_MAX,
    ) -> None:
        self._clock = clock
        self._now = clock.seconds
        self.interval = interval
        self._send = send_probe
        self._on_dead = on_dead
        self.count_max = count_max
        self.unanswered = 0
        self._last = 0.0
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        if self.interval > 0 and self._call is None:
            self._last = self._now()
            self._call = self._clock.callLater(self.interval, self._tick)

    def touch(self) -> None:
        """Something arrived from the client."""
        self._last = self._now()
        self.unanswered = 0

    def answered(self, _result: object = None) -> None:
        self.unanswered = 0

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self) -> None:
        now = self._now()
        due = self._last + self.interval
        if self.unanswered == 0 and now < due:
            self._call = self._clock.callLater(due - now, self._tick)
            return
        if self.unanswered >= self.count_max:
            self._call = None
            self._on_dead()
            return
        self.unanswered += 1
        self._call = self._clock.callLater(self.interval, self._tick)
        d = self._send()
        if d is not None:
            d.addBoth(self.answered)
