"""The defender with a task.Clock: scores per source, bans, doubling, lists, the store."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.logger import LogEvent, globalLogPublisher

from sftpd.edge.config import DefenderConfig
from sftpd.edge.defender import Ban, Defender, MemoryBanStore, ban_key
from sftpd.edge.networks import Networks

MIN = 60.0
A = "192.0.2.7"


def make(**kw: Any) -> tuple[Defender, task.Clock, list[tuple[str, dict[str, Any]]]]:
    clock = task.Clock()
    clock.advance(1_800_000_000)  # wall-clock-like times, as reactor.seconds() gives
    events: list[tuple[str, dict[str, Any]]] = []
    store = kw.pop("store", None)
    exempt = kw.pop("exempt", None)
    cfg = DefenderConfig(**{"safe_list": Networks(), **kw})
    d = Defender(
        cfg, clock=clock, store=store, exempt=exempt, on_event=lambda n, f: events.append((n, f))
    )
    return d, clock, events


@pytest.fixture
def logged() -> Any:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_threshold_bans_and_not_before() -> None:
    d, _clock, events = make()
    for _ in range(14):
        d.auth_failed(A, invalid_user=False)
    assert not d.is_banned(A)
    d.auth_failed(A, invalid_user=False)
    assert d.is_banned(A)
    assert d.refusal(A) == "banned"
    assert d.refusal(A) == "banned"
    assert [n for n, _ in events] == ["source_banned", "source_refused"]  # once per ban
    assert not d.is_banned("192.0.2.8")


def test_scores_weigh_as_configured() -> None:
    d, _, _ = make(threshold=10)
    for _ in range(4):
        d.auth_failed(A, invalid_user=True)  # 4 x 2
    d.no_auth(A)  # 9
    assert not d.is_banned(A)
    d.no_auth(A)  # 10
    assert d.is_banned(A)


def test_zero_score_is_not_scored() -> None:
    d, _, _ = make(threshold=1, score_no_auth=0)
    d.no_auth(A)
    assert not d.is_banned(A)


def test_scores_expire_after_observation_time() -> None:
    d, clock, _ = make(observation_time=1.0)
    for _ in range(14):
        d.auth_failed(A, invalid_user=False)
    clock.advance(MIN + 1)
    d.auth_failed(A, invalid_user=False)
    assert not d.is_banned(A)  # the 14 old points are gone: 1 of 15


def test_ban_ends_after_ban_time_fraction() -> None:
    d, clock, _ = make(threshold=1, ban_time=0.05, ban_time_max=10)  # 3 s
    d.auth_failed(A, invalid_user=False)
    clock.advance(2.9)
    assert d.is_banned(A)
    clock.advance(0.2)
    assert not d.is_banned(A)


def test_repeated_bans_double_up_to_the_maximum() -> None:
    d, clock, events = make(threshold=1, ban_time=10, ban_time_max=35)
    spans = []
    for _ in range(4):
        d.auth_failed(A, invalid_user=False)
        (ban,) = d.list()
        spans.append((ban.until - clock.seconds()) / MIN)
        clock.advance(ban.until - clock.seconds() + 1)
        assert not d.is_banned(A)
    assert spans == [10, 20, 35, 35]
    assert [f["count"] for _, f in events] == [1, 2, 3, 4]


def test_history_is_forgotten_after_ban_time_max() -> None:
    d, clock, _ = make(threshold=1, ban_time=10, ban_time_max=60)
    d.auth_failed(A, invalid_user=False)
    clock.advance(10 * MIN + 60 * MIN + 1)  # ban over, and remembered no longer
    d.tick()
    d.auth_failed(A, invalid_user=False)
    (ban,) = d.list()
    assert ban.count == 1 and ban.until - clock.seconds() == 10 * MIN


def test_ban_is_logged_once_while_banned_connections_keep_failing(logged: Any) -> None:
    d, _, events = make(threshold=2)
    for _ in range(10):  # connections admitted before the ban keep failing
        d.auth_failed(A, invalid_user=True)
    bans = [e for e in logged if e.get("event") == "source_banned"]
    assert len(bans) == 1 and bans[0]["source"] == A
    assert len(events) == 1
    (ban,) = d.list()
    assert ban.count == 1


def test_success_resets_the_score() -> None:
    d, _, _ = make()
    for _ in range(14):
        d.auth_failed(A, invalid_user=False)
    d.auth_succeeded(A)  # the key login after 14 typos
    for _ in range(14):
        d.auth_failed(A, invalid_user=False)
    assert not d.is_banned(A)


def test_success_forgets_an_ended_ban_but_keeps_an_active_one() -> None:
    d, clock, _ = make(threshold=1, ban_time=10, ban_time_max=100)
    d.auth_failed(A, invalid_user=False)
    d.auth_succeeded(A)  # on a connection admitted before the ban
    assert d.is_banned(A)
    clock.advance(10 * MIN + 1)
    d.auth_succeeded(A)
    d.auth_failed(A, invalid_user=False)
    (ban,) = d.list()
    assert ban.count == 1  # not doubled: the history went with the success


def test_ipv6_sources_are_grouped_per_64() -> None:
    d, _, _ = make(threshold=3)
    for host in ("2001:db8:1:2::1", "2001:db8:1:2:aaaa::9", "2001:db8:1:2:ffff:ffff:ffff:ffff"):
        d.auth_failed(host, invalid_user=False)
    assert d.is_banned("2001:db8:1:2::77")
    assert not d.is_banned("2001:db8:1:3::1")
    assert [b.source for b in d.list()] == ["2001:db8:1:2::/64"]


def test_ipv4_mapped_ipv6_is_the_ipv4_source() -> None:
    d, _, _ = make(threshold=1)
    d.auth_failed("::ffff:192.0.2.7", invalid_user=False)
    assert d.is_banned(A)


def test_safe_list_and_exempt_are_never_scored() -> None:
    d, _, _ = make(threshold=1, safe_list=Networks(["127.0.0.0/8"]), exempt=Networks(["10.0.0.5"]))
    for host in ("127.0.0.1", "127.9.9.9", "10.0.0.5"):
        d.auth_failed(host, invalid_user=True)
        d.no_auth(host)
        assert not d.is_banned(host)
    d.auth_failed("10.0.0.6", invalid_user=True)
    assert d.is_banned("10.0.0.6")


def test_default_safe_list_is_loopback() -> None:
    assert DefenderConfig().safe_list.contains("127.0.0.1")
    assert not DefenderConfig().safe_list.contains("::1")


def test_block_list_is_refused_without_any_score() -> None:
    d, _, _ = make(block_list=Networks(["198.51.100.0/24", "2001:db8:bad::/48"]))
    assert d.refusal("198.51.100.200") == "blocked"
    assert d.refusal("2001:db8:bad:1::1") == "blocked"
    assert d.refusal("198.51.101.1") is None
    assert d.list() == []


def test_admin_add_list_remove() -> None:
    d, clock, events = make()
    ban = d.add("2001:db8::5", minutes=2)
    assert ban.source == "2001:db8::/64" and ban.reason == "manual"
    assert d.is_banned("2001:db8::9")
    assert [b.source for b in d.list()] == ["2001:db8::/64"]
    removed: list[bool] = []
    d.remove("2001:db8::/64").addCallback(removed.append)
    assert removed == [True]
    assert not d.is_banned("2001:db8::9")
    assert d.list() == []
    d.remove(A).addCallback(removed.append)
    assert removed == [True, False]
    assert [n for n, _ in events] == ["source_banned", "source_unbanned"]
    d.add(A)
    clock.advance(30 * MIN + 1)  # default minutes: ban_time
    assert not d.is_banned(A)


@pytest.mark.parametrize("text", ["10.0.0.0/8", "2001:db8::/48", "example.com", ""])
def test_ban_key_refuses_non_sources(text: str) -> None:
    with pytest.raises(ValueError, match="block_list"):
        ban_key(text)


def test_a_shared_store_carries_bans_between_nodes() -> None:
    store = MemoryBanStore()
    a, clock, _ = make(threshold=1, store=store)
    b = Defender(DefenderConfig(safe_list=Networks()), clock=clock, store=store)
    b.start(interval=5)
    a.auth_failed(A, invalid_user=False)
    assert a.is_banned(A) and not b.is_banned(A)
    clock.advance(5)  # node B's next reload
    assert b.is_banned(A)
    b.remove(A)
    assert a.is_banned(A)
    a.tick()
    assert not a.is_banned(A)
    b.stop()


class SlowStore(MemoryBanStore):
    """A store whose writes complete only when the test says so (like a database)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[defer.Deferred[None], Ban]] = []

    def put(self, ban: Ban) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.pending.append((d, ban))
        return d

    def finish(self) -> None:
        for d, ban in self.pending:
            super().put(ban)
            d.callback(None)
        self.pending = []


def test_a_reload_does_not_undo_a_write_in_flight() -> None:
    store = SlowStore()
    d, _, _ = make(threshold=1, store=store)
    d.auth_failed(A, invalid_user=False)
    d.tick()  # the store does not know the ban yet
    assert d.is_banned(A)
    store.finish()
    d.tick()
    assert d.is_banned(A)


def test_tracked_sources_are_bounded() -> None:
    clock = task.Clock()
    d = Defender(DefenderConfig(safe_list=Networks()), clock=clock, max_sources=100)
    for i in range(1000):
        d.auth_failed(f"10.0.{i // 256}.{i % 256}", invalid_user=False)
    assert len(d._scores) == 100


def test_tick_drops_stale_scores() -> None:
    d, clock, _ = make(observation_time=1)
    d.auth_failed(A, invalid_user=False)
    clock.advance(MIN + 1)
    d.tick()
    assert d._scores == {}


@pytest.mark.parametrize("minutes", [0, -1, 10**9])
def test_admin_add_refuses_nonsense_minutes(minutes: float) -> None:
    d, _, _ = make()
    with pytest.raises(ValueError, match="expected more than 0"):
        d.add(A, minutes)
    assert d.list() == []
