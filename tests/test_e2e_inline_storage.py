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
