"""Several full server processes sharing the listening sockets, so sessions use every core."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

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


def supervise(
    config: Config,
    *,
    log_format: str | None = None,
    sockets: list[list[socket.socket]] | None = None,
) -> int:
    """Start ``config.server.workers`` worker processes on shared sockets (``sockets``: one
    list per worker, bound by the caller; else bound here); restart any that die; on
    SIGTERM closes the listening sockets and lets every worker drain (a second SIGTERM or a
    SIGINT is passed on: they stop at once); return 0 when all have exited. SIGHUP is
    passed on to every worker."""
    if config.source is None:
        print("sftpd: workers > 1 needs a configuration file", file=sys.stderr)
        return 2
    if sockets is None:
        try:
            sockets = bind_sockets(config.server.listen, config.server.workers)
        except ListenError as exc:
            print(f"sftpd: {exc}", file=sys.stderr)
            return 1

    runtime_dir = tempfile.mkdtemp(prefix="sftpd-run-")  # private: mode 0700
    try:
        return _supervise(config, log_format, sockets, runtime_dir)
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


def _supervise(
    config: Config,
    log_format: str | None,
    sockets: list[list[socket.socket]],
    runtime_dir: str,
) -> int:
    children: dict[int, subprocess.Popen[bytes]] = {}

    def hangup(signum: int, frame: Any) -> None:
        # Each worker reloads the file itself (and logs what it refused or applied).
        print("sftpd: SIGHUP received; passing it to the workers", file=sys.stderr, flush=True)
        for child in list(children.values()):
            child.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, hangup)  # before "listening on", as in sftpd.assembly
    for s in sockets[0]:
        host, port = s.getsockname()[:2]
        announce_listening(host, port, log_format or config.server.log_format)
    argv = [sys.executable, "-m", "sftpd", "serve", "--config", str(config.source)]
    if log_format:
        argv += ["--log-format", log_format]
    slots: dict[int, int] = {}  # pid -> index of its sockets
    stopping = False

    def spawn(slot: int) -> None:
        socks = sockets[slot]
        env = dict(os.environ, **{WORKER_FDS_ENV: encode_fds(socks), RUNTIME_DIR_ENV: runtime_dir})
        env.pop(NOTIFY_ENV, None)  # only the supervisor tells systemd
        fds = [s.fileno() for s in socks]
        # A worker ignores SIGHUP (inherited through exec) until its reload handler is set:
        # one passed on while it starts must not kill it (it reads the file as it starts).
        p = subprocess.Popen(
            argv, env=env, pass_fds=fds, stdin=subprocess.DEVNULL, preexec_fn=_ignore_hangup
        )
        children[p.pid] = p
        slots[p.pid] = slot

    def stop(signum: int, frame: Any) -> None:
        # Each worker drains on SIGTERM and stops at once on a second one or on SIGINT
        # (sftpd.runtime.drain); the supervisor's copies of the listening sockets close
        # too, else the kernel would keep queueing connections nobody accepts.
        nonlocal stopping
        if not stopping:
            sd_notify("STOPPING=1")
        stopping = True
        for socks in sockets:
            for s in socks:
                s.close()
        for p in children.values():
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(config.server.workers):
        spawn(slot)
    sd_notify("READY=1")  # the sockets listen: connections queue until a worker accepts
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.pop(pid, None)
        slot = slots.pop(pid, 0)
        if not stopping:
            code = os.waitstatus_to_exitcode(status)
            announce(
                f"sftpd: worker {pid} exited with {code}; restarting",
                log_format or config.server.log_format,
                level="warn",
                event="worker_exit",
                pid=pid,
                status=code,
            )
            time.sleep(1.0)
            if not stopping:
                spawn(slot)
    for socks in sockets:
        for s in socks:
            s.close()
    return 0
