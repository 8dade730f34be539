"""Draining restarts against a real sftpd: SIGTERM lets a running download finish, refuses
new connections, exits 0; a second SIGTERM closes at once; workers drain too."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support import Env, wait_for

paramiko = pytest.importorskip("paramiko")
pytestmark = pytest.mark.e2e

SIZE = 64 << 20


def _sftp(env: Env) -> tuple[Any, Any]:
    t = paramiko.Transport(("127.0.0.1", env.port))
    t.start_client(timeout=30)
    t.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(str(env.key_path)))
    sftp = paramiko.SFTPClient.from_transport(t)
    assert sftp is not None
    return t, sftp


def _big_file(root: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(root / "big.bin", "wb") as f:
        for i in range(SIZE >> 20):
            f.write(block[i:] + block[:i])
    h = hashlib.sha256()
    with open(root / "big.bin", "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download(sftp: Any, started: threading.Event, out: dict[str, Any]) -> None:
    h = hashlib.sha256()
    size = 0
    try:
        with sftp.open("/big.bin", "rb") as f:
            f.prefetch()
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
                started.set()
        out["sha"], out["size"] = h.hexdigest(), size
    except Exception as e:  # reported by the test
        out["error"] = repr(e)
    finally:
        started.set()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # With workers, each has its own SO_REUSEPORT socket: a SYN queued on one that
        # closes is reset. The listener is going; ask again until it is gone.
        return False
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_a_64_mib_download_finish(make_server: Any, workers: int) -> None:
    env = make_server(server_extra=f"shutdown_grace = 60\nworkers = {workers}")
    want = _big_file(env.alice.root)
    t, sftp = _sftp(env)
    started = threading.Event()
    out: dict[str, Any] = {}
    th = threading.Thread(target=_download, args=(sftp, started, out))
    th.start()
    assert started.wait(60)
    env.server.proc.send_signal(signal.SIGTERM)
    if workers == 1:  # the download is the one connection open (probe only after this)
        draining = "draining: no new connections; 1 open"
        assert wait_for(lambda: draining in env.server.log_text(), timeout=20)
    assert wait_for(lambda: _refused(env.port), timeout=20)  # no longer accepting
    th.join(120)
    assert out.get("sha") == want and out.get("size") == SIZE, out
    t.close()
    assert env.server.proc.wait(30) == 0


def test_second_sigterm_closes_at_once(make_server: Any) -> None:
    env = make_server(server_extra="shutdown_grace = 600")
    t, sftp = _sftp(env)
    sftp.listdir("/")
    env.server.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: "draining:" in env.server.log_text())
    assert t.is_active()  # the session goes on
    env.server.proc.send_signal(signal.SIGTERM)
    try:
        assert env.server.proc.wait(20) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("a second SIGTERM did not stop the server")
    assert wait_for(lambda: not t.is_active())
    t.close()


def test_grace_over_closes_the_rest_and_exits_0(make_server: Any) -> None:
    env = make_server(server_extra="shutdown_grace = 1")
    t, sftp = _sftp(env)
    sftp.listdir("/")
    env.server.proc.send_signal(signal.SIGTERM)
    assert env.server.proc.wait(30) == 0
    assert wait_for(lambda: "shutdown_grace over: closing 1 connections" in env.server.log_text())
    assert wait_for(lambda: not t.is_active())
    t.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sd_notify_ready_and_stopping(tmp_path: Path, host_keys_dir: Path, workers: int) -> None:
    import tempfile

    from tests.support import User, start_sftpd, write_config

    short = Path(tempfile.mkdtemp(prefix="n", dir="/tmp"))  # AF_UNIX paths: 107 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short / "notify"))
    sock.settimeout(30)
    cfg = tmp_path / "sftpd.toml"
    user = User("alice", tmp_path / "root", password="x")
    write_config(cfg, [user], host_keys_dir, f"workers = {workers}")
    proc = start_sftpd(cfg, env=dict(os.environ, NOTIFY_SOCKET=str(short / "notify")))
    try:
        assert sock.recv(64) == b"READY=1"
        proc.proc.send_signal(signal.SIGTERM)
        assert sock.recv(64) == b"STOPPING=1"
        assert proc.proc.wait(30) == 0
        sock.settimeout(1)
        with pytest.raises(TimeoutError):
            sock.recv(64)  # the workers said nothing: only the main process speaks
    finally:
        proc.stop()
        sock.close()
        (short / "notify").unlink()
        short.rmdir()
