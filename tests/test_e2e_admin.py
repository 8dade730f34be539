"""End-to-end, as a new admin meets sftpd: SIGHUP, dual-stack listening, `serve --listen`."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import (
    ALICE_PASSWORD,
    Env,
    SftpdProcess,
    User,
    start_sftpd,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _free_dual_stack_port() -> int:
    """A port free on both 0.0.0.0 and [::] (checked by binding both, then released)."""
    for _ in range(50):
        with socket.socket() as v4:
            v4.bind(("0.0.0.0", 0))
            port = v4.getsockname()[1]
            with socket.socket(socket.AF_INET6) as v6:
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    v6.bind(("::", port))
                except OSError:
                    continue
        return int(port)
    raise AssertionError("no port free on both families")


def _sftp(
    port: int, host: str, key: Path, batch: str, cwd: Path, user: str = "alice"
) -> subprocess.CompletedProcess[str]:
    opts = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no"]
    opts += ["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-P", str(port)]
    opts += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key)]
    target = f"{user}@[{host}]" if ":" in host else f"{user}@{host}"
    return subprocess.run(
        ["sftp", *opts, "-b", "-", target],
        input=batch,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def _config(
    tmp_path: Path, client_key: tuple[Path, str], keys: Path, listen: str, extra: str = ""
) -> tuple[Path, User]:
    alice = User("alice", tmp_path / "alice-root", client_key[1], ALICE_PASSWORD)
    cfg = tmp_path / "sftpd.toml"
    write_config(cfg, [alice], keys, extra)
    cfg.write_text(cfg.read_text().replace('listen = ["127.0.0.1:0"]', f"listen = {listen}"))
    return cfg, alice


# ------------------------------------------------------------------------------ SIGHUP


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_is_logged_and_the_server_keeps_serving(
    tmp_path: Path, client_key: tuple[Path, str], host_keys_dir: Path, workers: int
) -> None:
    cfg, alice = _config(
        tmp_path, client_key, host_keys_dir, '["127.0.0.1:0"]', f"workers = {workers}"
    )
    server = start_sftpd(cfg)
    try:
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "SIGHUP received" in server.log_text()), server.log_text()
        assert server.proc.poll() is None
        src = tmp_path / "after-hup.txt"
        src.write_bytes(b"still serving after SIGHUP\n")
        res = _sftp(server.port, "127.0.0.1", client_key[0], f"put {src} after-hup.txt\n", tmp_path)
        assert res.returncode == 0, res.stderr + server.log_text()
        assert (alice.root / "after-hup.txt").read_bytes() == src.read_bytes()
        line = next(ln for ln in server.lines if "SIGHUP received" in ln)
        # One process reloads the file itself; a supervisor passes it to its workers.
        assert (
            "reloading the configuration" if workers == 1 else "passing it to the workers"
        ) in line
    finally:
        assert server.stop() == 0


# ------------------------------------------------------------------------------ dual stack


@pytest.mark.parametrize("workers", [1, 2])
def test_dual_stack_listen_on_both_families(
    tmp_path: Path, client_key: tuple[Path, str], host_keys_dir: Path, workers: int
) -> None:
    if not _have_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    port = _free_dual_stack_port()
    listen = f'["0.0.0.0:{port}", "[::]:{port}"]'
    cfg, alice = _config(tmp_path, client_key, host_keys_dir, listen, f"workers = {workers}")
    server = start_sftpd(cfg)
    try:
        assert wait_for(lambda: f"listening on [::]:{port}" in server.log_text())
        assert f"listening on 0.0.0.0:{port}" in server.log_text()
        for host in ("127.0.0.1", "::1"):
            name = f"via-{host.replace(':', '_')}.txt"
            src = tmp_path / name
            src.write_bytes(f"over {host}\n".encode())
            res = _sftp(port, host, client_key[0], f"put {src} {name}\n", tmp_path)
            assert res.returncode == 0, res.stderr + server.log_text()
            assert (alice.root / name).read_bytes() == src.read_bytes()
    finally:
        assert server.stop() == 0


# ------------------------------------------------------------------------------ --listen


def _embedded(tmp_path: Path, client_key: tuple[Path, str]) -> tuple[Path, dict[str, str]]:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(client_key[0].with_suffix(".pub"), home / ".ssh" / "id_ed25519.pub")
    work = tmp_path / "work"
    work.mkdir()
    # cwd is not the checkout: make `python -m sftpd` import this checkout's package
    return work, dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO))


def test_embedded_default_with_listen_option(
    tmp_path: Path, client_key: tuple[Path, str], host_keys_dir: Path
) -> None:
    work, env = _embedded(tmp_path, client_key)
    shutil.copytree(host_keys_dir, work / "keys")
    server: SftpdProcess = start_sftpd(
        None,  # type: ignore[arg-type]
        cwd=work,
        env=env,
        args=["--listen", "127.0.0.1:0,127.0.0.2:0", "-l", "127.0.0.3:0"],
    )
    try:
        assert server.port != 2222
        assert wait_for(lambda: server.log_text().count("sftpd: listening on 127.0.0.") == 3)
        user = getpass.getuser()
        # the bound ports, not the configured 0: credentials are printed after binding
        assert f"Connect with:\n  sftp -P {server.port} {user}@127.0.0.1\n" in server.log_text()
        src = tmp_path / "listen.txt"
        src.write_bytes(b"--listen works with the embedded default\n")
        res = _sftp(
            server.port, "127.0.0.1", client_key[0], f"put {src} listen.txt\n", tmp_path, user
        )
        assert res.returncode == 0, res.stderr
        assert (work / "data" / "listen.txt").read_bytes() == src.read_bytes()
    finally:
        assert server.stop() == 0


def _serve(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sftpd", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def test_busy_port_prints_no_password_and_says_how_to_choose_another(
    tmp_path: Path, client_key: tuple[Path, str], host_keys_dir: Path
) -> None:
    work, env = _embedded(tmp_path, client_key)
    shutil.copytree(host_keys_dir, work / "keys")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _serve("--listen", f"127.0.0.1:{port}", cwd=work, env=env)
        assert res.returncode == 1
        assert res.stdout == ""  # no password, no "Connect with"
        assert res.stderr == (
            f"sftpd: cannot listen on 127.0.0.1:{port}: Address already in use; choose another "
            f"address with `sftpd serve --listen 127.0.0.1:{port + 1}` or a config file\n"
        )
        cfg, _ = _config(tmp_path, client_key, host_keys_dir, f'["127.0.0.1:{port}"]')
        res = _serve("--config", str(cfg), cwd=work, env=env)
        assert (res.returncode, res.stdout) == (1, "")
        assert res.stderr.endswith(
            f"`sftpd serve --listen 127.0.0.1:{port + 1}` or listen in [server] of {cfg}\n"
        )


def test_listen_option_errors(tmp_path: Path, client_key: tuple[Path, str]) -> None:
    work, env = _embedded(tmp_path, client_key)
    res = _serve("--listen", "127.0.0.1:0,localhost:22", cwd=work, env=env)
    assert res.returncode == 2
    assert res.stderr == (
        "--listen: cannot parse 'localhost:22' as an address; expected \"IPV4:PORT\" (like "
        '"0.0.0.0:22") or "[IPV6]:PORT" (like "[::1]:2222")\n'
    )
    assert not (work / "data").exists()


# ------------------------------------------------------------------------------ user names


def test_email_style_user_name_logs_in(
    make_server: Callable[..., Env], client_key: tuple[Path, str], tmp_path: Path
) -> None:
    name = "Ann.Lee+sftp@Example.com"
    ann = User(name, tmp_path / "ann-root", client_key[1])
    env = make_server(users=[ann], server_extra='log_level = "warning"')
    src = tmp_path / "ann.txt"
    src.write_bytes(b"an e-mail style login\n")
    res = env.sftp(f"put {src} ann.txt\n", user=name)  # ssh splits at the last "@"
    assert res.returncode == 0, res.stderr
    assert (ann.root / "ann.txt").read_bytes() == src.read_bytes()
