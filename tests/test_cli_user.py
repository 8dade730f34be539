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
         "'all' is not one of"),
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
    assert code == 2 and "expected a whole number >= 0" in err


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
    assert code == 2 and "'ftp' is not one of" in err
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
