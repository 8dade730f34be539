"""End to end: every failed authentication is one login_failed event and one failed count;
a client merely asking whether a key would do (OpenSSH does it for every key) is neither."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sftpd.auth.totp import new_secret, totp
from tests.support import Env, User, askpass_env, toml_str, wait_for

paramiko = pytest.importorskip("paramiko")
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _failed(path: Path) -> list[dict[str, Any]]:
    return [e for e in _lines(path) if e["op"] == "login_failed"]


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    res = subprocess.run(["curl", "-sf", url], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(res.stdout)
        for s in family.samples
    }


def _paramiko_key(env: Env, user: str) -> bool:
    t = paramiko.Transport(("127.0.0.1", env.port))
    try:
        t.start_client(timeout=20)
        key = paramiko.Ed25519Key.from_private_key_file(str(env.key_path))
        try:
            t.auth_publickey(user, key)  # signed at once: no query first
        except paramiko.AuthenticationException:
            pass
        return bool(t.is_authenticated())
    finally:
        t.close()


def test_each_failed_login_is_one_event_and_a_key_query_is_none(
    make_server: Any, tmp_path: Path, client_key: tuple[Path, str]
) -> None:
    secret = new_secret()
    _key_path, key_line = client_key
    users = [
        # the key only from elsewhere (from=), and the user only from elsewhere
        User("carol", tmp_path / "carol", key_line=f'from="10.9.9.9" {key_line}'),
        User("dave", tmp_path / "dave", key_line, extra='allowed_sources = ["10.9.9.0/24"]'),
        User("bob", tmp_path / "bob", password="bob-pw", extra=f'totp_secret = "{secret}"'),
    ]
    audit = tmp_path / "audit.jsonl"
    port = _free_port()
    tail = f'[audit]\nfile = {toml_str(str(audit))}\n[metrics]\nlisten = "127.0.0.1:{port}"'
    env: Env = make_server(users=users, server_extra="auth_failure_delay = 0", tail=tail)
    env.alice.root.mkdir(exist_ok=True)

    # OpenSSH offers a key alice does not have, then hers: the refused query is no event
    other = tmp_path / "other_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    env.sftp("ls /\n", "-i", str(other))
    assert wait_for(lambda: [e["op"] for e in _lines(audit)] == ["login"], timeout=10)

    # a key proven (signed) but refused by its from=: paramiko signs without asking first
    assert not _paramiko_key(env, "carol")
    assert wait_for(lambda: len(_failed(audit)) == 1, timeout=10)
    # OpenSSH asks first: refused at the query, it never signs, so no attempt was made
    res = env.sftp("ls /\n", user="carol", check=False)
    assert res.returncode != 0

    # accepted key, user refused by allowed_sources after the signature (OpenSSH)
    res = env.sftp("ls /\n", user="dave", check=False)
    assert res.returncode != 0
    assert wait_for(lambda: len(_failed(audit)) == 2, timeout=10)

    # a wrong password (OpenSSH, one prompt)
    opts = [*env.ssh_opts(port_flag="-p", key=False), "-o", "PreferredAuthentications=password"]
    res2 = subprocess.run(
        ["ssh", *opts, "-o", "NumberOfPasswordPrompts=1", "alice@127.0.0.1", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=askpass_env(tmp_path, "not the password"),
    )
    assert res2.returncode != 0
    assert wait_for(lambda: len(_failed(audit)) == 3, timeout=10)

    # keyboard-interactive: the right password, a wrong TOTP code
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    wrong = f"{(int(totp(key, time.time())) + 1) % 1_000_000:06d}"
    answers = {"Password: ": "bob-pw", "Verification code: ": wrong}
    t = paramiko.Transport(("127.0.0.1", env.port))
    t.start_client(timeout=20)
    with pytest.raises(paramiko.AuthenticationException):
        t.auth_interactive("bob", lambda title, inst, prompts: [answers[p] for p, _ in prompts])
    t.close()
    assert wait_for(lambda: len(_failed(audit)) == 4, timeout=10)

    env.sftp("ls /\n")  # a last good login: every earlier event has been written
    assert wait_for(lambda: [e["op"] for e in _lines(audit)].count("login") == 2, timeout=10)
    failed = _failed(audit)
    assert [e["user"] for e in failed] == ["carol", "dave", "alice", "bob"]
    assert all(e["outcome"] == "denied" and e["reason"] for e in failed)
    carol, dave, alice, bob = failed
    assert carol["auth"].startswith("SHA256:") and dave["auth"] == carol["auth"]
    assert "from=" in carol["reason"] and "allowed_sources" in dave["reason"]
    assert alice["auth"] == bob["auth"] == "password"
    text = audit.read_text()
    assert "not the password" not in text and wrong not in text and "bob-pw" not in text
    samples = _samples(port)
    auths = Counter(
        {
            labels: value
            for (name, labels), value in samples.items()
            if name == "sftpd_authentications_total"
        }
    )
    assert auths == {
        (("method", "publickey"), ("result", "ok")): 2,
        (("method", "publickey"), ("result", "failed")): 2,
        # keyboard-interactive is counted as "password", as its events' auth says
        (("method", "password"), ("result", "failed")): 2,
    }
