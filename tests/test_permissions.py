"""Permissions by name, by directory and by key; deny/hide patterns; their config checks."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from sftpd.auth.users import AuthorizedKey, User
from sftpd.config.loader import load_config
from sftpd.contexts import rules_for
from sftpd.errors import ConfigError
from sftpd.storage.enforce import RulesStorage
from sftpd.storage.local import LocalStorage
from sftpd.storage.permissions import SINGLE, Table, expand, matching
from sftpd.storage.rules import Op, RsyncGrant, RsyncRefusal, RuleDenied, Rules

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl backup@nas"


def rules(perms: list[str] | dict[str, list[str]], **kw: object) -> Rules:
    table = Table.build([("/", perms)] if isinstance(perms, list) else perms.items())
    return Rules(table=table, **kw)  # type: ignore[arg-type]


# ---- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE)
def test_each_permission_allows_its_operation_and_nothing_else(name: str) -> None:
    r = rules([name])
    for op in Op:
        assert r.allows(op, "/d/f") is (op.value == name), op
    assert rules(["*"]).allows(Op(name), "/x")


def test_group_names_and_unknown_names() -> None:
    assert expand(["delete"]) == {"delete_files", "delete_dirs"}
    assert expand(["rename"]) == {"rename_files", "rename_dirs"}
    assert expand(["*"]) == set(SINGLE)
    with pytest.raises(ValueError, match="unknown permission 'write'"):
        expand(["write"])


def test_a_denial_names_operation_path_and_rule() -> None:
    with pytest.raises(RuleDenied) as caught:
        rules({"/": ["*"], "/incoming": ["list", "upload"]}).check(Op.DELETE_FILES, "/incoming/a")
    e = caught.value
    assert e.errno == errno.EACCES and e.rule == "permissions of /incoming"
    assert e.strerror == e.reason
    assert e.reason == (
        'permission denied: "delete_files" is not allowed in /incoming/a (permissions of /incoming)'
    )


# ---- directories and keys -------------------------------------------------------------------


def test_the_deepest_listed_directory_decides() -> None:
    r = rules({"/": ["list", "download"], "/in": ["*"], "/in/ro": ["list"]})
    assert not r.allows(Op.UPLOAD, "/f")
    assert r.allows(Op.UPLOAD, "/in/f") and r.allows(Op.UPLOAD, "/in")
    assert r.allows(Op.UPLOAD, "/in/rox")  # a name that only starts like /in/ro
    assert not r.allows(Op.DOWNLOAD, "/in/ro/f") and r.allows(Op.LIST, "/in/ro/deep/er")
    assert r.path_dependent and isinstance(r.rsync(Path("/r")), RsyncRefusal)
    only = rules({"/pub": ["list"]})  # without "/": nothing outside the listed directories
    assert not only.allows(Op.LIST, "/") and only.allows(Op.LIST, "/pub/x")


def test_a_key_narrows_and_never_widens() -> None:
    user = User("u", Path("/r"), permissions=(("/", ("list", "download", "upload")),))
    narrow = rules_for(user, AuthorizedKey(b"k", permissions=("list", "upload")), umask=0o22)
    assert narrow.allows(Op.UPLOAD, "/f") and not narrow.allows(Op.DOWNLOAD, "/f")
    assert narrow.decide(Op.DOWNLOAD, "/f") == "the key's permissions"
    wide = rules_for(user, AuthorizedKey(b"k", permissions=("*",)), umask=0o22)
    assert not wide.allows(Op.DELETE_FILES, "/f")  # the user's list still holds
    assert rules_for(user, None, umask=0o22).allows(Op.DOWNLOAD, "/f")
    ro = rules_for(User("u", Path("/r"), read_only=True), None, umask=0o22)
    assert ro.decide(Op.UPLOAD, "/f") == "read_only"


def test_rsync_maps_what_it_can_and_refuses_what_it_cannot() -> None:
    backup = rules(["*"], key_permissions=expand(["list", "download", "upload", "create_dirs"]))
    grant = backup.rsync(Path("/r"))
    assert isinstance(grant, RsyncGrant) and grant.receive
    assert not grant.delete and not grant.overwrite and not grant.symlinks
    down = rules(["list", "download"]).rsync(Path("/r"))
    assert isinstance(down, RsyncGrant) and down.sender_only
    for refused, words in (
        (rules(["*"], deny_files=("*.exe",)), "deny_files"),
        (rules(["*"], hide_files=(".*",)), "hide_files"),
        (rules({"/": ["*"], "/a": ["list"]}), "per-directory"),
        (rules(["list", "upload", "overwrite", "create_dirs"]), '"download"'),
        (rules(["download"]), '"list"'),
        (rules(["list", "download", "upload"]), '"create_dirs"'),
    ):
        got = refused.rsync(Path("/r"))
        assert isinstance(got, RsyncRefusal) and words in got.reason, got


# ---- patterns -------------------------------------------------------------------------------


def test_patterns_match_names_or_whole_paths_and_directories_above() -> None:
    assert matching(("*.exe",), "/a/b.exe") == "*.exe"
    assert matching(("/public/*.php",), "/public/x.php") == "/public/*.php"
    assert matching(("/public/*.php",), "/other/x.php") is None
    assert matching((".*",), "/.git/config") == ".*"  # a hidden directory hides its files
    assert matching((".*",), "/a/b") is None and matching((".*",), "/") is None
    r = Rules(deny_files=("*.exe",))
    assert r.decide(Op.UPLOAD, "/x.exe") == 'deny_files "*.exe"'
    assert r.decide(Op.RENAME_FILES, "/x.exe") is not None
    assert r.allows(Op.UPLOAD, "/x.txt")


def test_hidden_names_look_absent_on_real_files(tmp_path: Path) -> None:
    (tmp_path / ".secret").write_bytes(b"s")
    (tmp_path / "ok").write_bytes(b"o")
    (tmp_path / ".d").mkdir()
    (tmp_path / ".d" / "f").write_bytes(b"f")
    os.symlink(".secret", tmp_path / "link")
    st = RulesStorage(LocalStorage(tmp_path), Rules(hide_files=(".*",)))
    try:
        for call in (
            lambda: st.stat("/.secret"),
            lambda: st.stat("/link"),  # judged where it points
            lambda: st.open("/.secret", os.O_RDONLY, 0),
            lambda: st.open("/.d/f", os.O_RDONLY, 0),
            lambda: st.remove("/.secret"),
            lambda: st.opendir("/.d"),
        ):
            with pytest.raises(FileNotFoundError):
                call()
        with pytest.raises(RuleDenied):  # a hidden name cannot be created either
            st.open("/.new", os.O_WRONLY | os.O_CREAT, 0o644)
        listing = st.opendir("/")
        names = {n for n, _ in listing.read(100)}
        listing.close()
        assert names == {".", "..", "ok", "link"}
        assert (tmp_path / ".secret").read_bytes() == b"s" and not (tmp_path / ".new").exists()
    finally:
        st.close()


def test_upload_only_may_set_times_and_size_on_the_file_it_created(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"old")
    st = RulesStorage(LocalStorage(tmp_path), rules(["list", "upload"]))
    try:
        f = st.open("/new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        f.pwrite(b"abc", 0)
        f.truncate(2)
        f.utime(1, 1)
        f.close()
        assert (tmp_path / "new").read_bytes() == b"ab"
        with pytest.raises(RuleDenied, match='"overwrite"'):
            st.open("/old", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        assert (tmp_path / "old").read_bytes() == b"old"
    finally:
        st.close()


def test_a_symlink_into_a_denied_directory_is_judged_by_its_target(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "denied").mkdir()
    (tmp_path / "denied" / "f").write_bytes(b"x")
    os.symlink("../denied", tmp_path / "ok" / "link")
    st = RulesStorage(LocalStorage(tmp_path), rules({"/": ["list"], "/ok": ["*"]}))
    try:
        st.open("/ok/mine", os.O_WRONLY | os.O_CREAT, 0o644).close()
        with pytest.raises(RuleDenied, match=re.escape("in /denied/f (permissions of /)")):
            st.open("/ok/link/f", os.O_RDONLY, 0)
    finally:
        st.close()


# ---- config ---------------------------------------------------------------------------------


def load(tmp_path: Path, user: str) -> object:
    path = tmp_path / "c.toml"
    path.write_text(f'[[users]]\nname = "a"\nroot = "{tmp_path}"\n{user}')
    return load_config(path)


def test_config_reads_permissions_patterns_and_key_profiles(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        'permissions = { "/" = ["list"], "/in/" = ["upload", "delete"] }\n'
        'deny_files = ["*.exe"]\nhide_files = [".*"]\n'
        f'[[users.keys]]\nkey = "{KEY}"\npermissions = ["list"]\nprotocols = ["sftp"]\n'
        'home = "/in"\n',
    )
    (u,) = cfg.users  # type: ignore[attr-defined]
    assert u.permissions == (("/", ("list",)), ("/in", ("upload", "delete")))
    assert u.deny_files == ("*.exe",) and u.hide_files == (".*",)
    (k,) = u.keys
    assert k.permissions == ("list",) and k.protocols == ("sftp",) and k.home == "/in"
    assert k.comment == "backup@nas" and u.authorized_keys == (k.blob,)  # the key logs in


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('permissions = ["write"]', "permissions[0]", "unknown permission 'write'"),
        ('permissions = { "in" = ["list"] }', 'permissions."in"', "not absolute"),
        ('permissions = { "/a" = ["list"], "/a/" = ["*"] }', 'permissions."/a/"', "overlaps"),
        ('deny_files = ["public/*.php"]', "deny_files[0]", "cannot match"),
        ('hide_files = [""]', "hide_files[0]", "cannot match"),
        ('[[users.keys]]\nkey = "ssh-ed25519 nope"', "keys[0].key", "does not parse"),
        (f'[[users.keys]]\nkey = "{KEY}"\nprotocols = ["ftp"]', "protocols[0]", "unknown protocol"),
        (f'[[users.keys]]\nkey = "{KEY}"\npermissions = ["x"]', "keys[0].permissions[0]", "x"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, 'password_hash = "$2b$04$' + "a" * 53 + '"\n' + text + "\n")
    assert key in str(caught.value) and message in str(caught.value), str(caught.value)


# ---- sftpd explain --------------------------------------------------------------------------


def test_explain_prints_the_decision_and_the_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sftpd.cli import main

    (tmp_path / "backup.pub").write_text(KEY + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[[users]]\nname = "alice"\nroot = "{tmp_path}"\n'
        'password_hash = "$2b$04$' + "a" * 53 + '"\n'
        'permissions = { "/" = ["*"], "/incoming" = ["list", "upload", "create_dirs"] }\n'
        f'[[users.keys]]\nkey = "{KEY}"\npermissions = ["list", "upload"]\n'
    )
    base = ["explain", "alice", "--config", str(cfg)]
    assert main([*base[:2], "/incoming/a", "delete", *base[2:]]) == 1
    out = capsys.readouterr().out
    assert 'denied: "delete_files" at /incoming/a for alice (without a key profile): ' in out
    assert "permissions of /incoming" in out
    assert "rsync: refused: per-directory permissions" in out
    assert main([*base[:2], "/x", "upload", *base[2:], "--key", str(tmp_path / "backup.pub")]) == 0
    assert 'allowed: "upload" at /x for alice with key SHA256:' in capsys.readouterr().out
    key = ["--key", str(tmp_path / "backup.pub")]
    assert main([*base[:2], "/x", "download", *base[2:], *key]) == 1
    assert "the key's permissions" in capsys.readouterr().out
    assert main(["explain", "bob", "/x", "list", "--config", str(cfg)]) == 2
    assert "no user 'bob'" in capsys.readouterr().err
