"""idle_timeout and client_alive_interval helpers, driven by a task.Clock."""

from __future__ import annotations

from twisted.internet import defer, task

from sftpd.edge.alive import IdleTimer, KeepAlive


def run(clock: task.Clock, seconds: float, step: float = 0.5) -> None:
    """Advance in small steps, as time passes (Clock.advance runs late calls at the end)."""
    for _ in range(round(seconds / step)):
        clock.advance(step)


def test_idle_timer_fires_after_timeout_without_data() -> None:
    clock = task.Clock()
    fired: list[float] = []
    t = IdleTimer(clock, 900, lambda: fired.append(clock.seconds()))
    t.start()
    clock.advance(899)
    assert fired == []
    clock.advance(1)
    assert fired == [900]
    clock.advance(10_000)
    assert fired == [900]  # once


def test_idle_timer_touch_postpones_so_a_slow_transfer_is_never_idle() -> None:
    clock = task.Clock()
    fired: list[float] = []
    t = IdleTimer(clock, 10, lambda: fired.append(clock.seconds()))
    t.start()
    for _ in range(100):  # a packet every 9 s for 900 s
        clock.advance(9)
        t.touch()
    assert fired == []
    clock.advance(9.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [910]


def test_idle_timer_zero_is_off_and_stop_cancels() -> None:
    clock = task.Clock()
    fired: list[int] = []
    off = IdleTimer(clock, 0, lambda: fired.append(1))
    off.start()
    assert clock.getDelayedCalls() == []
    t = IdleTimer(clock, 5, lambda: fired.append(2))
    t.start()
    t.stop()
    clock.advance(100)
    assert fired == [] and clock.getDelayedCalls() == []


def make_keepalive(
    answer: bool,
) -> tuple[KeepAlive, task.Clock, list[float], list[float], list[defer.Deferred[None]]]:
    clock = task.Clock()
    probes: list[float] = []
    dead: list[float] = []
    pending: list[defer.Deferred[None]] = []

    def send() -> defer.Deferred[None]:
        probes.append(clock.seconds())
        d: defer.Deferred[None] = defer.Deferred()
        pending.append(d)
        if answer:  # the client answers a moment later (REQUEST_FAILURE is an answer too)
            clock.callLater(0.5, d.errback, Exception("request failed"))
        return d

    k = KeepAlive(clock, 15, send, lambda: dead.append(clock.seconds()))
    k.start()
    return k, clock, probes, dead, pending


def test_keepalive_disconnects_after_three_unanswered_probes() -> None:
    k, clock, probes, dead, _ = make_keepalive(answer=False)
    run(clock, 15 * 3)
    assert probes == [15, 30, 45] and dead == []
    run(clock, 14.5)
    assert dead == []
    run(clock, 0.5)
    assert dead == [60]
    run(clock, 100)
    assert probes == [15, 30, 45] and dead == [60]


def test_keepalive_answered_probes_keep_the_client() -> None:
    k, clock, probes, dead, _ = make_keepalive(answer=True)
    run(clock, 15 * 20)
    assert len(probes) == 20 and dead == []
    assert k.unanswered <= 1


def test_keepalive_probes_only_a_quiet_client() -> None:
    k, clock, probes, dead, _ = make_keepalive(answer=False)
    for _ in range(10):
        run(clock, 10)
        k.touch()  # data arrives every 10 s
    assert probes == [] and dead == []
    run(clock, 15)
    assert probes == [115]


def test_keepalive_data_after_probes_resets_the_count() -> None:
    k, clock, probes, dead, _ = make_keepalive(answer=False)
    run(clock, 45)  # three unanswered
    k.touch()
    run(clock, 15 * 3)
    assert dead == []
    run(clock, 15)
    assert dead == [105]


def test_keepalive_off_and_stop() -> None:
    clock = task.Clock()
    k = KeepAlive(clock, 0, lambda: None, lambda: None)
    k.start()
    assert clock.getDelayedCalls() == []
    k2 = KeepAlive(clock, 5, lambda: None, lambda: None)
    k2.start()
    k2.stop()
    assert clock.getDelayedCalls() == []


def test_keepalive_answered_called_by_the_caller() -> None:
    clock = task.Clock()
    dead: list[int] = []
    k = KeepAlive(clock, 5, lambda: None, lambda: dead.append(1))
    k.start()
    for _ in range(10):
        run(clock, 5)
        k.answered()
    assert dead == []
