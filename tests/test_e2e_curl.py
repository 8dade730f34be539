"""End-to-end: curl's sftp:// (libssh2) against a real sftpd; bytes and links checked on disk."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ALICE_PASSWORD, Env, User, have, start_sftpd, write_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have("curl"), reason="curl is not installed"),
]

# curl's exit status when a -Q command fails ("quote error")
CURLE_QUOTE_ERROR = 21


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, client_key: tuple[Path, str], host_keys_dir: Path
) -> Iterator[Env]:
    """One server for this module, with OpenSSH's wider algorithm set: libssh2 1.10 has no
    AEAD cipher and no encrypt-then-MAC, so it cannot connect to the "modern" default."""
    tmp = tmp_path_factory.mktemp("curl-srv")
    alice = User("alice", tmp / "alice-root", client_key[1], ALICE_PASSWORD)
    cfg = tmp / "sftpd.toml"
    write_config(cfg, [alice], host_keys_dir, 'algorithms = "compat"')
    proc = start_sftpd(cfg)
    yield Env(proc, alice, client_key[0], tmp)
    proc.stop()


def curl(env: Env, path: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``curl sftp://127.0.0.1:PORT{path}`` as alice with her (OpenSSH-format ed25519) key,
    which libssh2 1.10 reads as it is. ``-k``: the host key is not what these tests check."""
    pub = env.key_path.with_name(env.key_path.name + ".pub")
    cmd = [
        "curl",
        "--silent",
        "--show-error",
        "--insecure",
        "--user",
        "alice:",
        "--key",
        str(env.key_path),
        "--pubkey",
        str(pub),
        f"sftp://127.0.0.1:{env.port}{path}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=False)


def ok(res: subprocess.CompletedProcess[bytes]) -> bytes:
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res.stdout


def test_curl_upload_and_download(server: Env, tmp_path: Path) -> None:
    root = server.alice.root
    (root / "curl-io").mkdir()
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "up.bin").write_bytes(payload)
    ok(curl(server, "/curl-io/up.bin", "-T", str(tmp_path / "up.bin")))
    assert hashlib.sha256((root / "curl-io" / "up.bin").read_bytes()).digest() == (
        hashlib.sha256(payload).digest()
    )
    # an upload over an existing, longer file replaces it whole
    (tmp_path / "short.bin").write_bytes(b"short")
    ok(curl(server, "/curl-io/up.bin", "-T", str(tmp_path / "short.bin")))
    assert (root / "curl-io" / "up.bin").read_bytes() == b"short"
    served = os.urandom(2 * 1024 * 1024 + 5)
    (root / "curl-io" / "down.bin").write_bytes(served)
    ok(curl(server, "/curl-io/down.bin", "-o", str(tmp_path / "down.bin")))
    assert (tmp_path / "down.bin").read_bytes() == served
    assert ok(curl(server, "/curl-io/down.bin", "-r", "1000-1009")) == served[1000:1010]
    res = curl(server, "/curl-io/missing.bin", "-o", str(tmp_path / "missing.bin"))
    assert res.returncode != 0
    assert str(root) not in res.stderr.decode(errors="replace")


def test_curl_lists_a_directory_in_ls_l_shape(server: Env) -> None:
    d = server.alice.root / "curl-ls"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_bytes(b"12345")
    os.symlink("a.txt", d / "ln")
    lines = ok(curl(server, "/curl-ls/")).decode().splitlines()
    by_name = {line.split()[-1]: line for line in lines}
    assert {"a.txt", "sub"} <= set(by_name)
    assert by_name["a.txt"].startswith("-rw") and by_name["a.txt"].split()[4] == "5"
    assert by_name["sub"].startswith("d")
    assert any(line.startswith("l") and "ln" in line.split() for line in lines)
    names = ok(curl(server, "/curl-ls/", "--list-only")).decode().split()
    assert {"a.txt", "sub", "ln"} <= set(names)


def test_curl_quote_mkdir_rename_chmod_rm_rmdir(server: Env) -> None:
    root = server.alice.root
    (root / "curl-q").mkdir()
    (root / "curl-q" / "f.txt").write_bytes(b"quote me\n")
    quotes = [
        "mkdir /curl-q/new",
        "rename /curl-q/f.txt /curl-q/new/g.txt",
        "chmod 600 /curl-q/new/g.txt",
    ]
    ok(curl(server, "/curl-q/", "--list-only", *(a for q in quotes for a in ("-Q", q))))
    assert (root / "curl-q" / "new" / "g.txt").read_bytes() == b"quote me\n"
    assert not (root / "curl-q" / "f.txt").exists()
    assert stat.S_IMODE((root / "curl-q" / "new" / "g.txt").stat().st_mode) == 0o600
    ok(curl(server, "/curl-q/", "-Q", "rm /curl-q/new/g.txt", "-Q", "rmdir /curl-q/new"))
    assert os.listdir(root / "curl-q") == []
    res = curl(server, "/curl-q/", "-Q", "rm /curl-q/never-there")
    assert res.returncode == CURLE_QUOTE_ERROR
    assert str(root) not in res.stderr.decode(errors="replace")
    ok(curl(server, "/curl-q/"))  # the server keeps serving


def test_curl_symlink_points_where_the_client_asked(server: Env) -> None:
    """curl's ``symlink SOURCE TARGET`` (libssh2) sends the target first, as OpenSSH's
    client does; it used to come out as ``/b.bin -> /curl-ln/link`` in the login directory."""
    root = server.alice.root
    d = root / "curl-ln"
    d.mkdir()
    (d / "b.bin").write_bytes(b"link target\n")
    ok(curl(server, "/curl-ln/", "-Q", "symlink b.bin /curl-ln/link"))
    assert os.readlink(d / "link") == "b.bin"
    assert (d / "link").read_bytes() == b"link target\n"
    assert not (root / "b.bin").exists() and not (root / "b.bin").is_symlink()
    ok(curl(server, "/curl-ln/", "-Q", "ln /curl-ln/b.bin /curl-ln/abs"))  # curl: ln = symlink
    assert os.readlink(d / "abs") == "/curl-ln/b.bin"  # stored as sent
    assert ok(curl(server, "/curl-ln/link")) == b"link target\n"
    assert ok(curl(server, "/curl-ln/abs")) == b"link target\n"  # resolved inside the root
