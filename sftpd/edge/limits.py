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
    """One admitted connection's place in the counts; give it back with ``release``."""

    __slots__ = ("_limits", "authenticated", "key", "released")

    def __init__(self, limits: Limits, key: str) -> None:
        self._limits = limits
        self.key = key
        self.authenticated = False
        self.released = False

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


class Limits:
    """Counts connections and decides whether a new one is admitted.

    ``admit`` returns a Slot or the name of the limit that refused it. Per-source counts
    use :func:`source_key` (IPv6 per /64). Memory is bounded by ``max_connections``: only
    admitted connections are counted, and a source's entry goes with its last connection.

    Unlike OpenSSH, the random early drop between ``start`` and ``full`` spares a source
    that holds no unauthenticated connection at the moment (``spare_new_sources``): a
    flood from a few addresses then cannot make a login from anywhere else a gamble.
    ``full`` stays a hard limit for everyone, as in OpenSSH.
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
        self._startups_per_source: dict[str, int] = {}

    def source_count(self, host: str) -> int:
        return self._per_source.get(source_key(host), 0)

    def refusal(self, host: str) -> str | None:
        """The limit a new connection from ``host`` would hit now, or None (may draw random)."""
        c = self.config
        if c.max_connections and self.connections >= c.max_connections:
            return "max_connections"
        key = source_key(host)
        if c.max_connections_per_source and (
            self._per_source.get(key, 0) >= c.max_connections_per_source
        ):
            return "max_connections_per_source"
        s = c.max_startups
        if self.startups >= s.full:
            return "max_startups"
        p = s.drop_percent(self.startups)
        if p and not (self._spare and key not in self._startups_per_source):
            if self._randbelow(100) < p:
                return "max_startups"
        return None

    def admit(self, host: str) -> Slot | str:
        refused = self.refusal(host)
        if refused is not None:
            return refused
        key = source_key(host)
        self.connections += 1
        self.startups += 1
        self._per_source[key] = self._per_source.get(key, 0) + 1
        self._startups_per_source[key] = self._startups_per_source.get(key, 0) + 1
        return Slot(self, key)

    def _drop_startup(self, key: str) -> None:
        self.startups -= 1
        n = self._startups_per_source[key] - 1
        if n:
            self._startups_per_source[key] = n
        else:
            del self._startups_per_source[key]

    def _authenticated(self, slot: Slot) -> None:
        self._drop_startup(slot.key)

    def _released(self, slot: Slot) -> None:
        if not slot.authenticated:
            self._drop_startup(slot.key)
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
