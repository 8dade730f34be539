"""The quota wiring of a login: shared usage with a user database, per process without one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task

from sftpd.auth.stores.records import UserDb
from sftpd.auth.stores.sqlite import SqliteDatabase
from sftpd.auth.stores.store import DbUsageStore
from sftpd.auth.users import User
from sftpd.config.model import Config
from sftpd.contexts import SYNC_EVERY, context_maker
from sftpd.runtime.threads import InlineBlocking
from sftpd.storage.quota import LimitExceeded

CT = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def _maker(tmp: Path, clock: task.Clock, db: UserDb | None) -> Any:
    store = None if db is None else DbUsageStore(db)
    return context_maker(Config(), reactor=clock, blocking=InlineBlocking(), usage_store=store)


def _db(tmp: Path) -> UserDb:
    db = UserDb(SqliteDatabase(tmp / "users.db"))
    db.upgrade()
    return db


def test_reactor_thread_writes_reach_the_database_by_the_timer(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "old").write_bytes(b"o" * 10)
    clock, db = task.Clock(), _db(tmp_path)
    make = _maker(tmp_path, clock, db)
    alice = User("alice", tmp_path / "root", quota_size=10_000)
    storage = make(alice).storage
    assert db.usage("alice") == (10, 1)  # first login: counted and stored
    f = storage.open("/up", CT, 0o600)
    f.pwrite(b"u" * 100, 0)  # a write sends no query (on the reactor thread it cannot)
    assert db.usage("alice") == (10, 1)
    clock.advance(SYNC_EVERY)
    assert db.usage("alice") == (110, 1)
    f.close()
    assert db.usage("alice") == (110, 2)  # the rename of the upload, before close returns
    second = make(alice).storage  # another session: the same usage, no second count
    second.remove("/old")
    assert db.usage("alice") == (100, 1)


def test_a_user_without_quota_never_touches_the_database(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    clock, db = task.Clock(), _db(tmp_path)
    storage = _maker(tmp_path, clock, db)(User("bob", tmp_path / "root")).storage
    storage.open("/x", CT, 0o600).close()
    clock.advance(SYNC_EVERY)
    assert db.usage("bob") is None


def test_without_a_database_each_process_counts(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "old").write_bytes(b"o" * 10)
    make = _maker(tmp_path, task.Clock(), None)
    alice = User("alice", tmp_path / "root", quota_size=15)
    f = make(alice).storage.open("/a", CT, 0o600)
    f.pwrite(b"a" * 5, 0)
    g = make(alice).storage.open("/b", CT, 0o600)  # a second session shares the count
    with pytest.raises(LimitExceeded, match="quota exceeded: 15 B of 15 B used"):
        g.pwrite(b"b", 0)
