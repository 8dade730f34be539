"""Connection limits: totals, per source (IPv6 /64), MaxStartups with random early drop."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from sftpd.edge.limits import Limits, LimitsConfig, Slot, Startups, UserSessions


def fixed(value: int) -> Callable[[int], int]:
    return lambda n: value


def admit_all(limits: Limits, host: str, n: int) -> list[Slot | str]:
    return [limits.admit(host) for _ in range(n)]


def test_drop_percent_is_sshds_arithmetic() -> None:
    s = Startups(10, 30, 100)
    assert [s.drop_percent(n) for n in (0, 9, 10, 20, 55, 99, 100, 500)] == [
        0,
        0,
        30,
        37,  # 30 + 70 * 10 // 90
        65,
        99,
        100,
        100,
    ]
    assert Startups(5, 100, 50).drop_percent(5) == 100
    assert Startups(10, 30, 10).drop_percent(10) == 100


def test_max_connections_counts_everyone_and_frees_on_release() -> None:
    limits = Limits(LimitsConfig(max_connections=3, max_connections_per_source=0))
    slots = [limits.admit(f"192.0.2.{i}") for i in range(3)]
    assert all(isinstance(s, Slot) for s in slots)
    for s in slots:
        assert isinstance(s, Slot)
        s.authenticate()  # not startups any more: still connections
    assert limits.admit("192.0.2.9") == "max_connections"
    assert isinstance(slots[0], Slot)
    slots[0].release()
    slots[0].release()  # twice is once
    assert limits.connections == 2
    assert isinstance(limits.admit("192.0.2.9"), Slot)


def test_zero_means_no_limit() -> None:
    cfg = LimitsConfig(
        max_connections=0, max_connections_per_source=0, max_startups=Startups(10**6, 100, 10**6)
    )
    limits = Limits(cfg)
    assert all(isinstance(s, Slot) for s in admit_all(limits, "192.0.2.1", 5000))


def test_per_source_limit_and_ipv6_per_64() -> None:
    limits = Limits(LimitsConfig(max_connections_per_source=2), randbelow=fixed(99))
    a = admit_all(limits, "2001:db8:0:1::1", 1) + admit_all(limits, "2001:db8:0:1::2", 1)
    assert all(isinstance(s, Slot) for s in a)
    assert limits.admit("2001:db8:0:1:ffff::3") == "max_connections_per_source"
    assert isinstance(limits.admit("2001:db8:0:2::1"), Slot)  # the next /64 is another source
    assert isinstance(limits.admit("192.0.2.1"), Slot)
    assert limits.source_count("2001:db8:0:1::99") == 2
    s = a[0]
    assert isinstance(s, Slot)
    s.release()
    assert isinstance(limits.admit("2001:db8:0:1::3"), Slot)


def test_per_source_counts_authenticated_connections_too() -> None:
    limits = Limits(LimitsConfig(max_connections_per_source=2))
    for s in admit_all(limits, "192.0.2.1", 2):
        assert isinstance(s, Slot)
        s.authenticate()
    assert limits.admit("192.0.2.1") == "max_connections_per_source"


def test_below_start_nothing_is_dropped_and_no_random_is_drawn() -> None:
    def never(n: int) -> int:
        raise AssertionError("drew a random number below start")

    limits = Limits(LimitsConfig(max_startups=Startups(10, 30, 100)), randbelow=never)
    assert all(isinstance(s, Slot) for s in admit_all(limits, "192.0.2.1", 10))


def test_early_drop_between_start_and_full_follows_the_random_draw() -> None:
    draws = iter([29, 30])  # p = 30% at 10 startups: 29 < 30 drops, 30 does not
    limits = Limits(
        LimitsConfig(max_connections_per_source=0, max_startups=Startups(10, 30, 100)),
        randbelow=lambda n: next(draws),
    )
    admit_all(limits, "192.0.2.1", 10)
    assert limits.admit("192.0.2.1") == "max_startups"
    assert isinstance(limits.admit("192.0.2.1"), Slot)


def test_early_drop_rate_matches_openssh_statistically() -> None:
    rng = random.Random(7)
    limits = Limits(
        LimitsConfig(max_connections_per_source=0, max_startups=Startups(10, 30, 100)),
        randbelow=rng.randrange,
    )
    held = admit_all(limits, "192.0.2.1", 10)
    assert all(isinstance(s, Slot) for s in held)
    dropped = 0
    for _ in range(2000):  # each probe closes again: startups stays at 10 -> 30%
        got = limits.admit("192.0.2.1")
        if isinstance(got, Slot):
            got.release()
        else:
            dropped += 1
    assert 500 < dropped < 700


def test_at_full_a_new_source_evicts_the_oldest_of_the_top_source() -> None:
    limits = Limits(
        LimitsConfig(max_connections_per_source=0, max_startups=Startups(2, 50, 4)),
        randbelow=fixed(99),
    )
    flood = admit_all(limits, "192.0.2.1", 4)
    evicted: list[Slot] = []
    for s in flood:
        assert isinstance(s, Slot)
        s.on_evict = evicted.append
    assert limits.startups == 4
    assert limits.admit("192.0.2.1") == "max_startups"  # the top source cannot evict itself
    legit = limits.admit("198.51.100.1")
    assert isinstance(legit, Slot)
    assert evicted == [flood[0]] and flood[0].released  # the oldest, given back first
    assert limits.startups == 4 and limits.connections == 4
    assert limits.startup_count("192.0.2.1") == 3
    flood[0].release()  # the close that follows the eviction changes nothing
    assert limits.startups == 4 and limits.connections == 4
    legit.authenticate()
    assert limits.startups == 3


def test_authentication_leaves_the_startup_count() -> None:
    limits = Limits(
        LimitsConfig(max_connections_per_source=0, max_startups=Startups(2, 100, 2)),
    )
    a, b = admit_all(limits, "192.0.2.1", 2)
    assert limits.admit("192.0.2.1") == "max_startups"
    assert isinstance(a, Slot) and isinstance(b, Slot)
    a.authenticate()
    a.authenticate()
    assert limits.startups == 1
    c = limits.admit("192.0.2.1")
    assert isinstance(c, Slot)
    a.release()  # an authenticated one leaving does not free a startup
    assert limits.startups == 2 and limits.connections == 2
    b.release()
    assert limits.startups == 1


def test_openssh_mode_gambles_with_a_new_source() -> None:
    limits = Limits(
        LimitsConfig(max_connections_per_source=0, max_startups=Startups(10, 30, 100)),
        randbelow=fixed(0),
        spare_new_sources=False,
    )
    admit_all(limits, "192.0.2.1", 10)
    assert limits.admit("198.51.100.1") == "max_startups"


@pytest.mark.parametrize("draw", ["always_drop", "never_drop", "seeded"])
def test_a_300_connection_flood_does_not_stop_a_login_from_elsewhere(draw: str) -> None:
    """Defaults: 300 silent connections from one source, then a login from another.

    The flood holds at most max_connections_per_source (20) startups, and the rest is
    refused at accept. A source that holds no unauthenticated connection is not
    early-dropped below ``full``, so the login is admitted whatever the random draws.
    """
    randbelow = {
        "always_drop": fixed(0),
        "never_drop": fixed(99),
        "seeded": random.Random(3).randrange,
    }[draw]
    limits = Limits(LimitsConfig(), randbelow=randbelow)
    flood = admit_all(limits, "192.0.2.66", 300)
    held = [s for s in flood if isinstance(s, Slot)]
    assert 10 <= len(held) <= 20 and limits.startups == len(held)
    assert {s for s in flood if not isinstance(s, Slot)} <= {
        "max_connections_per_source",
        "max_startups",
    }
    if draw == "never_drop":
        assert flood.count("max_connections_per_source") == 280
    for attempt in range(50):  # a legitimate client reconnecting 50 times: never refused
        legit = limits.admit("198.51.100.7")
        assert isinstance(legit, Slot), attempt
        legit.release()
    legit = limits.admit("198.51.100.7")
    assert isinstance(legit, Slot)
    legit.authenticate()
    assert limits.startups == len(held)


def _flood(limits: Limits, sources: list[str], attempts: int, rng: random.Random) -> dict:
    """Silent connections from random ``sources``; each evicted one is seen closing."""
    held: dict[Slot, str] = {}
    for _ in range(attempts):
        host = rng.choice(sources)
        got = limits.admit(host)
        if isinstance(got, Slot):
            held[got] = host
            got.on_evict = lambda s: held.pop(s)
    return held


def test_a_flood_from_many_sources_cannot_hold_full_against_a_newcomer() -> None:
    """Five flooding sources x 20 = full (100). OpenSSH then refuses everyone until a
    silent connection's grace time ends; here a newcomer evicts a flooding connection."""
    limits = Limits(LimitsConfig(), randbelow=fixed(99))
    for i in range(5):
        admit_all(limits, f"192.0.2.{i}", 20)
    assert limits.startups == 100
    legit = limits.admit("198.51.100.7")
    assert isinstance(legit, Slot)
    assert limits.startups == 100 and limits.connections == 100  # memory: bounded by full
    assert limits.startup_count("192.0.2.0") == 19  # the first to reach 20 loses first
    assert limits.admit("192.0.2.1") == "max_connections_per_source"
    assert isinstance(limits.admit("198.51.100.8"), Slot)
    assert limits.startup_count("192.0.2.1") == 19  # round the top sources in turn
    assert isinstance(limits.admit("192.0.2.0"), Slot)  # 19 < 20: evicts 192.0.2.2's oldest
    assert [limits.startup_count(f"192.0.2.{i}") for i in range(5)] == [20, 19, 19, 20, 20]
    assert limits.admit("192.0.2.3") == "max_connections_per_source"
    for _ in range(3):  # evicts from 3, 4, then 0 (the last to reach 20)
        assert isinstance(limits.admit("198.51.100.9"), Slot)
    assert [limits.startup_count(f"192.0.2.{i}") for i in range(5)] == [19] * 5
    assert limits.admit("192.0.2.0") == "max_startups"  # at the top: nothing to gain
    assert limits.startups == 100 and limits.connections == 100


@pytest.mark.parametrize("seed", range(5))
def test_a_newcomer_survives_a_flood_whose_sources_hold_two_or_more(seed: int) -> None:
    """40 sources flood at random (a source that evicts is evicted back in turn): the
    counts stay above one at the top, so the newcomer's single connection is never the
    victim, whatever the flood does while it logs in."""
    rng = random.Random(seed)
    limits = Limits(LimitsConfig(), randbelow=rng.randrange)
    sources = [f"203.0.113.{i}" for i in range(40)]
    held = _flood(limits, sources, 3000, rng)
    assert limits.startups == 100 == len(held)
    legit = limits.admit("198.51.100.7")
    assert isinstance(legit, Slot)
    legit.on_evict = lambda s: pytest.fail("the newcomer was evicted")
    more = _flood(limits, sources, 20_000, rng)
    assert more and not legit.released
    assert limits.startups == 100 and limits.connections == 100
    legit.authenticate()
    assert limits.startups == 99


def test_a_flood_of_one_connection_per_address_evicts_the_oldest_first() -> None:
    """The limit: 300 addresses holding one each. The newcomer gets in at once, and then
    lives until full - 1 (99) more newcomers have been admitted."""
    limits = Limits(LimitsConfig(), randbelow=fixed(99))
    for i in range(300):
        got = limits.admit(f"10.0.{i // 256}.{i % 256}")
        if isinstance(got, Slot):
            got.on_evict = lambda s: None
    assert limits.startups == 100
    legit = limits.admit("198.51.100.7")
    assert isinstance(legit, Slot)
    gone: list[Slot] = []
    legit.on_evict = gone.append
    for i in range(99):
        assert isinstance(limits.admit(f"10.1.0.{i}"), Slot)
    assert not gone
    assert isinstance(limits.admit("10.1.1.1"), Slot)
    assert gone == [legit]
    assert limits.startups == 100 and len(limits._by_count) == 1


@pytest.mark.parametrize("limit", [0, 2])
def test_user_sessions(limit: int) -> None:
    u = UserSessions()
    assert u.open("alice", limit) and u.open("alice", limit)
    assert u.open("alice", limit) is (limit == 0)
    u.close("alice")
    assert u.open("alice", limit)
    assert u.open("bob", limit)
    for _ in range(5):
        u.close("bob")
    assert u.count("bob") == 0
