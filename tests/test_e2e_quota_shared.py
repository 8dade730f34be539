"""End-to-end: quota usage in the user database, shared by two nodes and by two workers.

Two sftpd processes on one real PostgreSQL with one root directory; one server with
workers = 2 on SQLite; a restart that reads the stored count instead of scanning; the
database stopped in the middle of an upload."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pgcluster import Cluster, start_cluster
from tests.support import Env, wait_for

pytestmark = pytest.mark.e2e
paramiko = pytest.importorskip("paramiko")

MB = 1000 * 1000
QUOTA = f"quota_size = {10 * MB}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


def pg_tail(cluster: Cluster) -> str:
    return f'[users_db]\nurl = "{cluster.new_database()}"\ncache_seconds = 1\n'


def put(env: Env, name: str, size: int) -> subprocess.CompletedProcess[str]:
    local = env.tmp / f"local-{name}"
    if not local.exists():
        local.write_bytes(os.urandom(size))
    return env.sftp(f"put {local} /{name}\n", check=False)


def free(env: Env) -> int:
    """Free bytes as OpenSSH's `df` shows them (statvfs@openssh.com: quota - used)."""
    out = env.sftp("df /\n").stdout
    numbers = re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.M)
    assert numbers, out
    return int(numbers[-1][2]) * 1024  # "Avail" in KiB


def stored(env: Env, cluster: Cluster) -> tuple[int, int] | None:
    import psycopg

    url = re.search(r'url = "([^"]+)"', env.server.config_path.read_text())
    assert url is not None
    with psycopg.connect(url.group(1)) as conn:
        row = conn.execute("SELECT bytes, files FROM quota_usage WHERE user_name = 'alice'")
        found = row.fetchone()
    return None if found is None else (int(found[0]), int(found[1]))


def test_uploads_through_one_node_count_at_the_other(make_server: Any, cluster: Cluster) -> None:
    tail = pg_tail(cluster)
    a: Env = make_server(tail=tail, alice_extra=QUOTA)
    b: Env = make_server(tail=tail, alice_extra=QUOTA)
    assert a.alice.root == b.alice.root  # one root directory, shared
    assert free(b) >= 9 * MB  # b's first login: it counted nothing yet
    assert put(a, "six.bin", 6 * MB).returncode == 0
    res = put(b, "six-more.bin", 6 * MB)  # would pass b's quota alone
    assert wait_for(lambda: abs(free(b) - 4 * MB) < 64 * 1024)  # df at b: a's upload
    assert res.returncode != 0, res.stdout + res.stderr
    assert not (b.alice.root / "six-more.bin").exists()
    assert put(b, "three.bin", 3 * MB).returncode == 0  # what fits still does
    assert stored(a, cluster) == (9 * MB, 2)
    res = put(a, "one-too-many.bin", 2 * MB)  # and b's upload counts at a
    assert res.returncode != 0
    assert sorted(p.name for p in a.alice.root.iterdir()) == ["six.bin", "three.bin"]


def _worker_of(env: Env, transport: Any) -> str:
    port = transport.sock.getsockname()[1]
    pattern = rf"connection open: conn=\S+ peer=127\.0\.0\.1:{port} pid=(\d+)"
    assert wait_for(lambda: re.search(pattern, env.server.log_text()) is not None)
    found = re.search(pattern, env.server.log_text())
    assert found is not None
    return found.group(1)


def _connect(env: Env) -> tuple[Any, Any]:
    transport = paramiko.Transport(("127.0.0.1", env.port))
    transport.connect(
        username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(str(env.key_path))
    )
    return transport, paramiko.SFTPClient.from_transport(transport)


def _stored_sqlite(path: Path) -> tuple[int, int] | None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        found = conn.execute(
            "SELECT bytes, files FROM quota_usage WHERE user_name = 'alice'"
        ).fetchone()
    return None if found is None else (int(found[0]), int(found[1]))


def test_two_workers_share_the_usage(make_server: Any, tmp_path: Path) -> None:
    tail = f'[users_db]\nurl = "sqlite:{tmp_path}/users.db"\n'
    env: Env = make_server(server_extra="workers = 2", tail=tail, alice_extra=QUOTA)
    # Connections until two sit on different workers (SO_REUSEPORT spreads them).
    by_worker: dict[str, tuple[Any, Any]] = {}
    spare: list[Any] = []
    for _ in range(40):
        transport, sftp = _connect(env)
        pid = _worker_of(env, transport)
        if pid in by_worker:
            spare.append(transport)
        else:
            by_worker[pid] = (transport, sftp)
        if len(by_worker) == 2:
            break
    try:
        assert len(by_worker) == 2, "40 connections all on one worker"
        (_, one), (_, two) = by_worker.values()
        one.listdir("/")  # both workers have seen alice's first login
        two.listdir("/")
        with one.open("/six.bin", "wb") as f:
            f.write(b"6" * (6 * MB))
        # A new write is judged with totals at most `fresh` (0.1 s) old: let what the
        # other worker finished become older than that (sftpd.storage.usage).
        assert wait_for(lambda: _stored_sqlite(tmp_path / "users.db") == (6 * MB, 1))
        time.sleep(0.2)
        with pytest.raises(OSError, match=r"quota exceeded: 10\.0 MB of 10\.0 MB used"):
            with two.open("/six-more.bin", "wb") as f:
                f.set_pipelined(False)
                for _ in range(6):
                    f.write(b"7" * MB)
        assert sorted(p.name for p in env.alice.root.iterdir()) == ["six.bin"]
    finally:
        for transport, _ in by_worker.values():
            transport.close()
        for transport in spare:
            transport.close()


def rescan(env: Env) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sftpd", "user", "rescan", "alice", "--config",
         str(env.server.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_restart_keeps_the_stored_usage_and_rescan_fixes_it(
    make_server: Any, cluster: Cluster
) -> None:
    tail = pg_tail(cluster)
    env: Env = make_server(tail=tail, alice_extra=QUOTA)
    assert put(env, "four.bin", 4 * MB).returncode == 0
    assert env.server.stop() == 0
    (env.alice.root / "four.bin").unlink()  # behind sftpd's back
    env = make_server(tail=tail, alice_extra=QUOTA)  # the same user, root and database
    # A scan would find nothing; the stored number is used.
    assert abs(free(env) - 6 * MB) < 64 * 1024
    res = rescan(env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "alice: 0 B in 0 files (was 4.0 MB in 1 files)"
    assert wait_for(lambda: abs(free(env) - 10 * MB) < 64 * 1024, timeout=20)
    assert stored(env, cluster) == (0, 0)


def test_rescan_errors_exit_2(make_server: Any, tmp_path: Path) -> None:
    env: Env = make_server(alice_extra=QUOTA)  # no [users_db]
    res = rescan(env)
    assert res.returncode == 2 and "has no [users_db]" in res.stderr, res.stderr
    cfg = env.server.config_path
    cfg.write_text(
        cfg.read_text().replace("[[users]]", '[users_db]\nurl = "sqlite:u.db"\n[[users]]', 1)
    )
    res = subprocess.run(
        [sys.executable, "-m", "sftpd", "user", "rescan", "nobody", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "sftpd user rescan: no user 'nobody' in the config file or the database"
    )


def test_database_stopped_during_an_upload(make_server: Any, cluster: Cluster) -> None:
    env: Env = make_server(tail=pg_tail(cluster), alice_extra=QUOTA)
    transport, sftp = _connect(env)
    try:
        data = os.urandom(4 * MB)
        f = sftp.open("/big.bin", "wb")
        f.write(data[:MB])
        cluster.stop()
        try:
            for i in range(1, 4):  # the upload goes on, past the outage
                f.write(data[i * MB : (i + 1) * MB])
            f.close()
            assert (env.alice.root / "big.bin").read_bytes() == data  # nothing lost
            assert wait_for(lambda: "cannot be stored: postgresql" in env.server.log_text())
            with pytest.raises(OSError, match="quota usage unavailable: the user database"):
                sftp.open("/new.bin", "wb").write(b"x")
            assert sftp.open("/big.bin").read(10) == data[:10]  # reads go on
        finally:
            cluster.start()
        assert wait_for(lambda: "quota usage of alice stored again" in env.server.log_text(),
                        timeout=30)  # fmt: skip
        assert stored(env, cluster) == (4 * MB, 1)  # the changes kept during it arrived
        with sftp.open("/new.bin", "wb") as g:
            g.write(b"x")
        assert wait_for(lambda: stored(env, cluster) == (4 * MB + 1, 2))
    finally:
        transport.close()
    assert env.server.proc.poll() is None
