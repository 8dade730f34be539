"""End to end: command="rrsync ..." keys and force-command certificates, with real rsync and ssh."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pki import Pki
from tests.support import Env, User, have, start_sftpd, toml_str, write_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (have("rsync") and have("bwrap") and have("ssh") and have("sftp")),
        reason="rsync, bwrap or the OpenSSH client missing",
    ),
]

SECRET = b"outside /pub: never sent\n"


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, host_keys_dir: Path
) -> Iterator[tuple[Env, dict[str, Path]]]:
    """alice with an rrsync -ro /pub key (authorized_keys), an rrsync -wo /in key
    ([[users.keys]] options), a key with from="127.0.0.2" ([[users.keys]] options), and a
    CA whose certificate forces rrsync -ro /pub."""
    tmp = tmp_path_factory.mktemp("rrsync")
    keys = {name: tmp / name for name in ("ro", "wo", "cert", "from")}
    ro_line, wo_line, from_line = (_keygen(keys[k]) for k in ("ro", "wo", "from"))
    pki = Pki(tmp)
    ca = pki.key("ed25519", "ca")
    _keygen(keys["cert"])
    pki.sign(ca, keys["cert"], "-O", "force-command=rrsync -ro /pub", principals="alice")
    root = tmp / "alice"
    (root / "pub" / "sub").mkdir(parents=True)
    (root / "in").mkdir()
    (root / "pub" / "a.txt").write_bytes(b"public a\n")
    (root / "pub" / "sub" / "b.txt").write_bytes(b"public b\n")
    (root / "secret.txt").write_bytes(SECRET)
    os.symlink("../secret.txt", root / "pub" / "up-link")
    os.symlink("/secret.txt", root / "pub" / "abs-link")
    os.symlink("..", root / "pub" / "parent")
    options = toml_str('command="rrsync -wo /in"')
    ro_entry = toml_str('command="rrsync -ro /pub" ' + ro_line)
    alice = User(
        "alice",
        root,
        extra=f"authorized_keys = [{ro_entry}]\n"
        f"[[users.keys]]\nkey = {toml_str(wo_line)}\noptions = {options}\n"
        f"[[users.keys]]\nkey = {toml_str(from_line)}\noptions = 'from=\"127.0.0.2\"'\n"
        'permissions = ["list", "download"]\n',
    )
    cfg = tmp / "sftpd.toml"
    server = f"trusted_user_ca_keys_file = {toml_str(f'{ca}.pub')}"
    write_config(cfg, [alice], host_keys_dir, server)
    proc = start_sftpd(cfg)
    try:
        yield Env(proc, alice, keys["ro"], tmp), keys
    finally:
        proc.stop()


def _ssh(env: Env, key: Path) -> list[str]:
    opts = env.ssh_opts(port_flag="-p", key=False)
    return ["ssh", *opts, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key)]


def _sftp(env: Env, key: Path) -> list[str]:
    opts = env.ssh_opts(key=False)
    return [
        "sftp",
        *opts,
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(key),
        "-b",
        "-",
        "alice@127.0.0.1",
    ]


def rsync(env: Env, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["rsync", "-e", shlex.join(_ssh(env, key)), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=env.tmp)


def _ok(env: Env, res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, res.stdout + res.stderr + env.server.log_text()[-3000:]


@pytest.mark.parametrize("key", ["ro", "cert"])
def test_rrsync_ro_downloads_from_dir_and_nothing_else(
    setup: tuple[Env, dict[str, Path]], key: str
) -> None:
    env, keys = setup
    k = keys[key]
    dst = env.tmp / f"dl-{key}"
    # the key's root is /pub: "host:" is /pub, paths are relative to it
    listing = rsync(env, k, "alice@127.0.0.1:")
    _ok(env, listing)
    assert "a.txt" in listing.stdout and "sub" in listing.stdout
    assert "secret.txt" not in listing.stdout
    _ok(env, rsync(env, k, "-a", "alice@127.0.0.1:sub", "alice@127.0.0.1:a.txt", f"{dst}/"))
    assert (dst / "a.txt").read_bytes() == b"public a\n"
    assert (dst / "sub" / "b.txt").read_bytes() == b"public b\n"
    # nothing outside /pub: by "..", by an absolute path, through symlinks out of /pub
    for path in ("../secret.txt", "/secret.txt", "/../secret.txt", "sub/../../secret.txt"):
        res = rsync(env, k, f"alice@127.0.0.1:{path}", str(dst / "x"))
        assert res.returncode != 0, path
    for link in ("up-link", "abs-link", "parent/secret.txt"):
        res = rsync(env, k, "-L", f"alice@127.0.0.1:{link}", str(dst / "y"))
        assert res.returncode != 0, link
    got = [p.read_bytes() for p in dst.rglob("*") if p.is_file() and not p.is_symlink()]
    assert SECRET not in got
    # no upload
    (env.tmp / "up.txt").write_bytes(b"upload\n")
    res = rsync(env, k, str(env.tmp / "up.txt"), "alice@127.0.0.1:")
    assert res.returncode != 0 and "read-only" in res.stderr, res.stderr
    assert not (env.alice.root / "pub" / "up.txt").exists()
    assert not (env.alice.root / "up.txt").exists()
    # no SFTP session, no scp, no other command
    sftp = subprocess.run(
        _sftp(env, k),
        input="ls\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sftp.returncode != 0
    for command in ("scp -f a.txt", "sha256sum a.txt"):
        res_b = subprocess.run(
            [*_ssh(env, k), "alice@127.0.0.1", command], capture_output=True, timeout=60
        )
        assert res_b.returncode != 0 and b"public a" not in res_b.stdout, command


def test_rrsync_wo_uploads_into_dir_only(setup: tuple[Env, dict[str, Path]]) -> None:
    env, keys = setup
    k = keys["wo"]
    src = env.tmp / "wo-src"
    (src / "d").mkdir(parents=True)
    (src / "new.txt").write_bytes(b"new upload\n")
    (src / "d" / "deep.txt").write_bytes(b"deep upload\n")
    _ok(env, rsync(env, k, "-a", f"{src}/", "alice@127.0.0.1:"))
    root = env.alice.root
    assert (root / "in" / "new.txt").read_bytes() == b"new upload\n"
    assert (root / "in" / "d" / "deep.txt").read_bytes() == b"deep upload\n"
    # ".." cannot climb out of /in: the file lands inside it, never beside it
    _ok(env, rsync(env, k, str(src / "new.txt"), "alice@127.0.0.1:../escaped.txt"))
    assert not (root / "escaped.txt").exists()
    assert (root / "in" / "escaped.txt").read_bytes() == b"new upload\n"
    # write-only: no download, no listing of what is there
    res = rsync(env, k, "alice@127.0.0.1:new.txt", str(env.tmp / "wo-back.txt"))
    assert res.returncode != 0 and "download" in res.stderr, res.stderr
    assert not (env.tmp / "wo-back.txt").exists()
    sftp = subprocess.run(
        _sftp(env, k),
        input="put wo-src/new.txt /top.txt\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=env.tmp,
    )
    assert sftp.returncode != 0 and not (root / "top.txt").exists()


def test_users_keys_options_from_is_obeyed(setup: tuple[Env, dict[str, Path]]) -> None:
    env, keys = setup
    k = keys["from"]

    def sftp(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = _sftp(env, k)
        return subprocess.run(
            [cmd[0], *extra, *cmd[1:]],
            input="get pub/a.txt from-ok.txt\n",
            capture_output=True,
            text=True,
            timeout=60,
            cwd=env.tmp,
        )

    refused = sftp()  # from 127.0.0.1
    assert refused.returncode != 0 and not (env.tmp / "from-ok.txt").exists()
    assert "client address not in the key's from=" in env.server.log_text()
    ok = sftp("-o", "BindAddress=127.0.0.2")
    assert ok.returncode == 0, ok.stderr + env.server.log_text()[-2000:]
    assert (env.tmp / "from-ok.txt").read_bytes() == b"public a\n"
