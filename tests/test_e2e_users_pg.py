"""Users in PostgreSQL shared by two sftpd processes; a database restart under a running server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgcluster import Cluster, start_cluster
from tests.support import Env, SftpdProcess, start_sftpd, wait_for, write_config
from tests.support import User as TomlUser

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


@pytest.fixture
def nodes(
    cluster: Cluster, tmp_path: Path, client_key: tuple[Path, str], host_keys_dir: Path
) -> Iterator[list[Env]]:
    """Two servers (each with its own file user) on one fresh database."""
    url = cluster.new_database()
    tail = f'[users_db]\nurl = "{url}"\ncache_seconds = 1\n'
    envs: list[Env] = []
    procs: list[SftpdProcess] = []
    try:
        for i in range(2):
            u = TomlUser(f"file{i}", tmp_path / f"file{i}", client_key[1])
            cfg = tmp_path / f"node{i}.toml"
            write_config(cfg, [u], host_keys_dir, tail=tail)
            proc = start_sftpd(cfg)
            procs.append(proc)
            envs.append(Env(proc, u, client_key[0], tmp_path))
        yield envs
    finally:
        for p in procs:
            p.stop()


def user_cmd(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sftpd", "user", *args, "--config", str(env.server.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def sftp(env: Env, user: str, batch: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sftp", *env.ssh_opts(), "-b", "-", f"{user}@127.0.0.1"],
        input=batch, capture_output=True, text=True, timeout=120, cwd=env.tmp,
    )  # fmt: skip


def test_user_added_through_one_node_logs_in_at_the_other(
    nodes: list[Env], client_key: tuple[Path, str]
) -> None:
    a, b = nodes
    root = a.tmp / "shared-root"
    res = user_cmd(a, "add", "pguser", "--root", str(root), "--key", client_key[1])
    assert res.returncode == 0, res.stderr
    (a.tmp / "pg.bin").write_bytes(bytes(range(256)) * 64)
    res = sftp(b, "pguser", "put pg.bin\n")
    assert res.returncode == 0, res.stderr + b.server.log_text()[-2000:]
    assert (root / "pg.bin").read_bytes() == bytes(range(256)) * 64
    assert sftp(a, "pguser", "get pg.bin back.bin\n").returncode == 0
    assert (a.tmp / "back.bin").read_bytes() == bytes(range(256)) * 64


def test_database_restart_fails_logins_cleanly_then_recovers(
    cluster: Cluster, nodes: list[Env], client_key: tuple[Path, str]
) -> None:
    a = nodes[0]
    res = user_cmd(a, "add", "pguser", "--root", str(a.tmp / "r"), "--key", client_key[1])
    assert res.returncode == 0, res.stderr
    assert sftp(a, "pguser", "pwd\n").returncode == 0
    cluster.stop()
    try:
        time.sleep(1.2)  # past cache_seconds: the next login must ask the database
        res = sftp(a, "pguser", "pwd\n")  # returns (the timeouts bound it), refused
        assert res.returncode != 0 and "Permission denied" in res.stderr
        assert wait_for(lambda: "user store unavailable: postgresql" in a.server.log_text())
        assert sftp(a, "file0", "pwd\n").returncode == 0  # file users are not affected
    finally:
        cluster.start()
    assert wait_for(lambda: sftp(a, "pguser", "pwd\n").returncode == 0, timeout=30)
    assert a.server.proc.poll() is None


@pytest.mark.parametrize("workers", [1, 2])
def test_database_down_at_start_then_up_serves_without_restart(
    cluster: Cluster,
    tmp_path: Path,
    client_key: tuple[Path, str],
    host_keys_dir: Path,
    workers: int,
) -> None:
    url = cluster.new_database()  # empty: the server migrates it once it answers
    u = TomlUser("file0", tmp_path / "file0", client_key[1])
    cfg = tmp_path / "late.toml"
    tail = f'[users_db]\nurl = "{url}"\ncache_seconds = 1\n'
    write_config(cfg, [u], host_keys_dir, f"workers = {workers}", tail)
    cluster.stop()
    try:
        check = subprocess.run(
            [sys.executable, "-m", "sftpd", "check-config", str(cfg)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        assert "cannot reach the database" in check.stderr
        proc = start_sftpd(cfg)  # listens, instead of exiting 1
    except BaseException:
        cluster.start()
        raise
    env = Env(proc, u, client_key[0], tmp_path)
    try:
        assert wait_for(lambda: proc.log_text().count("user database unreachable") == workers)
        started = time.monotonic()
        res = sftp(env, "pguser", "pwd\n")
        assert res.returncode != 0 and "Permission denied" in res.stderr
        assert time.monotonic() - started < 60  # bounded by the pool timeout per attempt
        assert sftp(env, "file0", "pwd\n").returncode == 0  # file users are served
        cluster.start()
        reachable = "user database reachable"
        assert wait_for(lambda: proc.log_text().count(reachable) == workers, timeout=30)
        assert "schema version" in proc.log_text()
        res = user_cmd(env, "add", "pguser", "--root", str(tmp_path / "pg"), "--key", client_key[1])
        assert res.returncode == 0, res.stderr
        (tmp_path / "late.bin").write_bytes(b"\x01late\xfe" * 999)
        for _ in range(2 * workers):  # whichever worker accepts
            res = sftp(env, "pguser", "put late.bin\n")
            assert res.returncode == 0, res.stderr + proc.log_text()[-2000:]
            assert (tmp_path / "pg" / "late.bin").read_bytes() == b"\x01late\xfe" * 999
        assert proc.proc.poll() is None
        assert "exited with" not in proc.log_text()  # no worker restarted
    finally:
        proc.stop()
