"""`sftpd user` and `sftpd db`: argument checks, exit codes and what reaches the database."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import bcrypt
import pytest

from sftpd.auth.stores import schema
from sftpd.auth.stores.records import UserDb
from sftpd.auth.stores.sqlite import SqliteDatabase
from sftpd.cli import main

PW = "s3cret-Pass"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "sftpd.toml"
    path.write_text(
        '[server]\nhost_keys_dir = "keys"\n[users_db]\nurl = "sqlite:users.db"\n'
        '[[users]]\nname = "fileuser"\nroot = "files"\n'
        'password_hash = "$2b$04$3n1a2oxP7bIYJt/eQTWRbOW3VAwP7YeMwzK8.7yCG7xKXj1M2H2oi"\n'
    )
    return path


@pytest.fixture
def key(tmp_path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@host", "-f", tmp_path / "k"],
        check=True,
    )
    return tmp_path / "k.pub"


def db_of(conf: Path) -> UserDb:
    return UserDb(SqliteDatabase(conf.parent / "users.db"))


def run(
    args: list[str], conf: Path, capsys: pytest.CaptureFixture[str], stdin: str = ""
) -> tuple[int, str, str]:
    import sys

    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main([*args, "--config", str(conf), "--rounds", "4"])
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


def test_add_with_key_and_password(
    conf: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = conf.parent / "bob"
    code, out, _ = run(
        ["user", "add", "bob", "--root", str(root), "--key", str(key), "--password-stdin",
         "--quota-size", "1000", "--permissions", "list,download"],
        conf, capsys, stdin=PW + "\n",
    )  # fmt: skip
    assert code == 0 and "added user 'bob' with 1 key(s)" in out
    assert root.is_dir()
    rec = db_of(conf).get("bob")
    assert rec is not None and rec.password_hash is not None
    assert bcrypt.checkpw(PW.encode(), rec.password_hash)
    assert rec.keys[0].comment == "me@host" and rec.quota_size == 1000
    assert rec.permissions == ["list", "download"]
    code, out, _ = run(["user", "list", "--json"], conf, capsys)
    assert code == 0 and json.loads(out)[0]["keys"][0]["fingerprint"] == rec.keys[0].fingerprint
    assert "$2b$" not in out  # never the hash


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["user", "add", "bad/name", "--root", "x", "--password-stdin"], "invalid user name"),
        (["user", "add", "fileuser", "--root", "x", "--password-stdin"], "in [[users]] of"),
        (["user", "add", "bob", "--root", "x"], "no way to log in"),
        (["user", "add", "bob", "--root", "x", "--key", "ssh-ed25519 AAAA"], "does not parse"),
        (["user", "add", "bob", "--root", "x", "--key", "nofile"], "(and no such file)"),
        (["user", "add", "bob", "--root", "x", "--password-stdin", "--permissions", "all"],
         "--permissions: unknown permission 'all'"),
        (["user", "add", "bob", "--root", "x", "--password-stdin", "--home", "in"],
         "is not absolute"),
        (["user", "add", "bob", "--root", "x", "--password"], "pipe it with --password-stdin"),
        (["user", "show", "nobody"], "no user 'nobody' in the database"),
        (["user", "passwd", "nobody", "--password-stdin"], "no user 'nobody'"),
        (["user", "key", "remove", "nobody", "SHA256:x"], "no user 'nobody'"),
        (["user", "disable", "nobody"], "no user 'nobody'"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2(
    args: list[str], message: str, conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(args, conf, capsys, stdin=PW + "\n")
    assert code == 2 and message in err, err
    db = db_of(conf)
    db.upgrade()
    assert db.names() == []


def test_argparse_refuses_password_on_the_command_line(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["user", "add", "bob", "--root", "x", "--password", PW], conf, capsys)
    assert code == 2 and "unrecognized arguments" in err


def test_quota_must_be_a_count(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["user", "add", "b", "--root", "x", "--password-stdin", "--quota-size", "-1"], conf, capsys
    )
    assert code == 2 and "--quota-size: expected a number of bytes >= 0" in err


def test_without_users_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plain.toml"
    path.write_text('[[users]]\nname = "a"\nroot = "a"\npassword_hash = "x"\n')
    code, _, err = run(["user", "list"], path, capsys)
    assert code == 2 and "password_hash" in err  # the config's own error first
    path.write_text(
        '[[users]]\nname = "a"\nroot = "a"\n'
        'password_hash = "$2b$04$3n1a2oxP7bIYJt/eQTWRbOW3VAwP7YeMwzK8.7yCG7xKXj1M2H2oi"\n'
    )
    code, _, err = run(["user", "list"], path, capsys)
    assert code == 2 and "has no [users_db]" in err


def test_key_add_remove_disable_del(
    conf: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = conf.parent / "bob"
    assert run(["user", "add", "bob", "--root", str(root), "--password-stdin"], conf, capsys,
               stdin=PW + "\n")[0] == 0  # fmt: skip
    code, out, _ = run(
        ["user", "key", "add", "bob", str(key), "--protocols", "sftp,rsync", "--home", "/b"],
        conf, capsys,
    )  # fmt: skip
    assert code == 0
    rec = db_of(conf).get("bob")
    assert rec is not None and rec.keys[0].profile == {"protocols": ["sftp", "rsync"], "home": "/b"}
    fp = rec.keys[0].fingerprint
    assert fp in out
    code, _, err = run(["user", "key", "add", "bob", str(key), "--protocols", "ftp"], conf, capsys)
    assert code == 2 and "--protocols: unknown protocol 'ftp'" in err, err
    assert run(["user", "key", "remove", "bob", fp], conf, capsys)[0] == 0
    assert db_of(conf).get("bob").keys == ()  # type: ignore[union-attr]
    assert run(["user", "disable", "bob"], conf, capsys)[0] == 0
    assert db_of(conf).get("bob").disabled  # type: ignore[union-attr]
    (root / "f").write_text("x")
    assert run(["user", "del", "bob", "--keep-files"], conf, capsys)[0] == 0
    assert db_of(conf).get("bob") is None and (root / "f").exists()


def test_check_config_names_a_user_in_both(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(conf)]) == 0
    db = db_of(conf)
    db.upgrade()
    from sftpd.auth.stores.records import UserRecord

    db.add(UserRecord(name="fileuser", root=conf.parent / "f2", password_hash=b"$2b$04$x"))
    capsys.readouterr()
    assert main(["check-config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "users[0].name: user 'fileuser' is also in [users_db]" in err


def test_db_upgrade(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["db", "upgrade"], conf, capsys)
    assert code == 0 and f"schema version 0 -> {schema.LATEST}" in out
    code, out, _ = run(["db", "upgrade"], conf, capsys)
    assert "up to date" in out


ADD = ["user", "add", "bob", "--root", "x", "--password-stdin"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--permissions", "list", "--permissions", "/in=list"], "'list' is not DIR"),
        (["--permissions", "list,uplaod"], "--permissions: unknown permission 'uplaod'"),
        (["--permissions", "in=list"], "--permissions: \"in\": 'in' is not absolute"),
        (["--permissions", "/a=list", "--permissions", "/a/=upload"], "overlaps another key"),
        (["--permissions", "/a=list", "--permissions", "/a=upload"], "'/a' is given twice"),
        (["--permissions", '{"/": ["lst"]}'], "--permissions: \"/\": unknown permission 'lst'"),
        (["--permissions", "{nope"], "--permissions: not a JSON table"),
        (["--permissions", "list", "--permissions", "download"], "give one list"),
        (["--quota-size", "ten"], "--quota-size: expected a number of bytes"),
        (["--quota-files", "-3"], "--quota-files: expected a whole number >= 0"),
        (["--max-upload-size", "1TB"], "--max-upload-size: expected a number of bytes"),
        (["--upload-mode", "fast"], '--upload-mode: expected "atomic" or "direct"'),
        (["--max-sessions", "2000000"], "--max-sessions: expected an integer from 0 to 1000000"),
        (["--allowed-sources", "10.0.0.300"], "--allowed-sources: '10.0.0.300' is not an address"),
        (["--deny-files", "a/b"], "--deny-files: pattern 'a/b' cannot match"),
        (["--hide-files", ""], None),
        (["--require", "publickey,pw"], "--require: unknown method 'pw'"),
    ],
)  # fmt: skip
def test_rule_options_are_checked_as_the_config_is(
    extra: list[str], message: str | None, conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run([*ADD, *extra], conf, capsys, stdin=PW + "\n")
    if message is None:
        assert code == 0, err
        return
    assert code == 2 and "sftpd user add: " in err and message in err, err
    db = db_of(conf)
    db.upgrade()
    assert db.names() == []


def test_rule_options_reach_the_record_and_set_changes_them(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        [*ADD, "--permissions", "/=list,download", "--permissions", "/in/=list,upload",
         "--quota-size", "10MiB", "--quota-files", "9", "--max-upload-size", "1KiB",
         "--upload-mode", "direct", "--max-sessions", "2", "--allowed-sources", "10.0.0.0/8,::1",
         "--deny-files", "*.exe", "--deny-files", "/pub/*.php", "--hide-files", ".*",
         "--principals", "bob,ops", "--require", "publickey,password"],
        conf, capsys, stdin=PW + "\n",
    )  # fmt: skip
    assert code == 0, err
    rec = db_of(conf).get("bob")
    assert rec is not None
    assert rec.permissions == {"/": ["list", "download"], "/in/": ["list", "upload"]}
    assert (rec.quota_size, rec.quota_files) == (10 << 20, 9)
    assert rec.settings == {
        "max_upload_size": 1024,
        "upload_mode": "direct",
        "max_sessions": 2,
        "allowed_sources": ["10.0.0.0/8", "::1"],
        "principals": ["bob", "ops"],
        "deny_files": ["*.exe", "/pub/*.php"],
        "hide_files": [".*"],
        "require": [["publickey", "password"]],
    }
    user = rec.to_user()  # what a login gets
    assert user.permissions == (("/", ("list", "download")), ("/in", ("list", "upload")))
    assert user.max_upload_size == 1024 and user.edge.max_sessions == 2
    code, _, err = run(
        ["user", "set", "bob", "--permissions", "*", "--max-upload-size", "0",
         "--deny-files", "", "--allowed-sources", "", "--upload-mode", "atomic"],
        conf, capsys,
    )  # fmt: skip
    assert code == 0, err
    rec = db_of(conf).get("bob")
    assert rec is not None and rec.permissions == ["*"]
    assert rec.settings == {
        "upload_mode": "atomic",
        "max_sessions": 2,
        "principals": ["bob", "ops"],
        "hide_files": [".*"],
        "require": [["publickey", "password"]],
    }
    code, _, err = run(["user", "set", "bob", "--upload-mode", "fast"], conf, capsys)
    assert code == 2 and "sftpd user set: --upload-mode: expected" in err
    assert db_of(conf).get("bob") == rec  # nothing written


def test_set_names_a_stored_field_that_no_longer_checks(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(ADD, conf, capsys, stdin=PW + "\n")[0] == 0
    with db_of(conf).db.transaction() as cur:
        cur.execute("UPDATE users SET permissions = ? WHERE name = 'bob'", ('["lst"]',))
    code, _, err = run(["user", "set", "bob", "--quota-files", "3"], conf, capsys)
    assert code == 2, err
    assert "user 'bob': the stored permissions[0]: unknown permission 'lst'" in err
    assert "set it again with --permissions" in err
    assert run(["user", "set", "bob", "--permissions", "list"], conf, capsys)[0] == 0


def test_key_add_profile_is_checked_and_kept(
    conf: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(ADD, conf, capsys, stdin=PW + "\n")[0] == 0
    code, _, err = run(
        ["user", "key", "add", "bob", str(key), "--permissions", "list,uplaod"], conf, capsys
    )
    assert code == 2 and "--permissions: unknown permission 'uplaod'" in err, err
    code, _, err = run(["user", "key", "add", "bob", str(key), "--home", "b"], conf, capsys)
    assert code == 2 and "--home: 'b' is not absolute" in err, err
    assert db_of(conf).get("bob").keys == ()  # type: ignore[union-attr]
    code, _, err = run(
        ["user", "key", "add", "bob", str(key), "--permissions", "list,download",
         "--protocols", "sftp"],
        conf, capsys,
    )  # fmt: skip
    assert code == 0, err
    rec = db_of(conf).get("bob")
    assert rec is not None
    entry = rec.to_user().key(rec.keys[0].blob)
    assert entry is not None and entry.permissions == ("list", "download")
    assert entry.protocols == ("sftp",)


def test_check_config_warns_of_rows_it_will_refuse(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(ADD, conf, capsys, stdin=PW + "\n")[0] == 0
    with db_of(conf).db.transaction() as cur:
        cur.execute("UPDATE users SET settings = ? WHERE name = 'bob'", ('{"upload_mode": "x"}',))
    assert main(["check-config", str(conf)]) == 0  # serve starts; bob's logins are refused
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "warning: " in err and "users_db: user 'bob': upload_mode: expected" in err
    assert "its logins are refused" in err


def test_check_config_says_an_unreachable_database_was_not_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "pg.toml"
    path.write_text(
        f'[server]\nhost_keys_dir = "keys"\n[users_db]\nurl = "postgresql://u@127.0.0.1:{port}/d"\n'
    )
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "users_db: cannot reach the database" in err
    assert "were not checked" in err
