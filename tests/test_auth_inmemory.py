"""In-memory tests of the userauth service (attempts, failure delay, parsing) and the checkers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys, transport, userauth
from twisted.conch.ssh.common import MP, NS
from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from sftpd.auth.checkers import PasswordChecker, PublicKeyChecker
from sftpd.auth.users import TomlUserStore
from sftpd.config.model import UserConfig
from sftpd.runtime.threads import InlineBlocking
from sftpd.ssh.hostkeys import fingerprint
from sftpd.ssh.userauth import AuthSettings, UserAuthServer

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
        self.auth_failures = 0  # the connection's count, as ServerTransport keeps it
        self.service: Any = None
        self.avatar: Any = None

    @property
    def closed(self) -> bool:
        return bool(self.disconnected)

    def setService(self, service: Any) -> None:
        self.service = service

    def isEncrypted(self, direction: str) -> bool:
        return True

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.disconnected.append((reason, desc))

    def replies(self) -> list[int]:
        return [kind for kind, _ in self.packets]

    class transport:
        @staticmethod
        def getPeer() -> Any:
            class P:
                host, port = "127.0.0.1", 1

            return P()


class NextService:
    """What the factory starts after a successful login."""

    name = b"ssh-connection"


class FakeFactory:
    services = {b"ssh-userauth": UserAuthServer, b"ssh-connection": NextService}

    def __init__(self, portal: Portal, clock: Clock, settings: AuthSettings) -> None:
        self.portal = portal
        self.clock = clock
        self.auth_settings = settings

    def getService(self, transport: Any, name: bytes) -> Any:
        return self.services.get(name)


class _Realm:
    def requestAvatar(self, avatar_id: bytes, mind: Any, *ifaces: Any) -> Any:
        return ifaces[0], object(), lambda: None


class CountingBlocking(InlineBlocking):
    """Runs inline, counting the bcrypt checks."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, fn: Any, /, *a: Any, **k: Any) -> Any:
        self.calls += 1
        return super().run(fn, *a, **k)


def _service(
    tmp: Path, settings: AuthSettings, blocking: InlineBlocking | None = None
) -> tuple[UserAuthServer, FakeTransport, Clock]:
    users = TomlUserStore.from_config([_user(tmp)])
    portal = Portal(_Realm())  # type: ignore[arg-type]
    dummy = bcrypt.hashpw(b"x", bcrypt.gensalt(4))
    portal.registerChecker(PasswordChecker(users, blocking or InlineBlocking(), dummy))
    portal.registerChecker(PublicKeyChecker(users))
    clock = Clock()
    t = FakeTransport(FakeFactory(portal, clock, settings))
    svc = UserAuthServer()
    t.setService(svc)
    svc.transport = t
    svc.serviceStarted()
    return svc, t, clock


def _request(method: bytes, rest: bytes = b"", user: bytes = b"alice") -> bytes:
    return NS(user) + NS(b"ssh-connection") + NS(method) + rest


def _password_request(user: bytes, password: bytes) -> bytes:
    return _request(b"password", b"\x00" + NS(password), user)


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


def test_none_is_refused_and_the_right_password_succeeds(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, AuthSettings())
    svc.ssh_USERAUTH_REQUEST(_request(b"none"))
    assert t.packets[-1][0] == userauth.MSG_USERAUTH_FAILURE
    assert b"none" not in t.packets[-1][1]
    svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", b"wrong"))
    clock.advance(1.0)
    assert t.replies() == [userauth.MSG_USERAUTH_FAILURE] * 2
    svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", PW))
    assert t.replies()[-1] == userauth.MSG_USERAUTH_SUCCESS
    assert isinstance(t.service, NextService)  # the next service runs
    assert t.avatar is not None and not t.disconnected


def test_password_checker_unknown_user_checks_dummy(tmp_path: Path) -> None:
    counting = CountingBlocking()
    users = TomlUserStore.from_config([_user(tmp_path)])
    chk = PasswordChecker(users, counting, bcrypt.hashpw(b"x", bcrypt.gensalt(4)))
    results: list[Any] = []
    chk.requestAvatarId(credentials.UsernamePassword(b"nobody", b"x")).addBoth(results.append)
    chk.requestAvatarId(credentials.UsernamePassword(b"alice", PW)).addBoth(results.append)
    assert counting.calls == 2  # the unknown user still pays for a hash
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
    users = TomlUserStore.from_config(
        [UserConfig(name="alice", root=tmp_path, authorized_keys=blobs)]
    )
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


# -- one request at a time (RFC 4252 section 5), against the connection's attempt count -------


def test_pipelined_requests_are_decided_in_turn_and_stop_at_the_limit(tmp_path: Path) -> None:
    counting = CountingBlocking()
    svc, t, clock = _service(tmp_path, AuthSettings(max_auth_tries=3), counting)
    for i in range(7):  # sent at once, ahead of any answer
        svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", b"wrong%d" % i))
    assert counting.calls == 1  # the next is checked only once this one is answered
    clock.advance(1.0)
    clock.advance(1.0)
    assert t.replies() == [userauth.MSG_USERAUTH_FAILURE] * 2 and not t.disconnected
    clock.advance(1.0)
    assert t.disconnected and counting.calls == 3  # three checks, then no more
    clock.advance(10.0)
    assert counting.calls == 3 and len(t.disconnected) == 1


def test_the_attempt_count_is_the_connections(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, AuthSettings(max_auth_tries=3, failure_delay=0))
    t.auth_failures = 2  # e.g. counted by an earlier ssh-userauth service on this connection
    svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", b"wrong"))
    clock.advance(0)
    assert t.disconnected and t.auth_failures == 3


def test_too_many_requests_ahead_of_the_answers_disconnect(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, AuthSettings())
    for i in range(20):
        svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", b"wrong%d" % i))
    assert t.disconnected[0][0] == transport.DISCONNECT_PROTOCOL_ERROR


# -- password requests: no password change, nothing after the password -------------------------


def _password_outcome(tmp: Path, rest: bytes) -> tuple[FakeTransport, list[Any]]:
    svc, t, clock = _service(tmp, AuthSettings(failure_delay=1.0))
    events: list[Any] = []
    globalLogPublisher.addObserver(events.append)
    try:
        svc.ssh_USERAUTH_REQUEST(_request(b"password", rest))
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    return t, events


@pytest.mark.parametrize(
    "rest",
    [
        b"\x01" + NS(PW) + NS(b"new-password"),  # a change request with the right old password
        b"\x00" + NS(PW) + b"junk",  # trailing bytes after the right password
        b"\x00" + NS(PW) + NS(b""),
    ],
    ids=["change", "trailing-bytes", "trailing-string"],
)
def test_password_change_and_trailing_bytes_fail(tmp_path: Path, rest: bytes) -> None:
    t, events = _password_outcome(tmp_path, rest)
    assert t.replies() == [userauth.MSG_USERAUTH_FAILURE]
    assert not t.disconnected and t.avatar is None and t.auth_failures == 1
    assert not _logged_failures(events)


def test_password_over_72_bytes_fails_quietly(tmp_path: Path) -> None:
    # bcrypt 5 raises ValueError for it; that must be a plain failed attempt.
    t, events = _password_outcome(tmp_path, b"\x00" + NS(PW + b"x" * 100))
    assert t.replies() == [userauth.MSG_USERAUTH_FAILURE] and not _logged_failures(events)


# -- malformed requests: FAILURE for a bad key, DISCONNECT for broken framing, no traceback ----


def _logged_failures(events: list[Any]) -> list[Any]:
    return [e for e in events if "log_failure" in e or e.get("isError")]


def _rsa_blob(e: int, n: int) -> bytes:
    return NS(b"ssh-rsa") + MP(e) + MP(n)


_GOOD_KEY = keys.Key(ed25519.Ed25519PrivateKey.generate()).public().blob()
_BAD_KEYS = {
    "rsa-e-over-n": (b"rsa-sha2-256", _rsa_blob(65537, 3)),
    "rsa-n-zero": (b"rsa-sha2-256", _rsa_blob(65537, 0)),
    "ed25519-7-bytes": (b"ssh-ed25519", NS(b"ssh-ed25519") + NS(b"1234567")),
    "garbage": (b"ssh-ed25519", b"\xff\xfe not a key"),
    "non-ascii-alg": (b"\xff\xfe", b"\xff"),
}


@pytest.mark.parametrize("signed", [False, True], ids=["query", "signed"])
@pytest.mark.parametrize("name", sorted(_BAD_KEYS))
def test_unparsable_public_keys_fail(tmp_path: Path, name: str, signed: bool) -> None:
    alg, blob = _BAD_KEYS[name]
    svc, t, clock = _service(tmp_path, AuthSettings())
    events: list[Any] = []
    globalLogPublisher.addObserver(events.append)
    try:
        rest = bytes([signed]) + NS(alg) + NS(blob) + (NS(NS(alg) + NS(b"sig")) if signed else b"")
        svc.ssh_USERAUTH_REQUEST(_request(b"publickey", rest))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert t.replies() == [userauth.MSG_USERAUTH_FAILURE] and not t.disconnected
    assert not _logged_failures(events)


@pytest.mark.parametrize(
    "packet",
    [
        _request(b"publickey", b"\x00"),  # only the flag byte
        _request(b"publickey", b""),  # not even the flag
        _request(b"publickey", b"\x00" + NS(b"ssh-ed25519") + b"\x00\x00\x01\x00short"),
        _request(b"publickey", b"\x01" + NS(b"ssh-ed25519") + NS(_GOOD_KEY)),  # no signature
        _request(b"password", b"\x00"),  # no password string
        _request(b"password", b""),
        _request(b"password", b"\x01" + NS(PW)),  # a change request without the new password
        NS(b"alice") + NS(b"ssh-connection"),  # no method name
        NS(b"alice") + NS(b"ssh-connection") + b"\x00\x00\x00\x09pass",  # method name cut
        b"",
    ],
    ids=[
        "pk-flag-only",
        "pk-empty",
        "pk-blob-cut",
        "pk-no-signature",
        "pw-no-string",
        "pw-empty",
        "pw-change-no-new",
        "no-method",
        "method-cut",
        "empty",
    ],
)
def test_truncated_requests_disconnect_with_a_protocol_error(tmp_path: Path, packet: bytes) -> None:
    svc, t, clock = _service(tmp_path, AuthSettings())
    events: list[Any] = []
    globalLogPublisher.addObserver(events.append)
    try:
        svc.ssh_USERAUTH_REQUEST(packet)
        clock.advance(5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert t.disconnected == [
        (transport.DISCONNECT_PROTOCOL_ERROR, b"malformed authentication request")
    ]
    assert t.replies() == [] and not _logged_failures(events)
    lines = [e for e in events if e.get("event") == "auth_bad"]
    assert len(lines) == 1


def test_unknown_next_service_disconnects_before_checking(tmp_path: Path) -> None:
    counting = CountingBlocking()
    svc, t, clock = _service(tmp_path, AuthSettings(), counting)
    for service in (b"ssh-userauth", b"no-such-service"):
        svc.ssh_USERAUTH_REQUEST(NS(b"alice") + NS(service) + NS(b"password") + b"\x00" + NS(PW))
    assert t.disconnected[0][0] == transport.DISCONNECT_SERVICE_NOT_AVAILABLE
    assert counting.calls == 0 and t.avatar is None


class HeldBlocking(InlineBlocking):
    """Holds each call until ``release`` (a bcrypt check still running in its thread)."""

    def __init__(self) -> None:
        self.held: list[Any] = []

    def run(self, fn: Any, /, *a: Any, **k: Any) -> Any:
        from twisted.internet import defer

        d: Any = defer.Deferred()
        self.held.append((d, fn, a, k))
        return d

    def release(self) -> None:
        for d, fn, a, k in self.held:
            d.callback(fn(*a, **k))
        self.held.clear()


def test_a_password_accepted_after_the_connection_closed_is_given_back(tmp_path: Path) -> None:
    """The check finished after the client hung up (or the edge evicted the connection):
    no SUCCESS, no avatar on the dead transport, and the login's logout runs at once."""
    held = HeldBlocking()
    svc, t, clock = _service(tmp_path, AuthSettings(), held)
    logouts: list[bool] = []

    class Realm:
        def requestAvatar(self, avatar_id: bytes, mind: Any, *ifaces: Any) -> Any:
            return ifaces[0], object(), lambda: logouts.append(True)

    svc.portal.realm = Realm()
    svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", PW))
    t._closed = True  # type: ignore[attr-defined]  # ServerTransport.connectionLost ran
    held.release()
    assert userauth.MSG_USERAUTH_SUCCESS not in t.replies()
    assert t.avatar is None and logouts == [True]
