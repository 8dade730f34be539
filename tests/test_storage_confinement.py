"""LocalStorage confinement: '..', planted symlinks, hard links, special files, the swap race."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sftpd.errors import JailError
from sftpd.storage import vpath
from sftpd.storage.local import LocalStorage

RDONLY = os.O_RDONLY
CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
SECRET = b"OUTSIDE-SECRET-0123456789"


@dataclass
class Jail:
    storage: LocalStorage
    root: Path
    outside: Path  # a sibling directory holding ``secret``

    @property
    def secret(self) -> Path:
        return self.outside / "secret"

    def outside_untouched(self) -> None:
        assert sorted(p.name for p in self.outside.iterdir()) == ["outside-only", "secret"]
        assert self.secret.read_bytes() == SECRET
        assert stat.S_IMODE(self.secret.stat().st_mode) == 0o644
        assert self.secret.stat().st_nlink == 1


@pytest.fixture(params=["openat2", "walk"])
def jail(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Jail]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    (outside / "secret").chmod(0o644)
    (outside / "outside-only").write_bytes(SECRET)
    try:
        storage = LocalStorage(root, use_openat2=request.param == "openat2")
    except JailError:
        pytest.skip("openat2(2) is not available here")
    yield Jail(storage, root, outside)
    storage.close()


def fails(jail: Jail, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.filename is None
    assert str(jail.root) not in str(info.value)
    assert info.value.errno is not None
    return info.value.errno


def read(storage: LocalStorage, path: str) -> bytes:
    f = storage.open(path, RDONLY, 0)
    try:
        return f.pread(1 << 20, 0)
    finally:
        f.close()


def write(storage: LocalStorage, path: str, data: bytes) -> None:
    f = storage.open(path, CREATE, 0o644)
    try:
        f.pwrite(data, 0)
    finally:
        f.close()


def mirror(jail: Jail, host: Path, data: bytes) -> None:
    """Create, inside the root, the file a chroot would see at host path ``host``."""
    inside = jail.root / str(host).lstrip("/")
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_bytes(data)


# --- '..' and absolute paths ---------------------------------------------------------


def test_dotdot_never_climbs_above_the_root(jail: Jail) -> None:
    (jail.root / "top").write_bytes(b"top")
    rel = os.path.relpath(jail.secret, jail.root)  # '../outside/secret'
    assert fails(jail, jail.storage.open, rel, RDONLY, 0) == errno.ENOENT
    assert fails(jail, jail.storage.open, "/" + rel, RDONLY, 0) == errno.ENOENT
    assert read(jail.storage, "/../../../top") == b"top"
    assert jail.storage.realpath("/../../..") == "/"
    (jail.root / "outside").mkdir()
    write(jail.storage, "/../../" + rel.replace("../", ""), b"x")  # lands inside
    assert (jail.root / "outside" / "secret").read_bytes() == b"x"
    jail.outside_untouched()


def test_absolute_paths_are_relative_to_the_root(jail: Jail) -> None:
    assert fails(jail, jail.storage.open, str(jail.secret), RDONLY, 0) == errno.ENOENT
    mirror(jail, jail.secret, b"jailed")
    assert read(jail.storage, str(jail.secret)) == b"jailed"
    jail.outside_untouched()


# --- planted symlinks ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["absolute", "relative", "proc"])
def test_planted_file_symlink_cannot_be_followed_out(jail: Jail, kind: str) -> None:
    target = {
        "absolute": str(jail.secret),
        "relative": "../../../../../../" + str(jail.secret).lstrip("/"),
        "proc": f"/proc/self/root{jail.secret}",
    }[kind]
    os.symlink(target, jail.root / "evil")
    s = jail.storage
    assert fails(jail, s.open, "/evil", RDONLY, 0) == errno.ENOENT
    assert fails(jail, s.stat, "/evil") == errno.ENOENT
    assert fails(jail, s.truncate, "/evil", 0) == errno.ENOENT
    assert fails(jail, s.chmod, "/evil", 0o777) == errno.ENOENT
    assert fails(jail, s.utime, "/evil", 1, 2) == errno.ENOENT
    assert stat.S_ISLNK(s.stat("/evil", follow=False).st_mode)
    assert s.readlink("/evil") == target  # the stored text, meaningful only inside the jail
    assert str(jail.root) not in s.realpath("/evil")
    # creating through a dangling link creates the chroot's idea of the target, inside
    virtual = vpath.normalize(target)
    (jail.root / virtual.lstrip("/")).parent.mkdir(parents=True)
    write(s, "/evil", b"mine")
    jail.outside_untouched()
    assert (jail.root / virtual.lstrip("/")).read_bytes() == b"mine"
    assert read(s, "/evil") == b"mine"
    assert s.realpath("/evil") == virtual  # a virtual path, not the host's file


def test_planted_symlink_reads_the_jailed_file_of_the_same_name(jail: Jail) -> None:
    os.symlink(jail.secret, jail.root / "evil")
    mirror(jail, jail.secret, b"jailed copy")
    assert read(jail.storage, "/evil") == b"jailed copy"
    jail.outside_untouched()


def test_absolute_target_resolves_inside_the_root(jail: Jail) -> None:
    (jail.root / "etc").mkdir()
    (jail.root / "etc" / "x").write_bytes(b"jailed passwd")
    os.symlink("/etc/x", jail.root / "link")
    os.symlink("/etc", jail.root / "dirlink")
    assert read(jail.storage, "/link") == b"jailed passwd"
    assert read(jail.storage, "/dirlink/x") == b"jailed passwd"
    assert jail.storage.realpath("/link") == "/etc/x"


@pytest.mark.parametrize("absolute", [True, False])
def test_planted_directory_symlink_cannot_be_followed_out(jail: Jail, absolute: bool) -> None:
    target = str(jail.outside) if absolute else "../outside"
    os.symlink(target, jail.root / "evildir")
    s = jail.storage
    assert fails(jail, s.open, "/evildir/secret", RDONLY, 0) == errno.ENOENT
    assert fails(jail, s.open, "/evildir/new", CREATE, 0o644) == errno.ENOENT
    assert fails(jail, s.opendir, "/evildir") == errno.ENOENT
    assert fails(jail, s.mkdir, "/evildir/sub", 0o755) == errno.ENOENT
    assert fails(jail, s.symlink, "x", "/evildir/l") == errno.ENOENT
    assert fails(jail, s.remove, "/evildir/secret") == errno.ENOENT
    assert fails(jail, s.rename, "/evildir/secret", "/stolen", overwrite=True) == errno.ENOENT
    assert fails(jail, s.link, "/evildir/secret", "/stolen") == errno.ENOENT
    assert fails(jail, s.rmdir, "/evildir") == errno.ENOTDIR
    assert fails(jail, s.statvfs, "/evildir") == errno.ENOENT
    (jail.root / "mine").write_bytes(b"mine")
    assert fails(jail, s.rename, "/mine", "/evildir/mine", overwrite=True) == errno.ENOENT
    assert fails(jail, s.link, "/mine", "/evildir/mine") == errno.ENOENT
    jail.outside_untouched()
    s.remove("/evildir")  # removes the link only
    assert not os.path.lexists(jail.root / "evildir")
    jail.outside_untouched()


def test_directory_symlink_with_a_jailed_twin(jail: Jail) -> None:
    os.symlink("../outside", jail.root / "evildir")
    (jail.root / "outside").mkdir()
    (jail.root / "outside" / "secret").write_bytes(b"twin")
    assert read(jail.storage, "/evildir/secret") == b"twin"
    write(jail.storage, "/evildir/new", b"new")
    assert (jail.root / "outside" / "new").read_bytes() == b"new"
    names = [name for name, _ in jail.storage.opendir("/evildir").read(10)]
    assert sorted(names) == [".", "..", "new", "secret"]
    jail.outside_untouched()


def test_symlink_chain_stays_inside(jail: Jail) -> None:
    (jail.root / "d").mkdir()
    os.symlink("../l2", jail.root / "d" / "l1")
    os.symlink("/d/l3", jail.root / "l2")
    os.symlink("../../../../outside/secret", jail.root / "d" / "l3")
    assert fails(jail, jail.storage.open, "/d/l1", RDONLY, 0) == errno.ENOENT
    mirror(jail, Path("/outside/secret"), b"end of chain")
    assert read(jail.storage, "/d/l1") == b"end of chain"
    assert jail.storage.realpath("/d/l1") == "/outside/secret"
    jail.outside_untouched()


def test_hard_link_through_planted_symlink_links_the_symlink(jail: Jail) -> None:
    os.symlink(jail.secret, jail.root / "evil")
    jail.storage.link("/evil", "/hard")
    assert stat.S_ISLNK(os.lstat(jail.root / "hard").st_mode)
    assert os.lstat(jail.root / "hard").st_ino != jail.secret.stat().st_ino
    assert fails(jail, jail.storage.open, "/hard", RDONLY, 0) == errno.ENOENT
    jail.outside_untouched()


def test_rename_through_planted_symlink_moves_the_symlink(jail: Jail) -> None:
    os.symlink(jail.secret, jail.root / "evil")
    jail.storage.rename("/evil", "/moved", overwrite=False)
    assert os.readlink(jail.root / "moved") == str(jail.secret)
    assert fails(jail, jail.storage.open, "/moved", RDONLY, 0) == errno.ENOENT
    jail.outside_untouched()


def test_remove_and_lsetstat_act_on_the_link(jail: Jail) -> None:
    os.symlink(jail.secret, jail.root / "evil")
    jail.storage.utime("/evil", 5, 6, follow=False)
    assert os.lstat(jail.root / "evil").st_mtime == 6
    assert fails(jail, jail.storage.chmod, "/evil", 0o777, follow=False) == errno.EOPNOTSUPP
    jail.storage.remove("/evil")
    assert jail.secret.stat().st_mtime != 6
    jail.outside_untouched()


def test_the_root_survives_every_attempt(jail: Jail) -> None:
    s = jail.storage
    for path in ("/", "/..", "/.", "/../..", ""):
        assert fails(jail, s.remove, path) == errno.EPERM
        assert fails(jail, s.rmdir, path) == errno.EPERM
        assert fails(jail, s.rename, path, "/x", overwrite=True) == errno.EPERM
    assert jail.root.is_dir()


def test_no_host_path_in_readlink_realpath_or_errors(jail: Jail) -> None:
    (jail.root / "a" / "b").mkdir(parents=True)
    os.symlink("/a", jail.root / "abs")
    os.symlink("b", jail.root / "a" / "rel")
    os.symlink(str(jail.outside), jail.root / "out")
    s = jail.storage
    host = str(jail.root)
    for path in ["/", "/a", "/abs/rel", "/a/rel/x/y", "/out/secret", "/abs/../..", "/missing"]:
        assert host not in s.realpath(path)
    for path in ["/abs", "/a/rel", "/out"]:
        assert host not in s.readlink(path)
    for call in (
        lambda: s.open("/missing", RDONLY, 0),
        lambda: s.open("/a", RDONLY, 0),
        lambda: s.mkdir("/a", 0o755),
        lambda: s.rmdir("/a"),
        lambda: s.remove("/a"),
        lambda: s.readlink("/a"),
        lambda: s.link("/a/missing", "/x"),
        lambda: s.rename("/a", "/abs", overwrite=False),
        lambda: s.opendir("/out/secret"),
    ):
        fails(jail, call)


# --- special files -------------------------------------------------------------------


def special_files(jail: Jail) -> list[str]:
    os.mkfifo(jail.root / "fifo")
    names = ["/fifo"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(jail.root / "sock"))
        names.append("/sock")
    finally:
        sock.close()
    try:
        os.mknod(jail.root / "dev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        names.append("/dev")
    except PermissionError:
        pass  # not root: no device test
    os.symlink("fifo", jail.root / "fifolink")
    return [*names, "/fifolink"]


def test_special_files_are_never_opened(jail: Jail) -> None:
    result: dict[str, int] = {}

    def attempt() -> None:
        for path in special_files(jail):
            for flags in (RDONLY, os.O_WRONLY, os.O_RDWR, CREATE, os.O_WRONLY | os.O_APPEND):
                code = fails(jail, jail.storage.open, path, flags, 0o644)
                assert code in (errno.EINVAL, errno.ENXIO)
                result[f"{path}:{flags}"] = code
            assert fails(jail, jail.storage.truncate, path, 0) in (errno.EINVAL, errno.ENXIO)
            assert fails(jail, jail.storage.opendir, path) == errno.ENOTDIR

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(60)  # a hang guard only: opening a FIFO must never wait for a peer
    assert not worker.is_alive(), "open() blocked on a special file"
    assert result and all(code == errno.EINVAL for code in result.values())
    with pytest.raises(OSError, match="Not a regular file"):
        jail.storage.open("/fifo", RDONLY, 0)


def test_special_file_stat_and_listing_still_work(jail: Jail) -> None:
    special_files(jail)
    assert stat.S_ISFIFO(jail.storage.stat("/fifo").st_mode)
    names = dict(jail.storage.opendir("/").read(20))
    assert stat.S_ISSOCK(names["sock"].st_mode)


# --- the swap race -------------------------------------------------------------------


def test_swapping_a_directory_for_an_outside_symlink_leaks_nothing(jail: Jail) -> None:
    """One thread flips /d between a real directory and a symlink out of the root while
    another reads /d/secret, writes /d/new and lists /d for about two seconds."""
    d = jail.root / "d"
    aside = jail.root / "d.real"
    d.mkdir()
    (d / "secret").write_bytes(b"inside")
    targets = [str(jail.outside), "../outside", "../../../../" + str(jail.outside).lstrip("/")]
    stop = threading.Event()
    errors: list[BaseException] = []
    swaps = 0
    secret_ino = jail.secret.stat().st_ino

    def swapper() -> None:
        nonlocal swaps
        try:
            while not stop.is_set():
                link = jail.root / "link.tmp"
                os.symlink(targets[swaps % len(targets)], link)
                os.rename(d, aside)
                os.rename(link, d)  # /d is now a symlink to the outside
                os.rename(d, link)
                os.rename(aside, d)  # and a real directory again
                os.unlink(link)
                swaps += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    s = jail.storage
    inside_reads = operations = 0
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            operations += 1
            try:
                data = read(s, "/d/secret")
                assert SECRET not in data and data == b"inside"
                inside_reads += 1
            except OSError as exc:
                assert exc.errno in (errno.ENOENT, errno.EAGAIN, errno.ENOTDIR), exc
            for action in (
                partial(write, s, "/d/new", b"written through /d"),
                partial(s.mkdir, "/d/sub", 0o755),
                partial(s.symlink, "x", "/d/lnk"),
                partial(s.rename, "/d/new", "/d/renamed", overwrite=True),
                partial(s.link, "/d/secret", "/d/hard"),
                partial(s.truncate, "/d/secret", 6),
                partial(s.chmod, "/d/secret", 0o600),
                partial(s.rmdir, "/d/sub"),
                partial(s.remove, "/d/lnk"),
                partial(s.remove, "/d/renamed"),
                partial(s.remove, "/d/hard"),
            ):
                try:
                    action()
                except OSError:
                    pass
            try:
                directory = s.opendir("/d")
                entries = dict(directory.read(100))
                directory.close()
                assert "outside-only" not in entries
                assert entries.get("secret", entries["."]).st_ino != secret_ino
            except OSError:
                pass
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert swaps > 0 and operations > 0
    assert inside_reads > 0  # the test really raced against a real directory too
    assert (d if d.is_dir() else aside).joinpath("secret").read_bytes() == b"inside"
    jail.outside_untouched()
