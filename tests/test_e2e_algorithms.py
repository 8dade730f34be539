"""OpenSSH's client against a real sftpd: every cipher/MAC moves data intact; weak ones refused."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.support import Env, have

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have("sftp") or not have("ssh"), reason="OpenSSH client not installed"),
]

SUITES = [
    ("chacha20-poly1305@openssh.com", None),
    ("aes128-gcm@openssh.com", None),
    ("aes256-gcm@openssh.com", None),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes256-ctr", "hmac-sha2-512-etm@openssh.com"),
    ("aes192-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256"),
    ("aes256-ctr", "hmac-sha2-512"),
]
_NEGOTIATED = re.compile(r"kex: (client->server|server->client) cipher: (\S+) MAC: (\S+)")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _negotiated(stderr: str) -> set[tuple[str, ...]]:
    return {tuple(m.groups()) for m in _NEGOTIATED.finditer(stderr)}


@pytest.mark.parametrize(("cipher", "mac"), SUITES, ids=[f"{c}+{m or 'aead'}" for c, m in SUITES])
def test_openssh_negotiates_and_moves_data(server: Env, cipher: str, mac: str | None) -> None:
    name = f"{cipher}-{mac or 'aead'}".replace("@", "_")
    src = server.tmp / f"{name}.src"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    opts = ["-v", "-c", cipher] + (["-o", f"MACs={mac}"] if mac else [])
    res = server.sftp(f"put {src.name} {name}.up\nget {name}.up {name}.down\n", *opts)
    expected_mac = mac or "<implicit>"
    assert _negotiated(res.stderr) == {
        ("client->server", cipher, expected_mac),
        ("server->client", cipher, expected_mac),
    }
    digest = _sha256(src)
    assert _sha256(server.alice.root / f"{name}.up") == digest  # on the server's disk
    assert _sha256(server.tmp / f"{name}.down") == digest  # and back


def test_default_negotiation_is_chacha20_with_strict_kex(server: Env) -> None:
    res = server.sftp("pwd\n", "-vvv")
    assert ("server->client", "chacha20-poly1305@openssh.com", "<implicit>") in _negotiated(
        res.stderr
    )
    assert "kex-strict-s-v00@openssh.com" in res.stderr
    assert "will use strict KEX ordering" in res.stderr


@pytest.mark.parametrize(
    "opts",
    [
        ["-c", "3des-cbc"],
        ["-c", "aes128-cbc"],
        ["-c", "aes128-ctr", "-o", "MACs=hmac-sha1"],
        ["-o", "MACs=hmac-sha1"],
        ["-o", "KexAlgorithms=diffie-hellman-group14-sha1"],
        ["-o", "HostKeyAlgorithms=ssh-rsa"],
        ["-o", "HostKeyAlgorithms=ssh-dss"],
    ],
    ids=" ".join,
)
def test_weak_algorithms_fail_to_negotiate(server: Env, opts: list[str]) -> None:
    res = server.ssh(None, "-T", "-v", *opts)
    assert res.returncode == 255
    stderr = res.stderr.decode(errors="replace")
    # Either the client finds nothing in common in our KEXINIT, or we find nothing in its.
    assert "Unable to negotiate" in stderr or "no common" in stderr, stderr[-2000:]
    assert "Authenticated to" not in stderr


def _kexinit_count(stderr: str) -> int:
    return stderr.count("SSH2_MSG_KEXINIT received")


def test_server_initiated_rekey_by_volume(make_server: ServerFactory) -> None:
    env = make_server(server_extra="rekey_bytes = 1048576")
    src = env.tmp / "rekey.src"
    src.write_bytes(os.urandom(4 * 1024 * 1024))
    res = env.sftp("put rekey.src rekey.up\nget rekey.up rekey.down\n", "-vv")
    assert _kexinit_count(res.stderr) >= 4  # the first exchange plus several rekeys
    assert _sha256(env.alice.root / "rekey.up") == _sha256(src) == _sha256(env.tmp / "rekey.down")


@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com"])
def test_client_initiated_rekey(server: Env, cipher: str) -> None:
    name = f"crekey-{cipher[:6]}"
    src = server.tmp / f"{name}.src"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    res = server.sftp(
        f"put {src.name} {name}.up\nget {name}.up {name}.down\n",
        "-vv",
        "-c",
        cipher,
        "-o",
        "RekeyLimit=512K",
    )
    assert _kexinit_count(res.stderr) >= 4
    assert _sha256(server.alice.root / f"{name}.up") == _sha256(src)
    assert _sha256(server.tmp / f"{name}.down") == _sha256(src)
