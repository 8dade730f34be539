"""The defender on the database ban store, with task.Clock: sharing, doubling, a store down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.logger import LogEvent, globalLogPublisher

from sftpd.auth.stores.bans import BanDb, DbBanStore
from sftpd.auth.stores.records import UserDb
from sftpd.auth.stores.sqlite import SqliteDatabase
from sftpd.auth.users import StoreUnavailable
from sftpd.edge.bans import Ban
from sftpd.edge.config import DefenderConfig
from sftpd.edge.defender import TICK, Defender
from sftpd.edge.networks import Networks
from sftpd.runtime.threads import InlineBlocking

MIN = 60.0
A = "192.0.2.7"


def node_store(path: Path) -> DbBanStore:
    """What one node (or worker process) opens: its own connection to the shared file."""
    db = SqliteDatabase(path)
    UserDb(db).upgrade()
    return DbBanStore(BanDb(db), InlineBlocking())


class Node:
    def __init__(self, store: Any, clock: task.Clock, **cfg: Any) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.store = store
        self.defender = Defender(
            DefenderConfig(**{"safe_list": Networks(), "threshold": 3, **cfg}),
            clock=clock,
            store=store,
            on_event=lambda n, f: self.events.append((n, dict(f))),
        )
        self.defender.start()

    def fail(self, host: str, times: int) -> None:
        for _ in range(times):
            self.defender.auth_failed(host, invalid_user=False)

    def names(self) -> list[str]:
        return [n for n, _ in self.events]


@pytest.fixture
def clock() -> task.Clock:
    c = task.Clock()
    c.advance(1_800_000_000)
    return c


@pytest.fixture
def logged() -> Any:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_a_ban_at_one_node_is_refused_at_the_other_within_a_tick(
    tmp_path: Path, clock: task.Clock
) -> None:
    path = tmp_path / "users.db"
    a, b = Node(node_store(path), clock), Node(node_store(path), clock)
    a.fail(A, 3)
    assert a.defender.refusal(A) == "banned"
    assert b.defender.refusal(A) is None  # B has not reloaded yet
    clock.advance(TICK)
    assert b.defender.refusal(A) == "banned"
    assert b.defender.refusal("192.0.2.8") is None
    (row,) = BanDb(SqliteDatabase(path)).all()
    assert (row.source, row.count, row.reason) == (A, 1, "score")
    # An admin's removal (the CLI writes the table) reaches both within a tick.
    assert BanDb(SqliteDatabase(path)).remove(A)
    clock.advance(TICK)
    assert a.defender.refusal(A) is None and b.defender.refusal(A) is None
    assert a.names() == ["source_banned", "source_refused", "source_unbanned"]
    assert b.names() == ["source_refused"]  # B made no ban: it only refused one


def test_an_admin_ban_written_to_the_table_is_refused_everywhere(
    tmp_path: Path, clock: task.Clock
) -> None:
    path = tmp_path / "users.db"
    a = Node(node_store(path), clock)
    now = clock.seconds()
    BanDb(SqliteDatabase(path)).put(Ban("2001:db8:1:2::/64", now + 60, 1, "manual"))
    clock.advance(TICK)
    assert a.defender.refusal("2001:db8:1:2::99") == "banned"
    clock.advance(60)
    assert a.defender.refusal("2001:db8:1:2::99") is None


def test_repeated_bans_double_across_nodes(tmp_path: Path, clock: task.Clock) -> None:
    path = tmp_path / "users.db"
    cfg = {"ban_time": 10, "ban_time_max": 100}
    a, b = Node(node_store(path), clock, **cfg), Node(node_store(path), clock, **cfg)
    a.fail(A, 3)
    clock.advance(10 * MIN + TICK)  # A's ban is over; B knows it from the table
    assert b.defender.refusal(A) is None
    b.fail(A, 3)  # the second ban, earned at B: twice as long
    (ban,) = b.defender.list()
    assert ban.count == 2 and ban.until == pytest.approx(clock.seconds() + 20 * MIN)
    clock.advance(TICK)
    (at_a,) = a.defender.list()
    assert at_a == ban
    clock.advance(20 * MIN)
    a.fail(A, 3)  # the third, at A again: 40 minutes
    (third,) = a.defender.list()
    assert third.count == 3 and third.until == pytest.approx(clock.seconds() + 40 * MIN)
    assert "source_unbanned" in a.names()  # A's first ban ended (expired)


def test_history_older_than_ban_time_max_is_forgotten_in_the_table(
    tmp_path: Path, clock: task.Clock
) -> None:
    path = tmp_path / "users.db"
    a = Node(node_store(path), clock, ban_time=1, ban_time_max=5)
    a.fail(A, 3)
    clock.advance(6 * MIN + TICK)
    assert BanDb(SqliteDatabase(path)).all() == []
    a.fail(A, 3)
    assert a.defender.list()[0].count == 1


class Outage:
    """The database store with a switch: while ``down``, every query fails as a database
    that cannot be reached does (StoreUnavailable, from the worker thread)."""

    def __init__(self, inner: DbBanStore) -> None:
        self.inner = inner
        self.down = False

    def _gate(self) -> None:
        if self.down:
            raise StoreUnavailable("postgresql: connection refused")

    def put(self, ban: Ban) -> defer.Deferred[None]:
        self._gate()
        return self.inner.put(ban)

    def remove(self, source: str) -> defer.Deferred[bool]:
        self._gate()
        return self.inner.remove(source)

    def all(self) -> defer.Deferred[list[Ban]]:
        self._gate()
        return self.inner.all()


def test_a_store_down_keeps_banning_locally_logs_once_and_catches_up(
    tmp_path: Path, clock: task.Clock, logged: list[LogEvent]
) -> None:
    path = tmp_path / "users.db"
    flaky = Outage(node_store(path))
    a, b = Node(flaky, clock), Node(node_store(path), clock)
    b.fail("192.0.2.9", 3)  # a ban at B while A's database is reachable
    flaky.down = True
    a.fail(A, 3)  # the write fails: the ban holds here all the same
    assert a.defender.refusal(A) == "banned"
    for _ in range(5):
        clock.advance(TICK)  # reads fail too; the loop goes on
    assert a.defender.refusal(A) == "banned"
    assert a.defender.refusal("192.0.2.9") is None  # A never got to read it
    downs = [e for e in logged if e.get("event") == "ban_store_down"]
    assert len(downs) == 1 and "connection refused" in downs[0]["error"]
    assert BanDb(SqliteDatabase(path)).get(A) is None
    flaky.down = False
    clock.advance(TICK)
    assert BanDb(SqliteDatabase(path)).get(A) is not None  # the missed write, caught up
    assert a.defender.refusal("192.0.2.9") == "banned"  # and B's ban, read
    assert a.defender.refusal(A) == "banned"
    assert [e.get("event") for e in logged].count("ban_store_up") == 1
    clock.advance(TICK)
    assert b.defender.refusal(A) == "banned"


def test_a_store_down_at_start_does_not_stop_the_defender(
    tmp_path: Path, clock: task.Clock
) -> None:
    flaky = Outage(node_store(tmp_path / "users.db"))
    flaky.down = True
    a = Node(flaky, clock)  # the first tick (at start) fails
    a.fail(A, 3)
    assert a.defender.refusal(A) == "banned"
    d = a.defender.remove(A)  # an admin's remove while down: locally at once
    assert a.defender.refusal(A) is None
    results: list[bool] = []
    d.addCallback(results.append)
    assert results == [True]
    flaky.down = False
    clock.advance(TICK)
    assert BanDb(SqliteDatabase(tmp_path / "users.db")).all() == []


def test_writes_for_one_source_land_in_order(tmp_path: Path, clock: task.Clock) -> None:
    """A ban then its removal, the first still in flight: the table ends without it."""
    path = tmp_path / "users.db"
    inner = node_store(path)
    held: list[defer.Deferred[None]] = []

    class Slow:
        def put(self, ban: Ban) -> defer.Deferred[None]:
            d: defer.Deferred[None] = defer.Deferred()
            held.append(d)
            return d.addCallback(lambda _: inner.put(ban))

        def remove(self, source: str) -> defer.Deferred[bool]:
            return inner.remove(source)

        def all(self) -> defer.Deferred[list[Ban]]:
            return inner.all()

    a = Node(Slow(), clock)
    a.fail(A, 3)
    a.defender.remove(A)  # queued behind the put
    held[0].callback(None)  # the put lands, then the remove is sent
    assert BanDb(SqliteDatabase(path)).all() == []
    clock.advance(TICK)
    assert a.defender.refusal(A) is None


def test_while_the_store_is_down_only_the_tick_asks_it(tmp_path: Path, clock: task.Clock) -> None:
    """Each query to a database that is down may hold a worker thread for its timeouts:
    bans made meanwhile wait in the mirror, and the one read per tick is the probe."""
    flaky = Outage(node_store(tmp_path / "users.db"))
    calls: list[str] = []
    for name in ("put", "remove", "all"):
        method = getattr(flaky, name)

        def counted(*args: Any, _m: Any = method, _n: str = name) -> Any:
            calls.append(_n)
            return _m(*args)

        setattr(flaky, name, counted)
    a = Node(flaky, clock)
    flaky.down = True
    a.fail(A, 3)  # the first write fails: the store is known down from here
    for i in range(10):
        a.fail(f"192.0.2.{100 + i}", 3)
    clock.advance(TICK)
    clock.advance(TICK)
    assert calls == ["all", "put", "all", "all"]
    flaky.down = False
    clock.advance(TICK)
    assert len(BanDb(SqliteDatabase(tmp_path / "users.db")).all()) == 11


def test_a_read_older_than_a_confirmed_write_does_not_undo_it(
    tmp_path: Path, clock: task.Clock
) -> None:
    """The tick's read runs in a worker thread; a ban written (and confirmed) while it runs
    is missing from its rows, and must not be dropped from the mirror for a tick."""
    inner = node_store(tmp_path / "users.db")
    reads: list[defer.Deferred[list[Ban]]] = []

    class SlowReads:
        def put(self, ban: Ban) -> defer.Deferred[None]:
            return inner.put(ban)

        def remove(self, source: str) -> defer.Deferred[bool]:
            return inner.remove(source)

        def all(self) -> defer.Deferred[list[Ban]]:
            d: defer.Deferred[list[Ban]] = defer.Deferred()
            reads.append(d)
            return d

    a = Node(SlowReads(), clock)
    reads.pop().callback([])  # the first tick
    clock.advance(TICK)  # the next read starts: the table has no ban yet
    a.fail(A, 3)  # banned, and written at once
    reads.pop().callback([])  # the rows of the read that started before the write
    assert a.defender.refusal(A) == "banned"
    clock.advance(TICK)
    got: list[Ban] = []
    inner.all().addCallback(got.extend)
    reads.pop().callback(got)
    assert a.defender.refusal(A) == "banned"
