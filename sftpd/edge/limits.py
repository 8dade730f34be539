"""Connection limits: all connections, per source, and unauthenticated ones (MaxStartups)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sftpd.edge.networks import source_key


@dataclass(frozen=True)
class Startups:
    """OpenSSH's MaxStartups ``start:rate:full``.

    Below ``start`` unauthenticated connections every new connection is admitted; from
    ``start`` on, one is refused with probability ``rate`` percent, rising linearly to 100%
    at ``full``; at ``full`` and above every new connection is refused.
    """

    start: int = 10
    rate: int = 30
    full: int = 100

    def __str__(self) -> str:
        return f"{self.start}:{self.rate}:{self.full}"

    def drop_percent(self, startups: int) -> int:
        """The chance, in percent, that a new connection is refused (sshd.c's arithmetic)."""
        if startups < self.start:
            return 0
        if startups >= self.full or self.rate == 100:
            return 100
        span = self.full - self.start
        return self.rate + (100 - self.rate) * (startups - self.start) // span


@dataclass(frozen=True)
class LimitsConfig:
    """[server] limits; 0 means no limit."""

    max_connections: int = 2000
    max_connections_per_source: int = 20
    max_startups: Startups = Startups()


class Slot:
    """One admitted connection's place in the counts; give it back with ``release``.

    ``on_evict`` (set by whoever serves the connection) is called once if the limits
    close it to make room for a newcomer (see :class:`Limits`); the slot is already
    given back by then.
    """

    __slots__ = ("_limits", "authenticated", "key", "on_evict", "released")

    def __init__(self, limits: Limits, key: str) -> None:
        self._limits = limits
        self.key = key
        self.authenticated = False
        self.released = False
        self.on_evict: Callable[[Slot], None] | None = None

    def authenticate(self) -> None:
        """The connection logged in: it no longer counts against max_startups."""
        if not self.authenticated and not self.released:
            self.authenticated = True
            self._limits._authenticated(self)

    def release(self) -> None:
        """The connection closed (safe to call more than once)."""
        if not self.released:
            self.released = True
            self._limits._released(self)

    def _evict(self) -> None:
        self.release()
        if self.on_evict is not None:
            self.on_evict(self)


class Limits:
    """Counts connections and decides whether a new one is admitted.

    ``admit`` returns a Slot or the name of the limit that refused it. Per-source counts
    use :func:`source_key` (IPv6 per /64). Memory is bounded by ``max_connections`` and
    ``full``: only admitted connections are counted, and a source's entry goes with its
    last connection.

    Unlike OpenSSH, the random early drop between ``start`` and ``full`` spares a source
    that holds no unauthenticated connection at the moment (``spare_new_sources``): a
    flood from a few addresses then cannot make a login from anywhere else a gamble.

    At ``full``, a connection from a source that holds fewer unauthenticated connections
    than the source holding the most is admitted, and the oldest unauthenticated
    connection of a most-holding source is closed for it (evicted: ``Slot.on_evict``).
    Among several most-holding sources the one that reached that count first loses first,
    so evictions go round the flooding sources. A flood from many addresses therefore
    cannot hold ``full`` against a newcomer: the newcomer's one connection is never the
    eviction victim while some source holds two or more. When every source holds one
    (a flood from ``full`` addresses or more) the newest connection is the last to go:
    it lives until ``full - 1`` further newcomers have been admitted.
    """

    def __init__(
        self,
        config: LimitsConfig,
        *,
        randbelow: Callable[[int], int] = secrets.randbelow,
        spare_new_sources: bool = True,
    ) -> None:
        self.config = config
        self._randbelow = randbelow
        self._spare = spare_new_sources
        self.connections = 0
        self.startups = 0
        self._per_source: dict[str, int] = {}
        # source key -> its unauthenticated slots, oldest first (a dict as an ordered set)
        self._startups_per_source: dict[str, dict[Slot, None]] = {}
        # n -> the sources holding n unauthenticated slots, in the order they got to n;
        # _top is the highest such n (0: none), so the eviction victim is found at once.
        self._by_count: dict[int, dict[str, None]] = {}
        self._top = 0

    def source_count(self, host: str) -> int:
        return self._per_source.get(source_key(host), 0)

    def startup_count(self, host: str) -> int:
        """Unauthenticated connections of ``host``'s source now."""
        return len(self._startups_per_source.get(source_key(host), ()))

    def _held(self, key: str) -> int:
        return len(self._startups_per_source.get(key, ()))

    def refusal(self, host: str) -> str | None:
        """The limit a new connection from ``host`` would hit now, or None (may draw random).

        None at ``full`` means that ``admit`` would evict a connection for it."""
        c = self.config
        if c.max_connections and self.connections >= c.max_connections:
            return "max_connections"
        key = source_key(host)
        if c.max_connections_per_source and (
            self._per_source.get(key, 0) >= c.max_connections_per_source
        ):
            return "max_connections_per_source"
        s = c.max_startups
        held = self._held(key)
        if self.startups >= s.full:
            return None if held < self._top else "max_startups"
        p = s.drop_percent(self.startups)
        if p and not (self._spare and held == 0):
            if self._randbelow(100) < p:
                return "max_startups"
        return None

    def admit(self, host: str) -> Slot | str:
        refused = self.refusal(host)
        if refused is not None:
            return refused
        if self.startups >= self.config.max_startups.full:
            self._victim()._evict()
        key = source_key(host)
        self.connections += 1
        self._per_source[key] = self._per_source.get(key, 0) + 1
        slot = Slot(self, key)
        self._add_startup(slot)
        return slot

    def _victim(self) -> Slot:
        """The oldest unauthenticated slot of the source that got to the top count first."""
        key = next(iter(self._by_count[self._top]))
        return next(iter(self._startups_per_source[key]))

    def _move(self, key: str, old: int, new: int) -> None:
        if old:
            bucket = self._by_count[old]
            del bucket[key]
            if not bucket:
                del self._by_count[old]
                if old == self._top and new < old:
                    self._top = new
        if new:
            self._by_count.setdefault(new, {})[key] = None
            self._top = max(self._top, new)

    def _add_startup(self, slot: Slot) -> None:
        self.startups += 1
        slots = self._startups_per_source.setdefault(slot.key, {})
        slots[slot] = None
        self._move(slot.key, len(slots) - 1, len(slots))

    def _drop_startup(self, slot: Slot) -> None:
        self.startups -= 1
        slots = self._startups_per_source[slot.key]
        del slots[slot]
        if not slots:
            del self._startups_per_source[slot.key]
        self._move(slot.key, len(slots) + 1, len(slots))

    def _authenticated(self, slot: Slot) -> None:
        self._drop_startup(slot)

    def _released(self, slot: Slot) -> None:
        if not slot.authenticated:
            self._drop_startup(slot)
        self.connections -= 1
        n = self._per_source[slot.key] - 1
        if n:
            self._per_source[slot.key] = n
        else:
            del self._per_source[slot.key]


class UserSessions:
    """Per-user ``max_sessions``: concurrent sessions of one user over all connections."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def count(self, user: str) -> int:
        return self._open.get(user, 0)

    def open(self, user: str, limit: int) -> bool:
        """Take a session for ``user`` if ``limit`` (0: none) allows; True if taken."""
        n = self._open.get(user, 0)
        if limit and n >= limit:
            return False
        self._open[user] = n + 1
        return True

    def close(self, user: str) -> None:
        n = self._open.get(user, 0) - 1
        if n > 0:
            self._open[user] = n
        else:
            self._open.pop(user, None)
