"""Rules of users kept in [users_db] (SQLite), set by `sftpd user`: OpenSSH sftp and scp."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import Env, askpass_env, wait_for
from tests.test_e2e_users_db import DB_TAIL, sftp_as, user_cmd

pytestmark = pytest.mark.e2e

PASSWORD = "db-Password-7"


@pytest.fixture(scope="module")
def bob_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bobkey")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "id"], check=True)
    return d / "id"


def add(env: Env, name: str, *args: str) -> Path:
    root = env.tmp / f"{name}-root"
    res = user_cmd(env, "add", name, "--root", str(root), *args, stdin=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    return root


def scp_to(env: Env, user: str, key: Path, src: Path, dest: str) -> Any:
    opts = env.ssh_opts()
    opts[opts.index(str(env.key_path))] = str(key)
    return subprocess.run(
        ["scp", "-O", *opts, str(src), f"{user}@127.0.0.1:{dest}"],
        capture_output=True, text=True, timeout=60, cwd=env.tmp,
    )  # fmt: skip


def sftp_pw(env: Env, user: str, batch: str) -> subprocess.CompletedProcess[str]:
    # Not `-b`: batch mode turns password prompts off; the commands come on stdin.
    opts = [*env.ssh_opts(key=False), "-o", "PreferredAuthentications=password"]
    opts += ["-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"]
    return subprocess.run(
        ["sftp", *opts, f"{user}@127.0.0.1"],
        input=batch, capture_output=True, text=True, timeout=60, cwd=env.tmp,
        env=askpass_env(env.tmp, PASSWORD),
    )  # fmt: skip


PER_DIRECTORY = (
    ["--permissions", "/=list,download", "--permissions", "/in=list,upload,create_dirs"],
    ["--permissions", '{"/": ["list", "download"], "/in": ["list", "upload", "create_dirs"]}'],
)


@pytest.mark.parametrize("form", PER_DIRECTORY, ids=["dir=list", "json"])
def test_per_directory_permissions_from_user_add(  # type: ignore[no-untyped-def]
    make_server, bob_key: Path, form: list[str]
) -> None:
    env = make_server(tail=DB_TAIL)
    root = add(env, "bob", "--key", f"{bob_key}.pub", *form)
    (root / "in").mkdir()
    (root / "old.txt").write_bytes(b"kept as it was")
    data = bytes(range(256)) * 40
    (env.tmp / "up.bin").write_bytes(data)
    res = sftp_as(env, "bob", bob_key, "put up.bin /up.bin\n")
    assert res.returncode != 0 and "Permission denied" in res.stderr, res.stderr
    assert not (root / "up.bin").exists()
    res = scp_to(env, "bob", bob_key, env.tmp / "up.bin", "/up.bin")
    assert res.returncode != 0 and not (root / "up.bin").exists()
    res = sftp_as(env, "bob", bob_key, "put up.bin /in/up.bin\nget /old.txt got.txt\n")
    assert res.returncode == 0, res.stderr + env.server.log_text()[-2000:]
    assert (root / "in" / "up.bin").read_bytes() == data
    assert (env.tmp / "got.txt").read_bytes() == b"kept as it was"
    res = scp_to(env, "bob", bob_key, env.tmp / "up.bin", "/in/scp.bin")
    assert res.returncode == 0, res.stderr
    assert (root / "in" / "scp.bin").read_bytes() == data
    # `set` changes them for the next login: the whole root becomes writable.
    assert user_cmd(env, "set", "bob", "--permissions", "*").returncode == 0
    ok = wait_for(lambda: sftp_as(env, "bob", bob_key, "put up.bin /up.bin\n").returncode == 0, 20)
    assert ok and (root / "up.bin").read_bytes() == data


def test_key_profile_from_key_add_narrows_that_key_only(make_server, bob_key: Path) -> None:  # type: ignore[no-untyped-def]
    env = make_server(tail=DB_TAIL)
    root = add(env, "carol", "--password-stdin")
    res = user_cmd(env, "key", "add", "carol", f"{bob_key}.pub",
                   "--permissions", "list,download", "--protocols", "sftp")  # fmt: skip
    assert res.returncode == 0, res.stderr
    (env.tmp / "k.txt").write_bytes(b"by key")
    res = sftp_as(env, "carol", bob_key, "put k.txt\n")
    assert res.returncode != 0 and "Permission denied" in res.stderr, res.stderr
    assert not (root / "k.txt").exists()
    res = scp_to(env, "carol", bob_key, env.tmp / "k.txt", "/k.txt")  # protocols: sftp only
    assert res.returncode != 0 and not (root / "k.txt").exists()
    res = sftp_pw(env, "carol", "put k.txt\n")
    assert res.returncode == 0, res.stderr + env.server.log_text()[-2000:]
    assert (root / "k.txt").read_bytes() == b"by key"
    assert sftp_as(env, "carol", bob_key, "get k.txt k2.txt\n").returncode == 0
    assert (env.tmp / "k2.txt").read_bytes() == b"by key"


def test_quota_size_from_user_add_refuses_an_upload_past_it(make_server, bob_key: Path) -> None:  # type: ignore[no-untyped-def]
    env = make_server(tail=DB_TAIL)
    root = add(env, "dan", "--key", f"{bob_key}.pub", "--quota-size", "65536")
    (env.tmp / "small.bin").write_bytes(b"s" * 40_000)
    (env.tmp / "big.bin").write_bytes(b"b" * 40_000)
    res = sftp_as(env, "dan", bob_key, "put small.bin\n")
    assert res.returncode == 0, res.stderr
    res = sftp_as(env, "dan", bob_key, "put big.bin\n")
    assert res.returncode != 0 and "Failure" in res.stderr, res.stderr  # EDQUOT
    assert (root / "small.bin").read_bytes() == b"s" * 40_000
    assert not (root / "big.bin").exists()  # atomic: the partial upload is removed
    assert sorted(p.name for p in root.iterdir()) == ["small.bin"]  # no temporary left


def test_a_row_that_no_longer_checks_refuses_the_login(make_server, bob_key: Path) -> None:  # type: ignore[no-untyped-def]
    env = make_server(tail=DB_TAIL)
    add(env, "erin", "--key", f"{bob_key}.pub", "--permissions", "list,download")
    assert sftp_as(env, "erin", bob_key, "pwd\n").returncode == 0
    with sqlite3.connect(env.tmp / "users.db") as conn:  # as a newer or careless writer might
        conn.execute("UPDATE users SET permissions = ? WHERE name = 'erin'", ('["lst"]',))
    assert wait_for(lambda: sftp_as(env, "erin", bob_key, "pwd\n").returncode != 0, timeout=20)
    res = sftp_as(env, "erin", bob_key, "pwd\n")
    assert "Permission denied" in res.stderr
    log = env.server.log_text()
    line = next(x for x in log.splitlines() if "does not check" in x)
    assert "user erin" in line and "permissions" in line and "unknown permission 'lst'" in line
    assert str(env.tmp) not in line  # never a host path
    env.sftp("pwd\n")  # the others are served
    assert env.server.proc.poll() is None
