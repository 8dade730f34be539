"""Run blocking storage calls off the reactor thread (or inline, for in-memory tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool

P = ParamSpec("P")
T = TypeVar("T")


class Blocking(Protocol):
    """Something that runs a blocking callable and returns a Deferred of its result."""

    def run(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> defer.Deferred[T]: ...


class ThreadPoolBlocking:
    """Runs calls in an injected thread pool so one slow file system stalls no other session."""

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        self._reactor = reactor
        self._pool = pool

    def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> defer.Deferred[T]:
        d: defer.Deferred[T] = threads.deferToThreadPool(
            self._reactor, self._pool, fn, *args, **kwargs
        )
        return d


class InlineBlocking:
    """Runs calls synchronously; for tests that want no threads."""

    def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> defer.Deferred[T]:
        try:
            result: Any = fn(*args, **kwargs)
        except BaseException:
            return defer.fail()
        return defer.succeed(result)
