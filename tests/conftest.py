"""Shared fixtures: a client key, host keys, and a real sftpd with user alice per module."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Fails collection when a test that starts a real server is not marked e2e.
from tests.e2e_guard import pytest_collection_modifyitems as pytest_collection_modifyitems
from tests.support import ALICE_PASSWORD, Env, SftpdProcess, User, start_sftpd, write_config


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An ed25519 client key pair made by ssh-keygen: (private key path, public key line)."""
    d = tmp_path_factory.mktemp("clientkey")
    key = d / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key, (d / "id_ed25519.pub").read_text().strip()


@pytest.fixture(scope="session")
def host_keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Host keys generated once per test run (RSA generation is slow)."""
    from sftpd.ssh.hostkeys import ensure_host_keys

    d = tmp_path_factory.mktemp("hostkeys") / "keys"
    ensure_host_keys(d)
    return d


ServerFactory = Callable[..., Env]


@pytest.fixture
def make_server(
    tmp_path: Path, client_key: tuple[Path, str], host_keys_dir: Path
) -> Iterator[ServerFactory]:
    """Start a server with alice (+ optional more users / config lines); stopped at teardown."""
    started: list[SftpdProcess] = []

    def make(
        *,
        users: list[User] | None = None,
        server_extra: str = "",
        tail: str = "",
        alice_extra: str = "",
    ) -> Env:
        alice = User("alice", tmp_path / "alice-root", client_key[1], ALICE_PASSWORD, alice_extra)
        cfg = tmp_path / f"sftpd-{len(started)}.toml"
        write_config(cfg, [alice, *(users or [])], host_keys_dir, server_extra, tail)
        proc = start_sftpd(cfg)
        started.append(proc)
        return Env(proc, alice, client_key[0], tmp_path)

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, client_key: tuple[Path, str], host_keys_dir: Path
) -> Iterator[Env]:
    """One shared server per test module (tests must use distinct file names)."""
    tmp = tmp_path_factory.mktemp("srv")
    alice = User("alice", tmp / "alice-root", client_key[1], ALICE_PASSWORD)
    cfg = tmp / "sftpd.toml"
    write_config(cfg, [alice], host_keys_dir)
    proc = start_sftpd(cfg)
    yield Env(proc, alice, client_key[0], tmp)
    proc.stop()
