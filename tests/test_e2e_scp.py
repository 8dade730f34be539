"""End-to-end: real `scp -O`, ssh exec and rclone against a real sftpd (bytes checked on disk)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import Env, have

pytestmark = pytest.mark.e2e

REMOTE = "alice@127.0.0.1"


def scp(env: Env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    cmd = ["scp", "-O", "-q", *env.ssh_opts(), *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=env.tmp, check=False)


def ok(env: Env, res: subprocess.CompletedProcess[bytes]) -> None:
    assert res.returncode == 0, (
        f"scp failed ({res.returncode}): {res.stderr!r}\n{env.server.log_text()[-3000:]}"
    )


def make_tree(base: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": os.urandom(150_000),
        "sub/deeper/c": b"",
        "sub/sp ace": b"space",
    }
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return files


def read_tree(base: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()
    }


def test_upload_and_download_a_large_file(server: Env) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = server.tmp / "large-up.bin"
    src.write_bytes(data)
    ok(server, scp(server, str(src), f"{REMOTE}:large.bin"))
    assert (server.alice.root / "large.bin").read_bytes() == data
    ok(server, scp(server, f"{REMOTE}:large.bin", str(server.tmp / "large-down.bin")))
    assert (server.tmp / "large-down.bin").read_bytes() == data


def test_upload_into_directory_and_rename(server: Env) -> None:
    (server.alice.root / "inbox").mkdir()
    src = server.tmp / "letter.txt"
    src.write_bytes(b"dear server\n")
    ok(server, scp(server, str(src), f"{REMOTE}:inbox"))
    ok(server, scp(server, str(src), f"{REMOTE}:/inbox/renamed.txt"))
    assert (server.alice.root / "inbox/letter.txt").read_bytes() == b"dear server\n"
    assert (server.alice.root / "inbox/renamed.txt").read_bytes() == b"dear server\n"


def test_several_sources_upload_and_download(server: Env) -> None:
    srcs = []
    for i in range(3):
        p = server.tmp / f"multi-{i}.txt"
        p.write_bytes(f"file {i}\n".encode() * (i + 1))
        srcs.append(p)
    (server.alice.root / "multi").mkdir()
    ok(server, scp(server, *map(str, srcs), f"{REMOTE}:multi/"))
    for p in srcs:
        assert (server.alice.root / "multi" / p.name).read_bytes() == p.read_bytes()
    down = server.tmp / "multi-down"
    down.mkdir()
    # remote paths go unquoted to the remote end: one `scp -f` with two paths (-T: the
    # client cannot match the names it receives against that "pattern", as with OpenSSH)
    ok(server, scp(server, "-T", f"{REMOTE}:multi/multi-0.txt multi/multi-1.txt", str(down)))
    ok(
        server,
        scp(server, f"{REMOTE}:multi/multi-2.txt", f"{REMOTE}:/multi/multi-0.txt", str(down)),
    )
    assert read_tree(down) == {p.name: p.read_bytes() for p in srcs}


def test_recursive_upload_and_download(server: Env) -> None:
    local = server.tmp / "tree-up"
    files = make_tree(local)
    ok(server, scp(server, "-r", str(local), f"{REMOTE}:/"))
    assert read_tree(server.alice.root / "tree-up") == files
    ok(server, scp(server, "-r", f"{REMOTE}:/tree-up", str(server.tmp / "tree-down")))
    assert read_tree(server.tmp / "tree-down") == files


def test_preserve_times_and_modes(server: Env) -> None:
    src = server.tmp / "stamped.sh"
    src.write_bytes(b"#!/bin/sh\n")
    os.chmod(src, 0o751)
    os.utime(src, (1_300_000_000, 1_400_000_000))
    ok(server, scp(server, "-p", str(src), f"{REMOTE}:stamped.sh"))
    up = server.alice.root / "stamped.sh"
    assert up.stat().st_mode & 0o7777 == 0o751
    assert int(up.stat().st_mtime) == 1_400_000_000
    os.utime(up, (1_000_000_000, 1_100_000_000))
    os.chmod(up, 0o640)
    down = server.tmp / "stamped-down.sh"
    ok(server, scp(server, "-p", f"{REMOTE}:stamped.sh", str(down)))
    assert down.stat().st_mode & 0o7777 == 0o640
    assert int(down.stat().st_mtime) == 1_100_000_000


def test_upload_into_missing_directory_fails(server: Env) -> None:
    src = server.tmp / "lost.txt"
    src.write_bytes(b"x")
    res = scp(server, str(src), f"{REMOTE}:no/such/dir/lost.txt")
    assert res.returncode != 0
    assert b"scp: no/such/dir/lost.txt: No such file or directory" in res.stderr
    assert not (server.alice.root / "no").exists()
    res = scp(server, "-r", str(src), str(src), f"{REMOTE}:missing-dir")
    assert res.returncode != 0
    assert b"missing-dir: No such file or directory" in res.stderr


def test_download_missing_source_fails_but_copies_the_rest(server: Env) -> None:
    (server.alice.root / "present.txt").write_bytes(b"here")
    down = server.tmp / "partial-down"
    down.mkdir()
    res = scp(server, "-T", f"{REMOTE}:absent.txt present.txt", str(down))
    assert res.returncode == 1
    assert b"scp: absent.txt: No such file or directory" in res.stderr
    assert (down / "present.txt").read_bytes() == b"here"


def test_paths_stay_in_the_jail(server: Env) -> None:
    outside = server.tmp / "outside.txt"
    outside.write_bytes(b"secret")
    res = scp(server, f"{REMOTE}:../outside.txt", str(server.tmp / "stolen.txt"))
    assert res.returncode != 0
    assert not (server.tmp / "stolen.txt").exists()
    src = server.tmp / "intruder.txt"
    src.write_bytes(b"intruder")
    ok(server, scp(server, str(src), f"{REMOTE}:../../intruder-landed.txt"))
    assert (server.alice.root / "intruder-landed.txt").read_bytes() == b"intruder"
    assert not (server.tmp / "intruder-landed.txt").exists()


def test_read_only_user_cannot_upload(make_server) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_server(alice_extra="read_only = true")
    env.alice.root.mkdir(exist_ok=True)
    (env.alice.root / "readable.txt").write_bytes(b"r")
    src = env.tmp / "ro-up.txt"
    src.write_bytes(b"x")
    res = scp(env, str(src), f"{REMOTE}:ro-up.txt")
    assert res.returncode != 0
    reason = b'permission denied: "upload" is not allowed in /ro-up.txt (read_only)'
    assert b"scp: ro-up.txt: " + reason in res.stderr
    assert not (env.alice.root / "ro-up.txt").exists()
    ok(env, scp(env, f"{REMOTE}:readable.txt", str(env.tmp / "ro-down.txt")))
    assert (env.tmp / "ro-down.txt").read_bytes() == b"r"


# ---- other exec commands over a real ssh client ---------------------------------------------


def test_disallowed_commands_and_metacharacters_get_127(server: Env) -> None:
    (server.alice.root / "victim.txt").write_bytes(b"alive")
    for command in ["ls; rm -rf /", "md5sum $(id)", "a | b", "rm victim.txt", "sh -c 'id'"]:
        res = server.ssh(command)
        assert res.returncode == 127, (command, res)
        assert res.stdout == b""
        assert b"sftpd: command not allowed: " in res.stderr
    assert (server.alice.root / "victim.txt").read_bytes() == b"alive"


def test_hash_commands_over_ssh(server: Env) -> None:
    data = os.urandom(100_000)
    (server.alice.root / "hash me.bin").write_bytes(data)
    res = server.ssh("sha256sum 'hash me.bin' missing.bin")
    assert res.returncode == 1
    assert res.stdout == hashlib.sha256(data).hexdigest().encode() + b"  hash me.bin\n"
    assert res.stderr == b"sha256sum: missing.bin: No such file or directory\n"
    res = server.ssh("md5sum", input=b"")
    assert (res.returncode, res.stdout) == (0, b"d41d8cd98f00b204e9800998ecf8427e  -\n")


def test_rclone_shell_probe_over_ssh(server: Env) -> None:
    res = server.ssh("echo ${ShellId}%ComSpec%")
    assert (res.returncode, res.stdout, res.stderr) == (0, b"%ComSpec%\n", b"")


@pytest.mark.skipif(not have("rclone"), reason="rclone is not installed")
def test_rclone_check_uses_md5sum_and_sha1sum(server: Env) -> None:
    local = server.tmp / "rclone-local"
    files = make_tree(local)
    files['it\'s "quoted" $x;.txt'] = b"shell-hostile name"
    (local / 'it\'s "quoted" $x;.txt').write_bytes(b"shell-hostile name")
    remote = server.alice.root / "rclone-remote"
    for rel, data in files.items():
        (remote / rel).parent.mkdir(parents=True, exist_ok=True)
        (remote / rel).write_bytes(data)
    env = dict(os.environ)
    env.update(
        RCLONE_CONFIG_SRV_TYPE="sftp",
        RCLONE_CONFIG_SRV_HOST="127.0.0.1",
        RCLONE_CONFIG_SRV_PORT=str(server.port),
        RCLONE_CONFIG_SRV_USER="alice",
        RCLONE_CONFIG_SRV_KEY_FILE=str(server.key_path),
    )
    base = ["rclone", "--config", str(server.tmp / "rclone.conf")]

    def rclone(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )

    # rclone probes the shell and the hash commands once, then saves them in its config
    # (concurrent hashing during that first probe reports "hash unsupported" in 1.60)
    res = rclone("md5sum", "SRV:rclone-remote/a.txt")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{hashlib.md5(files['a.txt']).hexdigest()}  a.txt\n"
    res = rclone("md5sum", "SRV:rclone-remote")
    assert res.returncode == 0, res.stderr
    expected = {f"{hashlib.md5(data).hexdigest()}  {rel}" for rel, data in files.items()}
    assert set(res.stdout.splitlines()) == expected
    res = rclone("sha1sum", "SRV:rclone-remote")
    assert res.returncode == 0, res.stderr
    assert set(res.stdout.splitlines()) == {
        f"{hashlib.sha1(data).hexdigest()}  {rel}" for rel, data in files.items()
    }
    res = rclone("check", str(local), "SRV:rclone-remote")
    assert res.returncode == 0, res.stderr
    assert "0 differences found" in res.stderr
    (remote / "a.txt").write_bytes(b"ALPHA\n")  # same size, other content
    res = rclone("check", str(local), "SRV:rclone-remote")
    assert res.returncode != 0
    assert "1 differences found" in res.stderr
    log = server.server.log_text()
    assert "command='echo ${ShellId}%ComSpec%'" in log
    assert "command=md5sum" in log
