"""The user-store seam in memory: records, the TOML store, and one lookup per login."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.common import NS
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from sftpd.assembly import build_factory
from sftpd.auth.avatar import Avatar
from sftpd.auth.checkers import LoggedIn, PasswordChecker, PublicKeyChecker
from sftpd.auth.realm import Realm
from sftpd.auth.users import (
    DEFAULT_PASSWORD_COST,
    AuthorizedKey,
    MemoryUserStore,
    StoreUnavailable,
    TomlUserStore,
    User,
    UserStore,
    bcrypt_cost,
)
from sftpd.config.model import Config, UserConfig
from sftpd.runtime.threads import InlineBlocking
from sftpd.ssh.userauth import AuthSettings, UserAuthServer
from tests.test_auth_inmemory import FakeFactory, FakeTransport, NextService, _request

PW = b"right-password"
KEY = keys.Key(ed25519.Ed25519PrivateKey.generate())
BLOB = KEY.public().blob()


def _hash(password: bytes = PW, cost: int = 4) -> bytes:
    return bcrypt.hashpw(password, bcrypt.gensalt(cost))


def _fired(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


class CountingStore:
    """A store that counts its lookups; ``hold`` keeps their answers until ``release``."""

    def __init__(self, inner: UserStore, *, hold: bool = False) -> None:
        self._inner = inner
        self._hold = hold
        self.lookups: list[str] = []
        self.held: list[tuple[defer.Deferred[User | None], defer.Deferred[User | None]]] = []
        self.fail = False

    @property
    def password_cost(self) -> int:
        return self._inner.password_cost

    def lookup(self, name: str) -> defer.Deferred[User | None]:
        self.lookups.append(name)
        if self.fail:
            return defer.fail(StoreUnavailable("connection refused"))
        answer = self._inner.lookup(name)
        if not self._hold:
            return answer
        later: defer.Deferred[User | None] = defer.Deferred()
        self.held.append((answer, later))
        return later

    def release(self) -> None:
        held, self.held = self.held, []
        for answer, later in held:
            answer.chainDeferred(later)

    def close(self) -> defer.Deferred[None]:
        return self._inner.close()


ALICE = User(
    name="alice",
    root=Path("/nonexistent/alice"),
    password_hash=_hash(),
    keys=(AuthorizedKey(BLOB, comment="alice@laptop"),),
)


def _service(
    store: UserStore,
) -> tuple[UserAuthServer, FakeTransport, Clock, list[User]]:
    """A userauth service on the real checkers and the real Realm; the realm's users listed."""
    seen: list[User] = []

    def make_context(user: User, key: object = None) -> Any:
        seen.append(user)
        return object()  # the avatar only keeps it

    realm = Realm(make_context, clock=Clock(), max_sessions=1, make_channel=lambda *a, **k: None)
    portal = Portal(realm)
    portal.registerChecker(PasswordChecker(store, InlineBlocking(), _hash(b"dummy")))
    portal.registerChecker(PublicKeyChecker(store))
    clock = Clock()
    t = FakeTransport(FakeFactory(portal, clock, AuthSettings(failure_delay=1.0)))
    svc = UserAuthServer()
    t.setService(svc)
    svc.transport = t
    svc.serviceStarted()
    return svc, t, clock, seen


def _key_request(svc: UserAuthServer, t: FakeTransport, *, signed: bool) -> bytes:
    alg = b"ssh-ed25519"
    body = NS(alg) + NS(BLOB)
    if not signed:
        return _request(b"publickey", b"\x00" + body)
    signed_data = (
        NS(t.sessionID)
        + bytes((userauth.MSG_USERAUTH_REQUEST,))
        + NS(b"alice")
        + NS(b"ssh-connection")
        + NS(b"publickey")
        + b"\x01"
        + body
    )
    return _request(b"publickey", b"\x01" + body + NS(KEY.sign(signed_data)))


# ---- the records and the stores ---------------------------------------------------------


def test_toml_store_converts_the_config_once_and_answers_with_deferreds(tmp_path: Path) -> None:
    cfg = UserConfig(
        name="bob",
        root=tmp_path,
        home="/in",
        password_hash=_hash(cost=5),
        authorized_keys=(BLOB,),
        read_only=True,
        allow_rsync=False,
        allow_exec=True,
    )
    store = TomlUserStore.from_config([cfg])
    assert isinstance(store, UserStore)
    user = _fired(store.lookup("bob"))
    assert user == User(
        name="bob",
        root=tmp_path,
        home="/in",
        password_hash=cfg.password_hash,
        keys=(AuthorizedKey(BLOB),),
        read_only=True,
        allow_rsync=False,
        allow_exec=True,
    )
    assert not isinstance(user, UserConfig)
    assert user.key(BLOB) == AuthorizedKey(BLOB) and user.key(b"other") is None
    assert _fired(store.lookup("nobody")) is None
    assert _fired(store.lookup("bob")) is user  # converted once, not per lookup
    assert store.password_cost == 5
    assert _fired(store.close()) is None


def test_password_cost_is_read_once_from_the_hashes(tmp_path: Path) -> None:
    def users(*costs: int | None) -> list[User]:
        return [
            User(name=f"u{i}", root=tmp_path, password_hash=None if c is None else _hash(cost=c))
            for i, c in enumerate(costs)
        ]

    assert MemoryUserStore(users(4, 5, 5)).password_cost == 5  # the most common
    assert MemoryUserStore(users(None, 6, 4)).password_cost == 6  # a tie: the first seen
    assert MemoryUserStore(users(None)).password_cost == DEFAULT_PASSWORD_COST
    assert MemoryUserStore(users(4), password_cost=11).password_cost == 11  # a setting wins
    assert bcrypt_cost(b"$2b$07$abcdefghijklmnopqrstuu") == 7
    assert bcrypt_cost(b"plain") is None and bcrypt_cost(None) is None


def test_the_assembly_takes_the_dummy_cost_from_the_store(tmp_path: Path) -> None:
    store = CountingStore(MemoryUserStore([ALICE], password_cost=9))
    factory = build_factory(
        Config(),
        reactor=Clock(),
        blocking=InlineBlocking(),
        auth_blocking=InlineBlocking(),
        host_keys={b"ssh-ed25519": KEY},
        store=store,
    )
    checkers = set(factory.portal.checkers.values())
    (pw,) = [c for c in checkers if isinstance(c, PasswordChecker)]
    assert pw._rounds == 9
    assert store.lookups == []  # building reads no user


def test_logged_in_is_the_name_as_bytes_carrying_the_user() -> None:
    entry = ALICE.keys[0]
    avatar_id = LoggedIn(b"alice", ALICE, entry)
    assert avatar_id == b"alice" and isinstance(avatar_id, bytes)
    assert avatar_id.user is ALICE and avatar_id.key is entry


def test_the_realm_refuses_an_avatar_id_without_a_user() -> None:
    from twisted.conch.interfaces import IConchUser

    realm = Realm(lambda u, k: object(), clock=Clock(), max_sessions=1, make_channel=print)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError):
        realm.requestAvatar(b"alice", None, IConchUser)
    iface, avatar, _logout = realm.requestAvatar(LoggedIn(b"alice", ALICE), None, IConchUser)
    assert iface is IConchUser and isinstance(avatar, Avatar)


# ---- one lookup per login ---------------------------------------------------------------


def test_a_key_login_looks_the_user_up_once_per_request() -> None:
    store = CountingStore(MemoryUserStore([ALICE]))
    svc, t, _clock, seen = _service(store)
    svc.ssh_USERAUTH_REQUEST(_key_request(svc, t, signed=False))
    assert t.replies() == [userauth.MSG_USERAUTH_PK_OK]
    assert store.lookups == ["alice"]  # the key query: one lookup
    svc.ssh_USERAUTH_REQUEST(_key_request(svc, t, signed=True))
    assert t.replies()[-1] == userauth.MSG_USERAUTH_SUCCESS
    assert isinstance(t.service, NextService)
    assert store.lookups == ["alice", "alice"]  # the signed login: one more, the realm none
    assert seen == [ALICE] and seen[0] is ALICE  # the record the checker found


def test_a_password_login_looks_the_user_up_once() -> None:
    store = CountingStore(MemoryUserStore([ALICE]))
    svc, t, _clock, seen = _service(store)
    svc.ssh_USERAUTH_REQUEST(_request(b"password", b"\x00" + NS(PW)))
    assert t.replies() == [userauth.MSG_USERAUTH_SUCCESS]
    assert store.lookups == ["alice"]
    assert seen == [ALICE]


def test_a_store_that_answers_later_holds_the_answer_not_the_reactor() -> None:
    store = CountingStore(MemoryUserStore([ALICE]), hold=True)
    svc, t, _clock, seen = _service(store)
    svc.ssh_USERAUTH_REQUEST(_request(b"password", b"\x00" + NS(PW)))
    assert t.replies() == [] and store.lookups == ["alice"]  # waiting, nothing blocked
    store.release()
    assert t.replies() == [userauth.MSG_USERAUTH_SUCCESS]
    assert store.lookups == ["alice"] and seen == [ALICE]


@pytest.mark.parametrize("method", ["password", "publickey"])
def test_an_unknown_user_is_logged_invalid_from_the_checkers_one_lookup(method: str) -> None:
    store = CountingStore(MemoryUserStore([ALICE]))
    svc, t, clock, _seen = _service(store)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for user in (b"mallory", b"alice"):
            if method == "password":
                rest = b"\x00" + NS(b"wrong")
            else:
                other = keys.Key(ed25519.Ed25519PrivateKey.generate()).public().blob()
                rest = b"\x00" + NS(b"ssh-ed25519") + NS(other)
            svc.ssh_USERAUTH_REQUEST(_request(method.encode(), rest, user))
            clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert store.lookups == ["mallory", "alice"]
    lines = [e for e in events if e.get("event") in ("auth_failure", "auth_key_refused")]
    assert [(e["user"], e["invalid_user"]) for e in lines] == [
        (b"mallory", True),
        (b"alice", False),
    ]
    assert lines[0]["log_format"].endswith(" (invalid user)")
    assert not lines[1]["log_format"].endswith(" (invalid user)")


def test_a_store_that_cannot_answer_fails_the_login_and_the_next_one_works() -> None:
    store = CountingStore(MemoryUserStore([ALICE]))
    svc, t, clock, seen = _service(store)
    store.fail = True
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        svc.ssh_USERAUTH_REQUEST(_request(b"password", b"\x00" + NS(PW)))
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert t.replies() == [userauth.MSG_USERAUTH_FAILURE] and not t.disconnected
    down = [e for e in events if e.get("event") == "store_down"]
    assert len(down) == 1 and down[0]["error"] == "connection refused"
    assert not [e for e in events if e.get("log_failure")]  # no traceback
    failed = [e for e in events if e.get("event") == "auth_failure"]
    assert len(failed) == 1 and failed[0]["invalid_user"] is False  # not known either way
    store.fail = False
    svc.ssh_USERAUTH_REQUEST(_request(b"password", b"\x00" + NS(PW)))
    assert t.replies()[-1] == userauth.MSG_USERAUTH_SUCCESS and seen == [ALICE]


# ---- the seam's shape -------------------------------------------------------------------


def test_only_the_toml_store_reads_the_config_model() -> None:
    """Checkers, realm and avatar see User records, never config.UserConfig (the shared
    key-line grammar in config.values is not the model)."""
    auth = Path(__file__).resolve().parent.parent / "sftpd" / "auth"
    readers = []
    for path in sorted(auth.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                ("sftpd.config.model", "sftpd.config.loader")
            ):
                readers.append(path.name)
    assert readers == ["users.py"], readers
