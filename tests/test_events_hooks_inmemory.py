"""Hooks in memory: matching, parallel limit, bounded queue, timeout kill, HTTP retries."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from sftpd.events.config import HookConfig, HookLimits
from sftpd.events.hooks import Hooks, matches
from sftpd.events.model import Event, Identity

WHO = Identity.of("alice", "password", "sftp", "127.0.0.1", 4000, "c7")


def upload(path: str = "/incoming/a", outcome: str = "ok") -> Event:
    return Event("upload", WHO, 1.0, path, bytes=1, size=1, outcome=outcome)


class FakeProcess:
    def __init__(self, proto: Any, argv: list[str], env: dict[str, str]) -> None:
        self.proto, self.argv, self.env = proto, argv, env
        self.stdin = b""
        self.stdin_closed = False
        self.signals: list[str] = []
        self.pid = None
        self.lost = False
        proto.makeConnection(self)

    def write(self, data: bytes) -> None:
        self.stdin += data

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def loseConnection(self) -> None:
        self.lost = True

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)
        self.exit(signal=9)

    def exit(self, code: int | None = 0, signal: int | None = None) -> None:
        if code == 0 and signal is None:
            reason: Failure = Failure(error.ProcessDone(0))
        else:
            reason = Failure(error.ProcessTerminated(code, signal))
        self.proto.processExited(reason)


class Reactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any) -> Any:
        assert executable == args[0]
        p = FakeProcess(proto, args, env)
        self.processes.append(p)
        return p


class Stats:
    def __init__(self) -> None:
        self.runs: list[str] = []
        self.failures: list[tuple[str, str]] = []

    def hook_run(self, kind: str) -> None:
        self.runs.append(kind)

    def hook_failed(self, kind: str, reason: str) -> None:
        self.failures.append((kind, reason))


COMMAND = HookConfig(on=("upload",), command=("/usr/local/bin/ingest", "-v"), timeout=30)


def make(
    hooks: list[HookConfig], limits: HookLimits | None = None, **kw: Any
) -> tuple[Hooks, Reactor, Stats]:
    reactor, stats = Reactor(), Stats()
    h = Hooks(reactor, hooks, limits, stats=stats, setsid=None, base_env={"PATH": "/bin"}, **kw)
    return h, reactor, stats


def test_matching_rules() -> None:
    hook = HookConfig(on=("upload", "rename", "login_failed"), command=("/x",), paths=("/in/*",))
    assert matches(hook, upload("/in/a/b"))
    assert not matches(hook, upload("/out/a"))
    assert not matches(hook, upload("/in/a", outcome="incomplete"))
    assert not matches(hook, Event("delete", WHO, 1.0, "/in/a"))
    assert matches(hook, Event("rename", WHO, 1.0, "/tmp/a", "/in/a"))
    assert not matches(hook, Event("rename", WHO, 1.0, "/in/a", "/out/a"))
    failed = Event("login_failed", WHO, 1.0, outcome="denied", reason="wrong password")
    assert not matches(hook, failed)  # no path: a paths filter never matches a login
    assert matches(HookConfig(on=("login_failed",), command=("/x",)), failed)
    both = HookConfig(on=("upload",), command=("/x",), outcomes=("incomplete",))
    assert matches(both, upload(outcome="incomplete")) and not matches(both, upload())


def test_command_gets_json_on_stdin_and_environment() -> None:
    hooks, reactor, stats = make([COMMAND])
    event = upload()
    hooks.emit(event)
    assert reactor.processes == []  # not before the request that caused it has its reply
    reactor.advance(0)
    (p,) = reactor.processes
    assert p.argv == ["/usr/local/bin/ingest", "-v"]
    assert json.loads(p.stdin) == event.to_dict() and p.stdin_closed
    assert p.env["SFTPD_PATH"] == "/incoming/a" and p.env["SFTPD_OP"] == "upload"
    assert p.env["PATH"] == "/bin" and "HOME" not in p.env
    p.exit(0)
    assert stats.runs == ["command"] and stats.failures == [] and hooks.running() == 0
    assert not reactor.getDelayedCalls()  # the timeout was cancelled


def test_setsid_prefix() -> None:
    reactor = Reactor()
    hooks = Hooks(reactor, [COMMAND], setsid="/usr/bin/setsid")
    hooks.emit(upload())
    reactor.advance(0)
    assert reactor.processes[0].argv == ["/usr/bin/setsid", "/usr/local/bin/ingest", "-v"]


def test_failed_exit_is_counted() -> None:
    hooks, reactor, stats = make([COMMAND])
    hooks.emit(upload())
    reactor.advance(0)
    reactor.processes[0].proto.errReceived(b"boom\n")
    reactor.processes[0].exit(3)
    assert stats.failures == [("command", "exit")]


def test_at_most_n_at_once_then_queue_then_overflow() -> None:
    hooks, reactor, stats = make([COMMAND], HookLimits(max_parallel=2, queue_size=2))
    for _ in range(6):
        hooks.emit(upload())
        reactor.advance(0)
    assert len(reactor.processes) == 2 and hooks.queued() == 2
    assert stats.failures == [("command", "overflow")] * 2 and hooks.overflows == 2
    reactor.processes[0].exit(0)
    assert len(reactor.processes) == 3 and hooks.queued() == 1
    for p in list(reactor.processes):
        p.exit(0)
    assert len(reactor.processes) == 4
    reactor.processes[3].exit(0)
    assert hooks.running() == 0 and hooks.queued() == 0 and len(stats.runs) == 4


def test_timeout_kills_and_frees_the_slot() -> None:
    hook = HookConfig(on=("upload",), command=("/bin/sleep",), timeout=5)
    hooks, reactor, stats = make([hook], HookLimits(max_parallel=1))
    hooks.emit(upload())
    reactor.advance(0)
    hooks.emit(upload())
    reactor.advance(0)
    reactor.advance(4.9)
    assert reactor.processes[0].signals == [] and len(reactor.processes) == 1
    reactor.advance(0.2)
    assert reactor.processes[0].signals == ["KILL"]
    assert stats.failures == [("command", "timeout")] and len(reactor.processes) == 2


def test_spawn_failure_is_counted() -> None:
    class Broken(Reactor):
        def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any) -> Any:
            raise OSError(2, "No such file or directory")

    reactor, stats = Broken(), Stats()
    hooks = Hooks(reactor, [COMMAND], stats=stats, setsid=None)
    hooks.emit(upload())
    reactor.advance(0)
    hooks.emit(upload())
    reactor.advance(0)
    assert stats.failures == [("command", "spawn")] * 2 and hooks.running() == 0


class Posts:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, float, defer.Deferred[int]]] = []

    def __call__(self, url: str, body: bytes, timeout: float) -> defer.Deferred[int]:
        d: defer.Deferred[int] = defer.Deferred()
        self.calls.append((url, body, timeout, d))
        return d


HTTP = HookConfig(on=("upload",), url="http://127.0.0.1:1/hook", timeout=7)


def test_http_posts_json() -> None:
    posts = Posts()
    hooks, reactor, stats = make([HTTP], post=posts)
    hooks.emit(upload())
    reactor.advance(0)
    ((url, body, timeout, d),) = posts.calls
    assert url == HTTP.url and timeout == 7 and json.loads(body)["path"] == "/incoming/a"
    idle = hooks.when_idle()
    assert not idle.called
    d.callback(204)
    assert idle.called and stats.failures == [] and stats.runs == ["http"]


def test_http_retries_three_times_with_backoff_then_gives_up() -> None:
    posts = Posts()
    hooks, reactor, stats = make([HTTP], HookLimits(max_parallel=1), post=posts)
    hooks.emit(upload())
    reactor.advance(0)
    posts.calls[0][3].callback(500)
    assert hooks.running() == 0  # the slot is free while waiting to retry
    reactor.advance(0.9)
    assert len(posts.calls) == 1
    reactor.advance(0.1)
    assert len(posts.calls) == 2
    posts.calls[1][3].errback(defer.TimeoutError())
    reactor.advance(1.9)
    assert len(posts.calls) == 2
    reactor.advance(0.1)
    posts.calls[2][3].errback(ConnectionRefusedError())
    idle = hooks.when_idle()
    reactor.advance(4)
    assert len(posts.calls) == 4 and not idle.called
    posts.calls[3][3].callback(503)
    reactor.advance(100)
    assert len(posts.calls) == 4 and idle.called
    assert stats.failures == [("http", "http")] and stats.runs == ["http"] * 4


def test_http_retry_succeeds() -> None:
    posts = Posts()
    hooks, reactor, stats = make([HTTP], post=posts)
    hooks.emit(upload())
    reactor.advance(0)
    posts.calls[0][3].errback(ConnectionRefusedError())
    reactor.advance(1)
    posts.calls[1][3].callback(200)
    assert stats.failures == [] and not reactor.getDelayedCalls()


def test_stop_drops_retries_and_queue() -> None:
    posts = Posts()
    hooks, reactor, _ = make([HTTP], HookLimits(max_parallel=1), post=posts)
    hooks.emit(upload())
    reactor.advance(0)
    hooks.emit(upload())
    reactor.advance(0)
    posts.calls[0][3].callback(500)
    hooks.stop()
    reactor.advance(10)
    assert len(posts.calls) == 2 and not reactor.getDelayedCalls()


@pytest.mark.parametrize("op", ["download", "login"])
def test_events_not_in_on_do_not_run(op: str) -> None:
    hooks, reactor, _ = make([COMMAND])
    hooks.emit(Event(op, WHO, 1.0, "/incoming/a" if op != "login" else ""))
    reactor.advance(0)
    assert reactor.processes == []
