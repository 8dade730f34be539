"""Per-source penalty scores and bans, kept in a store that several nodes can share."""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sftpd.edge.config import DefenderConfig
from sftpd.edge.networks import Networks, parse_address, source_key

log = Logger(namespace="sftpd.edge")

EventSink = Callable[[str, Mapping[str, Any]], None]
MINUTE = 60.0


@dataclass(frozen=True)
class Ban:
    """One ban: ``source`` is a source key (IPv4 address or IPv6 /64); ``until`` wall-clock."""

    source: str
    until: float
    count: int = 1  # 1 for a first ban, 2 for the next one while the first is remembered...
    reason: str = "score"  # "score" or "manual"


class BanStore(Protocol):
    """Where bans live; every node's defender reads and writes the same one.

    Every method returns a Deferred so that a database store fits; ``all`` returns every
    remembered ban, expired ones included (they carry the repeat count), and the defender
    asks ``forget`` for the ones it no longer needs.
    """

    def put(self, ban: Ban) -> defer.Deferred[None]: ...
    def remove(self, source: str) -> defer.Deferred[bool]: ...
    def all(self) -> defer.Deferred[list[Ban]]: ...


class MemoryBanStore:
    """A store for one process: a dict, answers at once."""

    def __init__(self) -> None:
        self._bans: dict[str, Ban] = {}

    def put(self, ban: Ban) -> defer.Deferred[None]:
        self._bans[ban.source] = ban
        return defer.succeed(None)

    def remove(self, source: str) -> defer.Deferred[bool]:
        return defer.succeed(self._bans.pop(source, None) is not None)

    def all(self) -> defer.Deferred[list[Ban]]:
        return defer.succeed(list(self._bans.values()))


def ban_key(text: str) -> str:
    """The source key for an address (or an IPv6 /64 written as a network) an admin gives."""
    if parse_address(text) is not None:
        return source_key(text)
    if "/" in text:
        host, _, bits = text.partition("/")
        addr = parse_address(host)
        if addr is not None and bits == ("32" if addr.version == 4 else "64"):
            return source_key(str(addr))
    raise ValueError(
        f"{text!r} is not a source; expected an IP address (IPv6 counts per /64, e.g. "
        '"2001:db8::/64"); for whole networks use [defender] block_list'
    )


class Defender:
    """Scores failed logins per source and bans a source whose score reaches the threshold.

    Scores live ``observation_time``; a ban lasts ``ban_time``, doubled for every repeat
    while the previous ban is remembered (until ``ban_time_max`` after it ended), never
    longer than ``ban_time_max``. Sources in ``safe_list`` or ``exempt`` (the PROXY
    senders: banning one would ban everyone behind it) are never scored; ``block_list``
    is always refused. A successful login clears the source's score and history, so a key
    login is never banned by its own earlier typos. ``is_banned`` answers from a local
    mirror of the store; ``tick`` (every few seconds, ``start``) reloads it, so bans made
    at other nodes arrive within one tick.
    """

    def __init__(
        self,
        config: DefenderConfig,
        *,
        clock: IReactorTime,
        store: BanStore | None = None,
        on_event: EventSink | None = None,
        exempt: Networks | None = None,
        max_sources: int = 100_000,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store: BanStore = store if store is not None else MemoryBanStore()
        self._on_event = on_event
        self._exempt = exempt or Networks()
        self._max_sources = max_sources
        self._observe = config.observation_time * MINUTE
        # source key -> (time, points) still inside the observation time, oldest first;
        # the dict is ordered by last update, so the stalest source is the first evicted.
        self._scores: collections.OrderedDict[str, collections.deque[tuple[float, int]]] = (
            collections.OrderedDict()
        )
        self._bans: dict[str, Ban] = {}  # mirror of the store
        self._writing: set[str] = set()  # puts/removes in flight: a reload must not undo them
        self._loop: task.LoopingCall | None = None

    # Questions asked at accept.

    def refusal(self, host: str) -> str | None:
        """Why a connection from ``host`` is refused ("blocked", "banned"), or None."""
        if self.config.block_list.contains(host):
            return "blocked"
        ban = self._bans.get(source_key(host))
        if ban is not None and ban.until > self.clock.seconds():
            return "banned"
        return None

    def is_banned(self, host: str) -> bool:
        return self.refusal(host) is not None

    # What happened on a connection.

    def auth_failed(self, host: str, *, invalid_user: bool) -> None:
        c = self.config
        self._score(host, c.score_invalid_user if invalid_user else c.score_auth_failed, "auth")

    def no_auth(self, host: str) -> None:
        """A connection closed without ever trying to log in."""
        self._score(host, self.config.score_no_auth, "no_auth")

    def auth_succeeded(self, host: str) -> None:
        key = source_key(host)
        self._scores.pop(key, None)
        ban = self._bans.get(key)
        if ban is not None and ban.until <= self.clock.seconds():
            self._forget(key)  # the history of an ended ban; an active ban stays

    def _scored(self, host: str) -> bool:
        return not (self.config.safe_list.contains(host) or self._exempt.contains(host))

    def _score(self, host: str, points: int, why: str) -> None:
        if points <= 0 or not self._scored(host):
            return
        key = source_key(host)
        now = self.clock.seconds()
        ban = self._bans.get(key)
        if ban is not None and ban.until > now:
            return  # already banned: this is a connection admitted before the ban
        events = self._scores.get(key)
        if events is None:
            if len(self._scores) >= self._max_sources:
                self._scores.popitem(last=False)
            events = self._scores[key] = collections.deque()
        else:
            self._scores.move_to_end(key)
        while events and events[0][0] <= now - self._observe:
            events.popleft()
        events.append((now, points))
        total = sum(p for _, p in events)
        if total >= self.config.threshold:
            del self._scores[key]
            self._ban(key, now, total, why)

    def _ban(self, key: str, now: float, score: int, why: str) -> Ban:
        c = self.config
        before = self._bans.get(key)
        count = before.count + 1 if before is not None else 1
        minutes = min(c.ban_time * 2 ** min(count - 1, 62), c.ban_time_max)
        ban = Ban(source=key, until=now + minutes * MINUTE, count=count, reason="score")
        self._put(ban)
        log.warn(
            "source banned: source={source} minutes={minutes:g} bans={count} score={score} "
            "last={last}",
            source=key,
            minutes=minutes,
            count=count,
            score=score,
            last=why,
            event="source_banned",
        )
        self._emit("source_banned", source=key, until=ban.until, count=count, reason="score")
        return ban

    def _emit(self, name: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(name, fields)

    # The store.

    def _put(self, ban: Ban) -> None:
        self._bans[ban.source] = ban
        self._write(ban.source, self.store.put(ban))

    def _forget(self, key: str) -> defer.Deferred[bool]:
        self._bans.pop(key, None)
        return self._write(key, self.store.remove(key))

    def _write(self, key: str, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        self._writing.add(key)

        def done(result: Any) -> Any:
            self._writing.discard(key)
            return result

        def failed(reason: Any) -> None:
            log.failure("ban store write failed: source={source}", reason, source=key)

        d.addBoth(done)
        d.addErrback(failed)
        return d

    def tick(self) -> defer.Deferred[None]:
        """Reload the mirror from the store and drop what is no longer needed."""
        now = self.clock.seconds()
        while self._scores:
            key, events = next(iter(self._scores.items()))
            if events and events[-1][0] > now - self._observe:
                break
            del self._scores[key]
        d = self.store.all()

        def load(bans: list[Ban]) -> None:
            horizon = now - self.config.ban_time_max * MINUTE
            fresh = {b.source: b for b in bans}
            for key in self._writing:
                mine = self._bans.get(key)
                fresh.pop(key, None)
                if mine is not None:
                    fresh[key] = mine
            for key, ban in list(fresh.items()):
                if ban.until <= horizon:
                    del fresh[key]
                    self._forget(key)
            self._bans = fresh

        def failed(reason: Any) -> None:
            log.failure("ban store read failed", reason)

        return d.addCallback(load).addErrback(failed)

    def start(self, interval: float = 5.0) -> None:
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # Administration (`sftpd ban list|add|remove`).

    def list(self) -> list[Ban]:
        """The bans in force now, soonest to end first."""
        now = self.clock.seconds()
        return sorted((b for b in self._bans.values() if b.until > now), key=lambda b: b.until)

    def add(self, source: str, minutes: float | None = None) -> Ban:
        """Ban ``source`` (an address; IPv6 per /64) for ``minutes`` (default: ban_time)."""
        key = ban_key(source)
        if minutes is not None and not 0 < minutes <= 525600:
            raise ValueError(f"{minutes!r} minutes; expected more than 0, up to 525600 (a year)")
        now = self.clock.seconds()
        before = self._bans.get(key)
        count = before.count + 1 if before is not None else 1
        span = (self.config.ban_time if minutes is None else minutes) * MINUTE
        ban = Ban(source=key, until=now + span, count=count, reason="manual")
        self._put(ban)
        log.warn(
            "source banned: source={source} minutes={minutes:g} bans={count} by=admin",
            source=key,
            minutes=span / MINUTE,
            count=count,
            event="source_banned",
        )
        self._emit("source_banned", source=key, until=ban.until, count=count, reason="manual")
        return ban

    def remove(self, source: str) -> defer.Deferred[bool]:
        """Lift the ban on ``source`` and forget its history; True if there was one."""
        key = ban_key(source)
        had = key in self._bans and self._bans[key].until > self.clock.seconds()
        self._scores.pop(key, None)
        d = self._forget(key)
        if had:
            log.info("ban lifted: source={source} by=admin", source=key, event="source_unbanned")
            self._emit("source_unbanned", source=key)
        return d.addCallback(lambda removed: bool(removed) or had)
