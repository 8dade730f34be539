"""In-memory tests of the userauth limits (grace time, attempts, failure delay) and the checkers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.common import NS
from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.task import Clock

from sftpd.auth.checkers import PasswordChecker, PublicKeyChecker
from sftpd.auth.userauth import AuthSettings, UserAuthServer
from sftpd.auth.users import UserDB
from sftpd.blocking import InlineBlocking
from sftpd.config import UserConfig
from sftpd.hostkeys import fingerprint

PW = b"right-password"


def _user(tmp: Path, **kw: Any) -> UserConfig:
    return UserConfig(
        name="alice", root=tmp, password_hash=bcrypt.hashpw(PW, bcrypt.gensalt(4)), **kw
    )


class FakeTransport:
    """Records what the userauth service sends; stands in for the SSH transport only."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.packets: list[tuple[int, bytes]] = []
        self.disconnected: list[tuple[int, bytes]] = []
        self.sessionID = b"sid"

    def isEncrypted(self, direction: str) -> bool:
        return True

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.disconnected.append((reason, desc))

    class transport:
        @staticmethod
        def getPeer() -> Any:
            class P:
                host, port = "127.0.0.1", 1

            return P()


class FakeFactory:
    def __init__(self, portal: Portal, clock: Clock, settings: AuthSettings) -> None:
        self.portal = portal
        self.clock = clock
        self.auth_settings = settings


class _Realm:
    def requestAvatar(self, avatar_id: bytes, mind: Any, *ifaces: Any) -> Any:
        return ifaces[0], object(), lambda: None


def _service(tmp: Path, settings: AuthSettings) -> tuple[UserAuthServer, FakeTransport, Clock]:
    users = UserDB([_user(tmp)])
    portal = Portal(_Realm())  # type: ignore[arg-type]
    portal.registerChecker(
        PasswordChecker(users, InlineBlocking(), bcrypt.hashpw(b"x", bcrypt.gensalt(4)))
    )
    clock = Clock()
    t = FakeTransport(FakeFactory(portal, clock, settings))
    svc = UserAuthServer()
    svc.transport = t
    svc.serviceStarted()
    return svc, t, clock


def _password_request(user: bytes, password: bytes) -> bytes:
    return NS(user) + NS(b"ssh-connection") + NS(b"password") + b"\x00" + NS(password)


def test_grace_time_disconnects(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, AuthSettings(login_grace_time=120, max_auth_tries=6))
    clock.advance(119)
    assert t.disconnected == []
    clock.advance(1.5)
    assert len(t.disconnected) == 1


def test_attempt_limit_disconnects_after_max_tries(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, AuthSettings(max_auth_tries=3, failure_delay=1.0))
    for i in range(3):
        svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", b"wrong%d" % i))
        # the failure is only answered after the delay
        failures = [p for p in t.packets if p[0] == userauth.MSG_USERAUTH_FAILURE]
        assert len(failures) == i
        clock.advance(1.0)
    assert t.disconnected, "third failure must disconnect"
    assert len([p for p in t.packets if p[0] == userauth.MSG_USERAUTH_FAILURE]) == 2


def test_failure_delay_applies_to_unknown_user_too(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, AuthSettings(failure_delay=2.0))
    svc.ssh_USERAUTH_REQUEST(_password_request(b"mallory", b"pw"))
    clock.advance(1.9)
    assert not any(p[0] == userauth.MSG_USERAUTH_FAILURE for p in t.packets)
    clock.advance(0.2)
    assert any(p[0] == userauth.MSG_USERAUTH_FAILURE for p in t.packets)


def test_right_password_succeeds_and_none_is_refused(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, AuthSettings())
    svc.ssh_USERAUTH_REQUEST(NS(b"alice") + NS(b"ssh-connection") + NS(b"none"))
    assert t.packets[-1][0] == userauth.MSG_USERAUTH_FAILURE
    assert b"none" not in t.packets[-1][1]


def test_password_checker_unknown_user_checks_dummy(tmp_path: Path) -> None:
    calls: list[str] = []

    class CountingBlocking(InlineBlocking):
        def run(self, fn: Any, /, *a: Any, **k: Any) -> Any:
            calls.append("bcrypt")
            return super().run(fn, *a, **k)

    users = UserDB([_user(tmp_path)])
    chk = PasswordChecker(users, CountingBlocking(), bcrypt.hashpw(b"x", bcrypt.gensalt(4)))
    results: list[Any] = []
    chk.requestAvatarId(credentials.UsernamePassword(b"nobody", b"x")).addBoth(results.append)
    chk.requestAvatarId(credentials.UsernamePassword(b"alice", PW)).addBoth(results.append)
    assert calls == ["bcrypt", "bcrypt"]  # the unknown user still pays for a hash
    assert results[0].check(UnauthorizedLogin)
    assert results[1] == b"alice"


def _key_creds(priv: Any, alg: bytes, *, sign: bool = True, sig_alg: bytes | None = None) -> Any:
    key = keys.Key(priv)
    blob = key.public().blob()
    data = b"session-data-to-sign"
    sig = key.sign(data, signatureType=sig_alg or alg) if sign else None
    return credentials.SSHPrivateKey(b"alice", alg, blob, data if sign else None, sig)


def test_public_key_checker(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    other = ed25519.Ed25519PrivateKey.generate()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    blobs = (keys.Key(ed).public().blob(), keys.Key(rsa_key).public().blob())
    users = UserDB([UserConfig(name="alice", root=tmp_path, authorized_keys=blobs)])
    chk = PublicKeyChecker(users)

    def outcome(creds: Any) -> Any:
        out: list[Any] = []
        chk.requestAvatarId(creds).addBoth(out.append)
        return out[0]

    assert outcome(_key_creds(ed, b"ssh-ed25519")) == b"alice"
    assert outcome(_key_creds(ed, b"ssh-ed25519", sign=False)).check(ValidPublicKey)
    assert outcome(_key_creds(other, b"ssh-ed25519")).check(UnauthorizedLogin)
    assert outcome(_key_creds(rsa_key, b"rsa-sha2-512")) == b"alice"
    # SHA-1 RSA signatures are refused even for an authorized key
    assert outcome(_key_creds(rsa_key, b"ssh-rsa")).check(UnauthorizedLogin)
    # a signature whose algorithm differs from the one claimed is refused
    assert outcome(_key_creds(rsa_key, b"rsa-sha2-512", sig_alg=b"ssh-rsa")).check(
        UnauthorizedLogin
    )


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    import subprocess

    priv = ed25519.Ed25519PrivateKey.generate()
    pub = priv.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (tmp_path / "k.pub").write_bytes(pub + b" test\n")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True
    )
    assert fingerprint(keys.Key(priv).public().blob()) == out.stdout.split()[1]
