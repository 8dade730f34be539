"""Several full server processes sharing the listening sockets, so sessions use every core."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from sftpd.config.model import Config
from sftpd.log import announce, announce_listening
from sftpd.runtime.listening import ListenError, bind_all
from sftpd.runtime.notify import NOTIFY_ENV, sd_notify

WORKER_FDS_ENV = "SFTPD_WORKER_FDS"
# A private directory (mode 0700) the supervisor makes for what its workers share (the
# TOTP steps accepted, auth/totpstate.py); removed when the supervisor exits.
RUNTIME_DIR_ENV = "SFTPD_RUNTIME_DIR"


def bind_sockets(listen: Sequence[tuple[str, int]], copies: int) -> list[list[socket.socket]]:
    """For each worker, one SO_REUSEPORT socket per address, all bound to the same ports
    (port 0 picks a free port for the first copy), so the kernel spreads connections."""
    return bind_all(listen, copies)


def encode_fds(socks: Sequence[socket.socket]) -> str:
    """The environment value a worker reads: 'fd:family,...'."""
    return ",".join(f"{s.fileno()}:{int(s.family)}" for s in socks)


def decode_fds(value: str) -> list[tuple[int, socket.AddressFamily]]:
    """Parse WORKER_FDS_ENV."""
    out: list[tuple[int, socket.AddressFamily]] = []
    for item in value.split(","):
        fd, fam = item.split(":")
        out.append((int(fd), socket.AddressFamily(int(fam))))
    return out


def _ignore_hangup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def snapshot_dir(runtime_dir: str) -> Path:
    """Where each worker writes its metrics snapshot for the supervisor to sum."""
    return Path(runtime_dir) / "metrics"


class MetricsEndpoint(Protocol):
    """What the supervisor serves on ``[metrics] listen`` (the events layer builds it)."""

    def start(self) -> None: ...

    def set_draining(self) -> None: ...

    def stop(self) -> Any: ...


# (reactor, the directory the workers' snapshots are in) -> the endpoint
MakeEndpoint = Callable[[Any, Path], MetricsEndpoint]


def supervise(
    config: Config,
    *,
    log_format: str | None = None,
    sockets: list[list[socket.socket]] | None = None,
    reactor: Any = None,
    metrics: MakeEndpoint | None = None,
) -> int:
    """Start ``config.server.workers`` worker processes on shared sockets (``sockets``: one
    list per worker, bound by the caller; else bound here); restart any that die; on
    SIGTERM closes the listening sockets and lets every worker drain (a second SIGTERM or a
    SIGINT is passed on: they stop at once); return 0 when all have exited. SIGHUP is
    passed on to every worker. ``metrics``: builds what serves ``[metrics] listen`` here
    (the workers' figures summed; /healthz 503 from the first SIGTERM), run on
    ``reactor`` (the default reactor when None)."""
    if config.source is None:
        print("sftpd: workers > 1 needs a configuration file", file=sys.stderr)
        return 2
    if sockets is None:
        try:
            sockets = bind_sockets(config.server.listen, config.server.workers)
        except ListenError as exc:
            print(f"sftpd: {exc}", file=sys.stderr)
            return 1
    if reactor is None:
        from sftpd.runtime.reactor import default_reactor

        reactor = default_reactor()
    runtime_dir = tempfile.mkdtemp(prefix="sftpd-run-")  # private: mode 0700
    try:
        snapshot_dir(runtime_dir).mkdir(mode=0o700)
        endpoint = metrics(reactor, snapshot_dir(runtime_dir)) if metrics is not None else None
        return Supervisor(config, log_format, sockets, runtime_dir, reactor).run(endpoint)
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


class Supervisor:
    """The worker processes of one server, watched from a reactor (signals and child exits
    arrive through it, so a metrics endpoint can run beside them)."""

    def __init__(
        self,
        config: Config,
        log_format: str | None,
        sockets: list[list[socket.socket]],
        runtime_dir: str,
        reactor: Any,
    ) -> None:
        self._config = config
        self._format = log_format or config.server.log_format
        self._sockets = sockets
        self._runtime_dir = runtime_dir
        self._reactor = reactor
        self._argv = [sys.executable, "-m", "sftpd", "serve", "--config", str(config.source)]
        if log_format:
            self._argv += ["--log-format", log_format]
        # Only pids are signalled (os.kill) and reaped (waitpid(-1)): Popen.poll and
        # send_signal would reap a child behind our back.
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self._slots: dict[int, int] = {}  # pid -> index of its sockets
        self.stopping = False
        self._stopped = False
        self._endpoint: MetricsEndpoint | None = None

    def run(self, endpoint: MetricsEndpoint | None = None) -> int:
        r = self._reactor
        self._endpoint = endpoint
        # SIGHUP before "listening on", as in sftpd.assembly; the reactor installs its own
        # SIGINT/SIGTERM handlers as it starts: ours replace them once it runs.
        signal.signal(signal.SIGHUP, self._signal(self.hangup))
        if endpoint is not None:
            try:
                endpoint.start()
            except Exception as exc:  # CannotListenError: the port is taken, say
                print(f"sftpd: [metrics] listen: {exc}", file=sys.stderr, flush=True)
                self._close_sockets()
                return 1
            r.addSystemEventTrigger("before", "shutdown", endpoint.stop)
        for s in self._sockets[0]:
            host, port = s.getsockname()[:2]
            announce_listening(host, port, self._format)
        r.callWhenRunning(self._started)
        r.addSystemEventTrigger("before", "shutdown", self._reactor_stopping)
        r.run()
        self._close_sockets()
        return 0

    def _signal(self, then: Callable[[int], None]) -> Callable[[int, Any], None]:
        def handler(signum: int, frame: Any) -> None:
            self._reactor.callFromThread(then, signum)

        return handler

    def _started(self) -> None:
        signal.signal(signal.SIGTERM, self._signal(self.stop))
        signal.signal(signal.SIGINT, self._signal(self.stop))
        signal.signal(signal.SIGCHLD, self._signal(lambda _: self.reap()))
        for slot in range(self._config.server.workers):
            self.spawn(slot)
        sd_notify("READY=1")  # the sockets listen: connections queue until a worker accepts

    def spawn(self, slot: int) -> None:
        if self.stopping:
            return
        socks = self._sockets[slot]
        env = dict(
            os.environ, **{WORKER_FDS_ENV: encode_fds(socks), RUNTIME_DIR_ENV: self._runtime_dir}
        )
        env.pop(NOTIFY_ENV, None)  # only the supervisor tells systemd
        # A worker ignores SIGHUP (inherited through exec) until its reload handler is set:
        # one passed on while it starts must not kill it (it reads the file as it starts).
        p = subprocess.Popen(
            self._argv,
            env=env,
            pass_fds=[s.fileno() for s in socks],
            stdin=subprocess.DEVNULL,
            preexec_fn=_ignore_hangup,
        )
        self.children[p.pid] = p
        self._slots[p.pid] = slot
        self.reap()  # it may have gone before the handler saw it

    def _kill(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)  # reaped only by reap(): the pid is ours until then
            except ProcessLookupError:
                pass

    def hangup(self, signum: int) -> None:
        # Each worker reloads the file itself (and logs what it refused or applied).
        print("sftpd: SIGHUP received; passing it to the workers", file=sys.stderr, flush=True)
        self._kill(signal.SIGHUP)

    def stop(self, signum: int) -> None:
        # Each worker drains on SIGTERM and stops at once on a second one or on SIGINT
        # (sftpd.runtime.drain); the supervisor's copies of the listening sockets close
        # too, else the kernel would keep queueing connections nobody accepts.
        if not self.stopping:
            sd_notify("STOPPING=1")
            if self._endpoint is not None:
                self._endpoint.set_draining()  # /healthz: 503 while the workers drain
        self.stopping = True
        self._close_sockets()
        self._kill(signum)
        self._done()

    def _reactor_stopping(self) -> None:
        """The reactor stops without our ``stop``: a SIGTERM or SIGINT came while it was
        starting, before ``_started`` replaced its handlers. Pass it on, so no worker keeps
        serving after its supervisor has gone (each drains as on our own SIGTERM)."""
        if not self.stopping:
            self.stopping = True
            self._close_sockets()
            self._kill(signal.SIGTERM)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self.children.pop(pid, None)
            slot = self._slots.pop(pid, 0)
            if child is None:
                continue
            code = child.returncode = os.waitstatus_to_exitcode(status)
            if not self.stopping:
                announce(
                    f"sftpd: worker {pid} exited with {code}; restarting",
                    self._format,
                    level="warn",
                    event="worker_exit",
                    pid=pid,
                    status=code,
                )
                self._reactor.callLater(1.0, self.spawn, slot)
        self._done()

    def _done(self) -> None:
        if self.stopping and not self.children and not self._stopped:
            self._stopped = True
            self._reactor.stop()

    def _close_sockets(self) -> None:
        for socks in self._sockets:
            for s in socks:
                s.close()
