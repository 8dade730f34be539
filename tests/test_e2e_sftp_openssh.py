"""End-to-end: every command of OpenSSH's `sftp -b`, and `scp` in its default SFTP mode,
against a real sftpd; each test checks the bytes, modes and names on the host disk."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support import Env, wait_for

pytestmark = pytest.mark.e2e

# An `ls -l` line as OpenSSH's sftp prints it: type+mode, links, owner, group, size,
# date, name.
_LS_LINE = re.compile(
    r"^(?P<type>[dl-])[rwxsStT-]{9}\s+\S+\s+\S+\s+\S+\s+(?P<size>\d+)\s+"
    r"\w{3}\s+\d{1,2}\s+(?:\d{2}:\d{2}|\d{4})\s+(?P<name>.+)$"
)


def _data(tag: str, size: int) -> bytes:
    """Deterministic, position-dependent bytes (a shifted tail would not compare equal)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += f"{tag}:{counter:08d}|".encode()
        counter += 1
    return bytes(out[:size])


def _failed(res: subprocess.CompletedProcess[str]) -> str:
    return f"rc={res.returncode}\nstdout:{res.stdout}\nstderr:{res.stderr}"


def _ls_lines(output: str) -> dict[str, re.Match[str]]:
    lines = {}
    for line in output.splitlines():
        match = _LS_LINE.match(line)
        if match:
            lines[match["name"]] = match
    return lines


def _scp(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """`scp` with no -O/-s: OpenSSH 9 uses the SFTP protocol by default."""
    return subprocess.run(
        ["scp", *env.ssh_opts(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=env.tmp,
    )


# ---- put / get ------------------------------------------------------------------------


def test_put_and_get_move_exact_bytes(server: Env, tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 12345)  # several 255 KiB requests and a tail
    src = tmp_path / "up.bin"
    src.write_bytes(payload)
    server.sftp(f"put {src} ossh-put.bin\nget ossh-put.bin {tmp_path / 'down.bin'}\n")
    assert (server.alice.root / "ossh-put.bin").read_bytes() == payload
    assert (tmp_path / "down.bin").read_bytes() == payload
    # -f: fsync@openssh.com after the upload
    server.sftp(f"put -f {src} ossh-put-f.bin\n")
    assert (server.alice.root / "ossh-put-f.bin").read_bytes() == payload


def test_put_over_a_longer_file_leaves_no_old_tail(server: Env, tmp_path: Path) -> None:
    (server.alice.root / "ossh-shrink.txt").write_bytes(b"L" * 100_000)
    src = tmp_path / "short.txt"
    src.write_bytes(b"short\n")
    server.sftp(f"put {src} ossh-shrink.txt\n")
    assert (server.alice.root / "ossh-shrink.txt").read_bytes() == b"short\n"


def test_put_and_get_with_p_preserve_mode_and_mtime(server: Env, tmp_path: Path) -> None:
    src = tmp_path / "keep.txt"
    src.write_bytes(b"keep my mode and time\n")
    src.chmod(0o640)
    os.utime(src, (981173106, 981173106))  # 2001-02-03
    server.sftp(f"put -p {src} ossh-keep.txt\n")
    st = os.stat(server.alice.root / "ossh-keep.txt")
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert int(st.st_mtime) == 981173106

    remote = server.alice.root / "ossh-keep-remote.txt"
    remote.write_bytes(b"remote side\n")
    remote.chmod(0o604)
    os.utime(remote, (1000000000, 1000000000))
    dst = tmp_path / "got.txt"
    server.sftp(f"get -p ossh-keep-remote.txt {dst}\n")
    st = os.stat(dst)
    assert dst.read_bytes() == b"remote side\n"
    assert stat.S_IMODE(st.st_mode) == 0o604
    assert int(st.st_mtime) == 1000000000


def test_reput_appends_to_the_partial_remote_copy(server: Env, tmp_path: Path) -> None:
    payload = _data("reput", 700_000)
    src = tmp_path / "whole.bin"
    src.write_bytes(payload)
    # A partial remote copy whose first bytes differ from the local file: a resume keeps
    # them, a full re-upload would overwrite them.
    partial = b"REMOTE-PREFIX!" + payload[14:300_000]
    (server.alice.root / "ossh-reput.bin").write_bytes(partial)
    server.sftp(f"reput {src} ossh-reput.bin\n")
    assert (server.alice.root / "ossh-reput.bin").read_bytes() == partial + payload[300_000:]


def test_reget_appends_to_the_partial_local_copy(server: Env, tmp_path: Path) -> None:
    payload = _data("reget", 700_000)
    (server.alice.root / "ossh-reget.bin").write_bytes(payload)
    dst = tmp_path / "partial.bin"
    partial = b"LOCAL-PREFIX!!" + payload[14:123_457]
    dst.write_bytes(partial)
    server.sftp(f"reget ossh-reget.bin {dst}\n")
    assert dst.read_bytes() == partial + payload[123_457:]
    assert (server.alice.root / "ossh-reget.bin").read_bytes() == payload


def test_recursive_put_and_get_of_a_tree(server: Env, tmp_path: Path) -> None:
    tree = tmp_path / "ossh-tree"
    files = {
        "top.txt": b"top\n",
        "a/one.txt": b"one\n",
        "a/b/two.bin": os.urandom(300_000),
        "a/b/c/empty": b"",
        "d/three.txt": b"three\n" * 1000,
    }
    for rel, content in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(content)
    (tree / "emptydir").mkdir()
    back = tmp_path / "back"
    server.sftp(f"put -r {tree} /ossh-tree\nget -r /ossh-tree {back}\n")
    for base in (server.alice.root / "ossh-tree", back):
        got = {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}
        assert got == files
        assert (base / "emptydir").is_dir()


def test_names_with_spaces_quotes_and_unicode(server: Env, tmp_path: Path) -> None:
    name = "ünï cødé ☃ 'single' & more.txt"
    src = tmp_path / "plain.txt"
    src.write_bytes(b"odd name\n")
    res = server.sftp(
        f'put {src} "{name}"\nls -1\nrename "{name}" "{name}.2"\n'
        f'get "{name}.2" {tmp_path / "back.txt"}\n'
    )
    assert name in res.stdout.split("sftp> ls -1")[1].splitlines()
    assert (server.alice.root / f"{name}.2").read_bytes() == b"odd name\n"
    assert not (server.alice.root / name).exists()
    assert (tmp_path / "back.txt").read_bytes() == b"odd name\n"


# ---- listings -------------------------------------------------------------------------


def test_ls_l_lists_exact_names_with_type_letters(server: Env) -> None:
    d = server.alice.root / "ossh-ls"
    d.mkdir()
    (d / "file.txt").write_bytes(b"x" * 1234)
    (d / "sub").mkdir()
    os.symlink("file.txt", d / "link")
    (d / "with space").write_bytes(b"")
    res = server.sftp("ls -l /ossh-ls\nls -la /ossh-ls\nls -1 /ossh-ls\n")
    sections = res.stdout.split("sftp> ")
    lines = _ls_lines(sections[1])
    assert set(lines) == {
        "/ossh-ls/file.txt",
        "/ossh-ls/sub",
        "/ossh-ls/link",
        "/ossh-ls/with space",
    }
    assert lines["/ossh-ls/file.txt"]["type"] == "-"
    assert lines["/ossh-ls/file.txt"]["size"] == "1234"
    assert lines["/ossh-ls/sub"]["type"] == "d"
    assert lines["/ossh-ls/link"]["type"] == "l"
    with_dots = _ls_lines(sections[2])
    assert {"/ossh-ls/.", "/ossh-ls/.."} < set(with_dots)
    assert with_dots["/ossh-ls/."]["type"] == "d"
    one = [line for line in sections[3].splitlines()[1:] if line]
    assert sorted(one) == sorted(
        ["/ossh-ls/file.txt", "/ossh-ls/sub", "/ossh-ls/link", "/ossh-ls/with space"]
    )


def _big_directory(root: Path, name: str) -> set[str]:
    """2,500 entries over several READDIR batches: short, 255-byte and UTF-8 names."""
    d = root / name
    d.mkdir()
    names = {f"f{i:04}" for i in range(2300)}
    names |= {f"{i:03}" + "n" * 252 for i in range(150)}  # 255 bytes, the longest allowed
    names |= {f"{i:02}-" + "\u00e9\u6f22" * 40 for i in range(50)}  # 203 bytes of UTF-8
    for entry in names:
        (d / entry).write_bytes(b"")
    return names


def test_a_big_listing_arrives_whole(server: Env) -> None:
    """Several READDIR batches, each bounded in bytes: OpenSSH's sftp gets every name once."""
    names = _big_directory(server.alice.root, "ossh-big")
    res = server.sftp("ls -1 /ossh-big\n")
    listed = [line for line in res.stdout.split("sftp> ")[1].splitlines()[1:] if line]
    assert sorted(listed) == sorted(f"/ossh-big/{entry}" for entry in names)


def test_ls_of_the_login_directory_and_version(server: Env) -> None:
    (server.alice.root / "ossh-rootfile.txt").write_bytes(b"r")
    res = server.sftp("version\nls -1\n")
    assert "SFTP protocol version 3" in res.stdout
    assert "ossh-rootfile.txt" in res.stdout.split("sftp> ls -1")[1].split()


# ---- links, rename, copy ----------------------------------------------------------------


def test_ln_makes_a_hard_link(server: Env) -> None:
    (server.alice.root / "ossh-ln-src.txt").write_bytes(b"linked bytes\n")
    server.sftp("ln ossh-ln-src.txt ossh-ln-dst.txt\n")
    src = os.stat(server.alice.root / "ossh-ln-src.txt")
    dst = os.lstat(server.alice.root / "ossh-ln-dst.txt")
    assert stat.S_ISREG(dst.st_mode)
    assert (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)
    assert src.st_nlink == 2


def test_ln_s_and_symlink_store_the_target_the_client_gave(server: Env) -> None:
    (server.alice.root / "ossh-sym-target.txt").write_bytes(b"target\n")
    (server.alice.root / "ossh-symdir").mkdir()
    server.sftp(
        "ln -s ossh-sym-target.txt ossh-ln-s\n"
        "symlink /ossh-sym-target.txt ossh-symlink-abs\n"
        "symlink ../ossh-sym-target.txt ossh-symdir/up\n"
    )
    root = server.alice.root
    # OpenSSH's sftp sends a symlink target as typed (only the link path is made absolute).
    assert os.readlink(root / "ossh-ln-s") == "ossh-sym-target.txt"
    assert os.readlink(root / "ossh-symlink-abs") == "/ossh-sym-target.txt"
    assert os.readlink(root / "ossh-symdir/up") == "../ossh-sym-target.txt"
    res = server.sftp(f"get ossh-symlink-abs {server.tmp / 'ossh-via-abs.txt'}\n")
    assert (server.tmp / "ossh-via-abs.txt").read_bytes() == b"target\n", _failed(res)


def test_rename_to_a_new_name(server: Env) -> None:
    (server.alice.root / "ossh-mv-a.txt").write_bytes(b"moving\n")
    server.sftp("rename ossh-mv-a.txt ossh-mv-b.txt\n")
    assert not (server.alice.root / "ossh-mv-a.txt").exists()
    assert (server.alice.root / "ossh-mv-b.txt").read_bytes() == b"moving\n"


def test_rename_onto_an_existing_file_uses_posix_rename(server: Env) -> None:
    """OpenSSH's `rename` sends posix-rename@openssh.com when the server offers it, so an
    existing target is replaced; `rename -l` (legacy RENAME) must refuse it."""
    root = server.alice.root
    (root / "ossh-pr-src.txt").write_bytes(b"new content\n")
    (root / "ossh-pr-dst.txt").write_bytes(b"old content, longer\n")
    res = server.sftp("rename -l ossh-pr-src.txt ossh-pr-dst.txt\n", check=False)
    assert res.returncode != 0, _failed(res)
    assert 'remote rename "/ossh-pr-src.txt" to "/ossh-pr-dst.txt": Failure' in res.stderr
    assert (root / "ossh-pr-src.txt").read_bytes() == b"new content\n"
    assert (root / "ossh-pr-dst.txt").read_bytes() == b"old content, longer\n"

    server.sftp("rename ossh-pr-src.txt ossh-pr-dst.txt\n")
    assert not (root / "ossh-pr-src.txt").exists()
    assert (root / "ossh-pr-dst.txt").read_bytes() == b"new content\n"


def test_cp_copies_on_the_server(server: Env) -> None:
    payload = os.urandom(1_000_001)
    (server.alice.root / "ossh-cp-src.bin").write_bytes(payload)
    res = server.sftp("help\n")
    if "\ncp " not in res.stdout:
        pytest.skip("this OpenSSH sftp has no cp command")
    server.sftp("cp ossh-cp-src.bin ossh-cp-dst.bin\n")
    assert (server.alice.root / "ossh-cp-dst.bin").read_bytes() == payload
    assert (server.alice.root / "ossh-cp-src.bin").read_bytes() == payload


# ---- attributes ------------------------------------------------------------------------


def test_chmod_sets_the_mode_on_disk(server: Env) -> None:
    f = server.alice.root / "ossh-chmod.txt"
    f.write_bytes(b"x")
    f.chmod(0o644)
    server.sftp("chmod 600 ossh-chmod.txt\n")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    server.sftp("chmod 751 ossh-chmod.txt\n")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o751


def test_chown_and_chgrp_are_refused(server: Env) -> None:
    f = server.alice.root / "ossh-owner.txt"
    f.write_bytes(b"x")
    before = os.stat(f)
    other_uid = before.st_uid + 4242
    other_gid = before.st_gid + 4242
    for cmd in (f"chown {other_uid} ossh-owner.txt", f"chgrp {other_gid} ossh-owner.txt"):
        res = server.sftp(cmd + "\n", check=False)
        assert res.returncode != 0, _failed(res)
        assert 'remote setstat "/ossh-owner.txt": Permission denied' in res.stderr
    after = os.stat(f)
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


def test_df_reports_the_file_system_of_the_root(server: Env) -> None:
    res = server.sftp("df\ndf -i\n")
    out = res.stdout.split("sftp> ")
    st = os.statvfs(server.alice.root)
    size_kib = st.f_frsize * st.f_blocks // 1024
    blocks = out[1].splitlines()
    assert blocks[1].split() == ["Size", "Used", "Avail", "(root)", "%Capacity"]
    assert int(blocks[2].split()[0]) == size_kib
    inodes = out[2].splitlines()
    assert inodes[1].split() == ["Inodes", "Used", "Avail", "(root)", "%Capacity"]
    assert int(inodes[2].split()[0]) == st.f_files


# ---- directories and the working directory --------------------------------------------


def test_mkdir_rmdir_rm(server: Env) -> None:
    root = server.alice.root
    (root / "ossh-rm.txt").write_bytes(b"bye")
    server.sftp("mkdir ossh-newdir\nmkdir ossh-newdir/inner\n")
    assert (root / "ossh-newdir" / "inner").is_dir()
    mode = stat.S_IMODE(os.stat(root / "ossh-newdir").st_mode)
    assert mode == 0o755  # 0777 asked, umask 022
    server.sftp("rmdir ossh-newdir/inner\nrmdir ossh-newdir\nrm ossh-rm.txt\n")
    assert not (root / "ossh-newdir").exists()
    assert not (root / "ossh-rm.txt").exists()


def test_cd_and_pwd_follow_realpath(server: Env) -> None:
    (server.alice.root / "ossh-cd" / "a" / "b").mkdir(parents=True)
    (server.alice.root / "ossh-cd" / "a" / "b" / "here.txt").write_bytes(b"here\n")
    res = server.sftp(
        "pwd\ncd ossh-cd/a/b\npwd\nget here.txt "
        f"{server.tmp / 'ossh-cd-here.txt'}\ncd ../..\npwd\ncd /\ncd ..\npwd\n"
        "cd ossh-cd/./a/../a/b/\npwd\n"
    )
    pwds = re.findall(r"^Remote working directory: (.*)$", res.stdout, re.M)
    assert pwds == ["/", "/ossh-cd/a/b", "/ossh-cd", "/", "/ossh-cd/a/b"]
    assert (server.tmp / "ossh-cd-here.txt").read_bytes() == b"here\n"


# ---- error cases ------------------------------------------------------------------------


def test_get_of_a_missing_file_fails(server: Env, tmp_path: Path) -> None:
    dst = tmp_path / "never.txt"
    res = server.sftp(f"get ossh-missing.txt {dst}\n", check=False)
    assert res.returncode != 0, _failed(res)
    assert 'File "/ossh-missing.txt" not found.' in res.stderr
    assert not dst.exists()
    res = server.sftp("rm ossh-missing.txt\n", check=False)
    assert res.returncode != 0
    assert "No such file" in res.stderr
    res = server.sftp("cd ossh-missing-dir\n", check=False)
    assert res.returncode != 0
    assert "No such file" in res.stderr


def test_rmdir_of_a_non_empty_directory_fails(server: Env) -> None:
    d = server.alice.root / "ossh-full"
    d.mkdir()
    (d / "keep.txt").write_bytes(b"keep\n")
    res = server.sftp("rmdir ossh-full\n", check=False)
    assert res.returncode != 0, _failed(res)
    assert 'remote rmdir "/ossh-full": Failure' in res.stderr
    assert (d / "keep.txt").read_bytes() == b"keep\n"


def test_mkdir_of_an_existing_directory_fails(server: Env) -> None:
    d = server.alice.root / "ossh-exists"
    d.mkdir()
    (d / "inside.txt").write_bytes(b"inside\n")
    res = server.sftp("mkdir ossh-exists\n", check=False)
    assert res.returncode != 0, _failed(res)
    assert 'remote mkdir "/ossh-exists": Failure' in res.stderr
    assert (d / "inside.txt").read_bytes() == b"inside\n"


def test_rm_and_rmdir_of_the_root_are_refused(server: Env) -> None:
    for cmd in ("rmdir /", "rm /", "rename / /ossh-moved-root"):
        res = server.sftp(cmd + "\n", check=False)
        assert res.returncode != 0, _failed(res)
    assert server.alice.root.is_dir()
    assert not (server.alice.root / "ossh-moved-root").exists()


# ---- scp (SFTP mode) --------------------------------------------------------------------


def _new_sessions(env: Env, before: int) -> list[str]:
    # the server logs the close a moment after the client has exited
    wait_for(lambda: any("session closed:" in ln for ln in env.server.lines[before:]))
    return [line for line in env.server.lines[before:] if "session closed:" in line]


def test_scp_upload_and_download_use_sftp(server: Env, tmp_path: Path) -> None:
    payload = os.urandom(777_777)
    src = tmp_path / "scp-up.bin"
    src.write_bytes(payload)
    before = len(server.server.lines)
    res = _scp(server, str(src), "alice@127.0.0.1:scp-up.bin")
    assert res.returncode == 0, _failed(res)
    assert (server.alice.root / "scp-up.bin").read_bytes() == payload
    sessions = _new_sessions(server, before)
    assert sessions and all("kind=sftp" in line for line in sessions), sessions

    (server.alice.root / "scp-small.bin").write_bytes(b"small download\n")
    res = _scp(server, "alice@127.0.0.1:/scp-small.bin", str(tmp_path / "small.bin"))
    assert res.returncode == 0, _failed(res)
    assert (tmp_path / "small.bin").read_bytes() == b"small download\n"


def test_scp_p_preserves_mode_and_mtime(server: Env, tmp_path: Path) -> None:
    src = tmp_path / "scp-keep.txt"
    src.write_bytes(b"scp -p\n")
    src.chmod(0o640)
    os.utime(src, (1_111_111_111, 1_111_111_111))
    res = _scp(server, "-p", str(src), "alice@127.0.0.1:scp-keep.txt")
    assert res.returncode == 0, _failed(res)
    st = os.stat(server.alice.root / "scp-keep.txt")
    assert (stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (0o640, 1_111_111_111)
    (server.alice.root / "scp-keep-remote.txt").write_bytes(b"remote\n")
    os.chmod(server.alice.root / "scp-keep-remote.txt", 0o604)
    os.utime(server.alice.root / "scp-keep-remote.txt", (1_222_222_222, 1_222_222_222))
    dst = tmp_path / "scp-keep-back.txt"
    res = _scp(server, "-p", "alice@127.0.0.1:/scp-keep-remote.txt", str(dst))
    assert res.returncode == 0, _failed(res)
    st = os.stat(dst)
    assert dst.read_bytes() == b"remote\n"
    assert (stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (0o604, 1_222_222_222)


def test_scp_download_of_a_large_file_is_complete(server: Env, tmp_path: Path) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    (server.alice.root / "scp-big.bin").write_bytes(payload)
    for attempt in range(3):
        dst = tmp_path / f"big-{attempt}.bin"
        res = _scp(server, "alice@127.0.0.1:/scp-big.bin", str(dst))
        assert res.returncode == 0, _failed(res)
        assert dst.stat().st_size == len(payload)
        assert dst.read_bytes() == payload


def test_scp_overwrite_of_a_longer_file_keeps_no_old_tail(server: Env, tmp_path: Path) -> None:
    """scp in SFTP mode opens without TRUNC and sets the final size with FSETSTAT."""
    target = server.alice.root / "scp-over.txt"
    target.write_bytes(b"OLD" * 50_000)
    src = tmp_path / "short.txt"
    src.write_bytes(b"the new, much shorter content\n")
    res = _scp(server, str(src), "alice@127.0.0.1:scp-over.txt")
    assert res.returncode == 0, _failed(res)
    assert target.read_bytes() == b"the new, much shorter content\n"


def test_scp_recursive_upload_and_download(server: Env, tmp_path: Path) -> None:
    tree = tmp_path / "scptree"
    files = {"a.txt": b"a\n", "sub/b.bin": os.urandom(100_000), "sub/deep/c.txt": b"c" * 10}
    for rel, content in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(content)
    res = _scp(server, "-r", str(tree), "alice@127.0.0.1:/scp-tree")
    assert res.returncode == 0, _failed(res)
    res = _scp(server, "-r", "alice@127.0.0.1:/scp-tree", str(tmp_path / "scp-back"))
    assert res.returncode == 0, _failed(res)
    for base in (server.alice.root / "scp-tree", tmp_path / "scp-back"):
        got = {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}
        assert got == files


def test_scp_download_of_a_missing_file_fails(server: Env, tmp_path: Path) -> None:
    res = _scp(server, "alice@127.0.0.1:/scp-missing.bin", str(tmp_path / "x"))
    assert res.returncode != 0
    assert "No such file" in res.stderr
    assert not (tmp_path / "x").exists()


def test_eight_sftp_clients_at_once(server: Env, tmp_path: Path) -> None:
    """Concurrent sessions each get their own bytes (no cross-talk between sessions)."""
    payloads = {i: os.urandom(1_500_000 + i) for i in range(8)}
    procs = []
    for i, payload in payloads.items():
        src = tmp_path / f"par-{i}.bin"
        src.write_bytes(payload)
        batch = tmp_path / f"batch-{i}"
        batch.write_text(
            f"put {src} ossh-par-{i}.bin\nget ossh-par-{i}.bin {tmp_path}/back-{i}.bin\n"
        )
        cmd = ["sftp", *server.ssh_opts(), "-b", str(batch), "alice@127.0.0.1"]
        procs.append(
            subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for i, payload in payloads.items():
        assert (server.alice.root / f"ossh-par-{i}.bin").read_bytes() == payload
        assert (tmp_path / f"back-{i}.bin").read_bytes() == payload
