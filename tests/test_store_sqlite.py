"""The SQLite user store: schema versions and migrations, records, the cache, the chain."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twisted.internet import task

from sftpd.auth.stores import schema
from sftpd.auth.stores.records import KeyRecord, UserDb, UserRecord
from sftpd.auth.stores.sqlite import SqliteDatabase
from sftpd.auth.stores.store import ChainUserStore, DbUserStore, open_user_db
from sftpd.auth.users import MemoryUserStore, StoreUnavailable, User
from sftpd.config.model import UsersDbConfig
from sftpd.runtime.threads import InlineBlocking

HASH = b"$2b$04$3n1a2oxP7bIYJt/eQTWRbOW3VAwP7YeMwzK8.7yCG7xKXj1M2H2oi"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def fresh(tmp_path: Path) -> UserDb:
    db = UserDb(SqliteDatabase(tmp_path / "users.db"))
    db.upgrade()
    return db


def result(d: object) -> object:
    out: list[object] = []
    d.addBoth(out.append)  # type: ignore[attr-defined]
    return out[0]


def test_schema_created_versioned_and_idempotent(tmp_path: Path) -> None:
    db = UserDb(SqliteDatabase(tmp_path / "users.db"))
    assert db.version() == 0
    assert db.upgrade() == (0, schema.LATEST)
    assert db.upgrade() == (schema.LATEST, schema.LATEST)
    conn = sqlite3.connect(tmp_path / "users.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migration_from_version_1_keeps_users(tmp_path: Path) -> None:
    sdb = SqliteDatabase(tmp_path / "users.db")
    with sdb.transaction() as cur:
        schema.upgrade(cur, sdb.has_table, target=1)
    db = UserDb(sdb)
    assert db.version() == 1
    with sdb.transaction() as cur:
        cur.execute(
            "INSERT INTO users (name, root, created, updated) VALUES (?, ?, 0, 0)",
            ("old", "/srv/old"),
        )
    with sdb.transaction() as cur:
        schema.upgrade(cur, sdb.has_table, target=2)
        cur.execute("INSERT INTO usage (user_name, bytes, files) VALUES ('old', 10, 1)")
    assert db.upgrade() == (2, schema.LATEST)
    rec = db.get("old")
    assert rec is not None and rec.root == Path("/srv/old")
    assert db.usage_row("old") == ("/srv/old", 10, 1)  # kept by the usage table's move
    assert db.add_usage("old", 5, 1) == (15, 2)
    assert db.usage("old") == (15, 2)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = fresh(tmp_path)
    with db.db.transaction() as cur:
        cur.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ValueError, match="newer than this sftpd"):
        db.upgrade()


def test_record_round_trip(tmp_path: Path) -> None:
    db = fresh(tmp_path)
    rec = UserRecord(
        name="alice",
        root=Path("/srv/alice"),
        home="/in",
        password_hash=HASH,
        keys=(KeyRecord(KEY, "laptop", profile={"permissions": ["list", "upload"]}),),
        read_only=True,
        allow_rsync=False,
        permissions={"/": ["list"]},
        quota_size=100,
        quota_files=3,
    )
    db.add(rec)
    assert db.get("alice") == rec
    with pytest.raises(ValueError, match="exists already"):
        db.add(rec)
    user = rec.to_user()
    assert user.key(rec.keys[0].blob) is not None and user.read_only
    assert db.update("alice", disabled=True).disabled
    assert db.enabled(["alice", "bob"]) == set()
    assert db.delete("alice") and db.get("alice") is None


def test_cache_reuses_then_asks_again(tmp_path: Path) -> None:
    db = fresh(tmp_path)
    db.add(UserRecord(name="alice", root=Path("/srv/a")))
    clock = task.Clock()
    store = DbUserStore(db, InlineBlocking(), clock=clock, cache_seconds=5)
    first = result(store.lookup("alice"))
    assert isinstance(first, User)
    db.update("alice", disabled=True)
    assert result(store.lookup("alice")) == first  # cached
    clock.advance(5)
    assert result(store.lookup("alice")) is None  # disabled: as unknown


def test_chain_file_first_then_db(tmp_path: Path) -> None:
    db = fresh(tmp_path)
    db.add(UserRecord(name="dbuser", root=Path("/srv/d")))
    file_user = User(name="fileuser", root=Path("/srv/f"))
    chain = ChainUserStore(
        MemoryUserStore([file_user]),
        DbUserStore(db, InlineBlocking(), clock=task.Clock(), cache_seconds=0),
    )
    assert result(chain.lookup("fileuser")) == file_user
    found = result(chain.lookup("dbuser"))
    assert isinstance(found, User) and found.name == "dbuser"
    assert result(chain.lookup("nobody")) is None
    assert result(chain.still_enabled(["fileuser", "dbuser", "nobody"])) == {"fileuser", "dbuser"}


def test_unreadable_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    db = UserDb(SqliteDatabase(tmp_path / "dir.db"))
    store = DbUserStore(db, InlineBlocking(), clock=task.Clock())
    failure = result(store.lookup("alice"))
    assert failure.check(StoreUnavailable)  # type: ignore[attr-defined]


def test_url_forms(tmp_path: Path) -> None:
    rel = open_user_db("sqlite:users.db", tmp_path)
    assert rel.db.path == tmp_path / "users.db"  # type: ignore[attr-defined]
    absolute = open_user_db(f"sqlite://{tmp_path}/x.db", Path("/"))
    assert absolute.db.path == tmp_path / "x.db"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="sqlite: or postgresql"):
        open_user_db("mysql://x", tmp_path)
    with pytest.raises(ValueError, match="SFTPD_TEST_UNSET is not set"):
        UsersDbConfig(url_env="SFTPD_TEST_UNSET").resolved_url()


def test_usage_deltas_through_the_store(tmp_path: Path) -> None:
    db = fresh(tmp_path)
    db.add(UserRecord(name="alice", root=Path("/srv/a")))
    store = DbUserStore(db, InlineBlocking(), clock=task.Clock())
    assert result(store.usage("alice")) is None  # never counted: the caller scans
    assert result(store.add_usage("alice", 100, 2)) is None  # nothing to add to
    assert db.set_usage("alice", "/srv/a", 100, 2, replace=False) == (100, 2)
    assert db.set_usage("alice", "/srv/a", 7, 7, replace=False) == (100, 2)  # kept
    assert result(store.add_usage("alice", -40, -1)) == (60, 1)
    assert result(store.usage("alice")) == (60, 1)
    assert db.set_usage("alice", "/srv/a", 5, 1) == (5, 1)  # a rescan replaces
    assert db.delete("alice") and db.usage("alice") is None
    db.set_usage("bob", "/srv/b", 1, 1)  # a file user of that name, counted before
    db.add(UserRecord(name="bob", root=Path("/srv/b2")))
    assert db.usage("bob") is None  # not the new user's
