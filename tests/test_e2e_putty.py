"""End-to-end: PuTTY's psftp (what WinSCP's engine and PuTTY users speak) against a real sftpd."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import Env, have

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (have("psftp") and have("puttygen")), reason="putty-tools missing"),
]


def _host_fingerprint(server: Env) -> str:
    keys_dir = Path(
        server.server.config_path.read_text().split('host_keys_dir = "')[1].split('"')[0]
    )
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(keys_dir / "ssh_host_ed25519_key.pub")],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[1]


def test_psftp_put_get_ls(server: Env, tmp_path: Path) -> None:
    ppk = tmp_path / "key.ppk"
    subprocess.run(
        ["puttygen", str(server.key_path), "-O", "private", "-o", str(ppk)],
        check=True,
        capture_output=True,
    )
    payload = os.urandom(300_000)
    (tmp_path / "up.bin").write_bytes(payload)
    batch = tmp_path / "batch"
    batch.write_text(
        f"mkdir putty\ncd putty\nput {tmp_path / 'up.bin'} up.bin\nls\n"
        f"get up.bin {tmp_path / 'down.bin'}\nmv up.bin moved.bin\n"
    )
    res = subprocess.run(
        [
            "psftp",
            "-batch",
            "-P",
            str(server.port),
            "-i",
            str(ppk),
            "-hostkey",
            _host_fingerprint(server),
            "-b",
            str(batch),
            "alice@127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (server.alice.root / "putty" / "moved.bin").read_bytes() == payload
    assert (tmp_path / "down.bin").read_bytes() == payload
    assert "up.bin" in res.stdout  # the listing psftp printed
    assert str(server.alice.root) not in res.stdout + res.stderr
