"""End-to-end: quotas and max_upload_size with paramiko, OpenSSH sftp, scp and rsync."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import Env, have

pytestmark = pytest.mark.e2e
paramiko = pytest.importorskip("paramiko")

MB = 1000 * 1000


def _client(env: Env) -> tuple[Any, Any]:
    transport = paramiko.Transport(("127.0.0.1", env.port))
    transport.connect(
        username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(str(env.key_path))
    )
    return transport, paramiko.SFTPClient.from_transport(transport)


def _free(sftp: Any) -> tuple[int, int]:
    """(total, free) bytes from statvfs@openssh.com."""
    msg = sftp._request(paramiko.sftp.CMD_EXTENDED, "statvfs@openssh.com", "/")[1]
    _bsize, frsize, blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
    return blocks * frsize, bavail * frsize


def test_quota_df_and_the_write_that_crosses_it(make_server: Any) -> None:
    env: Env = make_server(alice_extra=f"quota_size = {10 * MB}")
    root = env.alice.root
    (root / "existing.bin").write_bytes(b"e" * (4 * MB))  # before the first login: scanned
    transport, sftp = _client(env)
    try:
        total, free = _free(sftp)
        assert total == 10 * MB - (10 * MB) % 4096 or total // 4096 == 10 * MB // 4096
        assert abs(free - 6 * MB) < 8192
        with sftp.open("/a.bin", "wb") as f:
            f.write(b"a" * (5 * MB))
        with pytest.raises(OSError) as info:
            with sftp.open("/b.bin", "wb") as f:
                f.set_pipelined(False)
                for _ in range(4):
                    f.write(b"b" * (MB // 2))
        assert "quota exceeded: 9.0 MB of 10.0 MB used" in str(info.value) or (
            "quota exceeded:" in str(info.value) and "of 10.0 MB used" in str(info.value)
        ), str(info.value)
        # Atomic mode: the file that failed is gone; usage is what is on disk.
        assert not (root / "b.bin").exists()
        assert [p for p in root.iterdir() if p.name.startswith(".sftpd-upload.")] == []
        _, free = _free(sftp)
        assert abs(free - 1 * MB) < 8192
        # A remove gives the space back; a rename over a file frees the replaced one.
        sftp.remove("/existing.bin")
        assert abs(_free(sftp)[1] - 5 * MB) < 8192
        with sftp.open("/c.bin", "wb") as f:
            f.write(b"c" * MB)
        sftp.posix_rename("/c.bin", "/a.bin")  # a.bin's 5 MB are freed
        assert abs(_free(sftp)[1] - 9 * MB) < 8192
        assert (root / "a.bin").stat().st_size == MB
    finally:
        transport.close()


def test_usage_is_shared_by_parallel_sessions(make_server: Any) -> None:
    env: Env = make_server(alice_extra=f"quota_size = {3 * MB}")
    t1, s1 = _client(env)
    t2, s2 = _client(env)
    try:
        f1 = s1.open("/one.bin", "wb")
        f2 = s2.open("/two.bin", "wb")
        f1.set_pipelined(False)
        f2.set_pipelined(False)
        f1.write(b"1" * (2 * MB))
        with pytest.raises(OSError, match="quota exceeded"):
            f2.write(b"2" * (2 * MB))
        f1.close()
        f2.close()  # the failed upload does not land (atomic mode)
        assert abs(_free(s2)[1] - 1 * MB) < 8192
    finally:
        t1.close()
        t2.close()
    assert (env.alice.root / "one.bin").stat().st_size == 2 * MB
    assert not (env.alice.root / "two.bin").exists()


def test_openssh_df_and_put_failure(make_server: Any) -> None:
    env: Env = make_server(alice_extra=f"quota_size = {2 * MB}")
    local = env.tmp / "three.bin"
    local.write_bytes(os.urandom(3 * MB))
    df = env.sftp("df -h /\n").stdout
    assert "1.9MiB" in df or "2.0MiB" in df or "1.9M" in df, df
    res = env.sftp(f"put {local} /three.bin\n", check=False)
    assert res.returncode != 0, res.stderr
    assert not (env.alice.root / "three.bin").exists()


def test_quota_files(make_server: Any) -> None:
    env: Env = make_server(alice_extra='quota_files = 2\nupload_mode = "direct"')
    local = env.tmp / "small.txt"
    local.write_bytes(b"x")
    env.sftp(f"put {local} /1.txt\nput {local} /2.txt\n")
    res = env.sftp(f"put {local} /3.txt\n", check=False)
    assert res.returncode != 0  # OpenSSH's sftp prints "Failure", never the server's text
    transport, sftp = _client(env)
    try:
        with pytest.raises(OSError, match="quota exceeded: 2 of 2 files used"):
            sftp.open("/3.txt", "wb").close()
    finally:
        transport.close()
    env.sftp(f"put {local} /2.txt\n")  # overwriting an existing file is no new file
    assert sorted(p.name for p in env.alice.root.iterdir()) == ["1.txt", "2.txt"]


def _scp(env: Env, local: Path, remote: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scp", "-O", *env.ssh_opts(), str(local), f"alice@127.0.0.1:{remote}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_max_upload_size_sftp_scp_rsync(make_server: Any) -> None:
    env: Env = make_server(alice_extra=f"max_upload_size = {MB}")
    root = env.alice.root
    big = env.tmp / "big.bin"
    big.write_bytes(os.urandom(2 * MB))
    ok = env.tmp / "ok.bin"
    ok.write_bytes(os.urandom(MB // 2))
    res = env.sftp(f"put {big} /big.bin\n", check=False)
    assert res.returncode != 0  # OpenSSH's sftp prints "Failure", never the server's text
    assert not (root / "big.bin").exists()
    transport, sftp = _client(env)
    try:
        with pytest.raises(OSError, match=r"file too large: max_upload_size is 1\.0 MB"):
            with sftp.open("/big2.bin", "wb") as f:
                f.set_pipelined(False)
                f.write(big.read_bytes())
    finally:
        transport.close()
    assert not (root / "big2.bin").exists()
    env.sftp(f"put {ok} /ok.bin\n")
    assert (root / "ok.bin").read_bytes() == ok.read_bytes()
    res = _scp(env, big, "/big-scp.bin")
    assert res.returncode != 0
    assert "file too large: max_upload_size is 1.0 MB" in res.stderr, res.stderr
    assert not (root / "big-scp.bin").exists()
    if have("rsync") and have("bwrap"):
        rsh = "ssh " + " ".join(env.ssh_opts(port_flag="-p"))
        res = subprocess.run(
            ["rsync", "-e", rsh, str(big), str(ok), "alice@127.0.0.1:/r/"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (root / "r" / "ok.bin").exists(), res.stderr
        assert not (root / "r" / "big.bin").exists()


def test_rsync_upload_refused_with_a_quota(make_server: Any) -> None:
    if not (have("rsync") and have("bwrap")):
        pytest.skip("rsync or bwrap missing")
    env: Env = make_server(alice_extra=f"quota_size = {MB}")
    local = env.tmp / "r.txt"
    local.write_bytes(b"r")
    rsh = "ssh " + " ".join(env.ssh_opts(port_flag="-p"))
    res = subprocess.run(
        ["rsync", "-e", rsh, str(local), "alice@127.0.0.1:/r.txt"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert "quota_size" in res.stderr, res.stderr
    assert not (env.alice.root / "r.txt").exists()
