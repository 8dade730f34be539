"""End-to-end confinement through real clients: `..`, absolute paths, planted symlinks
(file, directory, absolute, relative, chains), hard links and renames of outside files,
setuid bits, no host path in any output, a directory swapped for a symlink while a
client works through it, and a read-only user.

Every test plants a host secret with unique content beside the user's root and checks that
it never reaches a client and never changes on disk.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import Env, asyncssh_sftp

paramiko = pytest.importorskip("paramiko")
pytestmark = pytest.mark.e2e


@dataclass
class Outside:
    """A directory beside the user's root, with content no client may ever see."""

    dir: Path
    secret: bytes

    @property
    def file(self) -> Path:
        return self.dir / "secret.txt"

    def snapshot(self) -> dict[str, tuple[int, int, int, bytes]]:
        return _snapshot(self.dir)


def _snapshot(top: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """(mode, nlink, mtime_ns, content or link text) of everything under ``top``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(p).encode()
            elif stat.S_ISREG(st.st_mode):
                body = p.read_bytes()
            else:
                body = b""
            out[str(p.relative_to(top))] = (st.st_mode, st.st_nlink, st.st_mtime_ns, body)
    return out


@pytest.fixture(scope="module")
def outside(server: Env) -> Outside:
    secret = f"HOST-SECRET-{uuid.uuid4()}\n".encode()
    d = server.tmp / "host-secret"
    d.mkdir()
    (d / "secret.txt").write_bytes(secret)
    (d / "outside-only.txt").write_bytes(secret)
    (d / "victim.txt").write_bytes(secret)
    (d / "sub").mkdir()
    (d / "sub" / "deep.txt").write_bytes(secret)
    # Beside the root: what `../decoy.txt` would reach on the host.
    (server.tmp / "decoy.txt").write_bytes(secret)
    return Outside(d, secret)


@pytest.fixture(scope="module")
def planted(server: Env, outside: Outside) -> Path:
    """Symlinks an admin (or an attacker with host access) left in the user's root."""
    root = server.alice.root
    root.mkdir(exist_ok=True)
    links = {
        "p-abs-file": str(outside.file),
        "p-rel-file": "../host-secret/secret.txt",
        "p-abs-dir": str(outside.dir),
        "p-rel-dir": "../host-secret",
        "p-deep-rel": "../../../../../../../../../..",
        "p-chain-1": "p-chain-2",
        "p-chain-2": "pdir/p-chain-3",
        "p-decoy": "../decoy.txt",
        "p-abs-decoy": str(server.tmp / "decoy.txt"),
    }
    (root / "pdir").mkdir()
    for name, target in links.items():
        os.symlink(target, root / name)
    os.symlink("../../host-secret/sub/deep.txt", root / "pdir" / "p-chain-3")
    # What the links reach under chroot semantics: jail files, never host ones.
    (root / "decoy.txt").write_bytes(b"jail decoy\n")
    abs_decoy = root / str(server.tmp / "decoy.txt").lstrip("/")
    abs_decoy.parent.mkdir(parents=True)
    abs_decoy.write_bytes(b"jail abs decoy\n")
    return root


@pytest.fixture
def sftp(server: Env) -> Iterator[Any]:
    transport = paramiko.Transport(("127.0.0.1", server.port))
    transport.connect(
        username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(str(server.key_path))
    )
    client = paramiko.SFTPClient.from_transport(transport)
    assert client is not None
    client.get_channel().settimeout(60)  # deadlock guard
    try:
        yield client
    finally:
        client.close()
        transport.close()


def _no_leak(env: Env, outside: Outside, *texts: str | bytes) -> None:
    root = str(env.alice.root)
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        assert root.encode() not in data, data[:2000]
        assert outside.secret.strip() not in data, data[:2000]


def _sftp(env: Env, outside: Outside, batch: str) -> subprocess.CompletedProcess[str]:
    """Run a batch where every command may fail; the output never leaks."""
    res = env.sftp(batch, check=False)
    _no_leak(env, outside, res.stdout, res.stderr)
    return res


def _local_files_clean(local: Path, outside: Outside) -> None:
    for p in local.rglob("*"):
        if p.is_file():
            assert outside.secret.strip() not in p.read_bytes(), p


# ---- paths ----------------------------------------------------------------------------


def test_dotdot_and_absolute_paths_stay_in_the_root(
    server: Env, outside: Outside, planted: Path, tmp_path: Path
) -> None:
    before = outside.snapshot()
    up = tmp_path / "escape-up.txt"
    up.write_bytes(b"uploaded with ..\n")
    res = _sftp(
        server,
        outside,
        f"-get ../decoy.txt {tmp_path}/g1\n"
        f"-get ../../../../../../../decoy.txt {tmp_path}/g2\n"
        f"-get ../host-secret/secret.txt {tmp_path}/g3\n"
        f"-get {outside.file} {tmp_path}/g4\n"
        f"-get /../host-secret/secret.txt {tmp_path}/g5\n"
        f"-put {up} ../escape-up.txt\n"
        f"-put {up} ../../../../escape-up2.txt\n"
        "cd ..\npwd\ncd ../../..\npwd\nls -1 ..\n",
    )
    assert (tmp_path / "g1").read_bytes() == b"jail decoy\n"
    assert (tmp_path / "g2").read_bytes() == b"jail decoy\n"
    for name in ("g3", "g4", "g5"):
        assert not (tmp_path / name).exists()
    assert res.stderr.count("not found") == 3, res.stderr
    assert (server.alice.root / "escape-up.txt").read_bytes() == b"uploaded with ..\n"
    assert (server.alice.root / "escape-up2.txt").read_bytes() == b"uploaded with ..\n"
    assert not (server.tmp / "escape-up.txt").exists()
    assert not (server.tmp.parent / "escape-up2.txt").exists()
    assert res.stdout.count("Remote working directory: /\n") == 2
    listing = res.stdout.split("ls -1 ..")[1].split()
    assert "../decoy.txt" in listing and "../p-abs-dir" in listing
    assert not any(name.endswith(("alice-root", "host-secret")) for name in listing)
    assert outside.snapshot() == before
    _local_files_clean(tmp_path, outside)


def test_get_etc_passwd_never_reads_the_host_file(
    server: Env, outside: Outside, planted: Path, tmp_path: Path
) -> None:
    host_passwd = Path("/etc/passwd").read_bytes()
    res = _sftp(server, outside, f"get /etc/passwd {tmp_path}/passwd\n")
    assert res.returncode != 0
    assert 'File "/etc/passwd" not found.' in res.stderr
    assert not (tmp_path / "passwd").exists()
    (planted / "etc").mkdir()
    (planted / "etc" / "passwd").write_bytes(b"jail:x:0:0::/:/bin/false\n")
    res = _sftp(server, outside, f"get /etc/passwd {tmp_path}/passwd\nget ../../etc/passwd\n")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "passwd").read_bytes() == b"jail:x:0:0::/:/bin/false\n"
    assert host_passwd not in (tmp_path / "passwd").read_bytes()


# ---- planted symlinks --------------------------------------------------------------------


def test_planted_links_resolve_inside_the_root(
    server: Env, outside: Outside, planted: Path, tmp_path: Path
) -> None:
    """As in a chroot: `../decoy.txt` from the root is the jail's /decoy.txt and an
    absolute host path is looked up beneath the root."""
    res = _sftp(
        server,
        outside,
        f"get p-decoy {tmp_path}/d1\nget p-abs-decoy {tmp_path}/d2\n"
        f"get p-deep-rel/decoy.txt {tmp_path}/d3\n",
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "d1").read_bytes() == b"jail decoy\n"
    assert (tmp_path / "d2").read_bytes() == b"jail abs decoy\n"
    assert (tmp_path / "d3").read_bytes() == b"jail decoy\n"


def test_planted_links_to_outside_cannot_be_read(
    server: Env, outside: Outside, planted: Path, tmp_path: Path, sftp: Any
) -> None:
    names = [
        "p-abs-file",
        "p-rel-file",
        "p-abs-dir/secret.txt",
        "p-rel-dir/secret.txt",
        "p-abs-dir/sub/deep.txt",
        "p-chain-1",
        "p-chain-2",
        "pdir/p-chain-3",
    ]
    batch = "".join(f"-get {name} {tmp_path}/x{i}\n" for i, name in enumerate(names))
    batch += "-ls -l p-abs-dir\n-ls p-rel-dir/\n-cd p-abs-dir\n-cd p-rel-dir\n-cp p-abs-file cp1\n"
    res = _sftp(server, outside, batch)
    assert not list(tmp_path.glob("x*"))
    assert not (planted / "cp1").exists()
    assert "outside-only" not in res.stdout
    for name in names:
        with pytest.raises(FileNotFoundError):
            sftp.open(name, "r")
        with pytest.raises(FileNotFoundError):
            sftp.stat(name)
    for name in ("p-abs-dir", "p-rel-dir", "p-abs-dir/sub"):
        with pytest.raises(FileNotFoundError):
            sftp.listdir(name)
    assert stat.S_ISLNK(sftp.lstat("p-abs-file").st_mode)
    _local_files_clean(tmp_path, outside)


def test_planted_links_to_outside_cannot_be_written(
    server: Env, outside: Outside, planted: Path, tmp_path: Path, sftp: Any
) -> None:
    before = outside.snapshot()
    src = tmp_path / "evil.txt"
    src.write_bytes(b"overwritten!\n")
    _sftp(
        server,
        outside,
        f"-put {src} p-abs-file\n-put {src} p-rel-file\n-put {src} p-abs-dir/secret.txt\n"
        f"-put {src} p-rel-dir/new.txt\n-put {src} p-chain-1\n-reput {src} p-abs-file\n"
        "-chmod 777 p-abs-file\n-chmod 777 p-abs-dir\n-chmod 777 p-abs-dir/secret.txt\n"
        "-rm p-abs-dir/victim.txt\n-rm p-rel-dir/victim.txt\n-rmdir p-abs-dir/sub\n"
        "-mkdir p-abs-dir/newdir\n-mkdir p-rel-dir/newdir\n"
        "-ln -s /x p-abs-dir/newlink\n-symlink /x p-rel-dir/newlink2\n",
    )
    for name in ("p-abs-file", "p-rel-file", "p-chain-1", "p-abs-dir/victim.txt"):
        for mode in ("w", "a", "r+"):
            with pytest.raises(OSError):
                sftp.open(name, mode)
        with pytest.raises(OSError):
            sftp.truncate(name, 0)
        with pytest.raises(OSError):
            sftp.chmod(name, 0o777)
        with pytest.raises(OSError):
            sftp.utime(name, (1, 1))
    assert outside.snapshot() == before
    # the planted links themselves are still links, to the same place
    assert os.readlink(planted / "p-abs-file") == str(outside.file)
    assert os.readlink(planted / "p-rel-dir") == "../host-secret"


def test_hard_link_and_rename_cannot_take_outside_files(
    server: Env, outside: Outside, planted: Path, tmp_path: Path, sftp: Any
) -> None:
    before = outside.snapshot()
    (planted / "mine.txt").write_bytes(b"mine\n")
    res = _sftp(
        server,
        outside,
        "-ln p-abs-dir/secret.txt stolen-1\n-ln p-rel-dir/secret.txt stolen-2\n"
        "-ln pdir/../p-abs-dir/secret.txt stolen-3\n"
        "-rename p-abs-dir/secret.txt stolen-4\n-rename p-rel-dir/victim.txt stolen-5\n"
        "-rename -l p-abs-dir/victim.txt stolen-6\n"
        "-rename mine.txt p-abs-dir/mine.txt\n-rename mine.txt p-rel-dir/mine.txt\n"
        "-ln mine.txt p-abs-dir/mine-link.txt\n",
    )
    for i in range(1, 7):
        assert not (planted / f"stolen-{i}").exists(), res.stderr
    with pytest.raises(OSError):
        sftp.posix_rename("p-abs-dir/secret.txt", "stolen-7")
    with pytest.raises(OSError):
        sftp.rename("p-rel-dir/outside-only.txt", "stolen-8")
    assert not (planted / "stolen-7").exists() and not (planted / "stolen-8").exists()
    # Linking or renaming the planted link itself moves the link, never the file.
    sftp.posix_rename("p-rel-file", "p-rel-file-moved")
    assert os.readlink(planted / "p-rel-file-moved") == "../host-secret/secret.txt"
    with pytest.raises(FileNotFoundError):
        sftp.open("p-rel-file-moved", "r")
    sftp.posix_rename("p-rel-file-moved", "p-rel-file")
    assert (planted / "mine.txt").read_bytes() == b"mine\n"
    assert outside.file.stat().st_nlink == 1
    assert outside.snapshot() == before


def test_client_made_links_cannot_point_out(
    server: Env, outside: Outside, planted: Path, tmp_path: Path, sftp: Any
) -> None:
    sftp.symlink(str(outside.file), "c-abs")
    sftp.symlink("../host-secret/secret.txt", "c-rel")
    sftp.symlink("../../../../..", "c-up")
    sftp.symlink("c-abs", "c-chain")
    assert sftp.readlink("c-abs") == str(outside.file)  # the text as the client sent it
    for name in ("c-abs", "c-rel", "c-chain", "c-up/host-secret/secret.txt"):
        with pytest.raises(FileNotFoundError):
            sftp.open(name, "r")
    assert sorted(sftp.listdir("c-up")) == sorted(sftp.listdir("/"))
    assert sftp.normalize("c-up") == "/"
    with sftp.open("c-up/decoy.txt") as f:
        assert f.read() == b"jail decoy\n"


def test_special_files_are_never_opened(
    server: Env, outside: Outside, planted: Path, tmp_path: Path, sftp: Any
) -> None:
    """A FIFO or a device node in the root (planted on the host) is refused with a clear
    FAILURE: never opened, so never a hang and never /dev/zero's endless bytes."""
    os.mkfifo(planted / "special-fifo")
    specials = ["special-fifo"]
    try:
        os.mknod(planted / "special-zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
        specials.append("special-zero")
    except PermissionError:
        pass  # not root: only the FIFO
    for name in specials:
        for mode in ("r", "w", "a", "r+"):
            with pytest.raises(OSError) as err:
                sftp.open(name, mode)
            assert not isinstance(err.value, FileNotFoundError | PermissionError)
            assert "Not a regular file" in str(err.value)
        assert stat.S_ISFIFO(sftp.lstat(name).st_mode) or stat.S_ISCHR(sftp.lstat(name).st_mode)
    # (OpenSSH's sftp refuses these itself after a STAT: "not a regular file")
    res = _sftp(server, outside, "".join(f"-get {n} {tmp_path}/{n}\n" for n in specials))
    assert res.stderr.count("not a regular file") == len(specials), res.stderr
    for name in specials:
        assert not (tmp_path / name).exists() or (tmp_path / name).stat().st_size == 0
    src = tmp_path / "into-fifo.txt"
    src.write_bytes(b"never delivered\n")
    res = _sftp(server, outside, f"-put {src} special-fifo\n")
    assert 'dest open "/special-fifo": Failure' in res.stderr, res.stderr
    assert stat.S_ISFIFO(os.lstat(planted / "special-fifo").st_mode)


# ---- modes -----------------------------------------------------------------------------


def test_setuid_setgid_and_sticky_bits_are_dropped(
    server: Env, outside: Outside, planted: Path, tmp_path: Path, sftp: Any
) -> None:
    root = planted
    (root / "suid.txt").write_bytes(b"#!/bin/sh\n")
    (root / "sgid-dir").mkdir()
    _sftp(server, outside, "chmod 4755 suid.txt\nchmod 2775 sgid-dir\n")
    assert stat.S_IMODE(os.stat(root / "suid.txt").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "sgid-dir").st_mode) == 0o775
    sftp.chmod("sgid-dir", 0o1777)
    assert stat.S_IMODE(os.stat(root / "sgid-dir").st_mode) == 0o777
    sftp.chmod("suid.txt", 0o6711)
    assert stat.S_IMODE(os.stat(root / "suid.txt").st_mode) == 0o711

    local = tmp_path / "setuid-local"
    local.write_bytes(b"\x7fELF pretend\n")
    local.chmod(0o4755)
    assert local.stat().st_mode & stat.S_ISUID
    res = _sftp(server, outside, f"put -p {local} put-p-suid\nput {local} put-suid\n")
    assert res.returncode == 0, res.stderr
    for name in ("put-p-suid", "put-suid"):
        assert (root / name).read_bytes() == b"\x7fELF pretend\n"
        assert stat.S_IMODE(os.stat(root / name).st_mode) == 0o755, name
    sftp.mkdir("sticky-made", 0o1777)
    assert stat.S_IMODE(os.stat(root / "sticky-made").st_mode) == 0o755  # umask 022
    with sftp.open("suid-made", "w") as f:
        f.chmod(0o4777)
    assert stat.S_IMODE(os.stat(root / "suid-made").st_mode) == 0o777


# ---- no host path anywhere ----------------------------------------------------------------


def test_no_output_names_the_host_root(
    server: Env, outside: Outside, planted: Path, tmp_path: Path, sftp: Any
) -> None:
    (planted / "leak-dir" / "inner").mkdir(parents=True)
    (planted / "leak-dir" / "f.txt").write_bytes(b"f\n")
    os.symlink("inner", planted / "leak-dir" / "to-inner")
    batch = (
        "pwd\nls -la\nls -la /\nls -l leak-dir\ncd leak-dir/to-inner\npwd\ncd /\n"
        "-ls -l /nonexistent/dir\n-get /nope\n-rmdir leak-dir\n-mkdir leak-dir\n"
        "-rm /\n-rename / /x\n-cd leak-dir/f.txt\n-chmod 777 /nonexistent\n-ln /a /b\n"
        "df\n-df /nonexistent\nversion\n"
    )
    res = _sftp(server, outside, batch)
    assert "Remote working directory: /leak-dir/inner" in res.stdout
    collected: list[str] = []
    for path in [
        ".",
        "..",
        "/",
        "leak-dir/to-inner",
        "p-decoy",
        "p-abs-decoy",
        "p-chain-1",
        "p-abs-dir",
        "p-rel-dir/sub",
        "p-deep-rel",
        "nonexistent/x/../y",
    ]:
        collected.append(sftp.normalize(path))
    assert sftp.normalize("leak-dir/to-inner") == "/leak-dir/inner"
    assert sftp.normalize("p-decoy") == "/decoy.txt"
    assert sftp.normalize("p-deep-rel") == "/"
    for link in ("leak-dir/to-inner", "p-decoy", "p-rel-dir", "p-chain-1"):
        collected.append(sftp.readlink(link))
    for attr in sftp.listdir_attr("/") + sftp.listdir_attr("leak-dir"):
        collected.append(attr.longname)
    for op in (
        lambda: sftp.open("nonexistent/x", "r"),
        lambda: sftp.rmdir("leak-dir"),
        lambda: sftp.mkdir("leak-dir"),
        lambda: sftp.remove("/"),
        lambda: sftp.rename("/", "/y"),
        lambda: sftp.open("leak-dir", "r"),
        lambda: sftp.listdir("p-abs-dir"),
        lambda: sftp.readlink("leak-dir/f.txt"),
        lambda: sftp.stat("p-abs-file"),
    ):
        with pytest.raises(OSError) as err:
            op()
        collected.append(str(err.value))
    _no_leak(server, outside, "\n".join(collected))


# ---- the swap race ------------------------------------------------------------------------


def test_directory_swapped_for_a_link_to_outside_while_a_client_works(
    server: Env, outside: Outside, planted: Path, sftp: Any
) -> None:
    """A host thread flips /race between the real directory and a symlink to outside
    (absolute and relative) while paramiko reads, writes, lists, renames and removes
    through it: no outside byte is read and nothing outside changes."""
    race = planted / "race"
    race.mkdir()
    inside = b"inside bytes " * 100
    (race / "secret.txt").write_bytes(inside)  # same name as the outside file
    parked = planted / ".race-parked"
    before = outside.snapshot()
    stop = threading.Event()
    flips = [0]
    errors: list[BaseException] = []

    def flipper() -> None:
        targets = [str(outside.dir), "../host-secret"]
        try:
            while not stop.is_set():
                os.rename(race, parked)
                os.symlink(targets[flips[0] % 2], race)
                os.unlink(race)
                os.rename(parked, race)
                flips[0] += 1
                if flips[0] % 2:
                    stop.wait(0.001)  # let some requests run against the real directory
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    seen: list[bytes] = []
    ok = 0
    deadline = time.monotonic() + 3  # a few seconds of racing (no timing is asserted)
    i = 0
    try:
        while time.monotonic() < deadline or i < 200:
            i += 1
            ops = [
                lambda: seen.append(sftp.open("race/secret.txt").read()),
                lambda: seen.append(repr(sftp.listdir("race")).encode()),
                lambda: seen.append(str(sftp.stat("race/secret.txt").st_size).encode()),
                lambda i=i: sftp.open(f"race/w-{i}.txt", "w").close(),
                lambda: sftp.open("race/secret.txt", "r+").close(),
                lambda: sftp.chmod("race/secret.txt", 0o600),
                lambda: sftp.remove("race/victim.txt"),
                lambda: sftp.rename("race/outside-only.txt", "race-stolen.txt"),
                lambda i=i: sftp.mkdir(f"race/d-{i}"),
                lambda: sftp.truncate("race/secret.txt", len(inside)),
            ]
            try:
                ops[i % len(ops)]()
                ok += 1
            except OSError:
                pass
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and not errors, errors
    assert race.is_dir() and not race.is_symlink()
    with sftp.open("race/secret.txt") as f:  # once still, the inside file is served
        assert f.read() == inside
    for data in seen:
        assert outside.secret.strip() not in data
        assert b"outside-only" not in data and b"victim" not in data
    for data in seen:
        if data.startswith(b"inside"):
            assert data == inside
    assert not (planted / "race-stolen.txt").exists()
    assert outside.snapshot() == before, f"flips={flips[0]} ok={ok}"


# ---- read-only user -----------------------------------------------------------------------


def test_read_only_user_changes_nothing(make_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "alice-root"
    (root / "rodir").mkdir(parents=True)
    (root / "ro.txt").write_bytes(b"read me\n")
    (root / "rodir" / "inner.txt").write_bytes(b"inner\n")
    (root / "emptydir").mkdir()
    os.symlink("ro.txt", root / "rolink")
    os.utime(root / "ro.txt", (1_000_000_000, 1_000_000_000))
    env = make_server(alice_extra="read_only = true")
    before = _snapshot(root)
    local = tmp_path / "local"
    local.mkdir()
    (local / "up.txt").write_bytes(b"upload attempt\n")
    changes = [
        f"put {local}/up.txt new.txt",
        f"put {local}/up.txt ro.txt",
        f"reput {local}/up.txt ro.txt",
        "mkdir newdir",
        "rmdir emptydir",
        "rm ro.txt",
        "rm rolink",
        "rename ro.txt moved.txt",
        "rename -l ro.txt moved.txt",
        "ln ro.txt hard.txt",
        "ln -s ro.txt soft",
        "symlink ro.txt soft2",
        "chmod 600 ro.txt",
        "chown 1234 ro.txt",
        "chgrp 1234 ro.txt",
        "cp ro.txt copy.txt",
    ]
    res = env.sftp("".join(f"-{cmd}\n" for cmd in changes), check=False)
    assert res.stderr.count("Permission denied") == len(changes), res.stderr
    res = env.sftp(
        f"get ro.txt {local}/got.txt\nget -r rodir {local}/rodir\nls -l\nget rolink {local}/l\n"
    )
    assert (local / "got.txt").read_bytes() == b"read me\n"
    assert (local / "rodir" / "inner.txt").read_bytes() == b"inner\n"
    assert (local / "l").read_bytes() == b"read me\n"
    assert "ro.txt" in res.stdout

    transport = paramiko.Transport(("127.0.0.1", env.port))
    transport.connect(
        username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(str(env.key_path))
    )
    sftp = paramiko.SFTPClient.from_transport(transport)
    assert sftp is not None
    try:
        refused = [
            lambda: sftp.open("ro.txt", "r+"),
            lambda: sftp.open("ro.txt", "a"),
            lambda: sftp.open("ro.txt", "w"),
            lambda: sftp.open("brand-new.txt", "w"),
            lambda: sftp.truncate("ro.txt", 0),
            lambda: sftp.utime("ro.txt", (5, 5)),
            lambda: sftp.chmod("rodir", 0o777),
            lambda: sftp.posix_rename("ro.txt", "rodir/ro.txt"),
            lambda: sftp.rename("rodir", "rodir2"),
            lambda: sftp.remove("rodir/inner.txt"),
            lambda: sftp.symlink("ro.txt", "pm-soft"),
            lambda: sftp.mkdir("pm-dir"),
        ]
        for op in refused:
            with pytest.raises(PermissionError):
                op()
        with sftp.open("ro.txt") as f:
            with pytest.raises(PermissionError):
                f.chmod(0o600)  # FSETSTAT on a read handle
            with pytest.raises(PermissionError):
                f.utime((5, 5))
            with pytest.raises(OSError):
                sftp._request(paramiko.sftp.CMD_WRITE, f.handle, paramiko.sftp.int64(0), b"X")
            assert f.read() == b"read me\n"
        assert sftp.readlink("rolink") == "ro.txt"
        assert sorted(sftp.listdir("/")) == ["emptydir", "ro.txt", "rodir", "rolink"]
    finally:
        sftp.close()
        transport.close()

    asyncssh = pytest.importorskip("asyncssh")

    async def via_asyncssh(client: Any) -> None:
        vfs = await client.statvfs("/")
        assert vfs.flags & 1  # SSH_FXE_STATVFS_ST_RDONLY
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await client.link("ro.txt", "as-hard")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await client.setstat(
                "rolink", asyncssh.SFTPAttrs(atime=1, mtime=1), follow_symlinks=False
            )
        async with client.open("ro.txt", "rb") as f:
            await f.fsync()  # allowed: changes nothing
            assert await f.read() == b"read me\n"

    asyncssh_sftp(env, via_asyncssh)
    assert _snapshot(root) == before


# ---- two users ---------------------------------------------------------------------------


def test_users_never_see_each_other(
    make_server: Any, tmp_path: Path, client_key: tuple[Path, str]
) -> None:
    """bob's root is a sibling of alice's: nothing of alice's is reachable by bob's paths,
    `..`, absolute host paths or links he makes."""
    from tests.support import User

    alice_root = tmp_path / "alice-root"
    alice_root.mkdir()
    secret = f"ALICE-ONLY-{uuid.uuid4()}\n".encode()
    (alice_root / "alice.txt").write_bytes(secret)
    bob_root = tmp_path / "bob-root"
    env = make_server(users=[User("bob", bob_root, client_key[1])])
    local = tmp_path / "bob-local"
    local.mkdir()
    res = env.sftp(
        f"-get ../alice-root/alice.txt {local}/a1\n-get {alice_root}/alice.txt {local}/a2\n"
        f"-get /alice.txt {local}/a3\nln -s ../alice-root bob-link\n-get bob-link/alice.txt "
        f"{local}/a4\nls -1 /\nls -1 ..\npwd\n",
        user="bob",
        check=False,
    )
    assert not list(local.iterdir()), res.stderr
    sections = {
        part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in res.stdout.split("sftp> ")[1:]
    }
    assert sections["ls -1 /"].split() == ["/bob-link"]
    assert sections["ls -1 .."].split() == ["../bob-link"]
    assert sections["pwd"] == "Remote working directory: /\n"
    assert res.stderr.count("not found") == 4, res.stderr
    assert os.readlink(bob_root / "bob-link") == "../alice-root"
    assert (alice_root / "alice.txt").read_bytes() == secret
    assert sorted(os.listdir(alice_root)) == ["alice.txt"]
