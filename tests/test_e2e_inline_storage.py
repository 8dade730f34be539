"""OpenSSH's sftp against a root on tmpfs, where opens, small writes and closes run inline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import User
from tests.test_storage_nowait import shm_root as shm_root  # the fixture

pytestmark = pytest.mark.e2e


def test_small_files_both_ways_and_the_jail_on_tmpfs(
    make_server, shm_root: Path, client_key: tuple[Path, str]
) -> None:  # type: ignore[no-untyped-def]
    env = make_server(users=[User("bob", shm_root, client_key[1])])
    src = env.tmp / "src"
    src.mkdir()
    files = {f"f{i:03d}": os.urandom(i * 97 % 9000) for i in range(60)}  # 0 to ~9 KB
    for name, data in files.items():
        (src / name).write_bytes(data)
    (shm_root / "etc").mkdir()
    (shm_root / "etc" / "hostname").write_bytes(b"inside the jail")
    os.symlink("/etc/hostname", shm_root / "link")
    env.sftp(f"put -r {src} /up\nget -r /up {env.tmp}/down\nget /link {env.tmp}/link", user="bob")
    for name, data in files.items():
        assert (shm_root / "up" / name).read_bytes() == data
        assert (env.tmp / "down" / name).read_bytes() == data
    assert (env.tmp / "link").read_bytes() == b"inside the jail"


def test_uploads_with_a_quota_on_tmpfs_count_and_stop_at_the_limit(
    make_server, shm_root: Path, client_key: tuple[Path, str]
) -> None:  # type: ignore[no-untyped-def]
    """With a quota, an upload's temporary opens inline on tmpfs (storage/quota.py): the
    bytes land, df shows what they use, and the file past quota_files is refused."""
    extra = "quota_size = 1000000\nquota_files = 5\n"
    env = make_server(users=[User("bob", shm_root, client_key[1], extra=extra)])
    src = env.tmp / "qsrc"
    src.mkdir()
    files = {f"q{i}": os.urandom(10_000 + i) for i in range(6)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    batch = "".join(f"put {src / name} /{name}\n" for name in sorted(files)[:5])
    env.sftp(batch, user="bob")
    for name in sorted(files)[:5]:
        assert (shm_root / name).read_bytes() == files[name]
    res = env.sftp(f"put {src / 'q5'} /q5\n", user="bob", check=False)
    assert res.returncode != 0
    # the sixth file lands at its CLOSE (the rename), which is refused; OpenSSH's sftp
    # prints only "close remote: Failure" for it (the reason: test_storage_limits.py)
    assert "close remote: Failure" in res.stderr, res.stderr
    assert not (shm_root / "q5").exists()
    assert sorted(p.name for p in shm_root.iterdir()) == sorted(files)[:5]  # no temporary
    used = sum(len(files[name]) for name in sorted(files)[:5])
    out = env.sftp("df /\n", user="bob").stdout
    avail_kib = int(out.strip().splitlines()[-1].split()[2])
    assert abs(avail_kib * 1024 - (1_000_000 - used)) < 4096, out
