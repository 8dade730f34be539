"""Users in [users_db] (SQLite), managed live with `sftpd user`, and SIGHUP reload: OpenSSH."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import Env, askpass_env, toml_str, wait_for

pytestmark = pytest.mark.e2e

DB_TAIL = '[users_db]\nurl = "sqlite:users.db"\ncache_seconds = 1\n'


@pytest.fixture(scope="module")
def bob_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bobkey")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "id"], check=True)
    return d / "id"


def user_cmd(env: Env, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cfg = env.server.config_path
    return subprocess.run(
        [sys.executable, "-m", "sftpd", "user", *args, "--config", str(cfg), "--rounds", "4"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def sftp_as(env: Env, user: str, key: Path, batch: str) -> subprocess.CompletedProcess[str]:
    opts = env.ssh_opts()
    opts[opts.index(str(env.key_path))] = str(key)
    return subprocess.run(
        ["sftp", *opts, "-b", "-", f"{user}@127.0.0.1"],
        input=batch, capture_output=True, text=True, timeout=60, cwd=env.tmp,
    )  # fmt: skip


def sftp_password(env: Env, user: str, password: str) -> subprocess.CompletedProcess[str]:
    opts = [*env.ssh_opts(key=False), "-o", "PreferredAuthentications=password"]
    opts += ["-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"]
    return subprocess.run(
        ["sftp", *opts, f"{user}@127.0.0.1"],
        input="pwd\n", capture_output=True, text=True, timeout=60, cwd=env.tmp,
        env=askpass_env(env.tmp, password),
    )  # fmt: skip


def test_user_add_then_sftp_logs_in_without_restart(make_server, bob_key: Path) -> None:  # type: ignore[no-untyped-def]
    env = make_server(tail=DB_TAIL)
    root = env.tmp / "bob-root"
    res = user_cmd(env, "add", "bob", "--root", str(root), "--key", f"{bob_key}.pub")
    assert res.returncode == 0, res.stderr
    (env.tmp / "up.bin").write_bytes(b"\x00db-user\xff" * 1000)
    res = sftp_as(env, "bob", bob_key, "put up.bin\n")
    assert res.returncode == 0, res.stderr + env.server.log_text()[-2000:]
    assert (root / "up.bin").read_bytes() == b"\x00db-user\xff" * 1000
    env.sftp("ls\n")  # the file's user too


def test_key_remove_refuses_that_key_at_the_next_login(make_server, bob_key: Path) -> None:  # type: ignore[no-untyped-def]
    env = make_server(tail=DB_TAIL)
    root = env.tmp / "bob-root"
    res = user_cmd(env, "add", "bob", "--root", str(root), "--key", f"{bob_key}.pub",
                   "--password-stdin", stdin="pw-bob\n")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert sftp_as(env, "bob", bob_key, "pwd\n").returncode == 0
    show = user_cmd(env, "show", "bob")
    fingerprint = show.stdout.split('"fingerprint": "')[1].split('"')[0]
    assert user_cmd(env, "key", "remove", "bob", fingerprint).returncode == 0
    assert wait_for(lambda: sftp_as(env, "bob", bob_key, "pwd\n").returncode != 0, timeout=20)
    assert "Permission denied" in sftp_as(env, "bob", bob_key, "pwd\n").stderr


def test_passwd_old_fails_new_works(make_server) -> None:  # type: ignore[no-untyped-def]
    env = make_server(tail=DB_TAIL)
    res = user_cmd(env, "add", "carol", "--root", str(env.tmp / "carol"), "--password-stdin",
                   stdin="old-Password-1\n")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert sftp_password(env, "carol", "old-Password-1").returncode == 0
    res = user_cmd(env, "passwd", "carol", "--password-stdin", stdin="new-Password-2\n")
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: sftp_password(env, "carol", "old-Password-1").returncode != 0, 20)
    assert sftp_password(env, "carol", "new-Password-2").returncode == 0


def closed(env: Env) -> bool:
    return any("connection closed" in line and "user=bob" in line for line in env.server.lines)


@pytest.mark.parametrize("how", [("disable",), ("del", "--keep-files")])
def test_disable_or_del_closes_an_open_session(make_server, bob_key: Path, how) -> None:  # type: ignore[no-untyped-def]
    env = make_server(tail=DB_TAIL)
    root = env.tmp / "bob-root"
    assert (
        user_cmd(env, "add", "bob", "--root", str(root), "--key", f"{bob_key}.pub").returncode == 0
    )
    opts = env.ssh_opts()
    opts[opts.index(str(env.key_path))] = str(bob_key)
    proc = subprocess.Popen(
        ["sftp", *opts, "bob@127.0.0.1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdin is not None
        (env.tmp / "m.txt").write_text("m")
        proc.stdin.write(f"put {env.tmp / 'm.txt'} marker\n")
        proc.stdin.flush()
        assert wait_for(lambda: (root / "marker").exists(), timeout=20)  # logged in
        res = user_cmd(env, *how[:1], "bob", *how[1:])
        assert res.returncode == 0, res.stderr
        # sftp reads its next command before it notices; the server closed it by then.
        assert wait_for(lambda: closed(env), timeout=20)
        proc.stdin.write("ls\n")
        proc.stdin.flush()
        assert proc.wait(timeout=20) != 0
    finally:
        proc.kill()
        proc.wait()
    assert "user bob was disabled or removed: closing conn=" in env.server.log_text()
    assert sftp_as(env, "bob", bob_key, "pwd\n").returncode != 0
    if how[0] == "del":
        assert (root / "marker").read_text() == "m"  # --keep-files
        return
    assert user_cmd(env, "enable", "bob").returncode == 0
    assert wait_for(lambda: sftp_as(env, "bob", bob_key, "pwd\n").returncode == 0, timeout=20)


def test_sighup_adds_a_file_user_and_refuses_a_broken_file(make_server, bob_key: Path) -> None:  # type: ignore[no-untyped-def]
    env = make_server()
    cfg = env.server.config_path
    good = cfg.read_text()
    pub = Path(f"{bob_key}.pub").read_text().strip()
    dave = env.tmp / "dave-root"
    cfg.write_text(
        good + f'[[users]]\nname = "dave"\nroot = {toml_str(str(dave))}\n'
        f"authorized_keys = [{toml_str(pub)}]\n"
    )
    assert sftp_as(env, "dave", bob_key, "pwd\n").returncode != 0  # not before the reload
    env.server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded: 2 user(s)" in env.server.log_text(), timeout=20)
    (env.tmp / "hello").write_text("hello dave")
    res = sftp_as(env, "dave", bob_key, "put hello\n")
    assert res.returncode == 0, res.stderr + env.server.log_text()[-3000:]
    assert (dave / "hello").read_text() == "hello dave"

    cfg.write_text(cfg.read_text() + "[server]\nbogus = 1\n")
    env.server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "the running configuration is kept" in env.server.log_text(), 20)
    assert "reload refused" in env.server.log_text()
    assert sftp_as(env, "dave", bob_key, "pwd\n").returncode == 0  # still the reloaded file
    env.sftp("pwd\n")
    assert env.server.proc.poll() is None


def test_sighup_reaches_every_worker(make_server, bob_key: Path) -> None:  # type: ignore[no-untyped-def]
    env = make_server(server_extra="workers = 2")
    assert wait_for(lambda: env.server.log_text().count("worker ready") == 2, timeout=30)
    cfg = env.server.config_path
    pub = Path(f"{bob_key}.pub").read_text().strip()
    cfg.write_text(
        cfg.read_text() + f'[[users]]\nname = "dave"\nroot = {toml_str(str(env.tmp / "d"))}\n'
        f"authorized_keys = [{toml_str(pub)}]\n"
    )
    env.server.proc.send_signal(signal.SIGHUP)
    ok = wait_for(lambda: env.server.log_text().count("reloaded: 2 user(s)") == 2, timeout=30)
    assert ok, env.server.log_text()[-3000:]
    for _ in range(4):  # whichever worker accepts
        assert sftp_as(env, "dave", bob_key, "pwd\n").returncode == 0
