"""End to end: with workers = 2 the supervisor serves [metrics] listen, the workers summed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import Env, toml_str, wait_for

pytestmark = pytest.mark.e2e

SESSIONS = 16
SIZE = 1500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    res = subprocess.run(["curl", "-sf", url], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(res.stdout)
        for s in family.samples
    }


def _status(url: str) -> str:
    res = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return res.stdout


def _expected(n: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    ops = "sftpd_operations_total"
    return {
        ("sftpd_connections_total", ()): n,
        ("sftpd_sessions_total", (("protocol", "sftp"),)): n,
        ("sftpd_authentications_total", (("method", "publickey"), ("result", "ok"))): n,
        ("sftpd_received_bytes_total", (("protocol", "sftp"),)): n * SIZE,
        ("sftpd_sent_bytes_total", (("protocol", "sftp"),)): n * SIZE,
        (ops, (("operation", "upload"), ("outcome", "ok"))): n,
        (ops, (("operation", "download"), ("outcome", "ok"))): n,
    }


def _matches(url: str, want: dict[Any, float]) -> bool:
    got = _samples(url)
    return all(got.get(k) == v for k, v in want.items())


def test_workers_figures_are_summed_and_healthz_turns_503_while_draining(
    make_server: Any, tmp_path: Path
) -> None:
    paramiko = pytest.importorskip("paramiko")
    port = _free_port()
    tail = "\n".join(
        [
            "[audit]",
            f"file = {toml_str(str(tmp_path / 'audit.jsonl'))}",
            "[metrics]",
            f'listen = "127.0.0.1:{port}"',
        ]
    )
    env: Env = make_server(server_extra="workers = 2\nshutdown_grace = 60", tail=tail)
    env.alice.root.mkdir(exist_ok=True)
    sup = env.server.proc.pid
    assert wait_for(lambda: len(_children(sup)) == 2, timeout=20)
    workers = set(_children(sup))
    url = f"http://127.0.0.1:{port}/metrics"
    assert wait_for(lambda: "metrics on http://127.0.0.1:" in env.server.log_text())
    (tmp_path / "up.bin").write_bytes(os.urandom(SIZE))

    def session(i: int) -> None:
        env.sftp(f"put up.bin /f{i}.bin\nget /f{i}.bin back{i}.bin\n")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(session, range(SESSIONS)))
    for i in range(SESSIONS):
        assert (env.alice.root / f"f{i}.bin").read_bytes() == (tmp_path / "up.bin").read_bytes()
    log = env.server.log_text()
    served = re.findall(r"connection open: conn=\S+ peer=\S+ pid=(\d+)", log)
    # SO_REUSEPORT spreads by 4-tuple hash: 16 connections all on one worker is ~3e-5
    assert {int(p) for p in served} == workers
    # each worker writes its snapshot once a second: the sum catches up
    want = _expected(SESSIONS)
    assert wait_for(lambda: _matches(url, want), timeout=15), _samples(url)
    assert _status(url.replace("metrics", "healthz")) == "200"

    # a worker that dies keeps its counters in the sum; its replacement adds to them
    gone = min(workers)
    os.kill(gone, signal.SIGKILL)
    assert wait_for(lambda: gone not in _children(sup) and len(_children(sup)) == 2, 20)
    assert _matches(url, want)
    assert wait_for(lambda: _samples(url).get(("sftpd_connections_open", ())) == 0)

    # SIGHUP is passed on: every worker reloads (and the supervisor keeps serving)
    (new,) = set(_children(sup)) - workers
    workers = set(_children(sup))
    assert wait_for(lambda: f"worker ready: pid={new}" in env.server.log_text(), timeout=20)
    env.server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: env.server.log_text().count("SIGHUP received; reloading") == 2)
    assert set(_children(sup)) == workers and _status(url.replace("metrics", "healthz")) == "200"

    # SIGTERM with a session open: the workers drain, /healthz answers 503 meanwhile
    t = paramiko.Transport(("127.0.0.1", env.port))
    t.start_client(timeout=30)
    t.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(str(env.key_path)))
    sftp = paramiko.SFTPClient.from_transport(t)
    assert sftp is not None and sftp.listdir("/")
    env.server.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: _status(url.replace("metrics", "healthz")) == "503", timeout=15)
    assert env.server.proc.poll() is None  # still draining: the session is open
    assert sftp.stat("/f0.bin").st_size == SIZE  # and it still works
    assert wait_for(lambda: _samples(url).get(("sftpd_connections_open", ())) == 1)
    # a second SIGTERM stops at once (shutdown_grace is 60 s): the session is closed
    env.server.proc.send_signal(signal.SIGTERM)
    assert env.server.proc.wait(30) == 0
    assert wait_for(lambda: not t.is_active(), timeout=10)
    t.close()


def test_a_metrics_port_taken_is_an_error_before_listening(
    tmp_path: Path, host_keys_dir: Path
) -> None:
    from tests.support import User, write_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "sftpd.toml"
        user = User("alice", tmp_path / "root", password="pw")
        write_config(
            cfg, [user], host_keys_dir, "workers = 2", f'[metrics]\nlisten = "127.0.0.1:{port}"'
        )
        res = subprocess.run(
            [sys.executable, "-m", "sftpd", "serve", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 1
    assert f"sftpd: [metrics] listen: Couldn't listen on 127.0.0.1:{port}" in res.stderr
    assert "listening on" not in res.stderr + res.stdout
