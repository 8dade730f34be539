"""check-config and serve share one set of disk checks, and checking changes nothing on disk."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from sftpd.cli import main
from sftpd.config.loader import load_config
from sftpd.errors import ConfigError
from sftpd.preflight import check, prepare

HASH = bcrypt.hashpw(b"secret", b"$2b$04$abcdefghijklmnopqrstuu").decode()


def config_text(*users: str, keys: str = "keys") -> str:
    body = f'[server]\nhost_keys_dir = "{keys}"\n'
    for i, extra in enumerate(users):
        body += f'[[users]]\nname = "u{i}"\npassword_hash = "{HASH}"\n{extra}\n'
    return body


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sftpd.toml"
    path.write_text(text)
    return path


def tree(top: Path) -> list[tuple[str, int, int]]:
    """Every path under ``top`` with its mode and size (what a check must not change)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            out.append((str(p.relative_to(top)), st.st_mode, 0 if p.is_dir() else st.st_size))
    return sorted(out)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sftpd", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_changes_nothing_on_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "existing").mkdir()
    cfg = write(
        tmp_path,
        config_text('root = "new/alice"', 'root = "existing/bob"', 'root = "existing"'),
    )
    before = tree(tmp_path)
    assert main(["check-config", str(cfg)]) == 0
    assert capsys.readouterr().out == f"{cfg}: OK\n"
    assert tree(tmp_path) == before  # no user root, no key directory, no probe left behind


def test_serve_creates_what_check_config_only_checked(tmp_path: Path) -> None:
    cfg = write(tmp_path, config_text('root = "new/alice"'))
    assert prepare(load_config(cfg)) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new" / "alice").stat().st_mode) == 0o750 & ~umask


def test_home_missing_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    cfg = write(tmp_path, config_text('root = "r"\nhome = "/in"', 'root = "missing"\nhome = "/up"'))
    expected = [
        f"{cfg}: users[{i}].home: '{home}' is not a directory inside the root; expected an "
        'existing directory (create it in the root, or use the default "/")'
        for i, home in ((0, "/in"), (1, "/up"))
    ]
    assert [str(e) for e in check(load_config(cfg)).errors] == expected
    (tmp_path / "r" / "in").mkdir()
    assert [str(e) for e in check(load_config(cfg)).errors] == expected[1:]


def test_host_keys_dir_in_proc_cannot_be_created(tmp_path: Path) -> None:
    """As root os.access says /proc is writable; the real probe says it is not."""
    cfg = write(tmp_path, config_text('root = "r"', keys="/proc/x"))
    (e,) = check(load_config(cfg)).errors
    assert e.key == "server.host_keys_dir"
    assert str(e).startswith(f"{cfg}: server.host_keys_dir: cannot create /proc/x: /proc: ")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")
def test_root_the_service_user_cannot_write(tmp_path: Path) -> None:
    """A root on a read-only mount (bwrap --ro-bind: read-only even for uid 0)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    cfg = write(tmp_path, config_text('root = "ro"', 'root = "ro"\nread_only = true'))
    cmd = ["bwrap", "--bind", "/", "/", "--ro-bind", str(ro), str(ro), "--dev", "/dev"]
    cmd += ["--proc", "/proc", sys.executable, "-m", "sftpd"]
    for sub in (["check-config", str(cfg)], ["serve", "--config", str(cfg)]):
        res = subprocess.run(
            [*cmd, *sub], capture_output=True, text=True, timeout=60, cwd=os.getcwd()
        )
        assert res.returncode == 2, res
        assert res.stderr == (
            f"{cfg}: users[0].root: sftpd (uid {os.geteuid()}) cannot read and write {ro}; "
            "expected a directory the service user may write (or set read_only = true)\n"
        )  # the read_only user u1 on the same root is fine


def test_serve_refuses_what_check_config_refuses(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cfg = write(tmp_path, config_text('root = "file"', 'root = "r"\nhome = "/x"'))
    checked, served = run("check-config", str(cfg)), run("serve", "--config", str(cfg))
    assert checked.returncode == served.returncode == 2
    assert checked.stderr == served.stderr
    assert checked.stderr.splitlines() == [
        f"{cfg}: users[0].root: {tmp_path / 'file'} exists but is not a directory; expected "
        "a directory",
        f"{cfg}: users[1].home: '/x' is not a directory inside the root; expected an existing "
        'directory (create it in the root, or use the default "/")',
    ]
    assert served.stdout == ""  # no banner, nothing listened on
    assert not (tmp_path / "r").exists() and not (tmp_path / "keys").exists()


def test_root_slash_is_a_warning_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path, config_text('root = "/"'))
    assert main(["check-config", str(cfg)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{cfg}: OK\n"
    assert captured.err == (
        f"warning: {cfg}: users[0].root: \"/\" gives user 'u0' the whole file system; "
        "expected a directory of its own\n"
    )


def test_embedded_default_data_not_creatable(tmp_path: Path) -> None:
    from sftpd.config.loader import embedded_default

    (tmp_path / "data").write_text("")
    config, _ = embedded_default(tmp_path, tmp_path, "bob")
    with pytest.raises(ConfigError) as info:
        prepare(config)
    assert str(info.value) == (
        f"(embedded default): users[0].root: {tmp_path / 'data'} exists but is not a "
        "directory; expected a directory"
    )


def test_check_config_names_auth_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Key options (file, line, option), rrsync options, require and a bad revocation file."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOvWr2ZxPoEUi/8s3WIQ9gvfK4z2ylZ7qW7hS+KqfS0C"
    (tmp_path / "keys.txt").write_text(f'# alice\n{key}\nfrom="10.0.0.1",bogus {key}\n')
    (tmp_path / "r").mkdir()
    cfg = write(
        tmp_path,
        config_text(
            'root = "r"\nauthorized_keys_file = "keys.txt"',
            f'root = "r"\nauthorized_keys = [\'command="rrsync -munge /backup" {key}\']',
            'root = "r"\nrequire = [["publickey", "password"]]',
        ).replace("[server]\n", '[server]\nauthentication_methods = ["publickey"]\n'),
    )
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"users[0].authorized_keys_file: {tmp_path / 'keys.txt'}:3: option 'bogus': " in err
    assert "users[1].authorized_keys[0]: option 'command': rrsync option '-munge'" in err
    assert "users[2].require[0]: 'password' is not in [server] authentication_methods" in err
    (tmp_path / "revoked").write_bytes(b"SSHKRL\n\0garbage")
    cfg = write(
        tmp_path,
        config_text('root = "r"').replace(
            "[server]\n", '[server]\nrevoked_keys_file = "revoked"\n'
        ),
    )
    assert main(["check-config", str(cfg)]) == 2
    assert "server.revoked_keys_file: " in capsys.readouterr().err
