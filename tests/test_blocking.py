"""The WorkerPool executor: results and errors come back on the reactor thread, in batches."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sftpd.runtime.threads import WorkerPool
from tests.test_sftp_isolation import QueueReactor


def test_results_errors_and_threads() -> None:
    reactor = QueueReactor()
    pool = WorkerPool(reactor, max_threads=3)  # type: ignore[arg-type]
    got: list[Any] = []
    main = threading.get_ident()
    callback_threads: set[int] = set()

    def record(value: Any) -> None:
        callback_threads.add(threading.get_ident())
        got.append(value)

    for i in range(50):
        pool.run(pow, i, 2).addCallback(record)
    pool.run(int, "not a number").addErrback(lambda f: record(f.check(ValueError)))
    assert reactor.pump_until(lambda: len(got) == 51)
    assert sorted(x for x in got if isinstance(x, int)) == [i * i for i in range(50)]
    assert ValueError in got
    assert callback_threads == {main}  # never on a worker thread
    assert 1 <= len(pool._threads) <= 3
    pool.stop()
    failed: list[Any] = []
    pool.run(pow, 2, 2).addErrback(failed.append)
    assert failed and failed[0].check(RuntimeError)


def test_a_blocked_worker_does_not_stop_the_others() -> None:
    reactor = QueueReactor()
    pool = WorkerPool(reactor, max_threads=2)  # type: ignore[arg-type]
    gate = threading.Event()
    got: list[str] = []
    pool.run(gate.wait, 30).addCallback(lambda _: got.append("slow"))
    pool.run(str, "fast").addCallback(got.append)
    assert reactor.pump_until(lambda: got == ["fast"])
    gate.set()
    assert reactor.pump_until(lambda: got == ["fast", "slow"])
    pool.stop()


@pytest.mark.parametrize("n", [1])
def test_stop_finishes_queued_jobs(n: int) -> None:
    reactor = QueueReactor()
    pool = WorkerPool(reactor, max_threads=n)  # type: ignore[arg-type]
    got: list[int] = []
    for i in range(20):
        pool.run(abs, -i).addCallback(got.append)
    pool.stop()
    assert reactor.pump_until(lambda: len(got) == 20)


def test_eventfd_waker_with_an_fd_reactor() -> None:
    """With a reactor that watches fds, results come back through the pool's eventfd."""
    import select

    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()  # type: ignore[no-untyped-call]
    pool = WorkerPool(reactor, max_threads=2)  # type: ignore[arg-type]
    (waker,) = reactor.readers
    got: list[int] = []
    for i in range(30):
        pool.run(abs, -i).addCallback(got.append)
    while len(got) < 30:
        ready, _, _ = select.select([waker.fileno()], [], [], 30)  # deadlock guard
        assert ready, "the worker never signalled the eventfd"
        waker.doRead()  # type: ignore[attr-defined]
    assert sorted(got) == list(range(30))
    pool.stop()
    assert not reactor.readers  # the eventfd is closed and unregistered


def test_results_after_the_reactor_dropped_the_waker_are_still_delivered() -> None:
    """At shutdown the reactor calls connectionLost on every reader before pool.stop runs;
    jobs queued meanwhile (sessions closing their files) must still run and be delivered."""
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()  # type: ignore[no-untyped-call]
    pool = WorkerPool(reactor, max_threads=1)
    (waker,) = reactor.readers
    waker.connectionLost(None)  # type: ignore[attr-defined]
    reactor.readers.clear()  # what disconnectAll does
    got: list[int] = []
    for i in range(5):
        pool.run(abs, -i).addCallback(got.append)
    pool.stop()  # joins the worker, then delivers what finished
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert all(not t.is_alive() for t in pool._threads)


def test_a_thread_that_cannot_start_fails_the_call_or_queues_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reactor = QueueReactor()
    pool = WorkerPool(reactor, max_threads=4)  # type: ignore[arg-type]

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", no_thread)
        failed: list[Any] = []
        pool.run(abs, -1).addErrback(failed.append)
        assert failed and failed[0].check(RuntimeError)  # no thread at all: an error now
        assert pool._outstanding == 0
    got: list[int] = []
    pool.run(abs, -2).addCallback(got.append)  # a thread starts
    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", no_thread)
        for i in range(3):  # no more threads: the one that exists serves them
            pool.run(abs, -i).addCallback(got.append)
    assert reactor.pump_until(lambda: len(got) == 4)
    assert sorted(got) == [0, 1, 2, 2] and len(pool._threads) == 1
    pool.stop()


def test_idle_until_every_result_is_delivered() -> None:
    """``idle()`` (the reactor polls without sleeping only then) is false from ``call`` until
    the result is handed back on the reactor thread, not merely until the job ran."""
    reactor = QueueReactor()
    pool = WorkerPool(reactor, max_threads=1)  # type: ignore[arg-type]
    assert pool.idle()
    gate = threading.Event()
    ran = threading.Event()
    got: list[Any] = []

    def job() -> str:
        ran.set()
        gate.wait(30)
        return "done"

    pool.run(job).addCallback(got.append)
    assert not pool.idle()
    assert ran.wait(30)
    assert not pool.idle()  # running
    gate.set()
    pool._threads[0].join(0.2)  # the job returns; its result waits for the reactor
    assert not pool.idle()
    assert reactor.pump_until(lambda: got == ["done"])
    assert pool.idle()
    pool.stop()
