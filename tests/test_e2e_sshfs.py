"""End-to-end: sshfs mounts a real sftpd; what sshfs users do, checked on the server's disk."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Env, have, wait_for

_FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have("sshfs"), reason="sshfs missing"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse missing"),
    pytest.mark.skipif(_FUSERMOUNT is None, reason="fusermount missing"),
]


def _landed(path: Path) -> Path:
    """``path`` once sshfs's CLOSE (sent after close(2) returns) landed the atomic upload."""
    assert wait_for(path.exists, timeout=15), path.name
    return path


def _unmount(mnt: Path) -> None:
    assert _FUSERMOUNT is not None
    if subprocess.run([_FUSERMOUNT, "-u", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture(scope="module")
def mnt(server: Env) -> Iterator[Path]:
    """alice's root mounted with sshfs (it daemonizes once the mount is up)."""
    mnt = server.tmp / "mnt"
    mnt.mkdir()
    opts = ",".join(
        [
            f"IdentityFile={server.key_path}",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
        ]
    )
    cmd = ["sshfs", "-p", str(server.port), "-o", opts, "alice@127.0.0.1:/", str(mnt)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        if "fuse: device not found" in res.stderr or "/dev/fuse" in res.stderr:
            pytest.skip(f"FUSE unusable here: {res.stderr.strip()}")
        raise AssertionError(f"sshfs failed: {res.stderr}\n{server.server.log_text()[-2000:]}")
    try:
        assert os.path.ismount(mnt)
        yield mnt
    finally:
        _unmount(mnt)


@pytest.fixture
def dirs(mnt: Path, server: Env, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """A fresh directory for one test: (its path in the mount, its path on the server's disk)."""
    name = request.node.name
    os.mkdir(mnt / name)
    disk = server.alice.root / name
    assert disk.is_dir()
    return mnt / name, disk


def test_small_and_5mib_files_round_trip(dirs: tuple[Path, Path]) -> None:
    m, disk = dirs
    (m / "small.txt").write_bytes(b"hello sshfs\n")
    assert _landed(disk / "small.txt").read_bytes() == b"hello sshfs\n"

    big = os.urandom(5 * 1024 * 1024)
    (m / "big.bin").write_bytes(big)
    assert _landed(disk / "big.bin").read_bytes() == big
    assert (m / "big.bin").read_bytes() == big

    # A file sshfs has never seen: every byte comes through READs.
    other = os.urandom(5 * 1024 * 1024 + 17)
    (disk / "server-made.bin").write_bytes(other)
    assert (m / "server-made.bin").read_bytes() == other
    assert os.stat(m / "server-made.bin").st_size == len(other)


def test_random_offset_writes_and_truncate(dirs: tuple[Path, Path]) -> None:
    m, disk = dirs
    model = bytearray(os.urandom(300_000))
    (m / "r.bin").write_bytes(bytes(model))
    with open(m / "r.bin", "r+b") as f:
        for offset, chunk in ((250_000, b"A" * 70_000), (5, b"head"), (131_072, os.urandom(999))):
            f.seek(offset)
            f.write(chunk)
            end = offset + len(chunk)
            model[offset:end] = chunk
        f.seek(400_000)  # past the end: a hole that reads as zeros
        f.write(b"tail")
        model.extend(b"\0" * (400_000 - len(model)) + b"tail")
    assert (disk / "r.bin").read_bytes() == bytes(model)

    os.truncate(m / "r.bin", 1000)  # sshfs truncates with SETSTAT size
    assert (disk / "r.bin").read_bytes() == bytes(model[:1000])
    os.truncate(m / "r.bin", 5000)
    assert (disk / "r.bin").read_bytes() == bytes(model[:1000]) + b"\0" * 4000
    with open(m / "r.bin", "r+b") as f:
        f.truncate(10)  # ftruncate on an open handle: FSETSTAT
    assert (disk / "r.bin").read_bytes() == bytes(model[:10])
    assert (m / "r.bin").read_bytes() == bytes(model[:10])


def test_rename_over_existing_file(dirs: tuple[Path, Path]) -> None:
    """Editors save by writing a temporary and renaming it over the file (posix-rename)."""
    m, disk = dirs
    (m / "doc.txt").write_bytes(b"old contents\n")
    (m / ".doc.txt.swp").write_bytes(b"new contents\n")
    os.rename(m / ".doc.txt.swp", m / "doc.txt")
    assert (disk / "doc.txt").read_bytes() == b"new contents\n"
    assert not (disk / ".doc.txt.swp").exists()
    assert (m / "doc.txt").read_bytes() == b"new contents\n"
    os.rename(m / "doc.txt", m / "renamed.txt")
    assert sorted(os.listdir(disk)) == ["renamed.txt"]


def test_directories_symlinks_and_listing(dirs: tuple[Path, Path]) -> None:
    m, disk = dirs
    os.mkdir(m / "sub")
    assert (disk / "sub").is_dir()
    with pytest.raises(FileExistsError):
        os.mkdir(m / "sub")
    (m / "sub" / "f").write_bytes(b"x")
    with pytest.raises(OSError):
        os.rmdir(m / "sub")  # not empty
    assert (disk / "sub" / "f").exists()
    os.unlink(m / "sub" / "f")
    os.rmdir(m / "sub")
    assert not (disk / "sub").exists()

    (m / "target.txt").write_bytes(b"pointed at\n")
    os.symlink("target.txt", m / "link")
    assert os.readlink(disk / "link") == "target.txt"  # the right way round on the server
    assert os.readlink(m / "link") == "target.txt"
    assert (m / "link").read_bytes() == b"pointed at\n"

    os.mkdir(m / "d2")
    names = sorted(os.listdir(m))
    assert names == sorted(os.listdir(disk)) == ["d2", "link", "target.txt"]
    assert (m / "d2").is_dir() and (m / "link").is_symlink() and (m / "target.txt").is_file()
    with pytest.raises(FileNotFoundError):
        (m / "missing").read_bytes()


def test_chmod_utime_and_stat(dirs: tuple[Path, Path]) -> None:
    m, disk = dirs
    (m / "f.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(m / "f.sh", 0o750)
    assert (disk / "f.sh").stat().st_mode & 0o7777 == 0o750
    os.utime(m / "f.sh", (1_400_000_000, 1_500_000_000))
    st = (disk / "f.sh").stat()
    assert (int(st.st_atime), int(st.st_mtime)) == (1_400_000_000, 1_500_000_000)
    seen = os.stat(m / "f.sh")
    assert int(seen.st_mtime) == 1_500_000_000 and seen.st_mode & 0o7777 == 0o750
    assert seen.st_size == len(b"#!/bin/sh\n")


def test_hard_link_and_fsync(dirs: tuple[Path, Path]) -> None:
    """sshfs maps link(2) to hardlink@openssh.com and fsync(2) to fsync@openssh.com."""
    m, disk = dirs
    with open(m / "a.txt", "wb") as f:
        f.write(b"synced\n")
        f.flush()
        os.fsync(f.fileno())
        assert (disk / "a.txt").read_bytes() == b"synced\n"  # before close
    os.link(m / "a.txt", m / "b.txt")
    assert os.stat(disk / "b.txt").st_ino == os.stat(disk / "a.txt").st_ino
    assert (disk / "a.txt").stat().st_nlink == 2


def test_append_exclusive_64bit_offsets_and_unicode(dirs: tuple[Path, Path]) -> None:
    m, disk = dirs
    (m / "log.txt").write_bytes(b"one\n")
    with open(m / "log.txt", "ab") as f:
        f.write(b"two\n")
    assert wait_for(lambda: _landed(disk / "log.txt").read_bytes() == b"one\ntwo\n")
    with pytest.raises(FileExistsError):
        open(m / "log.txt", "xb")  # O_EXCL: OPEN with CREAT|EXCL

    far = 5 * 2**30  # an offset that needs all 64 bits of the WRITE (sparse on disk)
    with open(m / "sparse.bin", "wb") as f:
        f.seek(far)
        f.write(b"far")
    assert os.stat(_landed(disk / "sparse.bin")).st_size == far + 3
    with open(disk / "sparse.bin", "rb") as f:
        f.seek(far - 2)
        assert f.read() == b"\0\0far"
    with open(m / "sparse.bin", "rb") as f:
        f.seek(far - 2)
        assert f.read() == b"\0\0far"

    name = "ünï €.txt"
    (m / name).write_bytes(b"u")
    assert _landed(disk / name).read_bytes() == b"u"
    os.makedirs(m / "d1" / "x")
    os.mkdir(m / "d2")
    os.rename(m / "d1", m / "d2")  # a directory over an empty one
    assert os.listdir(disk / "d2") == ["x"] and not (disk / "d1").exists()


def test_df_reports_the_server_filesystem(mnt: Path, server: Env) -> None:
    """`df` on the mount: sshfs asks statvfs@openssh.com; sizes are those of the user's root."""
    theirs, ours = os.statvfs(mnt), os.statvfs(server.alice.root)
    assert theirs.f_blocks * theirs.f_frsize == ours.f_blocks * ours.f_frsize
    out = subprocess.run(["df", "-P", str(mnt)], capture_output=True, text=True, check=True)
    assert "alice@127.0.0.1:/" in out.stdout


def test_errors_keep_the_mount_alive(dirs: tuple[Path, Path]) -> None:
    m, disk = dirs
    with pytest.raises(OSError) as exc:
        os.rename(m / "nope", m / "other")
    assert exc.value.errno == errno.ENOENT
    (m / "after.txt").write_bytes(b"still here\n")
    assert _landed(disk / "after.txt").read_bytes() == b"still here\n"
