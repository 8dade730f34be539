"""The PostgreSQL user store against a real throwaway cluster: schema, records, restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sftpd.auth.stores import schema
from sftpd.auth.stores.records import KeyRecord, UserDb, UserRecord
from sftpd.auth.stores.store import open_user_db
from sftpd.auth.users import StoreUnavailable
from tests.pgcluster import Cluster, start_cluster

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


@pytest.fixture
def db(cluster: Cluster) -> Iterator[UserDb]:
    udb = open_user_db(cluster.new_database(), Path("/"))
    yield udb
    udb.close()


def test_schema_created_and_migrated_forward(db: UserDb) -> None:
    assert db.kind == "postgresql" and db.version() == 0
    with db.db.transaction() as cur:
        schema.upgrade(cur, db.db.has_table, target=1)
        cur.execute(
            "INSERT INTO users (name, root, created, updated) VALUES (?, ?, 0, 0)",
            ("old", "/srv/old"),
        )
    assert db.upgrade() == (1, schema.LATEST)
    assert db.upgrade() == (schema.LATEST, schema.LATEST)
    assert db.get("old") is not None
    assert db.add_usage("old", 7, 1) is None  # never counted: nothing to add to
    assert db.set_usage("old", "/srv/old", 7, 1) == (7, 1)
    assert db.add_usage("old", -2, 0) == (5, 1)
    assert db.usage_row("old") == ("/srv/old", 5, 1)
    db.set_usage("file-user", "/srv/f", 1, 1)  # no foreign key: file users are counted too
    assert db.usage("file-user") == (1, 1)


def test_records_round_trip(db: UserDb) -> None:
    db.upgrade()
    rec = UserRecord(
        name="alice",
        root=Path("/srv/alice"),
        password_hash=b"$2b$04$abc",
        keys=(KeyRecord(KEY, "c", profile={"protocols": ["sftp"]}),),
        allow_exec=False,
        permissions={"/in": ["upload"]},
    )
    db.add(rec)
    assert db.get("alice") == rec
    assert db.enabled(["alice", "x"]) == {"alice"}
    assert db.delete("alice") and db.names() == []


def test_down_fails_quickly_then_recovers(cluster: Cluster, db: UserDb) -> None:
    db.upgrade()
    db.add(UserRecord(name="alice", root=Path("/srv/alice")))
    assert db.get("alice") is not None  # a pooled connection now exists
    cluster.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="postgresql"):
            db.get("alice")
        assert time.monotonic() - started < 30  # bounded by the pool/connect timeouts
    finally:
        cluster.start()
    assert db.get("alice") is not None
