"""Database rows become Users through the [[users]] checks; bad rows refuse; a late database."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.logger import globalLogPublisher

from sftpd.auth.stores.records import InvalidRecord, KeyRecord, UserDb, UserRecord
from sftpd.auth.stores.sqlite import SqliteDatabase
from sftpd.auth.stores.store import DbUserStore
from sftpd.auth.users import StoreUnavailable, User
from sftpd.runtime.threads import InlineBlocking

HASH = b"$2b$04$3n1a2oxP7bIYJt/eQTWRbOW3VAwP7YeMwzK8.7yCG7xKXj1M2H2oi"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
TOTP = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def full() -> UserRecord:
    return UserRecord(
        name="alice",
        root=Path("/srv/alice"),
        home="/in",
        password_hash=HASH,
        keys=(
            KeyRecord(
                KEY,
                "backup",
                options=(("from", "10.0.0.0/8"),),
                profile={"permissions": ["list", "upload"], "protocols": ["sftp"], "home": "/b"},
            ),
        ),
        permissions={"/": ["list", "download"], "/in": ["list", "upload", "create_dirs"]},
        quota_size=1000,
        quota_files=7,
        settings={
            "max_upload_size": 500,
            "upload_mode": "direct",
            "deny_files": ["*.exe"],
            "hide_files": [".*"],
            "principals": ["alice", "ops"],
            "totp_secret": TOTP,
            "require": [["publickey", "password"]],
            "max_sessions": 3,
            "allowed_sources": ["10.0.0.0/8"],
        },
    )


def test_a_row_carries_everything_a_users_table_says() -> None:
    user = full().to_user()
    assert user.permissions == (
        ("/", ("list", "download")),
        ("/in", ("list", "upload", "create_dirs")),
    )
    assert (user.quota_size, user.quota_files, user.max_upload_size) == (1000, 7, 500)
    assert user.upload_mode == "direct"
    assert user.deny_files == ("*.exe",) and user.hide_files == (".*",)
    assert user.principals == ("alice", "ops") and user.totp_secret == TOTP
    assert user.require == (("publickey", "password"),)
    assert user.edge.max_sessions == 3 and user.edge.allows("10.1.2.3")
    assert not user.edge.allows("192.0.2.1")
    key = user.key(full().keys[0].blob)
    assert key is not None and key.comment == "backup"
    assert key.permissions == ("list", "upload") and key.protocols == ("sftp",)
    assert key.home == "/b"
    assert key.options.from_patterns == ("10.0.0.0/8",)  # the profile keeps the options


def test_defaults_match_a_minimal_users_table() -> None:
    user = UserRecord(name="bob", root=Path("/srv/bob"), password_hash=HASH).to_user()
    assert user == User(name="bob", root=Path("/srv/bob"), password_hash=HASH)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"permissions": ["lst"]}, "permissions[0]", "unknown permission 'lst'"),
        ({"permissions": {"in": ["list"]}}, 'permissions."in"', "is not absolute"),
        ({"permissions": "list"}, "permissions", "expected a list of permission names"),
        ({"quota_size": -1}, "quota_size", "expected an integer from 0"),
        ({"home": "in"}, "home", "is not absolute"),
        ({"root": Path("rel")}, "root", "not an absolute path"),
        ({"password_hash": b"plain"}, "password_hash", "not a bcrypt hash"),
        ({"settings": {"upload_mode": "fast"}}, "upload_mode", 'expected "atomic" or "direct"'),
        ({"settings": {"deny_files": ["a/b"]}}, "deny_files[0]", "cannot match"),
        ({"settings": {"allowed_sources": ["10.0.0.300"]}}, "allowed_sources[0]", "not an address"),
        ({"settings": {"require": [["pw"]]}}, "require[0]", "unknown method 'pw'"),
        ({"settings": {"root": "/etc"}}, "settings.root", "unknown"),
        ({"settings": {"bogus": 1}}, "settings.bogus", "unknown"),
    ],
)
def test_a_bad_row_names_the_field(change: dict[str, Any], field: str, message: str) -> None:
    rec = UserRecord(name="bob", root=Path("/srv/bob"), password_hash=HASH)
    from dataclasses import replace

    with pytest.raises(InvalidRecord) as info:
        replace(rec, **change).to_user()
    fields = [f for f, _ in info.value.problems]
    assert field in fields, info.value.problems
    assert message in str(info.value) and "/srv/bob" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (KeyRecord(KEY, profile={"permissions": ["uplaod"]}), "permissions[0]: unknown permission"),
        (KeyRecord(KEY, profile={"protocols": ["ftp"]}), "protocols[0]: unknown protocol 'ftp'"),
        (KeyRecord(KEY, profile={"colour": "red"}), "profile.colour: unknown"),
        (KeyRecord(KEY, options=(("from", "not a net!"),)), "from"),
        (KeyRecord(KEY, options=(("bogus-option", None),)), "bogus-option"),
    ],
)
def test_a_bad_key_names_its_fingerprint(key: KeyRecord, message: str) -> None:
    rec = UserRecord(name="bob", root=Path("/srv/bob"), keys=(key,))
    with pytest.raises(InvalidRecord) as info:
        rec.to_user()
    field, text = info.value.problems[0]
    assert field == f"key {key.fingerprint}" and message in text, info.value.problems


def result(d: object) -> object:
    out: list[object] = []
    d.addBoth(out.append)  # type: ignore[attr-defined]
    return out[0]


@pytest.fixture
def events() -> Any:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_store_refuses_a_bad_row_and_logs_user_and_field(tmp_path: Path, events: Any) -> None:
    db = UserDb(SqliteDatabase(tmp_path / "users.db"))
    db.upgrade()
    db.add(UserRecord(name="bob", root=Path("/srv/bob"), permissions=["lst"], password_hash=HASH))
    db.add(UserRecord(name="eve", root=Path("/srv/eve"), permissions=["list"], password_hash=HASH))
    store = DbUserStore(db, InlineBlocking(), clock=task.Clock(), cache_seconds=5)
    assert result(store.lookup("bob")) is None
    ok = result(store.lookup("eve"))
    assert isinstance(ok, User) and ok.permissions == (("/", ("list",)),)
    bad = [e for e in events if e.get("event") == "user_invalid"]
    assert len(bad) == 1 and bad[0]["user"] == "bob"
    assert "permissions[0]: unknown permission 'lst'" in bad[0]["problems"]
    assert result(store.lookup("bob")) is None  # cached: logged once per cache period
    assert len([e for e in events if e.get("event") == "user_invalid"]) == 1


def test_a_database_unreachable_at_start_is_migrated_when_it_answers(
    tmp_path: Path, events: Any
) -> None:
    where = tmp_path / "later"  # sqlite cannot open a file in a missing directory
    db = UserDb(SqliteDatabase(where / "users.db"))
    clock = task.Clock()
    store = DbUserStore(db, InlineBlocking(), clock=clock, cache_seconds=0, migrated=False)
    with pytest.raises(StoreUnavailable):
        db.upgrade()
    store.start_retrying("sqlite: unable to open database file", every=5)
    assert [e["event"] for e in events if e.get("event", "").startswith("db_")] == [
        "db_unreachable"
    ]
    failure = result(store.lookup("bob"))
    assert failure.check(StoreUnavailable)  # type: ignore[attr-defined]
    clock.advance(5)  # still down: tried again, logged once
    assert not store.ready
    assert [e.get("event") for e in events].count("db_unreachable") == 1
    where.mkdir()
    clock.advance(5)
    assert store.ready and db.version() > 0
    assert [e.get("event") for e in events].count("db_ready") == 1
    db.add(UserRecord(name="bob", root=Path("/srv/bob"), password_hash=HASH))
    assert isinstance(result(store.lookup("bob")), User)
    assert not clock.getDelayedCalls()  # no more retries
    shutil.rmtree(where)


def test_a_login_may_be_the_first_to_reach_a_late_database(tmp_path: Path, events: Any) -> None:
    where = tmp_path / "later"
    db = UserDb(SqliteDatabase(where / "users.db"))
    clock = task.Clock()
    store = DbUserStore(db, InlineBlocking(), clock=clock, cache_seconds=0, migrated=False)
    store.start_retrying("down", every=5)
    where.mkdir()
    assert result(store.lookup("nobody")) is None  # migrates, then answers
    assert store.ready and [e.get("event") for e in events].count("db_ready") == 1
    clock.advance(5)
    assert [e.get("event") for e in events].count("db_ready") == 1
    assert not clock.getDelayedCalls()
    result(store.close())


def test_a_profiled_key_keeps_its_authorized_keys_options(tmp_path: Path) -> None:
    from sftpd.auth.users import user_from_config
    from sftpd.config.loader import load_config

    cfg = tmp_path / "sftpd.toml"
    cfg.write_text(
        '[[users]]\nname = "alice"\nroot = "a"\n'
        f"authorized_keys = ['from=\"10.0.0.0/8\" {KEY}']\n"
        f'[[users.keys]]\nkey = "{KEY} backup"\npermissions = ["list", "upload"]\n'
    )
    user = user_from_config(load_config(cfg).users[0])
    entry = user.key(full().keys[0].blob)
    assert entry is not None and entry.permissions == ("list", "upload")
    assert entry.options.from_patterns == ("10.0.0.0/8",)  # not widened by the profile


def test_public_view_hides_the_credentials() -> None:
    shown = full().public()
    assert shown["password"] is True and shown["settings"]["totp_secret"] is True
    assert HASH.decode() not in str(shown) and TOTP not in str(shown)
