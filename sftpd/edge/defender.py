"""Per-source penalty scores and bans, kept in a store that several nodes can share."""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.edge.bans import MINUTE, Ban, ban_key, check_minutes, remembered, repeat_minutes
from sftpd.edge.config import DefenderConfig
from sftpd.edge.networks import Networks, source_key

__all__ = ["TICK", "Ban", "BanStore", "Defender", "EventSink", "MemoryBanStore", "ban_key"]

log = Logger(namespace="sftpd.edge")

EventSink = Callable[[str, Mapping[str, Any]], None]
TICK = 5.0  # seconds between reloads of the store: a ban made elsewhere is refused within it


class BanStore(Protocol):
    """Where bans live; every node's defender reads and writes the same one.

    Every method returns a Deferred so that a database store fits; ``all`` returns every
    remembered ban, expired ones included (they carry the repeat count), and the defender
    asks ``remove`` for the ones it no longer needs.
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


class Defender:
    """Scores failed logins per source and bans a source whose score reaches the threshold.

    Scores live ``observation_time``; a ban lasts ``ban_time``, doubled for every repeat
    while the previous ban is remembered (until ``ban_time_max`` after it ended), never
    longer than ``ban_time_max``. Sources in ``safe_list`` or ``exempt`` (the PROXY
    senders: banning one would ban everyone behind it) are never scored; ``block_list``
    is always refused. A successful login clears the source's score and history, so a key
    login is never banned by its own earlier typos. ``refusal`` answers from a local
    mirror of the store; ``tick`` (every ``TICK`` seconds, ``start``) reloads it, so bans
    made at other nodes (or by ``sftpd ban add``) are refused within one tick.

    A store that fails (a database that is down) stops nothing: bans go on in the
    mirror, the failure is logged once, and the writes it missed are retried at every
    tick until it answers again.

    Events (``on_event``): ``source_banned`` when this process bans a source,
    ``source_refused`` at the first refused connection of each ban (also of a ban made
    elsewhere), ``source_unbanned`` when a ban this process made ends or an admin lifts it.
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
        # Writes the store has not confirmed (in flight, or failed and to be retried):
        # key -> (generation, the ban to put or None to remove). A reload must not undo them.
        self._pending: dict[str, tuple[int, Ban | None]] = {}
        self._sending: set[str] = set()  # keys with a write in flight (one at a time each)
        # Writes confirmed while a read is in flight: that read's rows may predate them.
        self._recent: dict[str, Ban | None] = {}
        self._generation = 0
        self._down = False  # the store failed; logged once until it answers again
        self._mine: dict[str, float] = {}  # bans this process made: key -> until
        self._refused: set[tuple[str, float]] = set()  # (key, until): refusal logged
        self._loop: task.LoopingCall | None = None

    # Questions asked at accept.

    def _why(self, host: str) -> tuple[str, Ban | None] | None:
        if self.config.block_list.contains(host):
            return "blocked", None
        ban = self._bans.get(source_key(host))
        if ban is not None and ban.until > self.clock.seconds():
            return "banned", ban
        return None

    def refusal(self, host: str) -> str | None:
        """Why a connection from ``host`` is refused ("blocked", "banned"), or None.

        The first refusal of each ban is logged and is a ``source_refused`` event."""
        why = self._why(host)
        if why is None:
            return None
        reason, ban = why
        if ban is not None and (ban.source, ban.until) not in self._refused:
            self._refused.add((ban.source, ban.until))
            log.info(
                "banned source refused: source={source} peer={peer} for {left:g} s more "
                "(once per ban)",
                source=ban.source,
                peer=host,
                left=round(ban.until - self.clock.seconds()),
                event="source_refused",
            )
            self._emit(
                "source_refused",
                source=ban.source,
                peer=host,
                until=ban.until,
                count=ban.count,
                reason=ban.reason,
            )
        return reason

    def is_banned(self, host: str) -> bool:
        return self._why(host) is not None

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

    def _count(self, key: str, now: float) -> int:
        """The repeat count a new ban of ``key`` gets (the store's history, any node's)."""
        before = self._bans.get(key)
        if before is None or not remembered(before, now, self.config.ban_time_max):
            return 1
        return before.count + 1

    def _ban(self, key: str, now: float, score: int, why: str) -> Ban:
        c = self.config
        count = self._count(key, now)
        minutes = repeat_minutes(count, c.ban_time, c.ban_time_max)
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
        self._emit(
            "source_banned", source=key, until=ban.until, count=count, reason="score", score=score
        )
        return ban

    def _emit(self, name: str, **fields: Any) -> None:
        if self._on_event is not None:
            try:
                self._on_event(name, fields)
            except Exception:
                log.failure("defender event sink failed: {name}", name=name)

    # The store.

    def _put(self, ban: Ban) -> None:
        self._bans[ban.source] = ban
        self._mine[ban.source] = ban.until
        self._write(ban.source, ban)

    def _forget(self, key: str) -> defer.Deferred[Any]:
        self._bans.pop(key, None)
        self._mine.pop(key, None)
        return self._write(key, None)

    def _write(self, key: str, ban: Ban | None) -> defer.Deferred[Any]:
        self._generation += 1
        self._pending[key] = (self._generation, ban)
        return self._send(key)

    def _send(self, key: str) -> defer.Deferred[Any]:
        """Write ``key``'s pending value; one write per key at a time, so they land in order.

        While the store is down nothing is sent (each attempt could hold a worker thread
        for the database's timeouts, and the threads serve file transfers too): the
        tick's read is the one probe, and the writes follow once it answers."""
        if self._down or key in self._sending or key not in self._pending:
            return defer.succeed(None)  # the write in flight sends the newest value after it
        generation, ban = self._pending[key]
        self._sending.add(key)
        d: defer.Deferred[Any] = (
            defer.maybeDeferred(self.store.put, ban)
            if ban is not None
            else defer.maybeDeferred(self.store.remove, key)
        )

        def done(result: Any) -> Any:
            self._sending.discard(key)
            self._store_up()
            if self._pending.get(key, (None,))[0] == generation:
                del self._pending[key]
                self._recent[key] = ban
            elif key in self._pending:
                self._send(key)
            return result

        def failed(reason: Failure) -> None:
            self._sending.discard(key)
            self._store_down(reason, f"writing the ban of {key}")

        d.addCallbacks(done, failed)
        return d

    def _store_down(self, reason: Failure, what: str) -> None:
        if self._down:
            return
        self._down = True
        expected = reason.type is not None and reason.type.__name__ == "StoreUnavailable"
        error = reason.getErrorMessage() if expected else f"{reason.type}: {reason.value}"
        log.warn(
            "ban store unavailable ({what}): {error}; bans go on in this process and are "
            "written when it answers (logged once)",
            what=what,
            error=error,
            event="ban_store_down",
        )
        if not expected:
            log.failure("ban store failure", reason)

    def _store_up(self) -> None:
        if self._down:
            self._down = False
            log.info(
                "ban store answers again; {pending} ban change(s) to write",
                pending=len(self._pending),
                event="ban_store_up",
            )

    def tick(self) -> defer.Deferred[None]:
        """Retry missed writes, reload the mirror from the store, drop what is not needed."""
        now = self.clock.seconds()
        while self._scores:
            key, events = next(iter(self._scores.items()))
            if events and events[-1][0] > now - self._observe:
                break
            del self._scores[key]
        for key, until in list(self._mine.items()):
            if until <= now:
                del self._mine[key]
                log.info("ban ended: source={source}", source=key, event="source_unbanned")
                self._emit("source_unbanned", source=key, reason="expired")
        self._refused = {r for r in self._refused if r[1] > now}
        for key in list(self._pending):
            self._send(key)  # none while the store is down
        self._recent = {}  # what was confirmed before this read, it sees
        d = defer.maybeDeferred(self.store.all)

        def load(bans: list[Ban]) -> None:
            self._store_up()
            horizon = now - self.config.ban_time_max * MINUTE
            fresh = {b.source: b for b in bans}
            local = {**self._recent, **{k: b for k, (_, b) in self._pending.items()}}
            self._recent = {}
            for key, mine in local.items():
                fresh.pop(key, None)
                if mine is not None:
                    fresh[key] = mine
            for key, ban in list(fresh.items()):
                if ban.until <= horizon:
                    del fresh[key]
                    self._bans.pop(key, None)
                    self._write(key, None)
            for key in list(self._mine):
                if fresh.get(key) is None or fresh[key].until != self._mine[key]:
                    del self._mine[key]  # lifted by an admin, or another node's ban now
                    if key not in fresh:
                        log.info(
                            "ban lifted: source={source} (elsewhere)",
                            source=key,
                            event="source_unbanned",
                        )
                        self._emit("source_unbanned", source=key, reason="removed")
            self._bans = fresh
            for key in list(self._pending):
                self._send(key)  # what the store missed while it was down

        def failed(reason: Failure) -> None:
            self._store_down(reason, "reading the bans")

        return d.addCallbacks(load, failed)

    def start(self, interval: float = TICK) -> None:
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # Administration (the running server's own; `sftpd ban` writes the database).

    def list(self) -> list[Ban]:
        """The bans in force now, soonest to end first."""
        now = self.clock.seconds()
        return sorted((b for b in self._bans.values() if b.until > now), key=lambda b: b.until)

    def add(self, source: str, minutes: float | None = None) -> Ban:
        """Ban ``source`` (an address; IPv6 per /64) for ``minutes`` (default: ban_time)."""
        key = ban_key(source)
        if minutes is not None:
            check_minutes(minutes)
        now = self.clock.seconds()
        count = self._count(key, now)
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
            self._emit("source_unbanned", source=key, reason="admin")
        return d.addCallback(lambda removed: bool(removed) or had)
