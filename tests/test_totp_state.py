"""The TOTP steps accepted, shared: one SQLite file for two processes, the user database, PG."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.task import Clock

from sftpd.auth.checkers import PasswordChecker
from sftpd.auth.kbdcheck import KeyboardInteractiveChecker
from sftpd.auth.kbdint import KeyboardInteractiveCredentials
from sftpd.auth.stores import schema
from sftpd.auth.stores.records import UserDb
from sftpd.auth.stores.sqlite import SqliteDatabase
from sftpd.auth.stores.store import ChainUserStore, DbUserStore
from sftpd.auth.totp import new_secret, totp
from sftpd.auth.totpstate import ProcessTotpState, SqlTotpState, shared_totp_state
from sftpd.auth.users import MemoryUserStore, StoreUnavailable, User
from sftpd.runtime.threads import InlineBlocking
from tests.pgcluster import Cluster, start_cluster


def result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def test_two_connections_to_one_runtime_file_accept_a_step_once(tmp_path: Path) -> None:
    # two SqliteDatabase objects on one file: what two worker processes hold
    one, two = (
        SqlTotpState(SqliteDatabase(tmp_path / "totp.db"), InlineBlocking(), create=True)
        for _ in range(2)
    )
    assert result(one.claim("bob", 100)) is True
    assert result(two.claim("bob", 100)) is False  # the other process: already used
    assert result(one.claim("bob", 99)) is False  # an earlier code is gone too
    assert result(two.claim("alice", 100)) is True  # per user
    assert result(two.claim("bob", 101)) is True
    assert result(one.claim("bob", 101)) is False
    one.close()
    two.close()


def test_the_user_database_keeps_them_after_its_migration(tmp_path: Path) -> None:
    db = UserDb(SqliteDatabase(tmp_path / "users.db"))
    assert db.upgrade() == (0, schema.LATEST)
    state = SqlTotpState(db.db, InlineBlocking())  # no create: the migration made the table
    assert result(state.claim("bob", 7)) is True
    assert result(state.claim("bob", 7)) is False
    db.db.close()


def test_which_state_a_server_gets(tmp_path: Path) -> None:
    blocking = InlineBlocking()
    assert isinstance(shared_totp_state(MemoryUserStore(), blocking), ProcessTotpState)
    in_runtime = shared_totp_state(MemoryUserStore(), blocking, str(tmp_path))
    assert isinstance(in_runtime, SqlTotpState)
    assert result(in_runtime.claim("bob", 1)) is True and (tmp_path / "totp.db").exists()

    users = UserDb(SqliteDatabase(tmp_path / "users.db"))
    users.upgrade()
    chain = ChainUserStore(MemoryUserStore(), DbUserStore(users, blocking, clock=Clock()))
    in_db = shared_totp_state(chain, blocking, str(tmp_path))
    assert isinstance(in_db, SqlTotpState)
    assert result(in_db.claim("bob", 1)) is True  # the database's table, not the runtime file
    users.db.close()


class DownState:
    def claim(self, user: str, step: int) -> defer.Deferred[bool]:
        return defer.fail(StoreUnavailable("sqlite: disk I/O error"))


def test_a_state_that_cannot_answer_refuses_the_login(tmp_path: Path) -> None:
    import bcrypt

    secret = new_secret()
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    user = User(
        "bob", tmp_path, password_hash=bcrypt.hashpw(b"pw", bcrypt.gensalt(4)), totp_secret=secret
    )
    store = MemoryUserStore([user])
    passwords = PasswordChecker(store, InlineBlocking(), rounds=4)
    now = 1_700_000_000.0
    creds = KeyboardInteractiveCredentials(b"bob", b"pw", totp(key, now).encode(), (user,))
    down = KeyboardInteractiveChecker(store, passwords, DownState(), lambda: now)
    failure = result(down.requestAvatarId(creds))
    assert failure.check(UnauthorizedLogin) and "store unavailable" in failure.getErrorMessage()
    ok = KeyboardInteractiveChecker(store, passwords, ProcessTotpState(), lambda: now)
    assert result(ok.requestAvatarId(creds)) == b"bob"
    assert result(ok.requestAvatarId(creds)).check(UnauthorizedLogin)  # used once


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


@pytest.mark.e2e
def test_postgresql_accepts_a_step_once_across_pools(cluster: Cluster) -> None:
    from sftpd.auth.stores.postgres import PostgresDatabase

    url = cluster.new_database()
    first, second = PostgresDatabase(url), PostgresDatabase(url)  # two nodes
    try:
        UserDb(first).upgrade()
        a, b = SqlTotpState(first, InlineBlocking()), SqlTotpState(second, InlineBlocking())
        assert result(a.claim("bob", 50)) is True
        assert result(b.claim("bob", 50)) is False
        assert result(b.claim("bob", 49)) is False
        assert result(b.claim("bob", 51)) is True
    finally:
        first.close()
        second.close()
