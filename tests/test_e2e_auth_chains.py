"""End-to-end: require chains (key then keyboard-interactive) and key options on key lines."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.pki import Pki
from tests.support import Env, User, askpass_env, have, toml_str

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have("sftp"), reason="no OpenSSH sftp")]


def _sftp(
    env: Env, key: Path, user: str, batch: str, *opts: str, env_vars: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [
        "sftp",
        *env.ssh_opts(key=False),
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(key),
        *opts,
        # sftp -b implies BatchMode (no prompts): with askpass, commands come on stdin
        *(() if env_vars else ("-b", "-")),
        f"{user}@127.0.0.1",
    ]
    return subprocess.run(
        cmd,
        input=batch,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=env.tmp,
        env=env_vars,
    )


def _pub(key: Path) -> str:
    return Path(f"{key}.pub").read_text().strip()


def test_require_key_then_keyboard_interactive(
    make_server: Callable[..., Env], tmp_path: Path
) -> None:
    pki = Pki(tmp_path)
    key = pki.key("ed25519", "dave-key")
    dave = User(
        "dave",
        tmp_path / "dave-root",
        key_line=_pub(key),
        password="dave-pw",
        extra='require = [["publickey", "keyboard-interactive"]]',
    )
    env = make_server(users=[dave])
    (tmp_path / "up.txt").write_bytes(b"two methods\n")
    both = ("-o", "PreferredAuthentications=publickey,keyboard-interactive")
    res = _sftp(
        env,
        key,
        "dave",
        "put up.txt chained.txt\n",
        *both,
        env_vars=askpass_env(tmp_path, "dave-pw"),
    )
    assert res.returncode == 0, res.stderr + env.server.log_text()[-2000:]
    assert (tmp_path / "dave-root" / "chained.txt").read_bytes() == b"two methods\n"
    assert "auth partial: " in env.server.log_text()
    # the key alone is not enough
    res = _sftp(
        env, key, "dave", "ls\n", "-o", "BatchMode=yes", "-o", "PreferredAuthentications=publickey"
    )
    assert res.returncode != 0
    # nor the password alone (keyboard-interactive first is not a chain)
    res = _sftp(
        env,
        key,
        "dave",
        "ls\n",
        "-o",
        "PreferredAuthentications=keyboard-interactive",
        env_vars=askpass_env(tmp_path, "dave-pw"),
    )
    assert res.returncode != 0


def test_partial_success_survives_paramiko_service_requests(
    make_server: Callable[..., Env], tmp_path: Path
) -> None:
    paramiko = pytest.importorskip("paramiko")
    pki = Pki(tmp_path)
    key = pki.key("ed25519", "dave-key")
    dave = User(
        "dave",
        tmp_path / "dave-root",
        key_line=_pub(key),
        password="dave-pw",
        extra='require = [["publickey", "keyboard-interactive"]]',
    )
    env = make_server(users=[dave])
    t: Any = paramiko.Transport(("127.0.0.1", env.port))
    try:
        t.start_client(timeout=20)
        # paramiko sends SERVICE_REQUEST ssh-userauth before each auth_* call
        remaining = t.auth_publickey("dave", paramiko.Ed25519Key.from_private_key_file(str(key)))
        assert remaining == ["keyboard-interactive"] and not t.is_authenticated()
        t.auth_interactive("dave", lambda title, inst, prompts: ["dave-pw"] * len(prompts))
        assert t.is_authenticated()
    finally:
        t.close()


def test_from_expiry_and_command_options(make_server: Callable[..., Env], tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    far, past, fine, sftp_ro = (pki.key("ed25519", n) for n in ("far", "past", "fine", "ro"))
    lines = [
        f'from="10.9.9.9" {_pub(far)}',
        f'expiry-time="20200101" {_pub(past)}',
        f'from="127.0.0.0/8,!10.0.0.1",expiry-time="29991231Z",restrict {_pub(fine)}',
        f'command="internal-sftp -R" {_pub(sftp_ro)}',
    ]
    erin = User(
        "erin",
        tmp_path / "erin-root",
        extra="authorized_keys = [" + ", ".join(toml_str(x) for x in lines) + "]",
    )
    env = make_server(users=[erin])
    (tmp_path / "up.txt").write_bytes(b"from loopback\n")
    batch = ("-o", "BatchMode=yes")
    assert _sftp(env, far, "erin", "ls\n", *batch).returncode != 0
    assert _sftp(env, past, "erin", "ls\n", *batch).returncode != 0
    res = _sftp(env, fine, "erin", "put up.txt opt.txt\n", *batch)
    assert res.returncode == 0, res.stderr + env.server.log_text()[-2000:]
    assert (tmp_path / "erin-root" / "opt.txt").read_bytes() == b"from loopback\n"
    log = env.server.log_text()
    assert "from=" in log and "expiry-time" in log
    # internal-sftp -R: SFTP reads work, writes and exec commands are refused
    res = _sftp(env, sftp_ro, "erin", "get opt.txt back.txt\n", *batch)
    assert res.returncode == 0 and (tmp_path / "back.txt").read_bytes() == b"from loopback\n"
    res = _sftp(env, sftp_ro, "erin", "put up.txt nope.txt\n", *batch)
    assert res.returncode != 0 and not (tmp_path / "erin-root" / "nope.txt").exists()
    ssh = subprocess.run(
        [
            *("ssh", *env.ssh_opts(port_flag="-p", key=False), "-o", "BatchMode=yes"),
            *("-o", "IdentitiesOnly=yes", "-i", str(sftp_ro), "erin@127.0.0.1", "md5sum opt.txt"),
        ],
        capture_output=True,
        timeout=60,
    )
    assert ssh.returncode != 0 and b"opt.txt" not in ssh.stdout
