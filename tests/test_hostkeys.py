"""Host keys: created once with safe modes, ssh-keygen fingerprints, refused when exposed."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sftpd.errors import ConfigError
from sftpd.ssh.hostkeys import (
    HostKeyInfo,
    ensure_host_keys,
    host_key_infos,
    host_keys_problems,
    load_host_keys,
)

NAMES = ["ssh_host_ed25519_key", "ssh_host_ecdsa_key", "ssh_host_rsa_key"]
needs_ssh_keygen = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None, reason="ssh-keygen (OpenSSH client) is not installed"
)


def ssh_keygen_l(path: Path) -> tuple[int, str, str]:
    """(bits, fingerprint, type) from `ssh-keygen -lf PATH`."""
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(path)], check=True, capture_output=True, text=True
    ).stdout.split()
    return int(out[0]), out[1], out[-1].strip("()")


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[HostKeyInfo]]:
    """One fresh key directory per module (RSA-3072 generation is slow)."""
    directory = tmp_path_factory.mktemp("hk") / "sub" / "keys"
    return directory, ensure_host_keys(directory)


def copy_keys(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_creates_three_keys_with_private_modes(created: tuple[Path, list[HostKeyInfo]]) -> None:
    directory, infos = created
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert [i.path for i in infos] == [directory / n for n in NAMES]
    assert [(i.key_type, i.bits, i.label) for i in infos] == [
        ("ssh-ed25519", 256, "ED25519"),
        ("ecdsa-sha2-nistp256", 256, "ECDSA"),
        ("ssh-rsa", 3072, "RSA"),
    ]
    assert all(i.created for i in infos)
    for name in NAMES:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
        assert (directory / name).read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        assert (directory / f"{name}.pub").is_file()
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [*NAMES, *(n + ".pub" for n in NAMES)]
    )  # no temporary files left behind


@needs_ssh_keygen
def test_fingerprints_match_ssh_keygen(created: tuple[Path, list[HostKeyInfo]]) -> None:
    _, infos = created
    for info in infos:
        assert ssh_keygen_l(info.path) == (info.bits, info.fingerprint, info.label)
        assert ssh_keygen_l(info.path.with_name(info.path.name + ".pub"))[1] == info.fingerprint
        assert info.describe() == f"{info.bits} {info.fingerprint} {info.path} ({info.label})"


def test_second_run_changes_nothing(
    created: tuple[Path, list[HostKeyInfo]], tmp_path: Path
) -> None:
    directory = copy_keys(created[0], tmp_path / "keys")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}
    again = ensure_host_keys(directory)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}
    assert after == before
    assert not any(i.created for i in again)
    assert [i.fingerprint for i in again] == [i.fingerprint for i in created[1]]
    assert host_key_infos(directory) == again


def test_missing_pub_file_is_rewritten(
    created: tuple[Path, list[HostKeyInfo]], tmp_path: Path
) -> None:
    directory = copy_keys(created[0], tmp_path / "keys")
    pub = directory / "ssh_host_ed25519_key.pub"
    original = pub.read_bytes()
    pub.unlink()
    ensure_host_keys(directory)
    assert pub.read_bytes() == original


def test_load_host_keys_maps_type_to_private_key(created: tuple[Path, list[HostKeyInfo]]) -> None:
    keys = load_host_keys(created[0])
    assert sorted(keys) == [b"ecdsa-sha2-nistp256", b"ssh-ed25519", b"ssh-rsa"]
    assert all(not k.isPublic() for k in keys.values())  # type: ignore[no-untyped-call]
    assert keys[b"ssh-rsa"].size() == 3072  # type: ignore[no-untyped-call]


def test_group_readable_private_key_is_refused(
    created: tuple[Path, list[HostKeyInfo]], tmp_path: Path
) -> None:
    directory = copy_keys(created[0], tmp_path / "keys")
    path = directory / "ssh_host_rsa_key"
    path.chmod(0o644)
    message = (
        f"{path}: permissions 0644 are too open: a private host key must not be accessible by "
        f"group or others; expected 0600 (chmod 600 {path})"
    )
    with pytest.raises(ConfigError) as info:
        load_host_keys(directory)
    assert str(info.value) == message
    with pytest.raises(ConfigError):
        ensure_host_keys(directory)
    assert host_keys_problems(directory) == [message]


def test_garbage_key_file_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    bad = directory / "ssh_host_ed25519_key"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="not an unencrypted OpenSSH private key"):
        load_host_keys(directory)


def test_empty_directory_has_no_host_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_host_keys(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: no host keys found; expected ssh_host_*_key files (run `sftpd keygen`)"
    )
    assert host_keys_problems(tmp_path) == []


def test_problems_of_a_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "keys"
    assert host_keys_problems(target) == [
        f"cannot create {target}: {tmp_path / 'file'} is not a directory"
    ]
    assert host_keys_problems(tmp_path / "file") == [
        f"{tmp_path / 'file'} exists but is not a directory; expected a directory"
    ]
    assert host_keys_problems(tmp_path / "new" / "keys") == []
    with pytest.raises(ConfigError, match="cannot create host key directory"):
        ensure_host_keys(target)
