"""The adaptive receive window of a channel: grown to the round trip, within a shared budget."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TCP_RMEM = Path("/proc/sys/net/ipv4/tcp_rmem")

# A probe whose refill came within this factor of the shortest one seen means the client
# was waiting for our WINDOW_ADJUST: the window, not the client, limits the transfer.
_FULL_WITHIN = 1.25
# A pause of the app longer than this many round trips shrinks the window.
_LONG_PAUSE_RTTS = 4


class WindowBudget:
    """What the receive windows of all connections of one process may grow by, together,
    beyond their initial size. Built once by the assembly and shared; a channel takes
    from it to grow and gives back when it shrinks or closes."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def take(self, want: int) -> int:
        """Up to ``want`` bytes of growth; returns what there was room for (maybe 0)."""
        got = max(0, min(want, self.total - self.used))
        self.used += got
        return got

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


@dataclass(frozen=True)
class WindowPolicy:
    """A channel's window may grow to ``maximum`` while ``budget`` has room."""

    maximum: int
    budget: WindowBudget


class ReceiveWindow:
    """When a channel tops the client's window up, and how far.

    Top-ups go out each time an eighth of the window has been used, so a client sending
    as fast as it may never finds the window empty for want of an adjust (Conch waits for
    half). The round trip is measured from the adjusts themselves: a client cannot send a
    byte past the credit it held when an adjust left until that adjust reaches it, so the
    time from the adjust to the first such byte is at least one round trip, and about one
    when the client was waiting for it. When that refill comes within ``_FULL_WITHIN``
    of the shortest seen (on a probe started after the last resize), the client keeps the
    window full within a round trip: the window doubles, up to the policy's maximum and
    only with room in the budget. While the app pauses reading (its input piles up) no
    adjust goes out and the window does not grow; if the pause lasted several round trips
    and the client ran out of credit before the app read again, the window halves, down
    to the initial size, and what the client can no longer be owed goes back to the
    budget. A window once granted is never revoked: what sftpd may receive unasked is
    bounded by the largest window it granted.
    """

    def __init__(self, policy: WindowPolicy, clock: Any, initial: int) -> None:
        self._policy = policy
        self._clock = clock
        self.initial = initial
        self.size = initial  # the credit the client is topped up to
        self.rtt = math.inf  # shortest adjust-to-refill time seen, in seconds
        self.received = 0
        self._held = 0  # bytes of the budget this window holds
        self._probe_at = -1  # received count past which the running probe completes
        self._probe_start = 0  # received count when it started
        self._probe_sent = 0.0
        self._resized_at = 0  # received count at the last change of size
        self._paused_at = 0.0

    def used(self, n: int, left: int, paused: bool) -> int:
        """``n`` bytes arrived; the client holds ``left`` credit. Returns the adjust to
        send now (0: none)."""
        self.received += n
        if 0 <= self._probe_at < self.received:
            self._sample(paused)
        if self._held > self.size - self.initial:
            self._release(left)
        if paused:
            return 0
        return self.top_up(left)

    def top_up(self, left: int) -> int:
        """The adjust that brings the client's credit back to the window (0: not yet)."""
        gap = self.size - left
        if gap <= 0 or gap < self.size >> 3:
            return 0
        if self._probe_at < 0:
            self._probe_at = self.received + left  # the credit the client holds now
            self._probe_start = self.received
            self._probe_sent = self._clock.seconds()
        return gap

    def paused(self) -> None:
        """The app stopped reading (its input waits for the disk, say)."""
        self._paused_at = self._clock.seconds()

    def resumed(self, left: int) -> None:
        """The app reads again. A pause of several round trips that left the client out of
        credit means the app (a slow disk), not the window, is the limit: halve the window
        (not below the initial size) and give back the budget the client can no longer be
        owed. Shorter pauses only stop growth: a burst of a large window pauses an app
        busy on a loaded machine for about a round trip all the time, and halving then
        costs more throughput than the app loses."""
        if self._clock.seconds() - self._paused_at <= _LONG_PAUSE_RTTS * self.rtt:
            return
        if left < self.size >> 3 and self.size > self.initial:
            self.size = max(self.initial, self.size // 2)
            self._resized_at = self.received
            self._release(left)

    def close(self) -> None:
        """The channel is gone: give back everything."""
        self._policy.budget.give(self._held)
        self._held = 0

    def _sample(self, paused: bool) -> None:
        took = self._clock.seconds() - self._probe_sent
        self._probe_at = -1
        self.rtt = min(self.rtt, took)
        if paused or self._probe_start <= self._resized_at:
            return  # the probe began before the last resize: it says nothing of this size
        if took <= self.rtt * _FULL_WITHIN:
            self._grow()

    def _grow(self) -> None:
        want = min(self.size, self._policy.maximum - self.size)
        if want <= 0:
            return
        got = self._policy.budget.take(want)
        if got > 0:
            self.size += got
            self._held += got
            self._resized_at = self.received

    def _release(self, left: int) -> None:
        # Hold what the window, or the credit the client still has if larger, exceeds
        # the initial size: that much more the client may still send.
        need = max(0, max(self.size, left) - self.initial)
        if self._held > need:
            self._policy.budget.give(self._held - need)
            self._held = need


def grow_receive_buffer(sock: socket.socket, want: int, tcp_rmem: Path = _TCP_RMEM) -> int:
    """Let the socket's receive buffer hold a window of ``want`` bytes; returns the size
    the kernel reports. Linux grows the buffer by itself up to tcp_rmem's maximum (and
    counts its overhead in it, so a buffer of twice the window is asked); setting
    SO_RCVBUF turns that off, so it is set only when that maximum falls short, and the
    kernel caps it at net.core.rmem_max."""
    try:
        current = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if current >= 2 * want:
            return current
        try:
            auto = int(tcp_rmem.read_text().split()[2])
        except (OSError, ValueError, IndexError):
            auto = 0
        if auto >= 2 * want:
            return current  # autotuning gets there, and past what rmem_max would allow
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError:
        return 0
