"""End-to-end: keyboard-interactive with PuTTY psftp, FileZilla's fzsftp and paramiko + TOTP."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sftpd.auth.totp import new_secret, totp
from tests.fzsftp import FzSftp
from tests.support import ALICE_PASSWORD, Env, User, have

pytestmark = [pytest.mark.e2e]

KBD_ONLY = 'authentication_methods = ["keyboard-interactive"]'


def _host_fingerprint(env: Env) -> str:
    keys_dir = Path(env.server.config_path.read_text().split('host_keys_dir = "')[1].split('"')[0])
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(keys_dir / "ssh_host_ed25519_key.pub")],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[1]


@pytest.mark.skipif(not have("psftp"), reason="putty-tools missing")
def test_psftp_logs_in_by_keyboard_interactive(
    make_server: Callable[..., Env], tmp_path: Path
) -> None:
    env = make_server(server_extra=KBD_ONLY)
    (tmp_path / "up.txt").write_bytes(b"typed into putty\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {tmp_path / 'up.txt'} putty-kbd.txt\n")
    res = subprocess.run(
        [
            *("psftp", "-batch", "-P", str(env.port), "-hostkey", _host_fingerprint(env)),
            *("-pw", ALICE_PASSWORD, "-b", str(batch), "alice@127.0.0.1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr + env.server.log_text()[-2000:]
    assert (env.alice.root / "putty-kbd.txt").read_bytes() == b"typed into putty\n"
    assert "method=keyboard-interactive" in env.server.log_text()


@pytest.mark.skipif(not have("fzsftp"), reason="filezilla missing")
def test_fzsftp_logs_in_by_keyboard_interactive(
    make_server: Callable[..., Env], tmp_path: Path
) -> None:
    env = make_server(server_extra=KBD_ONLY)
    (env.alice.root).mkdir(parents=True, exist_ok=True)
    (env.alice.root / "fz.txt").write_bytes(b"for filezilla\n")
    with FzSftp(home=tmp_path, password=ALICE_PASSWORD, trust_hostkey="y") as fz:
        res = fz.command(f'open "alice@127.0.0.1" {env.port}')
        assert res.ok, fz.transcript() + env.server.log_text()[-2000:]
        dst = tmp_path / "fz.txt"
        assert fz.command(f'get "/fz.txt" "{dst}"', local=dst, download=True).ok
        assert dst.read_bytes() == b"for filezilla\n"
    assert "method=keyboard-interactive" in env.server.log_text()
    with FzSftp(home=tmp_path, password="wrong") as fz:
        assert not fz.command(f'open "alice@127.0.0.1" {env.port}').ok


def _interactive(env: Env, user: str, answers: dict[str, str]) -> tuple[Any, list[str]]:
    """A paramiko transport after auth_interactive; the prompts seen."""
    paramiko = pytest.importorskip("paramiko")
    t = paramiko.Transport(("127.0.0.1", env.port))
    t.start_client(timeout=20)
    seen: list[str] = []

    def handler(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
        seen.extend(p for p, _ in prompts)
        return [answers[p] for p, _ in prompts]

    try:
        t.auth_interactive(user, handler)
    except paramiko.AuthenticationException:
        pass
    return t, seen


def test_paramiko_password_and_totp_code_once(
    make_server: Callable[..., Env], tmp_path: Path
) -> None:
    paramiko = pytest.importorskip("paramiko")
    secret = new_secret()
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    bob = User("bob", tmp_path / "bob-root", password="bob-pw", extra=f'totp_secret = "{secret}"')
    env = make_server(users=[bob])
    code = totp(key, time.time())
    answers = {"Password: ": "bob-pw", "Verification code: ": code}
    t, seen = _interactive(env, "bob", answers)
    try:
        assert t.is_authenticated(), env.server.log_text()[-2000:]
        assert seen == ["Password: ", "Verification code: "]
        sftp = paramiko.SFTPClient.from_transport(t)
        with sftp.open("totp.txt", "wb") as f:
            f.write(b"two factors\n")
        sftp.close()
    finally:
        t.close()
    assert (tmp_path / "bob-root" / "totp.txt").read_bytes() == b"two factors\n"
    # the same code again: refused (RFC 6238 section 5.2)
    t, _ = _interactive(env, "bob", answers)
    assert not t.is_authenticated()
    t.close()
    # a wrong password with a fresh code (the next step's, never used): refused, and the
    # code is not spent by it: the right password with that code then logs in
    fresh = {**answers, "Verification code: ": totp(key, time.time() + 30)}
    t, _ = _interactive(env, "bob", {**fresh, "Password: ": "nope"})
    assert not t.is_authenticated()
    t.close()
    t, _ = _interactive(env, "bob", fresh)
    assert t.is_authenticated(), env.server.log_text()[-2000:]
    t.close()
    # the password method alone: refused
    t = paramiko.Transport(("127.0.0.1", env.port))
    try:
        t.start_client(timeout=20)
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_password("bob", "bob-pw")
    finally:
        t.close()
    # unknown names are asked for a code too, so the prompts tell no names apart
    t, seen = _interactive(env, "nobody", {**answers, "Password: ": "x"})
    assert seen == ["Password: ", "Verification code: "] and not t.is_authenticated()
    t.close()
    # a user without a secret gets the password prompt only
    t, seen = _interactive(env, "alice", {"Password: ": ALICE_PASSWORD})
    assert seen == ["Password: "] and t.is_authenticated()
    t.close()
