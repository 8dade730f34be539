"""SIGHUP's reload in memory: what is applied, what needs a restart, what is refused."""

from __future__ import annotations

from pathlib import Path

import bcrypt
from twisted.logger import capturedLogs, formatEvent

from sftpd.auth.stores.store import ChainUserStore
from sftpd.auth.users import TomlUserStore, User
from sftpd.config.loader import load_config
from sftpd.contexts import LiveConfig
from sftpd.reload import reload_config
from sftpd.runtime.threads import InlineBlocking

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()


def user(name: str, root: Path) -> str:
    return f'[[users]]\nname = "{name}"\nroot = "{root}"\npassword_hash = "{HASH}"\n'


def reload(live: LiveConfig, store: ChainUserStore) -> tuple[bool, list[str]]:
    out: list[bool] = []
    with capturedLogs() as events:
        reload_config(live, store, blocking=InlineBlocking()).addCallback(out.append)
    return out[0], [formatEvent(e) for e in events]


def lookup(store: ChainUserStore, name: str) -> User | None:
    found: list[User | None] = []
    store.lookup(name).addCallback(found.append)
    return found[0]


def setup(tmp_path: Path) -> tuple[Path, LiveConfig, ChainUserStore]:
    cfg = tmp_path / "sftpd.toml"
    head = '[server]\nlisten = ["127.0.0.1:2222"]\nhost_keys_dir = "keys"\n'
    cfg.write_text(head + user("alice", tmp_path / "a"))
    config = load_config(cfg)
    return cfg, LiveConfig(config), ChainUserStore(TomlUserStore.from_config(config.users))


def test_new_user_and_exec_apply_listen_needs_a_restart(tmp_path: Path) -> None:
    cfg, live, store = setup(tmp_path)
    cfg.write_text(
        '[server]\nlisten = ["127.0.0.1:2223"]\nhost_keys_dir = "keys"\n[exec]\nallow_scp = false\n'
        + user("alice", tmp_path / "a")
        + user("bob", tmp_path / "b")
    )
    ok, lines = reload(live, store)
    assert ok
    assert lookup(store, "bob") is not None
    assert (tmp_path / "b").is_dir()  # created, as serve does at start
    assert live.config.exec.allow_scp is False
    assert live.config.server.listen == (("127.0.0.1", 2222),)  # the running one
    assert any("[server] changed; it takes effect at the next restart" in x for x in lines)
    assert any("reloaded: 2 user(s)" in x for x in lines)


def test_edge_and_event_changes_say_they_need_a_restart(tmp_path: Path) -> None:
    cfg, live, store = setup(tmp_path)
    before = live.config
    cfg.write_text(
        '[server]\nlisten = ["127.0.0.1:2222"]\nhost_keys_dir = "keys"\nidle_timeout = 60\n'
        "[defender]\nthreshold = 3\n"
        f'[audit]\nfile = "{tmp_path}/audit.jsonl"\n' + user("alice", tmp_path / "a")
    )
    ok, lines = reload(live, store)
    assert ok
    assert not any("[server] changed" in x for x in lines)  # listen and keys are the same
    restart = [x for x in lines if "it takes effect at the next restart" in x]
    assert any("[defender]" in x for x in restart), lines
    assert any("[audit]" in x for x in restart), lines
    assert live.config.edge == before.edge and live.config.events == before.events  # running


def test_a_broken_file_is_refused_and_the_old_users_kept(tmp_path: Path) -> None:
    cfg, live, store = setup(tmp_path)
    before = live.config
    cfg.write_text(user("bob", tmp_path / "b") + 'bogus = "x"\n')
    ok, lines = reload(live, store)
    assert not ok and live.config is before
    assert lookup(store, "alice") is not None and lookup(store, "bob") is None
    assert any("reload refused:" in x and "bogus" in x for x in lines)
    assert any("the running configuration is kept" in x for x in lines)
    assert not (tmp_path / "b").exists()


def test_a_database_down_does_not_refuse_the_file(tmp_path: Path) -> None:
    from twisted.internet import task

    from sftpd.auth.stores.records import UserDb
    from sftpd.auth.stores.sqlite import SqliteDatabase
    from sftpd.auth.stores.store import DbUserStore

    cfg, live, store = setup(tmp_path)
    db = UserDb(SqliteDatabase(tmp_path / "missing-dir" / "users.db"))  # cannot be opened
    store.db = DbUserStore(db, InlineBlocking(), clock=task.Clock(), migrated=False)
    cfg.write_text(cfg.read_text() + user("bob", tmp_path / "b"))
    ok, lines = reload(live, store)
    assert ok and lookup(store, "bob") is not None
    assert any("the user database is unreachable" in x and "not checked" in x for x in lines)
