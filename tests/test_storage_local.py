"""LocalStorage: every method's happy path and errno, on real temp dirs, with both resolvers."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sftpd.errors import JailError
from sftpd.storage.local import LocalFile, LocalStorage

RDONLY = os.O_RDONLY
CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@dataclass
class Jail:
    storage: LocalStorage
    root: Path


@pytest.fixture(params=["openat2", "walk"])
def jail(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Jail]:
    root = tmp_path / "root"
    root.mkdir()
    try:
        storage = LocalStorage(root, use_openat2=request.param == "openat2")
    except JailError:
        pytest.skip("openat2(2) is not available here")
    assert storage.uses_openat2 == (request.param == "openat2")
    yield Jail(storage, root)
    storage.close()


def fails(jail: Jail, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Call ``fn``, expect an OSError that names no host path; return its errno."""
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    exc = info.value
    assert exc.filename is None and exc.filename2 is None
    assert str(jail.root) not in str(exc)
    assert exc.__cause__ is None and exc.__context__ is None
    assert exc.errno is not None
    return exc.errno


def read(storage: LocalStorage, path: str) -> bytes:
    f = storage.open(path, RDONLY, 0)
    try:
        return f.pread(1 << 20, 0)
    finally:
        f.close()


def write(storage: LocalStorage, path: str, data: bytes, flags: int = CREATE) -> None:
    f = storage.open(path, flags, 0o644)
    try:
        f.pwrite(data, 0)
    finally:
        f.close()


# --- construction --------------------------------------------------------------------


def test_missing_root_is_a_jail_error(tmp_path: Path) -> None:
    with pytest.raises(JailError) as info:
        LocalStorage(tmp_path / "nope")
    assert str(tmp_path) not in str(info.value)


def test_file_as_root_is_a_jail_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(JailError):
        LocalStorage(tmp_path / "f")


def test_closed_storage_answers_ebadf(jail: Jail) -> None:
    jail.storage.close()
    jail.storage.close()  # idempotent
    assert fails(jail, jail.storage.stat, "/") == errno.EBADF


# --- open and File -------------------------------------------------------------------


def test_open_read_existing(jail: Jail) -> None:
    (jail.root / "a").write_bytes(b"hello")
    assert read(jail.storage, "/a") == b"hello"
    assert read(jail.storage, "a") == b"hello"  # normalised defensively


def test_open_create_write_and_mode(jail: Jail) -> None:
    f = jail.storage.open("/new", CREATE, 0o600)
    f.pwrite(b"abc", 0)
    f.pwrite(memoryview(b"XY"), 1)
    f.close()
    assert (jail.root / "new").read_bytes() == b"aXY"
    assert stat.S_IMODE((jail.root / "new").stat().st_mode) & 0o077 == 0


def test_open_missing_is_enoent(jail: Jail) -> None:
    assert fails(jail, jail.storage.open, "/missing", RDONLY, 0) == errno.ENOENT
    assert fails(jail, jail.storage.open, "/nodir/x", CREATE, 0o644) == errno.ENOENT


def test_open_exclusive_existing_is_eexist(jail: Jail) -> None:
    (jail.root / "a").write_bytes(b"keep")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    assert fails(jail, jail.storage.open, "/a", flags, 0o644) == errno.EEXIST
    assert (jail.root / "a").read_bytes() == b"keep"
    jail.storage.open("/b", flags, 0o644).close()
    assert (jail.root / "b").exists()


def test_open_directory_is_eisdir(jail: Jail) -> None:
    (jail.root / "d").mkdir()
    assert fails(jail, jail.storage.open, "/d", RDONLY, 0) == errno.EISDIR
    assert fails(jail, jail.storage.open, "/d", CREATE, 0o644) == errno.EISDIR
    assert fails(jail, jail.storage.open, "/", os.O_RDWR, 0) == errno.EISDIR


def test_open_through_a_file_is_enotdir(jail: Jail) -> None:
    (jail.root / "f").write_bytes(b"")
    assert fails(jail, jail.storage.open, "/f/x", RDONLY, 0) == errno.ENOTDIR
    assert fails(jail, jail.storage.open, "/f/x", CREATE, 0o644) == errno.ENOTDIR


def test_open_truncates_only_when_asked(jail: Jail) -> None:
    (jail.root / "a").write_bytes(b"0123456789")
    write(jail.storage, "/a", b"ab", os.O_WRONLY)
    assert (jail.root / "a").read_bytes() == b"ab23456789"
    write(jail.storage, "/a", b"ab", os.O_WRONLY | os.O_TRUNC)
    assert (jail.root / "a").read_bytes() == b"ab"


def test_append_ignores_the_offset(jail: Jail) -> None:
    (jail.root / "a").write_bytes(b"start")
    f = jail.storage.open("/a", os.O_WRONLY | os.O_APPEND, 0)
    f.pwrite(b"-end", 0)
    f.close()
    assert (jail.root / "a").read_bytes() == b"start-end"


def test_read_only_file_refuses_writes(jail: Jail) -> None:
    (jail.root / "a").write_bytes(b"x")
    f = jail.storage.open("/a", RDONLY, 0)
    assert fails(jail, f.pwrite, b"y", 0) == errno.EBADF
    f.close()


def test_file_methods(jail: Jail) -> None:
    f = jail.storage.open("/f", os.O_RDWR | os.O_CREAT, 0o644)
    f.pwrite(b"0123456789", 0)
    assert f.pread(4, 3) == b"3456"
    assert f.pread(100, 8) == b"89"
    assert f.pread(10, 10) == b""
    assert f.fstat().st_size == 10
    f.truncate(3)
    assert f.fstat().st_size == 3
    f.truncate(8)
    assert f.pread(10, 0) == b"012\0\0\0\0\0"
    f.chmod(0o640)
    assert stat.S_IMODE(f.fstat().st_mode) == 0o640
    f.utime(1_000_000, 2_000_000)
    assert (f.fstat().st_atime, f.fstat().st_mtime) == (1_000_000, 2_000_000)
    f.fsync()
    assert f.statvfs().f_bsize > 0
    assert f.fileno() >= 0
    assert fails(jail, f.pread, -1, 0) == errno.EINVAL
    assert fails(jail, f.pwrite, b"x", -1) == errno.EINVAL
    assert fails(jail, f.truncate, -1) == errno.EINVAL
    f.close()
    f.close()  # idempotent
    for call in (f.fileno, f.fstat, f.fsync, lambda: f.pread(1, 0), lambda: f.pwrite(b"", 0)):
        assert fails(jail, call) == errno.EBADF


def test_large_pwrite_is_written_whole(jail: Jail) -> None:
    data = os.urandom(3 << 20)
    write(jail.storage, "/big", data)
    assert (jail.root / "big").read_bytes() == data


# --- directories ---------------------------------------------------------------------


def test_opendir_lists_dot_dotdot_and_entries_in_batches(jail: Jail) -> None:
    (jail.root / "d").mkdir()
    for name in ("a", "b", "c"):
        (jail.root / "d" / name).write_bytes(name.encode())
    os.symlink("/nowhere", jail.root / "d" / "l")
    directory = jail.storage.opendir("/d")
    first = directory.read(1)
    assert [name for name, _ in first] == ["."]
    rest: list[tuple[str, os.stat_result]] = []
    while batch := directory.read(2):
        assert len(batch) <= 2
        rest += batch
    assert directory.read(2) == []
    directory.close()
    directory.close()
    entries = dict(first + rest)
    assert list(entries)[:2] == [".", ".."]
    assert sorted(entries) == sorted([".", "..", "a", "b", "c", "l"])
    assert stat.S_ISLNK(entries["l"].st_mode)  # lstat, not stat
    assert entries["a"].st_size == 1
    assert entries["."].st_ino == (jail.root / "d").stat().st_ino
    assert entries[".."].st_ino == jail.root.stat().st_ino


def test_root_is_its_own_parent(jail: Jail) -> None:
    directory = jail.storage.opendir("/")
    entries = dict(directory.read(10))
    directory.close()
    assert entries["."].st_ino == entries[".."].st_ino == jail.root.stat().st_ino


def test_opendir_errors(jail: Jail) -> None:
    (jail.root / "f").write_bytes(b"")
    assert fails(jail, jail.storage.opendir, "/f") == errno.ENOTDIR
    assert fails(jail, jail.storage.opendir, "/missing") == errno.ENOENT
    directory = jail.storage.opendir("/")
    assert fails(jail, directory.read, 0) == errno.EINVAL
    directory.close()
    assert fails(jail, directory.read, 1) == errno.EBADF


def test_entries_that_vanish_are_skipped(jail: Jail) -> None:
    (jail.root / "d").mkdir()
    for i in range(300):
        (jail.root / "d" / f"f{i:03}").write_bytes(b"")
    directory = jail.storage.opendir("/d")
    seen = directory.read(3)  # '.', '..' and one entry: the rest sits in readdir's buffer
    for child in (jail.root / "d").iterdir():
        child.unlink()
    after: list[tuple[str, os.stat_result]] = []
    while batch := directory.read(50):
        after += batch
    directory.close()
    assert len(seen) == 3
    assert after == []


# --- stat, truncate, chmod, utime, statvfs -------------------------------------------


def test_stat_follows_or_not(jail: Jail) -> None:
    (jail.root / "f").write_bytes(b"12345")
    os.symlink("f", jail.root / "l")
    assert jail.storage.stat("/l").st_size == 5
    assert stat.S_ISREG(jail.storage.stat("/l").st_mode)
    assert stat.S_ISLNK(jail.storage.stat("/l", follow=False).st_mode)
    assert stat.S_ISDIR(jail.storage.stat("/").st_mode)
    assert fails(jail, jail.storage.stat, "/missing") == errno.ENOENT
    assert fails(jail, jail.storage.stat, "/f/x") == errno.ENOTDIR
    os.symlink("missing", jail.root / "dangling")
    assert fails(jail, jail.storage.stat, "/dangling") == errno.ENOENT
    assert stat.S_ISLNK(jail.storage.stat("/dangling", follow=False).st_mode)


def test_symlink_loops_are_eloop(jail: Jail) -> None:
    os.symlink("b", jail.root / "a")
    os.symlink("a", jail.root / "b")
    assert fails(jail, jail.storage.stat, "/a") == errno.ELOOP
    assert fails(jail, jail.storage.open, "/a/x", RDONLY, 0) == errno.ELOOP
    assert fails(jail, jail.storage.open, "/a", CREATE, 0o644) == errno.ELOOP


def test_long_chains_resolve_up_to_the_limit(jail: Jail) -> None:
    (jail.root / "end").write_bytes(b"end")
    previous = "end"
    for i in range(30):
        os.symlink(previous, jail.root / f"c{i}")
        previous = f"c{i}"
    assert read(jail.storage, f"/{previous}") == b"end"
    for i in range(30, 45):
        os.symlink(previous, jail.root / f"c{i}")
        previous = f"c{i}"
    assert fails(jail, jail.storage.stat, f"/{previous}") == errno.ELOOP


def test_truncate_path(jail: Jail) -> None:
    (jail.root / "f").write_bytes(b"0123456789")
    jail.storage.truncate("/f", 4)
    assert (jail.root / "f").read_bytes() == b"0123"
    jail.storage.truncate("/f", 6)
    assert (jail.root / "f").read_bytes() == b"0123\0\0"
    (jail.root / "d").mkdir()
    assert fails(jail, jail.storage.truncate, "/d", 0) == errno.EISDIR
    assert fails(jail, jail.storage.truncate, "/missing", 0) == errno.ENOENT
    assert fails(jail, jail.storage.truncate, "/f", -1) == errno.EINVAL
    assert not (jail.root / "missing").exists()


def test_chmod_path(jail: Jail) -> None:
    (jail.root / "f").write_bytes(b"")
    os.symlink("f", jail.root / "l")
    jail.storage.chmod("/l", 0o600)
    assert stat.S_IMODE((jail.root / "f").stat().st_mode) == 0o600
    jail.storage.chmod("/f", 0o640, follow=False)
    assert stat.S_IMODE((jail.root / "f").stat().st_mode) == 0o640
    assert fails(jail, jail.storage.chmod, "/l", 0o777, follow=False) == errno.EOPNOTSUPP
    assert fails(jail, jail.storage.chmod, "/missing", 0o600) == errno.ENOENT
    assert stat.S_IMODE((jail.root / "f").stat().st_mode) == 0o640


def test_chmod_applies_what_it_gets(jail: Jail) -> None:
    (jail.root / "f").write_bytes(b"")
    jail.storage.chmod("/f", 0o4755)  # the caller, not storage, drops setuid bits
    assert stat.S_IMODE((jail.root / "f").stat().st_mode) == 0o4755


def test_utime_path(jail: Jail) -> None:
    (jail.root / "f").write_bytes(b"")
    os.symlink("f", jail.root / "l")
    jail.storage.utime("/l", 100, 200)
    assert (jail.root / "f").stat().st_mtime == 200
    jail.storage.utime("/l", 300, 400, follow=False)
    assert os.lstat(jail.root / "l").st_mtime == 400
    assert (jail.root / "f").stat().st_mtime == 200
    jail.storage.utime("/", 500, 600, follow=False)
    assert jail.root.stat().st_mtime == 600
    assert fails(jail, jail.storage.utime, "/missing", 1, 2) == errno.ENOENT
    assert fails(jail, jail.storage.utime, "/missing", 1, 2, follow=False) == errno.ENOENT


def test_statvfs_path(jail: Jail) -> None:
    assert jail.storage.statvfs("/").f_blocks == os.statvfs(jail.root).f_blocks
    assert fails(jail, jail.storage.statvfs, "/missing") == errno.ENOENT


# --- name-level operations -----------------------------------------------------------


def test_remove(jail: Jail) -> None:
    (jail.root / "f").write_bytes(b"")
    (jail.root / "d").mkdir()
    os.symlink("f", jail.root / "l")
    jail.storage.remove("/l")
    assert (jail.root / "f").exists() and not os.path.lexists(jail.root / "l")
    jail.storage.remove("/f")
    assert not (jail.root / "f").exists()
    assert fails(jail, jail.storage.remove, "/f") == errno.ENOENT
    assert fails(jail, jail.storage.remove, "/d") == errno.EISDIR
    assert fails(jail, jail.storage.remove, "/") == errno.EPERM


def test_mkdir(jail: Jail) -> None:
    jail.storage.mkdir("/d", 0o700)
    assert (jail.root / "d").is_dir()
    assert stat.S_IMODE((jail.root / "d").stat().st_mode) == 0o700
    assert fails(jail, jail.storage.mkdir, "/d", 0o755) == errno.EEXIST
    assert fails(jail, jail.storage.mkdir, "/", 0o755) == errno.EEXIST
    assert fails(jail, jail.storage.mkdir, "/x/y", 0o755) == errno.ENOENT
    os.symlink("elsewhere", jail.root / "l")
    assert fails(jail, jail.storage.mkdir, "/l", 0o755) == errno.EEXIST
    assert not (jail.root / "elsewhere").exists()


def test_rmdir(jail: Jail) -> None:
    (jail.root / "d" / "sub").mkdir(parents=True)
    (jail.root / "f").write_bytes(b"")
    assert fails(jail, jail.storage.rmdir, "/d") == errno.ENOTEMPTY
    jail.storage.rmdir("/d/sub")
    jail.storage.rmdir("/d")
    assert not (jail.root / "d").exists()
    assert fails(jail, jail.storage.rmdir, "/d") == errno.ENOENT
    assert fails(jail, jail.storage.rmdir, "/f") == errno.ENOTDIR
    assert fails(jail, jail.storage.rmdir, "/") == errno.EPERM


@pytest.mark.parametrize("native", [True, False], ids=["renameat2", "link-unlink"])
def test_rename_without_overwrite(jail: Jail, native: bool) -> None:
    if not native:
        jail.storage._renameat2_nr = None  # exercise the portable fallback
    (jail.root / "a").write_bytes(b"a")
    (jail.root / "b").write_bytes(b"b")
    assert fails(jail, jail.storage.rename, "/a", "/b", overwrite=False) == errno.EEXIST
    assert (jail.root / "a").read_bytes() == b"a" and (jail.root / "b").read_bytes() == b"b"
    jail.storage.rename("/a", "/c", overwrite=False)
    assert not (jail.root / "a").exists() and (jail.root / "c").read_bytes() == b"a"
    (jail.root / "d1").mkdir()
    (jail.root / "d2").mkdir()
    assert fails(jail, jail.storage.rename, "/d1", "/d2", overwrite=False) == errno.EEXIST
    jail.storage.rename("/d1", "/d3", overwrite=False)
    assert (jail.root / "d3").is_dir() and not (jail.root / "d1").exists()
    assert fails(jail, jail.storage.rename, "/gone", "/x", overwrite=False) == errno.ENOENT


def test_rename_with_overwrite(jail: Jail) -> None:
    (jail.root / "a").write_bytes(b"a")
    (jail.root / "b").write_bytes(b"b")
    jail.storage.rename("/a", "/b", overwrite=True)
    assert (jail.root / "b").read_bytes() == b"a" and not (jail.root / "a").exists()
    (jail.root / "d" / "sub").mkdir(parents=True)
    (jail.root / "e").mkdir()
    (jail.root / "e" / "x").write_bytes(b"")
    assert fails(jail, jail.storage.rename, "/b", "/d", overwrite=True) == errno.EISDIR
    assert fails(jail, jail.storage.rename, "/d", "/e", overwrite=True) == errno.ENOTEMPTY
    assert fails(jail, jail.storage.rename, "/d", "/d/sub/x", overwrite=True) == errno.EINVAL
    assert fails(jail, jail.storage.rename, "/gone", "/x", overwrite=True) == errno.ENOENT


def test_rename_of_or_onto_root_is_eperm(jail: Jail) -> None:
    (jail.root / "a").write_bytes(b"")
    for overwrite in (False, True):
        assert fails(jail, jail.storage.rename, "/", "/x", overwrite=overwrite) == errno.EPERM
        assert fails(jail, jail.storage.rename, "/a", "/", overwrite=overwrite) == errno.EPERM
        assert fails(jail, jail.storage.rename, "/..", "/x", overwrite=overwrite) == errno.EPERM
    assert jail.root.is_dir() and (jail.root / "a").exists()


def test_readlink_returns_the_text_as_stored(jail: Jail) -> None:
    for name, target in [("a", "/abs/x"), ("r", "../../up"), ("w", "we ird//./t")]:
        os.symlink(target, jail.root / name)
        assert jail.storage.readlink(f"/{name}") == target
    (jail.root / "f").write_bytes(b"")
    assert fails(jail, jail.storage.readlink, "/f") == errno.EINVAL
    assert fails(jail, jail.storage.readlink, "/") == errno.EINVAL
    assert fails(jail, jail.storage.readlink, "/missing") == errno.ENOENT


def test_symlink(jail: Jail) -> None:
    jail.storage.symlink("/target", "/l")
    assert os.readlink(jail.root / "l") == "/target"
    assert fails(jail, jail.storage.symlink, "x", "/l") == errno.EEXIST
    assert fails(jail, jail.storage.symlink, "x", "/") == errno.EEXIST
    assert fails(jail, jail.storage.symlink, "a\0b", "/m") == errno.EINVAL
    assert fails(jail, jail.storage.symlink, "", "/m") == errno.ENOENT
    assert fails(jail, jail.storage.symlink, "x", "/nodir/m") == errno.ENOENT
    assert fails(jail, jail.storage.stat, "/l\0") == errno.EINVAL


def test_link(jail: Jail) -> None:
    (jail.root / "f").write_bytes(b"data")
    jail.storage.link("/f", "/g")
    assert (jail.root / "g").stat().st_ino == (jail.root / "f").stat().st_ino
    assert fails(jail, jail.storage.link, "/f", "/g") == errno.EEXIST
    assert fails(jail, jail.storage.link, "/missing", "/h") == errno.ENOENT
    assert fails(jail, jail.storage.link, "/", "/h") == errno.EPERM
    (jail.root / "d").mkdir()
    assert fails(jail, jail.storage.link, "/d", "/h") == errno.EPERM
    os.symlink("f", jail.root / "l")
    jail.storage.link("/l", "/l2")  # links the symlink itself
    assert os.readlink(jail.root / "l2") == "f"
    assert os.lstat(jail.root / "l2").st_ino == os.lstat(jail.root / "l").st_ino


# --- realpath ------------------------------------------------------------------------


def test_realpath(jail: Jail) -> None:
    (jail.root / "a" / "b").mkdir(parents=True)
    os.symlink("/a/b", jail.root / "abs")
    os.symlink("a/./b/..", jail.root / "rel")
    s = jail.storage
    assert s.realpath("/") == "/"
    assert s.realpath("/a/b") == "/a/b"
    assert s.realpath("/abs") == "/a/b"
    assert s.realpath("/abs/../..") == "/"
    assert s.realpath("/rel") == "/a"
    assert s.realpath("/abs/missing/deeper") == "/a/b/missing/deeper"
    assert s.realpath("/nothing/here") == "/nothing/here"
    assert s.realpath("../../a") == "/a"
    (jail.root / "f").write_bytes(b"")
    assert fails(jail, s.realpath, "/f/x") == errno.ENOTDIR
    os.symlink("loop", jail.root / "loop")
    assert fails(jail, s.realpath, "/loop") == errno.ELOOP


# --- copy_range ----------------------------------------------------------------------


def copy_setup(jail: Jail, dst_flags: int = os.O_RDWR | os.O_CREAT) -> tuple[LocalFile, LocalFile]:
    (jail.root / "src").write_bytes(bytes(range(256)) * 1000)
    return jail.storage.open("/src", RDONLY, 0), jail.storage.open("/dst", dst_flags, 0o644)


def test_copy_range_whole_and_partial(jail: Jail) -> None:
    src, dst = copy_setup(jail)
    jail.storage.copy_range(src, 0, 0, dst, 0)
    assert (jail.root / "dst").read_bytes() == (jail.root / "src").read_bytes()
    jail.storage.copy_range(src, 10, 5, dst, 300_000)
    assert dst.pread(10, 300_000) == bytes(range(10, 15))
    jail.storage.copy_range(src, 255_990, 100, dst, 0)  # past EOF: stops at EOF
    assert dst.pread(10, 0) == bytes(range(246, 256))
    assert fails(jail, jail.storage.copy_range, src, -1, 0, dst, 0) == errno.EINVAL
    src.close()
    dst.close()


def test_copy_range_without_copy_file_range(jail: Jail, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    src, dst = copy_setup(jail)
    jail.storage.copy_range(src, 100, 0, dst, 0)
    assert (jail.root / "dst").read_bytes() == (jail.root / "src").read_bytes()[100:]
    src.close()
    dst.close()


def test_copy_range_into_append_file(jail: Jail) -> None:
    src, dst = copy_setup(jail, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    dst.pwrite(b"head", 0)
    jail.storage.copy_range(src, 0, 3, dst, 0)
    assert (jail.root / "dst").read_bytes() == b"head\0\1\2"
    src.close()
    dst.close()


def test_copy_range_errors(jail: Jail) -> None:
    src, dst = copy_setup(jail)
    assert fails(jail, jail.storage.copy_range, dst, 0, 0, src, 0) == errno.EBADF
    same = jail.storage.open("/src", os.O_RDWR, 0)
    assert fails(jail, jail.storage.copy_range, src, 0, 100, same, 50) == errno.EINVAL
    jail.storage.copy_range(src, 0, 100, same, 100)  # disjoint ranges of one file are fine
    assert same.pread(100, 100) == bytes(range(100))
    same.close()
    src.close()
    assert fails(jail, jail.storage.copy_range, src, 0, 0, dst, 0) == errno.EBADF
    dst.close()
