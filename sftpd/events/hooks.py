"""Hooks: a command (argv, the event as JSON on stdin and SFTPD_* variables) or an HTTP POST.

Hooks run outside the reactor's request path: ``emit`` only queues. At most
``max_parallel`` run at once; further runs wait in a queue of ``queue_size``; a run that
does not fit is dropped, logged and counted, and never blocks a client. A command that
runs longer than its ``timeout`` is killed (its whole process group when ``setsid`` is
available) and logged. An HTTP hook is POSTed with the timeout and retried 3 times with
back-off (1, 2, 4 s); a retry waits outside the parallel slots. Hooks are named
``hooks[N]`` in log lines, never by their argv or URL (either may hold a token).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol

from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.events.config import HookConfig, HookLimits
from sftpd.events.model import Event
from sftpd.events.names import EDGE_OPERATIONS
from sftpd.events.webhook import agent_post
from sftpd.log import clip

_log = Logger(namespace="sftpd.hooks")
RETRY_DELAYS = (1.0, 2.0, 4.0)
_STDERR_KEEP = 2000
_FIND = object()
_ALWAYS = ("login_failed", *EDGE_OPERATIONS)

# (url, body, timeout) -> Deferred firing with the HTTP status code.
Post = Callable[[str, bytes, float], "defer.Deferred[int]"]


class HookStats(Protocol):
    """Where hook runs and failures are counted (the metrics)."""

    def hook_run(self, kind: str) -> None: ...

    def hook_failed(self, kind: str, reason: str) -> None: ...


class _NoStats:
    def hook_run(self, kind: str) -> None:
        pass

    def hook_failed(self, kind: str, reason: str) -> None:
        pass


def matches(hook: HookConfig, event: Event) -> bool:
    """Whether ``event`` fires ``hook``: its operation is in ``on``, its outcome in
    ``outcomes`` (login_failed and the edge's ban and refused always match: being
    refused is what they report) and, when
    ``paths`` is set, its final path matches a glob (``*`` also matches ``/``)."""
    if event.op not in hook.on:
        return False
    if event.outcome not in hook.outcomes and event.op not in _ALWAYS:
        return False
    if hook.paths:
        path = event.final_path()
        return bool(path) and any(fnmatchcase(path, glob) for glob in hook.paths)
    return True


@dataclass
class _Job:
    index: int
    hook: HookConfig
    event: Event
    body: bytes
    attempt: int = 0


class _HookProcess(ProcessProtocol):
    """Feeds the event to the hook's stdin; keeps the end of its stderr."""

    def __init__(self, body: bytes, done: defer.Deferred[tuple[int | None, int | None, bytes]]):
        self._body = body
        self._done = done
        self.stderr = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._body)
        self.transport.closeStdin()

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-_STDERR_KEEP:]

    def processExited(self, reason: Failure) -> None:
        # Exited: done, even if a child it left behind still holds its stdout or stderr.
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        if self.transport is not None:
            self.transport.loseConnection()
        if not self._done.called:
            self._done.callback((code, sig, self.stderr))


class Hooks:
    """The ``[[hooks]]`` sink."""

    def __init__(
        self,
        reactor: Any,
        hooks: Sequence[HookConfig],
        limits: HookLimits | None = None,
        *,
        post: Post | None = None,
        stats: HookStats | None = None,
        base_env: dict[str, str] | None = None,
        setsid: Any = _FIND,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self._reactor = reactor
        self._hooks = tuple(hooks)
        self._limits = limits or HookLimits()
        self._post = post
        self._stats = stats or _NoStats()
        self._env = base_env if base_env is not None else {"PATH": "/usr/bin:/bin"}
        self._setsid: str | None = shutil.which("setsid") if setsid is _FIND else setsid
        self._delays = tuple(retry_delays)
        self._queue: deque[_Job] = deque()
        self._running = 0
        self._retrying: set[Any] = set()
        self._idle: list[defer.Deferred[None]] = []
        self._pump_call: Any = None
        self.overflows = 0

    # -- reactor thread, from the event hub

    def emit(self, event: Event) -> None:
        body = b""
        for index, hook in enumerate(self._hooks):
            if matches(hook, event):
                body = body or (event.to_json() + "\n").encode("ascii")
                self._submit(_Job(index, hook, event, body))

    def running(self) -> int:
        return self._running

    def queued(self) -> int:
        return len(self._queue)

    def when_idle(self) -> defer.Deferred[None]:
        """Fires when nothing runs, waits or is about to be retried (tests, shutdown)."""
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        self._check_idle()
        return d

    def stop(self) -> None:
        """Drop what waits (queued runs and retries); running commands finish or time out."""
        self._queue.clear()
        if self._pump_call is not None:
            self._pump_call.cancel()
            self._pump_call = None
        for call in list(self._retrying):
            call.cancel()
        self._retrying.clear()
        self._check_idle()

    # -- scheduling

    def _submit(self, job: _Job) -> None:
        # Queued and started on the next reactor turn, so the request that caused the
        # event gets its reply before any hook process is even spawned.
        free = max(0, self._limits.max_parallel - self._running)
        if len(self._queue) < self._limits.queue_size + free:
            self._queue.append(job)
            if self._pump_call is None:
                self._pump_call = self._reactor.callLater(0, self._pump)
        else:
            self.overflows += 1
            self._stats.hook_failed(_kind(job.hook), "overflow")
            if self.overflows == 1 or self.overflows % 1000 == 0:
                _log.warn(
                    "hooks[{index}] not run: queue full ({overflows} dropped so far)",
                    index=job.index,
                    overflows=self.overflows,
                )

    def _start(self, job: _Job) -> None:
        self._running += 1
        self._stats.hook_run(_kind(job.hook))
        d = self._run_command(job) if job.hook.command else self._run_http(job)
        d.addErrback(self._unexpected, job)
        d.addBoth(self._finished)

    def _pump(self) -> None:
        self._pump_call = None
        while self._queue and self._running < self._limits.max_parallel:
            self._start(self._queue.popleft())
        self._check_idle()

    def _finished(self, _: object) -> None:
        self._running -= 1
        self._pump()

    def _check_idle(self) -> None:
        if self._running or self._queue or self._retrying or self._pump_call:
            return
        waiting, self._idle = self._idle, []
        for d in waiting:
            d.callback(None)

    def _unexpected(self, failure: Failure, job: _Job) -> None:
        self._stats.hook_failed(_kind(job.hook), "error")
        _log.failure("hooks[{index}] failed unexpectedly", failure, index=job.index)

    # -- commands

    def _run_command(self, job: _Job) -> defer.Deferred[None]:
        done: defer.Deferred[tuple[int | None, int | None, bytes]] = defer.Deferred()
        proto = _HookProcess(job.body, done)
        argv = list(job.hook.command)
        if self._setsid:
            argv = [self._setsid, *argv]
        env = {**self._env, **job.event.environment()}
        try:
            transport = self._reactor.spawnProcess(proto, argv[0], argv, env=env)
        except OSError as e:
            self._stats.hook_failed("command", "spawn")
            _log.error("hooks[{index}] could not start: {error}", index=job.index, error=e.strerror)
            return defer.succeed(None)
        timed_out = []

        def kill() -> None:
            timed_out.append(True)
            _log.warn(
                "hooks[{index}] ran longer than {timeout}s: killed",
                index=job.index,
                timeout=job.hook.timeout,
            )
            self._kill(transport)

        timer = self._reactor.callLater(job.hook.timeout, kill)

        def ended(result: tuple[int | None, int | None, bytes]) -> None:
            code, sig, stderr = result
            if timer.active():
                timer.cancel()
            if timed_out:
                self._stats.hook_failed("command", "timeout")
            elif code != 0:
                self._stats.hook_failed("command", "exit")
                status = f"exit status {code}" if code is not None else f"signal {sig}"
                _log.warn(
                    "hooks[{index}] failed: {status}; stderr: {stderr}",
                    index=job.index,
                    status=status,
                    stderr=clip(stderr.strip()[-500:]),
                )

        return done.addCallback(ended)

    def _kill(self, transport: Any) -> None:
        pid = getattr(transport, "pid", None)
        if self._setsid and pid:
            try:  # setsid made the hook a process group leader: kill what it started too
                os.killpg(pid, signal.SIGKILL)
                return
            except OSError:
                pass
        try:
            transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    # -- HTTP

    def _run_http(self, job: _Job) -> defer.Deferred[None]:
        if self._post is None:
            self._post = agent_post(self._reactor)
        d = self._post(job.hook.url, job.body, job.hook.timeout)

        def answered(code: int) -> None:
            if not 200 <= code < 300:
                raise _HttpStatus(code)

        def failed(failure: Failure) -> None:
            value = failure.value
            if isinstance(value, _HttpStatus):
                why = f"HTTP status {value.code}"
            elif isinstance(value, defer.TimeoutError | defer.CancelledError):
                why = f"no answer within {job.hook.timeout}s"
            else:
                why = failure.getErrorMessage() or type(failure.value).__name__
            if job.attempt < len(self._delays):
                delay = self._delays[job.attempt]
                _log.info(
                    "hooks[{index}] POST failed ({why}); retry in {delay}s",
                    index=job.index,
                    why=clip(why, quote=False),
                    delay=delay,
                )
                retry = _Job(job.index, job.hook, job.event, job.body, job.attempt + 1)

                def again() -> None:
                    self._retrying.discard(call)
                    self._submit(retry)
                    self._check_idle()

                call = self._reactor.callLater(delay, again)
                self._retrying.add(call)
                return
            self._stats.hook_failed("http", "http")
            _log.warn(
                "hooks[{index}] POST failed {attempts} times, giving up: {why}",
                index=job.index,
                attempts=job.attempt + 1,
                why=clip(why, quote=False),
            )

        return d.addCallbacks(answered).addErrback(failed)


class _HttpStatus(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _kind(hook: HookConfig) -> str:
    return "command" if hook.command else "http"
