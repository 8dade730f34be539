"""The sftpd command line, run in-process through main() and once as `python -m sftpd`."""

from __future__ import annotations

import getpass
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from sftpd import cli
from sftpd.cli import main
from sftpd.config.model import Config

REPO = Path(__file__).resolve().parent.parent
HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
GOOD = (
    '[server]\nhost_keys_dir = "keys"\n'
    f'[[users]]\nname = "alice"\nroot = "data"\npassword_hash = "{HASH}"\n'
)
BAD_ROOT = GOOD.replace('root = "data"', 'root = "file/data"')


def write(directory: Path, text: str) -> Path:
    path = directory / "sftpd.toml"
    path.write_text(text)
    return path


def run_module(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "sftpd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


class FakeStdin(io.StringIO):
    def __init__(self, text: str, tty: bool) -> None:
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


# --------------------------------------------------------------------------- help


def test_help_documents_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("serve", "check-config", "hash-password", "keygen", "totp-secret"):
        assert command in out
        assert main([command, "--help"]) == 0
        assert f"usage: sftpd {command}" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["hash-password", "--rounds", "3"]) == 2
    assert "expected an integer from 4 to 31" in capsys.readouterr().err


# --------------------------------------------------------------------------- check-config


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, GOOD)
    assert main(["check-config", str(cfg)]) == 0
    assert capsys.readouterr().out == f"{cfg}: OK\n"
    assert not (tmp_path / "keys").exists()  # checked, not created


def test_check_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    cfg = write(tmp_path, BAD_ROOT)
    assert main(["check-config", str(cfg)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"{cfg}: users[0].root: cannot create {tmp_path / 'file' / 'data'}: "
        f"{tmp_path / 'file'} is not a directory; expected an existing directory or one sftpd "
        "may create\n"
    )


def test_check_config_several_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, GOOD.replace("[server]", "[server]\nworkers = 0\nlisten = []"))
    assert main(["check-config", str(cfg)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[1] for line in lines] == ["server.workers", "server.listen"]


def test_check_config_host_keys_dir_not_creatable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    cfg = write(tmp_path, GOOD.replace('host_keys_dir = "keys"', 'host_keys_dir = "file/keys"'))
    assert main(["check-config", str(cfg)]) == 2
    assert capsys.readouterr().err == (
        f"{cfg}: server.host_keys_dir: cannot create {tmp_path / 'file' / 'keys'}: "
        f"{tmp_path / 'file'} is not a directory\n"
    )


def test_check_config_as_a_process_never_shows_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cfg = write(tmp_path, BAD_ROOT)
    result = run_module("check-config", str(cfg))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{cfg}: users[0].root: cannot create ")
    assert "Traceback" not in result.stderr
    missing = run_module("check-config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    expected = f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"
    assert missing.stderr == expected + "; expected a TOML file\n"
    syntax = run_module("check-config", str(write(tmp_path, "[server\n")))
    assert (syntax.returncode, "Traceback" in syntax.stderr) == (2, False)


# --------------------------------------------------------------------------- hash-password


def test_hash_password_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", FakeStdin("correct horse \n", tty=False))
    assert main(["hash-password", "--rounds", "4"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("$2b$04$")
    assert bcrypt.checkpw(b"correct horse ", hashed.encode())


def test_hash_password_default_cost_is_12(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", FakeStdin("pw\r\n", tty=False))
    assert main(["hash-password"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("$2b$12$")
    assert bcrypt.checkpw(b"pw", hashed.encode())


def test_hash_password_as_a_process() -> None:
    result = run_module("hash-password", "--rounds", "4", stdin="s3cret\n")
    assert result.returncode == 0, result.stderr
    assert bcrypt.checkpw(b"s3cret", result.stdout.strip().encode())


def test_hash_password_on_a_terminal_asks_twice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["tty-pw", "tty-pw", "one", "two"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(sys, "stdin", FakeStdin("", tty=True))
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    assert main(["hash-password", "--rounds", "4"]) == 0
    assert bcrypt.checkpw(b"tty-pw", capsys.readouterr().out.strip().encode())
    assert prompts == ["Password: ", "Password again: "]
    assert main(["hash-password", "--rounds", "4"]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "sftpd hash-password: the passwords do not match\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\n", "empty password; expected at least one character"),
        ("", "empty password; expected at least one character"),
        ("x" * 73 + "\n", "bcrypt uses at most 72 bytes; expected a shorter password"),
    ],
)
def test_hash_password_refuses(
    text: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", FakeStdin(text, tty=False))
    assert main(["hash-password", "--rounds", "4"]) == 1
    assert capsys.readouterr().err == f"sftpd hash-password: {message}\n"


# --------------------------------------------------------------------------- keygen


def fingerprints_by_ssh_keygen(
    directory: Path, names: tuple[str, ...] = ("ed25519", "ecdsa", "rsa")
) -> set[str]:
    out = set()
    for name in (f"ssh_host_{n}_key" for n in names):
        line = subprocess.run(
            ["ssh-keygen", "-lf", str(directory / name)], capture_output=True, text=True, check=True
        ).stdout
        out.add(line.split()[1])
    return out


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_keygen_creates_keys_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keygen"]) == 0  # default DIR: ./keys
    first = capsys.readouterr().out.splitlines()
    keys = tmp_path / "keys"
    assert len(first) == 3
    assert all(line.startswith("created ") for line in first)
    for name in ("ssh_host_ed25519_key", "ssh_host_ecdsa_key", "ssh_host_rsa_key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    printed = {line.split()[2] for line in first}
    assert printed == fingerprints_by_ssh_keygen(keys)

    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    assert main(["keygen", str(keys)]) == 0
    second = capsys.readouterr().out.splitlines()
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before
    assert all(line.startswith("exists  ") for line in second)
    assert [line.split()[2] for line in second] == [line.split()[2] for line in first]


def test_keygen_into_an_impossible_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert main(["keygen", str(tmp_path / "file" / "keys")]) == 2
    assert capsys.readouterr().err == (
        f"{tmp_path / 'file' / 'keys'}: cannot create host key directory: Not a directory\n"
    )


# --------------------------------------------------------------------------- serve


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Config, Any]]:
    """Replace sftpd.assembly with a stub recording serve() calls; serve returns 0.

    Binding is replaced too (these tests use fixed ports such as 22 and 2222); the e2e
    tests bind for real."""
    calls: list[tuple[Config, Any]] = []

    def serve(config: Config, *, log_format: str | None = None, sockets: Any = None) -> int:
        assert sockets == [[]]
        calls.append((config, log_format))
        return 0

    monkeypatch.setattr(cli, "bind_all", lambda listen, copies, hint: [[]])

    module = types.ModuleType("sftpd.assembly")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sftpd.assembly", module)
    return calls


def test_serve_embedded_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_server: list[tuple[Config, Any]],
    host_keys_dir: Path,
    client_key: tuple[Path, str],
) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519.pub").write_text(client_key[1] + "\n")
    shutil.copytree(host_keys_dir, work / "keys")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")

    assert main(["serve"]) == 0
    out = capsys.readouterr().out
    ((config, log_format),) = fake_server
    assert log_format == "text"
    (alice,) = config.users
    assert alice.name == "alice"
    assert alice.root == work / "data"
    assert len(alice.authorized_keys) == 1
    assert "sftp -P 2222 alice@127.0.0.1" in out
    password = out.split("password (shown only now): ")[1].split()[0]
    assert alice.password_hash is not None
    assert bcrypt.checkpw(password.encode(), alice.password_hash)
    fingerprints = [line.split()[1] for line in out.splitlines() if " SHA256:" in line]
    # only the keys clients are offered: with algorithms = "modern" not the ECDSA one
    assert set(fingerprints) == fingerprints_by_ssh_keygen(work / "keys", ("ed25519", "rsa"))
    assert "(ECDSA)" not in out


def test_serve_with_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fake_server: list[tuple[Config, Any]],
    host_keys_dir: Path,
) -> None:
    shutil.copytree(host_keys_dir, tmp_path / "keys")
    cfg = write(
        tmp_path, GOOD.replace("[server]", '[server]\nlisten = ["0.0.0.0:22", "[::]:2022"]')
    )
    assert main(["serve", "--config", str(cfg), "--log-format", "json"]) == 0
    ((config, log_format),) = fake_server
    assert (config.source, log_format) == (cfg, "json")
    # with --log-format json the banner is JSON lines too
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["event"] for r in records} == {"banner"}
    messages = [r["message"] for r in records]
    assert "  sftp alice@127.0.0.1" in messages
    assert "  sftp -P 2022 alice@[::1]" in messages
    assert not [m for m in messages if "password" in m]


def test_serve_with_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_server: list[tuple[Config, Any]]
) -> None:
    cfg = write(tmp_path, GOOD.replace("[server]", "[server]\nmax_sessions = 0"))
    assert main(["serve", "-c", str(cfg)]) == 2
    assert capsys.readouterr().err == (
        f"{cfg}: server.max_sessions: expected an integer from 1 to 1000, got integer 0\n"
    )
    assert fake_server == []


def test_serve_bad_config_as_a_process(tmp_path: Path) -> None:
    cfg = write(tmp_path, GOOD.replace("name =", "nmae ="))
    result = run_module("serve", "--config", str(cfg))
    assert result.returncode == 2
    assert result.stderr.startswith(f'{cfg}: users[0].nmae: unknown key; did you mean "name"?')
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- totp-secret


def test_totp_secret_prints_a_config_line_and_its_url(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from sftpd.auth.totp import decode_secret
    from sftpd.config.loader import load_config

    assert main(["totp-secret", "alice"]) == 0
    line, url = capsys.readouterr().out.splitlines()
    secret = line.split('"')[1]
    assert line == f'totp_secret = "{secret}"'
    assert len(decode_secret(secret)) == 20
    assert url == f"otpauth://totp/sftpd:alice?secret={secret}&issuer=sftpd"
    # the printed line is accepted as it is by the config
    cfg = tmp_path / "sftpd.toml"
    cfg.write_text(
        f'[[users]]\nname = "alice"\nroot = "r"\npassword_hash = "{"$2b$04$" + "a" * 53}"\n{line}\n'
    )
    assert load_config(cfg).users[0].totp_secret == secret
    assert main(["totp-secret", "alice"]) == 0
    assert capsys.readouterr().out.split('"')[1] != secret  # a new one each time
