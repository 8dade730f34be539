"""End-to-end: atomic uploads with OpenSSH's sftp and scp; a killed upload leaves the old file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import Env, wait_for

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def _temps(root: Path) -> list[str]:
    return [
        str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith(".sftpd-upload.")
    ]


def _sftp_cmd(env: Env, *extra: str) -> list[str]:
    return ["sftp", *env.ssh_opts(), *extra, "-b", "-", "alice@127.0.0.1"]


def test_killed_put_leaves_old_content_and_no_temporary(make_server: object) -> None:
    env: Env = make_server()  # type: ignore[operator]
    root = env.alice.root
    old = b"old content\n" * 1000
    (root / "big.bin").write_bytes(old)
    local = env.tmp / "big-local.bin"
    local.write_bytes(os.urandom(64 * MiB))
    # -l 4096 Kbit/s: 64 MiB would take two minutes; the upload is killed midway.
    proc = subprocess.Popen(
        _sftp_cmd(env, "-l", "4096"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=env.tmp,
    )
    assert proc.stdin is not None
    proc.stdin.write(f"put {local} /big.bin\n".encode())
    proc.stdin.flush()
    try:

        def growing() -> bool:
            temps = [root / t for t in _temps(root)]
            return any(t.exists() and t.stat().st_size > MiB for t in temps)

        seen = 0
        deadline = time.monotonic() + 30
        while not growing() and time.monotonic() < deadline:
            assert (root / "big.bin").read_bytes() == old  # a reader never sees a partial file
            seen += 1
            time.sleep(0.05)
        assert growing(), env.server.log_text()[-2000:]
        assert (root / "big.bin").read_bytes() == old
        # The temporary is in the same directory and not listed.
        listing = env.sftp("ls -la /\n").stdout
        assert ".sftpd-upload" not in listing
        assert "big.bin" in listing
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # ssh outlives a killed sftp until it reads EOF on its pipe; a loaded machine is slow
    assert wait_for(lambda: not _temps(root), timeout=45), (
        _temps(root),
        env.server.log_text()[-1500:],
    )
    assert (root / "big.bin").read_bytes() == old


def test_clean_put_replaces_and_keeps_client_mode(make_server: object) -> None:
    env: Env = make_server()  # type: ignore[operator]
    root = env.alice.root
    (root / "f.txt").write_bytes(b"old")
    local = env.tmp / "f-local.txt"
    local.write_bytes(b"new content")
    local.chmod(0o640)
    env.sftp(f"put -p {local} /f.txt\n")
    assert (root / "f.txt").read_bytes() == b"new content"
    assert (root / "f.txt").stat().st_mode & 0o777 == 0o640
    assert not _temps(root)


def test_reput_resumes_in_place(make_server: object) -> None:
    env: Env = make_server()  # type: ignore[operator]
    root = env.alice.root
    data = os.urandom(3 * MiB)
    (root / "part.bin").write_bytes(data[:MiB])
    ino = (root / "part.bin").stat().st_ino
    local = env.tmp / "part-local.bin"
    local.write_bytes(data)
    env.sftp(f"reput {local} /part.bin\n")
    assert (root / "part.bin").read_bytes() == data
    assert (root / "part.bin").stat().st_ino == ino  # written in place, not replaced
    assert not _temps(root)


def test_client_cannot_use_the_temporary_names(make_server: object) -> None:
    env: Env = make_server()  # type: ignore[operator]
    root = env.alice.root
    local = env.tmp / "x.txt"
    local.write_bytes(b"x")
    res = env.sftp(f"put {local} /.sftpd-upload.1.abc.tmp\n", check=False)
    assert res.returncode != 0
    res = env.sftp("mkdir /.sftpd-upload.dir\n", check=False)
    assert res.returncode != 0
    (root / "a.txt").write_bytes(b"a")
    res = env.sftp("rename /a.txt /.sftpd-upload.2.abc.tmp\n", check=False)
    assert res.returncode != 0
    assert sorted(p.name for p in root.iterdir()) == ["a.txt"]


def test_scp_upload_is_atomic_and_direct_mode_writes_in_place(make_server: object) -> None:
    env: Env = make_server()  # type: ignore[operator]
    root = env.alice.root
    (root / "s.txt").write_bytes(b"old")
    ino = (root / "s.txt").stat().st_ino
    local = env.tmp / "s-local.txt"
    local.write_bytes(b"scp new")
    res = subprocess.run(
        ["scp", "-O", *env.ssh_opts(), str(local), "alice@127.0.0.1:/s.txt"],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert (root / "s.txt").read_bytes() == b"scp new"
    assert (root / "s.txt").stat().st_ino != ino  # a new file renamed over the old one
    assert not _temps(root)

    direct: Env = make_server(alice_extra='upload_mode = "direct"')  # type: ignore[operator]
    ino = (root / "s.txt").stat().st_ino
    direct.sftp(f"put {local} /s.txt\n")
    assert (root / "s.txt").stat().st_ino == ino


def test_stale_temporaries_are_cleaned_at_first_login(make_server: object) -> None:
    env: Env = make_server()  # type: ignore[operator]
    root = env.alice.root
    (root / "sub").mkdir(parents=True, exist_ok=True)
    # A dead process's temporary (pid 0 is never a user process; 2**22+1 is past pid_max).
    stale = root / "sub" / f".sftpd-upload.{(1 << 22) + 1}.0123456789abcdef.tmp"
    stale.write_bytes(b"left by a crash")
    env.sftp("ls /\n")
    assert wait_for(lambda: not stale.exists(), timeout=10)


def test_killed_scp_leaves_old_content_and_no_temporary(make_server: object) -> None:
    env: Env = make_server()  # type: ignore[operator]
    root = env.alice.root
    (root / "s.bin").write_bytes(b"old scp\n")
    local = env.tmp / "s-big.bin"
    local.write_bytes(os.urandom(16 * MiB))
    proc = subprocess.Popen(
        ["scp", "-O", "-l", "4096", *env.ssh_opts(), str(local), "alice@127.0.0.1:/s.bin"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def growing() -> bool:
            temps = [root / t for t in _temps(root)]
            return any(t.exists() and t.stat().st_size > MiB for t in temps)

        assert wait_for(growing, timeout=30), env.server.log_text()[-2000:]
        assert (root / "s.bin").read_bytes() == b"old scp\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # ssh outlives a killed sftp until it reads EOF on its pipe; a loaded machine is slow
    assert wait_for(lambda: not _temps(root), timeout=45), (
        _temps(root),
        env.server.log_text()[-1500:],
    )
    assert (root / "s.bin").read_bytes() == b"old scp\n"
