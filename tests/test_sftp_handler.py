"""SFTP request handling through SftpApp: a recording ChannelIO, inline blocking, real temp dirs."""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from sftpd.apps.contract import SessionContext
from sftpd.apps.sftp.attrs import Attrs
from sftpd.apps.sftp.codec import Reader
from sftpd.apps.sftp.constants import ADVERTISED_EXTENSIONS, AttrFlag, OpenFlag, PacketType, Status
from sftpd.apps.sftp.listing import READDIR_BATCH, READDIR_BYTES, READDIR_STEP, read_names
from sftpd.apps.sftp.protocol import SftpApp
from sftpd.config.model import SftpConfig
from sftpd.runtime.threads import Blocking, CallViaRun, InlineBlocking
from sftpd.storage import vpath
from sftpd.storage.base import File, Storage
from sftpd.storage.enforce import RulesStorage
from sftpd.storage.rules import Rules

# ---- a small real-file-system Storage for tests (used when LocalStorage is missing) ----


class OsFile:
    """A regular file opened with plain os calls."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def pread_cached(self, size: int, offset: int, limit: int) -> bytes | None:
        return None  # never cached: every read goes through Blocking

    def pwrite_nowait(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        return False  # every write goes through Blocking

    def close_nowait(self) -> bool:
        return False

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def fstat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def fstat_nowait(self) -> os.stat_result | None:
        return None  # every fstat goes through Blocking

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def chmod(self, mode: int) -> None:
        os.fchmod(self.fd, mode)

    def utime(self, atime: int, mtime: int) -> None:
        os.utime(self.fd, (atime, mtime))

    def fsync(self) -> None:
        os.fsync(self.fd)

    def statvfs(self) -> os.statvfs_result:
        return os.fstatvfs(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class OsDirectory:
    def __init__(self, host: str) -> None:
        self.host = host
        self.names = [".", "..", *sorted(os.listdir(host))]

    def read(self, count: int) -> list[tuple[str, os.stat_result]]:
        batch, self.names = self.names[:count], self.names[count:]
        out = []
        for name in batch:
            try:
                out.append((name, os.lstat(os.path.join(self.host, name))))
            except FileNotFoundError:
                pass
        return out

    def close(self) -> None:
        self.names = []


class OsStorage:
    """Test-only storage: plain os calls under a temp root. Symlinks are resolved here,
    chroot-style and single-threaded, so nothing (not even fuzzed input) leaves the root."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)

    def close(self) -> None:
        pass

    def _resolve(self, path: str, follow: bool) -> tuple[str, str]:
        todo = [p for p in vpath.normalize(path).split("/") if p]
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop(0)
            if part in (".", ""):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            host = os.path.join(self.root, *done, part)
            if (todo or follow) and os.path.islink(host):
                hops += 1
                if hops > 40:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(host)
                if target.startswith("/"):
                    done = []
                todo = [p for p in target.split("/") if p] + todo
                continue
            done.append(part)
        return os.path.join(self.root, *done), "/" + "/".join(done)

    def _host(self, path: str, follow: bool = True) -> str:
        return self._resolve(path, follow)[0]

    def _not_root(self, path: str) -> str:
        host, virtual = self._resolve(path, False)
        if virtual == "/":
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        return host

    def open(self, path: str, flags: int, mode: int) -> File:
        fd = os.open(self._host(path), flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        os.set_blocking(fd, True)
        return OsFile(fd)

    def open_nowait(self, path: str, flags: int, mode: int) -> File | None:
        return None  # every open goes through Blocking

    def opendir(self, path: str) -> OsDirectory:
        host = self._host(path)
        if not stat.S_ISDIR(os.lstat(host).st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return OsDirectory(host)

    def stat(self, path: str, *, follow: bool = True) -> os.stat_result:
        return os.lstat(self._host(path, follow))

    def truncate(self, path: str, size: int) -> None:
        os.truncate(self._host(path), size)

    def chmod(self, path: str, mode: int, *, follow: bool = True) -> None:
        host = self._host(path, follow)
        if os.path.islink(host):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        os.chmod(host, mode)

    def utime(self, path: str, atime: int, mtime: int, *, follow: bool = True) -> None:
        os.utime(self._host(path, follow), (atime, mtime), follow_symlinks=False)

    def remove(self, path: str) -> None:
        os.unlink(self._not_root(path))

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._host(path, False), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._not_root(path))

    def rename(self, old: str, new: str, *, overwrite: bool) -> None:
        src, dst = self._not_root(old), self._not_root(new)
        if not overwrite and os.path.lexists(dst):
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        os.rename(src, dst)

    def readlink(self, path: str) -> str:
        return os.readlink(self._host(path, False))

    def symlink(self, target: str, linkpath: str) -> None:
        os.symlink(target, self._host(linkpath, False))

    def link(self, old: str, new: str) -> None:
        os.link(self._host(old, False), self._host(new, False), follow_symlinks=False)

    def realpath(self, path: str) -> str:
        return self._resolve(path, True)[1]

    def statvfs(self, path: str) -> os.statvfs_result:
        return os.statvfs(self._host(path))

    def copy_range(
        self, src: File, src_offset: int, length: int, dst: File, dst_offset: int
    ) -> None:
        remaining = length or (1 << 62)
        while remaining > 0:
            n = os.copy_file_range(
                src.fileno(), dst.fileno(), min(remaining, 1 << 30), src_offset, dst_offset
            )
            if n == 0:
                return
            remaining -= n
            src_offset += n
            dst_offset += n


def make_storage(root: Path) -> Storage:
    """The jailed LocalStorage when it exists, else the test OsStorage."""
    try:
        from sftpd.storage.local import LocalStorage
    except ImportError:
        return OsStorage(root)
    return LocalStorage(root)


# ---- a recording ChannelIO and a tiny SFTP client --------------------------------------


class FakeIO:
    """Records what the app writes; ``pending`` is what pending_output() reports."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.stderr = bytearray()
        self.exited: int | None = None
        self.exit_calls = 0
        self.pending = 0

    def write(self, data: bytes) -> None:
        self.out += data

    def write_parts(self, head: bytes, body: bytes | memoryview) -> None:
        self.write(head + body)

    def write_stderr(self, data: bytes) -> None:
        self.stderr += data

    def exit(self, status: int) -> None:
        self.exit_calls += 1
        if self.exited is None:
            self.exited = status

    def pending_output(self) -> int:
        return self.pending

    reading_paused = False

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def s(value: bytes | str) -> bytes:
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return u32(len(data)) + data


def attrs(
    size: int | None = None,
    perms: int | None = None,
    times: tuple[int, int] | None = None,
    ids: tuple[int, int] | None = None,
) -> bytes:
    flags, body = 0, b""
    if size is not None:
        flags |= AttrFlag.SIZE
        body += u64(size)
    if ids is not None:
        flags |= AttrFlag.UIDGID
        body += u32(ids[0]) + u32(ids[1])
    if perms is not None:
        flags |= AttrFlag.PERMISSIONS
        body += u32(perms)
    if times is not None:
        flags |= AttrFlag.ACMODTIME
        body += u32(times[0]) + u32(times[1])
    return u32(flags) + body


def frame(body: bytes) -> bytes:
    return u32(len(body)) + body


@dataclass
class Reply:
    type: int
    id: int | None
    body: bytes

    def reader(self) -> Reader:
        return Reader(self.body)

    @property
    def code(self) -> int:
        assert self.type == PacketType.STATUS, self
        return int.from_bytes(self.body[:4], "big")

    @property
    def message(self) -> str:
        r = Reader(self.body[4:])
        return r.string().decode()

    @property
    def handle(self) -> bytes:
        assert self.type == PacketType.HANDLE, self
        return Reader(self.body).string()

    @property
    def data(self) -> bytes:
        assert self.type == PacketType.DATA, self
        return Reader(self.body).string()

    @property
    def attrs(self) -> Attrs:
        assert self.type == PacketType.ATTRS, self
        return Reader(self.body).attrs()

    @property
    def names(self) -> list[tuple[str, str, Attrs]]:
        assert self.type == PacketType.NAME, self
        r = Reader(self.body)
        return [(r.path(), r.path(), r.attrs()) for _ in range(r.uint32())]

    @property
    def extended(self) -> bytes:
        assert self.type == PacketType.EXTENDED_REPLY, self
        return self.body


def parse_replies(buf: bytearray) -> list[Reply]:
    """Consume complete reply packets from ``buf``."""
    out = []
    while len(buf) >= 4:
        (length,) = struct.unpack(">I", buf[:4])
        if len(buf) < 4 + length:
            break
        body = bytes(buf[4 : 4 + length])
        del buf[: 4 + length]
        if body[0] == PacketType.VERSION:
            out.append(Reply(body[0], None, body[1:]))
        else:
            out.append(Reply(body[0], struct.unpack(">I", body[1:5])[0], body[5:]))
    return out


class Client:
    """Drives an SftpApp over a FakeIO with hand-built request packets."""

    def __init__(
        self,
        root: Path,
        *,
        storage: Storage | None = None,
        blocking: Blocking | None = None,
        client_version: bytes = b"SSH-2.0-OpenSSH_9.6p1 Debian-3",
        umask: int = 0o022,
        max_handles: int = 1024,
        home: str = "/",
        reactor: Any = None,
        init: bool = True,
        **app_kwargs: Any,
    ) -> None:
        self.root = root
        self.storage = storage if storage is not None else make_storage(root)
        rules = Rules(umask=umask)
        self.ctx = SessionContext(
            username="alice",
            home=home,
            storage=RulesStorage(self.storage, rules),
            blocking=blocking or InlineBlocking(),
            rules=rules,
            rsync=rules.rsync(root),
            sftp=SftpConfig(umask=umask, max_handles=max_handles),
            client_version=client_version,
            reactor=reactor,
        )
        self.io = FakeIO()
        self.app = SftpApp(self.ctx, self.io, **app_kwargs)
        self.next_id = 100
        self.received: list[Reply] = []
        if init:  # SSH_FXP_INIT first, as every client does (the server insists)
            self.feed(frame(bytes([PacketType.INIT]) + u32(3)))
            (version,) = parse_replies(self.io.out)
            assert version.type == PacketType.VERSION

    def feed(self, data: bytes) -> None:
        self.app.data_received(data)

    def send(self, ptype: int, *fields: bytes) -> int:
        self.next_id += 1
        self.feed(frame(bytes([ptype]) + u32(self.next_id) + b"".join(fields)))
        return self.next_id

    def replies(self) -> list[Reply]:
        new = parse_replies(self.io.out)
        self.received.extend(new)
        return new

    def call(self, ptype: int, *fields: bytes) -> Reply:
        rid = self.send(ptype, *fields)
        got = self.replies()
        assert [r.id for r in got] == [rid], got
        return got[0]

    def ext(self, name: str, *fields: bytes) -> Reply:
        return self.call(PacketType.EXTENDED, s(name), *fields)

    def ok(self, ptype: int, *fields: bytes) -> None:
        reply = self.call(ptype, *fields)
        assert (reply.code, reply.message) == (Status.OK, "Success"), reply

    def open(self, path: str, flags: int, a: bytes = u32(0)) -> bytes:
        return self.call(PacketType.OPEN, s(path), u32(flags), a).handle

    def write(self, handle: bytes, offset: int, data: bytes) -> None:
        self.ok(PacketType.WRITE, s(handle), u64(offset), s(data))

    def read(self, handle: bytes, offset: int, length: int) -> Reply:
        return self.call(PacketType.READ, s(handle), u64(offset), u32(length))

    def close(self, handle: bytes) -> None:
        self.ok(PacketType.CLOSE, s(handle))

    def put(self, path: str, data: bytes) -> None:
        h = self.open(path, OpenFlag.WRITE | OpenFlag.CREAT | OpenFlag.TRUNC)
        self.write(h, 0, data)
        self.close(h)

    def status(self, ptype: int, *fields: bytes) -> tuple[int, str]:
        reply = self.call(ptype, *fields)
        return reply.code, reply.message


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    r = tmp_path / "root"
    r.mkdir()
    old = os.umask(0)  # the session umask is the one under test
    try:
        yield r
    finally:
        os.umask(old)


@pytest.fixture
def client(root: Path) -> Client:
    return Client(root)


ClientFactory = Callable[..., Client]


# ---- INIT / VERSION ---------------------------------------------------------------------


def test_init_answers_version_3_with_every_extension(root: Path) -> None:
    c = Client(root, init=False)
    c.feed(frame(bytes([PacketType.INIT]) + u32(6) + s("x@y") + s("1")))
    (reply,) = c.replies()
    assert reply.type == PacketType.VERSION
    r = Reader(reply.body)
    assert r.uint32() == 3
    pairs = []
    while r.remaining():
        pairs.append((r.string(), r.string()))
    assert tuple(pairs) == ADVERTISED_EXTENSIONS
    names = {name for name, _ in pairs}
    assert {
        b"posix-rename@openssh.com",
        b"statvfs@openssh.com",
        b"fstatvfs@openssh.com",
        b"hardlink@openssh.com",
        b"fsync@openssh.com",
        b"lsetstat@openssh.com",
        b"limits@openssh.com",
        b"expand-path@openssh.com",
        b"copy-data",
        b"home-directory",
        b"users-groups-by-id@openssh.com",
        b"check-file-name",
        b"check-file-handle",
    } <= names
    assert c.app.handler.client_version == 6
    assert c.app.handler.client_extensions == ((b"x@y", b"1"),)


# ---- OPEN / READ / WRITE / CLOSE -----------------------------------------------------------


def test_write_then_read_back(client: Client) -> None:
    client.put("f.txt", b"hello world")
    assert (client.root / "f.txt").read_bytes() == b"hello world"
    h = client.open("f.txt", OpenFlag.READ)
    assert client.read(h, 0, 5).data == b"hello"
    assert client.read(h, 6, 100).data == b"world"  # short read at end of file
    eof = client.read(h, 11, 10)
    assert (eof.code, eof.message) == (Status.EOF, "End of file")
    assert client.read(h, 1 << 40, 10).code == Status.EOF
    client.close(h)


def test_write_at_offset_and_sparse(client: Client) -> None:
    h = client.open("w", OpenFlag.WRITE | OpenFlag.CREAT)
    client.write(h, 4, b"tail")
    client.write(h, 0, b"he")
    client.close(h)
    assert (client.root / "w").read_bytes() == b"he\0\0tail"


def test_read_is_clamped_to_advertised_maximum(client: Client) -> None:
    (client.root / "big").write_bytes(os.urandom(600_000))
    h = client.open("big", OpenFlag.READ)
    reply = client.read(h, 0, 0x7FFFFFFF)
    assert len(reply.data) == 261120
    assert 13 + len(reply.data) <= 262144
    assert client.read(h, 500_000, 0x7FFFFFFF).data == (client.root / "big").read_bytes()[500_000:]


def test_open_flags(client: Client) -> None:
    (client.root / "a").write_bytes(b"0123456789")
    # EXCL on an existing file: plain FAILURE with the reason (v3 has no EXISTS code).
    assert client.status(
        PacketType.OPEN, s("a"), u32(OpenFlag.WRITE | OpenFlag.CREAT | OpenFlag.EXCL), u32(0)
    ) == (Status.FAILURE, "File exists")
    # Missing without CREAT.
    assert client.status(PacketType.OPEN, s("nope"), u32(OpenFlag.READ), u32(0)) == (
        Status.NO_SUCH_FILE,
        "No such file or directory",
    )
    # No TRUNC keeps the tail (scp's way), TRUNC empties.
    h = client.open("a", OpenFlag.WRITE)
    client.write(h, 0, b"ab")
    client.close(h)
    assert (client.root / "a").read_bytes() == b"ab23456789"
    client.close(client.open("a", OpenFlag.WRITE | OpenFlag.TRUNC))
    assert (client.root / "a").read_bytes() == b""
    # APPEND writes at the end whatever the offset.
    (client.root / "b").write_bytes(b"start")
    h = client.open("b", OpenFlag.WRITE | OpenFlag.APPEND)
    client.write(h, 0, b"+more")
    client.close(h)
    assert (client.root / "b").read_bytes() == b"start+more"
    # A read-only handle refuses writes; a write-only handle refuses reads.
    h = client.open("b", OpenFlag.READ)
    assert client.status(PacketType.WRITE, s(h), u64(0), s(b"x"))[0] == Status.FAILURE
    client.close(h)
    h = client.open("b", OpenFlag.WRITE)
    assert client.read(h, 0, 10).code == Status.FAILURE
    client.close(h)


def test_open_directory_fails(client: Client) -> None:
    (client.root / "d").mkdir()
    code, _ = client.status(PacketType.OPEN, s("d"), u32(OpenFlag.READ), u32(0))
    assert code == Status.FAILURE


def test_create_mode_uses_umask_and_drops_setuid(root: Path) -> None:
    c = Client(root, umask=0o027)
    c.close(c.open("f", OpenFlag.WRITE | OpenFlag.CREAT, attrs(perms=0o6777)))
    assert stat.S_IMODE(os.stat(root / "f").st_mode) == 0o750
    c.close(c.open("g", OpenFlag.WRITE | OpenFlag.CREAT))  # default 0666
    assert stat.S_IMODE(os.stat(root / "g").st_mode) == 0o640
    c.ok(PacketType.MKDIR, s("d"), attrs(perms=0o3777))
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o750
    c.ok(PacketType.MKDIR, s("e"), u32(0))  # default 0777
    assert stat.S_IMODE(os.stat(root / "e").st_mode) == 0o750


# ---- handles -------------------------------------------------------------------------------


def test_invalid_handles(client: Client) -> None:
    (client.root / "d").mkdir()
    for ptype, fields in [
        (PacketType.READ, (s(b"nope"), u64(0), u32(1))),
        (PacketType.WRITE, (s(b"nope"), u64(0), s(b"x"))),
        (PacketType.FSTAT, (s(b"nope"),)),
        (PacketType.FSETSTAT, (s(b"nope"), u32(0))),
        (PacketType.READDIR, (s(b"nope"),)),
        (PacketType.CLOSE, (s(b"nope"),)),
    ]:
        assert client.status(ptype, *fields) == (Status.FAILURE, "invalid handle")
    # A directory handle is not a file handle and vice versa.
    dh = client.call(PacketType.OPENDIR, s("d")).handle
    assert client.status(PacketType.READ, s(dh), u64(0), u32(1)) == (
        Status.FAILURE,
        "invalid handle",
    )
    client.put("f", b"x")
    fh = client.open("f", OpenFlag.READ)
    assert client.status(PacketType.READDIR, s(fh)) == (Status.FAILURE, "invalid handle")
    # Closed handles are gone and ids are not reused.
    client.close(fh)
    assert client.status(PacketType.READ, s(fh), u64(0), u32(1)) == (
        Status.FAILURE,
        "invalid handle",
    )
    assert client.open("f", OpenFlag.READ) not in (fh, dh)


def test_handle_limit(root: Path) -> None:
    c = Client(root, max_handles=3)
    (root / "f").write_bytes(b"x")
    handles = [c.open("f", OpenFlag.READ) for _ in range(2)]
    handles.append(c.call(PacketType.OPENDIR, s("/")).handle)
    assert c.status(PacketType.OPEN, s("f"), u32(OpenFlag.READ), u32(0)) == (
        Status.FAILURE,
        "too many open handles",
    )
    assert c.status(PacketType.OPENDIR, s("/")) == (Status.FAILURE, "too many open handles")
    c.close(handles[0])
    c.close(c.open("f", OpenFlag.READ))
    # Failed opens give their slot back.
    for _ in range(5):
        assert c.status(PacketType.OPEN, s("missing"), u32(OpenFlag.READ), u32(0))[0] == 2
    assert c.app.handler.handles.used == 2


def test_handles_are_ascii_counters(client: Client) -> None:
    client.put("f", b"")
    a = client.open("f", OpenFlag.READ)
    b = client.open("f", OpenFlag.READ)
    assert a.isdigit() and b.isdigit() and int(b) == int(a) + 1


class Recorded:
    """A real open file or directory that remembers whether it was closed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def close(self) -> None:
        self.closed = True
        self.inner.close()

    def close_nowait(self) -> bool:
        closed: bool = self.inner.close_nowait()
        self.closed = self.closed or closed
        return closed


class TrackingStorage:
    """Passes through to a real storage and remembers the files and directories it opened."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.opened: list[Recorded] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open(self, path: str, flags: int, mode: int) -> Any:
        f = Recorded(self.inner.open(path, flags, mode))
        self.opened.append(f)
        return f

    def open_nowait(self, path: str, flags: int, mode: int) -> Any:
        inner = self.inner.open_nowait(path, flags, mode)
        if inner is None:
            return None
        f = Recorded(inner)
        self.opened.append(f)
        return f

    def opendir(self, path: str) -> Any:
        d = Recorded(self.inner.opendir(path))
        self.opened.append(d)
        return d


def test_connection_lost_closes_every_handle(root: Path) -> None:
    tracking = TrackingStorage(make_storage(root))
    c = Client(root, storage=tracking)
    (root / "f").write_bytes(b"x")
    for _ in range(5):
        c.open("f", OpenFlag.READ)
    c.call(PacketType.OPENDIR, s("/"))
    assert len(tracking.opened) == 6 and not any(f.closed for f in tracking.opened)
    c.app.connection_lost()
    assert all(f.closed for f in tracking.opened)
    assert c.app.handler.handles.used == 0


# ---- stat family -------------------------------------------------------------------------


def test_stat_lstat_fstat(client: Client) -> None:
    (client.root / "f").write_bytes(b"12345")
    os.utime(client.root / "f", (1_000_000, 2_000_000))
    os.symlink("f", client.root / "ln")
    a = client.call(PacketType.STAT, s("ln")).attrs
    assert (a.size, a.atime, a.mtime) == (5, 1_000_000, 2_000_000)
    assert a.permissions is not None and stat.S_ISREG(a.permissions)
    assert (a.uid, a.gid) == (os.getuid(), os.getgid())
    link = client.call(PacketType.LSTAT, s("ln")).attrs
    assert link.permissions is not None and stat.S_ISLNK(link.permissions)
    h = client.open("f", OpenFlag.READ)
    assert client.call(PacketType.FSTAT, s(h)).attrs == a
    assert client.status(PacketType.STAT, s("missing")) == (
        Status.NO_SUCH_FILE,
        "No such file or directory",
    )


def test_setstat_size_perms_times(client: Client) -> None:
    f = client.root / "f"
    f.write_bytes(b"0123456789")
    client.ok(PacketType.SETSTAT, s("f"), attrs(size=4))
    assert f.read_bytes() == b"0123"
    client.ok(PacketType.SETSTAT, s("f"), attrs(size=6))
    assert f.read_bytes() == b"0123\0\0"
    client.ok(PacketType.SETSTAT, s("f"), attrs(perms=0o104751))
    assert stat.S_IMODE(f.stat().st_mode) == 0o751  # setuid dropped
    client.ok(PacketType.SETSTAT, s("f"), attrs(times=(1_111_111, 2_222_222)))
    st = f.stat()
    assert (int(st.st_atime), int(st.st_mtime)) == (1_111_111, 2_222_222)


def test_fsetstat_sets_size_like_scp(client: Client) -> None:
    f = client.root / "f"
    f.write_bytes(b"a much longer old content")
    h = client.open("f", OpenFlag.WRITE)
    client.write(h, 0, b"new")
    client.ok(PacketType.FSETSTAT, s(h), attrs(size=3, perms=0o2640, times=(5, 6)))
    client.close(h)
    assert f.read_bytes() == b"new"
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    assert int(f.stat().st_mtime) == 6


def test_owner_changes_refused_unless_unchanged(client: Client) -> None:
    f = client.root / "f"
    f.write_bytes(b"x")
    me = (os.getuid(), os.getgid())
    client.ok(PacketType.SETSTAT, s("f"), attrs(ids=me, perms=0o600))
    other = (me[0] + 1, me[1])
    assert client.status(PacketType.SETSTAT, s("f"), attrs(ids=other, perms=0o644))[0] == (
        Status.PERMISSION_DENIED
    )
    assert stat.S_IMODE(f.stat().st_mode) == 0o600  # nothing applied
    h = client.open("f", OpenFlag.READ)
    code, _ = client.status(PacketType.FSETSTAT, s(h), attrs(ids=(me[0], me[1] + 1)))
    assert code == Status.PERMISSION_DENIED


# ---- directories -------------------------------------------------------------------------


def test_readdir_batches_and_longnames(client: Client) -> None:
    d = client.root / "d"
    d.mkdir()
    for i in range(700):
        (d / f"file{i:03}").write_bytes(b"x" * (i % 256))
    (d / "sub").mkdir()
    os.symlink("file001", d / "link")
    h = client.call(PacketType.OPENDIR, s("/d")).handle
    seen: dict[str, tuple[str, Attrs]] = {}
    batches = []
    while True:
        reply = client.call(PacketType.READDIR, s(h))
        if reply.type == PacketType.STATUS:
            assert reply.code == Status.EOF
            break
        batches.append(len(reply.names))
        for name, long, a in reply.names:
            seen[name] = (long, a)
    assert len(batches) > 1 and all(0 < n <= READDIR_BATCH for n in batches)
    assert sum(batches) == 704 and len(seen) == 704
    assert {".", "..", "sub", "link", "file000", "file699"} <= set(seen)
    assert seen["sub"][0].startswith("d")
    assert seen["link"][0].startswith("l")
    long, a = seen["file010"]
    assert long.startswith("-rw") and long.endswith(" file010")
    fields = long.split()
    assert fields[4] == "10" and a.size == 10
    # Still EOF after the end; then close.
    assert client.call(PacketType.READDIR, s(h)).code == Status.EOF
    client.close(h)


@pytest.mark.parametrize("char", ["n", "\U0001f600"], ids=["ascii", "4-byte-utf8"])
def test_readdir_replies_stay_small_with_long_names(client: Client, char: str) -> None:
    """A batch stops at about READDIR_BYTES of names, counted in bytes: 255-byte names
    (63 four-byte characters) cannot make a NAME reply anywhere near the 256 KiB a
    client accepts."""
    d = client.root / "long"
    d.mkdir()
    for i in range(400):
        (d / (f"{i:03}" + char * (252 // len(char.encode())))).write_bytes(b"")
    h = client.call(PacketType.OPENDIR, s("/long")).handle
    total = 0
    while True:
        reply = client.call(PacketType.READDIR, s(h))
        if reply.type == PacketType.STATUS:
            break
        assert len(reply.body) < READDIR_BYTES + READDIR_STEP * 900
        assert len(reply.names) < READDIR_BATCH
        total += len(reply.names)
    assert total == 402


class FlakyDirectory(OsDirectory):
    """A real listing whose read fails with EIO once ``good`` entries have been read."""

    def __init__(self, host: str, good: int) -> None:
        super().__init__(host)
        self.good = good
        self.failed_reads = 0
        self.closed = 0

    def read(self, count: int) -> list[tuple[str, os.stat_result]]:
        if self.good <= 0:
            self.failed_reads += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        out = super().read(min(count, self.good))
        self.good -= len(out)
        return out

    def close(self) -> None:
        self.closed += 1
        super().close()


class FlakyListings(OsStorage):
    def __init__(self, root: Path, good: int) -> None:
        super().__init__(root)
        self.good = good
        self.opened: list[FlakyDirectory] = []

    def opendir(self, path: str) -> FlakyDirectory:
        host, _ = self._resolve(path, True)
        d = FlakyDirectory(host, self.good)
        self.opened.append(d)
        return d


def test_readdir_reads_ahead_and_an_error_there_answers_the_next_readdir(root: Path) -> None:
    """The next batch is read as soon as one is answered (before the client asks for it);
    an error met then is what the next READDIR gets, as it would have been."""
    for i in range(100):
        (root / f"f{i:04}").write_bytes(b"")
    storage = FlakyListings(root, good=102)  # every entry, '.' and '..' too; then EIO
    c = Client(root, storage=storage)
    h = c.call(PacketType.OPENDIR, s("/")).handle
    (listing,) = storage.opened
    first = c.call(PacketType.READDIR, s(h))
    assert len(first.names) == 102
    assert listing.failed_reads == 1  # the next batch was already read, and failed
    assert c.status(PacketType.READDIR, s(h)) == (Status.FAILURE, "Input/output error")
    assert listing.failed_reads == 1  # the answer was the one read ahead, not a new read
    c.close(h)
    assert listing.closed == 1


class ManualBlocking(CallViaRun):
    """Blocking calls that run only when the test says so."""

    def __init__(self) -> None:
        self.jobs: list[tuple[defer.Deferred[Any], Callable[[], Any]]] = []

    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((d, partial(fn, *args, **kwargs)))
        return d

    def run_one(self) -> None:
        d, job = self.jobs.pop(0)
        try:
            result = job()
        except Exception:
            d.errback()
        else:
            d.callback(result)

    def run_all(self) -> int:
        n = 0
        while self.jobs:
            self.run_one()
            n += 1
        return n


def test_readdir_read_ahead_waits_for_close_and_is_one_per_session(root: Path) -> None:
    """A CLOSE waits for the batch being read ahead before the directory is closed; and
    only one directory per session is read ahead (a batch can be half a megabyte)."""
    (root / "a").mkdir()
    (root / "b").mkdir()
    for i in range(5):
        (root / "a" / f"f{i}").write_bytes(b"")
    for i in range(3 * READDIR_BATCH):  # more than two batches
        (root / "b" / f"f{i:04}").write_bytes(b"")
    storage = FlakyListings(root, good=10**6)
    blocking = ManualBlocking()
    c = Client(root, storage=storage, blocking=blocking)

    def answer(ptype: int, *fields: bytes, jobs: int) -> Reply:
        rid = c.send(ptype, *fields)
        assert blocking.run_all() == jobs
        (reply,) = c.replies()
        assert reply.id == rid
        return reply

    a = answer(PacketType.OPENDIR, s("a"), jobs=1).handle
    b = answer(PacketType.OPENDIR, s("b"), jobs=1).handle
    assert len(answer(PacketType.READDIR, s(a), jobs=2).names) == 7  # + a's next, read ahead
    # a's read-ahead is not consumed yet: none for b
    assert answer(PacketType.READDIR, s(b), jobs=1).names
    assert answer(PacketType.READDIR, s(a), jobs=0).code == Status.EOF  # from a's read-ahead
    # b reads ahead now; its CLOSE waits for that read before the directory is closed
    c.send(PacketType.READDIR, s(b))
    blocking.run_one()
    assert c.replies()[0].names
    assert len(blocking.jobs) == 1  # b's next batch, read ahead
    c.send(PacketType.CLOSE, s(b))
    assert c.replies() == []
    b_listing = storage.opened[1]
    assert b_listing.closed == 0
    assert blocking.run_all() == 2  # the read-ahead, then the close
    assert [r.code for r in c.replies()] == [Status.OK]
    assert b_listing.closed == 1


def listing_client(root: Path, files: int) -> tuple[Client, ManualBlocking, Clock, bytes]:
    """A client whose listing of ``/b`` (``files`` files) reads ahead as the server does:
    on a reactor turn (a Clock here), with blocking calls run by hand; and its handle."""
    (root / "b").mkdir()
    for i in range(files):
        (root / "b" / f"f{i:05}").write_bytes(b"")
    blocking, clock = ManualBlocking(), Clock()
    c = Client(root, storage=FlakyListings(root, good=10**6), blocking=blocking, reactor=clock)
    c.send(PacketType.OPENDIR, s("b"))
    blocking.run_all()
    return c, blocking, clock, c.replies()[0].handle


@pytest.mark.parametrize("order", ["jobs first", "turns first", "alternating"])
def test_pipelined_readdirs_get_every_entry_once_and_in_order(root: Path, order: str) -> None:
    """A client may send READDIRs without waiting for answers; with the read-ahead started
    on reactor turns in between, every name still comes exactly once, in order."""
    files = 3 * READDIR_BATCH
    c, blocking, clock, h = listing_client(root, files)
    names: list[str] = []
    eof = False
    for step in range(200):
        if not eof:
            c.send(PacketType.READDIR, s(h))
            c.send(PacketType.READDIR, s(h))
        for _ in range(4):
            if order == "turns first" or (order == "alternating" and step % 2):
                clock.advance(0)
            if blocking.jobs:
                blocking.run_one()
            clock.advance(0)
        for reply in c.replies():
            if reply.type == PacketType.STATUS:
                assert reply.code == Status.EOF
                eof = True
            else:
                names += [n for n, _, _ in reply.names]
        if eof and not blocking.jobs:
            break
    assert eof
    expected = sorted(f"f{i:05}" for i in range(files))
    assert [n for n in names if n.startswith("f")] == expected


def test_an_error_read_ahead_leaves_read_ahead_on_for_the_session(root: Path) -> None:
    """After a read-ahead failed on one directory (and its client never closed it, as
    paramiko's listdir does on an error), another directory is still read ahead."""
    (root / "a").mkdir()
    (root / "b").mkdir()
    for i in range(5):
        (root / "b" / f"f{i}").write_bytes(b"")
    storage = FlakyListings(root, good=10**6)
    blocking = ManualBlocking()
    c = Client(root, storage=storage, blocking=blocking)
    handles = []
    for d in ("a", "b"):
        c.send(PacketType.OPENDIR, s(d))
        blocking.run_all()
        handles.append(c.replies()[0].handle)
    a, b = handles
    storage.opened[0].good = 2  # '.' and '..', then EIO
    c.send(PacketType.READDIR, s(a))
    assert blocking.run_all() == 2  # the batch, then the read-ahead that fails
    assert len(c.replies()[0].names) == 2
    c.send(PacketType.READDIR, s(a))
    assert blocking.run_all() == 0
    assert c.replies()[0].code == Status.FAILURE
    c.send(PacketType.READDIR, s(b))
    assert blocking.run_all() == 2  # b's batch and b's read-ahead


def test_a_read_ahead_waiting_for_the_lock_is_dropped_when_the_session_ends(
    root: Path,
) -> None:
    c, blocking, clock, h = listing_client(root, 3 * READDIR_BATCH)
    c.send(PacketType.READDIR, s(h))
    c.send(PacketType.READDIR, s(h))
    blocking.run_one()  # the first batch: answered; the second READDIR reads its own
    assert len(blocking.jobs) == 1
    clock.advance(0)  # the read-ahead waits for that read's lock
    assert len(blocking.jobs) == 1
    c.app.connection_lost()  # the session ends: the handle is forgotten
    blocking.run_one()  # the second batch; the lock goes to the read-ahead
    assert [fn.args[0] for _, fn in blocking.jobs if fn.func is read_names] == []  # type: ignore[attr-defined]
    blocking.run_all()  # the close
    assert storage_of(c).opened[0].closed == 1


def storage_of(c: Client) -> FlakyListings:
    assert isinstance(c.storage, FlakyListings)
    return c.storage


def test_opendir_errors(client: Client) -> None:
    (client.root / "f").write_bytes(b"")
    assert client.status(PacketType.OPENDIR, s("missing"))[0] == Status.NO_SUCH_FILE
    assert client.status(PacketType.OPENDIR, s("f")) == (Status.FAILURE, "Not a directory")


def test_mkdir_rmdir_remove(client: Client) -> None:
    client.ok(PacketType.MKDIR, s("d"), u32(0))
    assert (client.root / "d").is_dir()
    assert client.status(PacketType.MKDIR, s("d"), u32(0)) == (Status.FAILURE, "File exists")
    (client.root / "d" / "f").write_bytes(b"")
    assert client.status(PacketType.RMDIR, s("d")) == (Status.FAILURE, "Directory not empty")
    client.ok(PacketType.REMOVE, s("d/f"))
    assert client.status(PacketType.REMOVE, s("d/f"))[0] == Status.NO_SUCH_FILE
    client.ok(PacketType.RMDIR, s("/d"))
    assert not (client.root / "d").exists()
    assert client.status(PacketType.RMDIR, s("/"))[0] in (Status.FAILURE, Status.PERMISSION_DENIED)


# ---- paths -------------------------------------------------------------------------------


def test_realpath(root: Path) -> None:
    (root / "home" / "alice").mkdir(parents=True)
    c = Client(root, home="/home/alice")

    def real(p: str) -> str:
        names = c.call(PacketType.REALPATH, s(p)).names
        assert len(names) == 1
        return names[0][0]

    assert real(".") == "/home/alice"
    assert real("") == "/home/alice"
    assert real("..") == "/home"
    assert real("../../../..") == "/"
    assert real("/../etc/../x") == "/x"
    assert real("sub/./new") == "/home/alice/sub/new"
    os.symlink("/home", root / "home" / "alice" / "up")
    assert real("up/alice") == "/home/alice"
    # Relative paths of every request start at the home directory.
    c.put("in-home", b"x")
    assert (root / "home" / "alice" / "in-home").read_bytes() == b"x"


def test_paths_with_undecodable_bytes_round_trip(client: Client) -> None:
    name = b"caf\xe9"  # latin-1, not UTF-8
    client.put(name.decode("utf-8", "surrogateescape"), b"x")
    assert (client.root / os.fsdecode(name)).exists()
    h = client.call(PacketType.OPENDIR, s("/")).handle
    raw = client.call(PacketType.READDIR, s(h)).body
    assert s(name) in raw


def test_error_messages_never_show_host_paths(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the reply nor the exception the handler gets (which a log line could render)
    names a path: the storage scrubs every OSError (``storage.files._scrubbed``)."""
    import sftpd.apps.sftp.handler as handler

    seen: list[BaseException] = []
    real = handler.status_for_exception

    def recording(exc: BaseException) -> tuple[Status, str] | None:
        seen.append(exc)
        return real(exc)

    monkeypatch.setattr(handler, "status_for_exception", recording)
    (client.root / "plain").write_bytes(b"x")
    replies = [
        client.call(PacketType.STAT, s("/nope/x")),
        client.call(PacketType.OPEN, s("/nope"), u32(OpenFlag.READ), u32(0)),
        client.call(PacketType.RMDIR, s("/nope")),
        client.call(PacketType.READLINK, s("/nope")),
        client.call(PacketType.MKDIR, s("/plain"), u32(0)),
        client.call(PacketType.RENAME, s("/nope"), s("/nope2")),
    ]
    for reply in replies:
        assert reply.type == PacketType.STATUS
        assert str(client.root) not in reply.message and "nope" not in reply.message
    assert len(seen) == len(replies)
    for exc in seen:
        assert isinstance(exc, OSError), exc
        assert exc.filename is None and exc.filename2 is None, repr(exc)
        assert "nope" not in str(exc) and "plain" not in str(exc), str(exc)
        assert exc.__cause__ is None and exc.__context__ is None, repr(exc)


def test_rename_refuses_existing_target_posix_rename_replaces(client: Client) -> None:
    client.put("a", b"A")
    client.put("b", b"B")
    assert client.status(PacketType.RENAME, s("a"), s("b")) == (Status.FAILURE, "File exists")
    assert (client.root / "b").read_bytes() == b"B"
    client.ok(PacketType.RENAME, s("a"), s("c"))
    assert (client.root / "c").read_bytes() == b"A" and not (client.root / "a").exists()
    reply = client.ext("posix-rename@openssh.com", s("c"), s("b"))
    assert (reply.code, reply.message) == (Status.OK, "Success")
    assert (client.root / "b").read_bytes() == b"A" and not (client.root / "c").exists()
    assert client.ext("posix-rename@openssh.com", s("zz"), s("b")).code == Status.NO_SUCH_FILE


def test_readlink_returns_link_text(client: Client) -> None:
    os.symlink("/some/where/../x", client.root / "abs")
    os.symlink("rel/y", client.root / "rel")
    assert client.call(PacketType.READLINK, s("abs")).names[0][0] == "/some/where/../x"
    assert client.call(PacketType.READLINK, s("/rel")).names[0][0] == "rel/y"
    client.put("plain", b"")
    assert client.status(PacketType.READLINK, s("plain")) == (Status.FAILURE, "Invalid argument")


@pytest.mark.parametrize(
    ("version", "target_first"),
    [
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", True),
        (b"SSH-2.0-paramiko_3.4.0", True),
        (b"SSH-2.0-Go", True),
        (b"SSH-2.0-libssh2_1.10.0", True),  # curl's sftp://
        (b"SSH-2.0-AsyncSSH_2.14.2", False),
        (b"SSH-2.0-ssh2js1.16.0", False),  # Node's ssh2
        (b"SSH-2.0-libssh_0.10.6", False),
        (b"SSH-2.0-WinSCP_release_6.3", False),
    ],
)
def test_symlink_argument_order_follows_client(
    root: Path, version: bytes, target_first: bool
) -> None:
    c = Client(root, client_version=version)
    c.put("target", b"T")
    args = (s("target"), s("link")) if target_first else (s("link"), s("target"))
    c.ok(PacketType.SYMLINK, *args)
    assert os.readlink(root / "link") == "target"
    assert (root / "link").read_bytes() == b"T"


# ---- extensions --------------------------------------------------------------------------


def test_statvfs_and_fstatvfs(client: Client) -> None:
    client.put("f", b"x")
    reply = client.ext("statvfs@openssh.com", s("/"))
    values = struct.unpack(">11Q", reply.extended)
    st = os.statvfs(client.root)
    assert values[0] == st.f_bsize and values[1] == st.f_frsize and values[2] == st.f_blocks
    assert values[10] == st.f_namemax
    h = client.open("f", OpenFlag.READ)
    values2 = struct.unpack(">11Q", client.ext("fstatvfs@openssh.com", s(h)).extended)
    assert values2[0] == values[0] and values2[2] == values[2]
    assert client.ext("statvfs@openssh.com", s("/missing")).code == Status.NO_SUCH_FILE
    assert client.ext("fstatvfs@openssh.com", s(b"zz")).message == "invalid handle"


def test_hardlink_and_fsync(client: Client) -> None:
    client.put("a", b"data")
    assert client.ext("hardlink@openssh.com", s("a"), s("b")).code == Status.OK
    assert os.stat(client.root / "a").st_ino == os.stat(client.root / "b").st_ino
    assert client.ext("hardlink@openssh.com", s("a"), s("b")).message == "File exists"
    h = client.open("a", OpenFlag.WRITE)
    assert client.ext("fsync@openssh.com", s(h)).code == Status.OK
    assert client.ext("fsync@openssh.com", s(b"bad")).message == "invalid handle"


def test_lsetstat_does_not_follow(client: Client) -> None:
    client.put("f", b"x")
    os.chmod(client.root / "f", 0o600)
    os.symlink("f", client.root / "ln")
    reply = client.ext("lsetstat@openssh.com", s("ln"), attrs(times=(7, 8)))
    assert reply.code == Status.OK
    assert int(os.lstat(client.root / "ln").st_mtime) == 8
    assert int(os.stat(client.root / "f").st_mtime) != 8
    # Permissions of a symlink cannot be set on Linux: refused, target untouched.
    reply = client.ext("lsetstat@openssh.com", s("ln"), attrs(perms=0o777))
    assert reply.code in (Status.OP_UNSUPPORTED, Status.FAILURE)
    assert stat.S_IMODE(os.stat(client.root / "f").st_mode) == 0o600
    assert client.ext("lsetstat@openssh.com", s("f"), attrs(perms=0o4640)).code == Status.OK
    assert stat.S_IMODE(os.stat(client.root / "f").st_mode) == 0o640


def test_limits(root: Path) -> None:
    c = Client(root, max_handles=77)
    values = struct.unpack(">4Q", c.ext("limits@openssh.com").extended)
    assert values == (262144, 261120, 261120, 77)


def test_expand_path_and_home_directory(root: Path) -> None:
    (root / "home" / "alice").mkdir(parents=True)
    c = Client(root, home="/home/alice")

    def first(reply: Reply) -> str:
        return reply.names[0][0]

    assert first(c.ext("expand-path@openssh.com", s("~"))) == "/home/alice"
    assert first(c.ext("expand-path@openssh.com", s("~/docs/../x"))) == "/home/alice/x"
    assert first(c.ext("expand-path@openssh.com", s("~alice/y"))) == "/home/alice/y"
    assert first(c.ext("expand-path@openssh.com", s("rel"))) == "/home/alice/rel"
    assert first(c.ext("expand-path@openssh.com", s("/abs/../z"))) == "/z"
    assert c.ext("expand-path@openssh.com", s("~bob/x")).code == Status.NO_SUCH_FILE
    assert first(c.ext("home-directory", s(""))) == "/home/alice"
    assert first(c.ext("home-directory", s("alice"))) == "/home/alice"
    assert c.ext("home-directory", s("root")).code == Status.NO_SUCH_FILE


def test_copy_data(client: Client) -> None:
    client.put("src", bytes(range(256)) * 10)
    src = client.open("src", OpenFlag.READ)
    dst = client.open("dst", OpenFlag.WRITE | OpenFlag.CREAT)
    reply = client.ext("copy-data", s(src), u64(0), u64(0), s(dst), u64(0))
    assert reply.code == Status.OK
    assert (client.root / "dst").read_bytes() == bytes(range(256)) * 10
    reply = client.ext("copy-data", s(src), u64(10), u64(5), s(dst), u64(3000))
    assert reply.code == Status.OK
    assert (client.root / "dst").read_bytes()[2560:] == b"\0" * 440 + bytes(range(10, 15))
    assert client.ext("copy-data", s(src), u64(0), u64(0), s(src), u64(0)).code == Status.FAILURE
    # The read handle must be readable and the write handle writable.
    assert client.ext("copy-data", s(dst), u64(0), u64(0), s(src), u64(0)).code == (
        Status.PERMISSION_DENIED
    )
    assert client.ext("copy-data", s(b"x"), u64(0), u64(0), s(dst), u64(0)).message == (
        "invalid handle"
    )


def test_users_groups_by_id(client: Client) -> None:
    me = os.getuid()
    name = pwd.getpwuid(me).pw_name
    unknown = 3_999_999_999
    data = client.ext(
        "users-groups-by-id@openssh.com", s(u32(me) + u32(unknown)), s(u32(os.getgid()))
    ).extended
    r = Reader(data)
    users, groups = Reader(r.string()), Reader(r.string())
    r.check_end()
    assert users.string() == name.encode() and users.string() == b""
    assert groups.string() != b""
    bad = client.ext("users-groups-by-id@openssh.com", s(b"\0\0\0"), s(b""))
    assert bad.code == Status.BAD_MESSAGE


def _check_file(reply: Reply) -> tuple[bytes, bytes, bytes]:
    r = Reader(reply.extended)
    return r.string(), r.string(), r.rest()


def test_check_file_name_whole_and_blocks(client: Client) -> None:
    data = os.urandom(5000)
    client.put("f", data)
    algs = "md5,sha1,sha224,sha256,sha384,sha512"
    reply = client.ext("check-file-name", s("f"), s(algs), u64(0), u64(0), u32(0))
    assert _check_file(reply) == (b"check-file", b"md5", hashlib.md5(data).digest())
    for alg in algs.split(","):
        reply = client.ext("check-file-name", s("f"), s(f"crc32,{alg}"), u64(0), u64(0), u32(0))
        assert _check_file(reply)[1:] == (alg.encode(), hashlib.new(alg, data).digest())
    # Blocks of 1024 over [100, 100+3000): 3 blocks.
    reply = client.ext("check-file-name", s("f"), s("sha256"), u64(100), u64(3000), u32(1024))
    expected = b"".join(
        hashlib.sha256(data[a : min(a + 1024, 3100)]).digest() for a in range(100, 3100, 1024)
    )
    assert _check_file(reply)[2] == expected
    # Length past EOF stops at EOF; empty range hashes nothing per block, one empty whole.
    reply = client.ext("check-file-name", s("f"), s("sha1"), u64(4000), u64(99999), u32(0))
    assert _check_file(reply)[2] == hashlib.sha1(data[4000:]).digest()
    reply = client.ext("check-file-name", s("f"), s("sha1"), u64(9000), u64(0), u32(256))
    assert _check_file(reply)[2] == b""
    reply = client.ext("check-file-name", s("f"), s("sha1"), u64(9000), u64(0), u32(0))
    assert _check_file(reply)[2] == hashlib.sha1(b"").digest()


def test_check_file_errors_and_handle(client: Client) -> None:
    data = b"abc" * 1000
    client.put("f", data)
    assert client.ext("check-file-name", s("f"), s("md5"), u64(0), u64(0), u32(255)).code == (
        Status.FAILURE
    )
    assert client.ext("check-file-name", s("f"), s("crc32"), u64(0), u64(0), u32(0)).code == (
        Status.OP_UNSUPPORTED
    )
    assert client.ext("check-file-name", s("nope"), s("md5"), u64(0), u64(0), u32(0)).code == (
        Status.NO_SUCH_FILE
    )
    h = client.open("f", OpenFlag.READ)
    reply = client.ext("check-file-handle", s(h), s("sha512"), u64(0), u64(0), u32(0))
    assert _check_file(reply) == (b"check-file", b"sha512", hashlib.sha512(data).digest())
    w = client.open("f", OpenFlag.WRITE)
    reply = client.ext("check-file-handle", s(w), s("sha512"), u64(0), u64(0), u32(0))
    assert reply.code == Status.PERMISSION_DENIED
    # A reply that could not fit one packet is refused up front.
    (client.root / "big").write_bytes(b"\0" * (2 << 20))
    reply = client.ext("check-file-name", s("big"), s("sha512"), u64(0), u64(0), u32(256))
    assert reply.code == Status.FAILURE


# ---- every request gets exactly one reply ---------------------------------------------------


def test_unknown_packet_type_and_extension(client: Client) -> None:
    assert client.status(77) == (Status.OP_UNSUPPORTED, "Operation unsupported")
    assert client.status(PacketType.STATUS, u32(0)) == (
        Status.OP_UNSUPPORTED,
        "Operation unsupported",
    )
    assert client.ext("vendor-id", s("x")).code == Status.OP_UNSUPPORTED
    assert client.ext("space-available").code == Status.OP_UNSUPPORTED


def test_decode_errors_answer_bad_message(client: Client) -> None:
    cases = [
        (PacketType.STAT, s("x") + b"junk"),  # trailing bytes
        (PacketType.STAT, u32(10) + b"abc"),  # short string
        (PacketType.SETSTAT, s("x") + u32(0x40)),  # unknown attr flag
        (PacketType.READ, s(b"h") + u64(0)),  # missing uint32
        (PacketType.EXTENDED, s("posix-rename@openssh.com") + s("a")),
        (PacketType.EXTENDED, b"\0\0"),
    ]
    for ptype, body in cases:
        reply = client.call(ptype, body)
        assert reply.code == Status.BAD_MESSAGE, (ptype, body)
        assert reply.message.startswith("Bad message")


class FailingStorage(OsStorage):
    """A real storage whose stat hits a bug (an exception that is not an OSError)."""

    def stat(self, path: str, *, follow: bool = True) -> os.stat_result:
        raise RuntimeError("bug")


def test_unexpected_exception_is_internal_error(root: Path) -> None:
    c = Client(root, storage=FailingStorage(root))
    assert c.status(PacketType.STAT, s("/")) == (Status.FAILURE, "internal error")
    assert c.status(PacketType.STAT, s("/")) == (Status.FAILURE, "internal error")


def test_errno_mapping_table() -> None:
    from sftpd.apps.sftp.handler import status_for_exception
    from sftpd.apps.sftp.messages import StatusError

    def oserr(code: int) -> OSError:
        return OSError(code, os.strerror(code), "/secret/host/path")

    assert status_for_exception(oserr(errno.ENOENT)) == (
        Status.NO_SUCH_FILE,
        "No such file or directory",
    )
    for code in (errno.EACCES, errno.EPERM, errno.EROFS):
        assert status_for_exception(oserr(code))[0] == Status.PERMISSION_DENIED  # type: ignore[index]
    assert status_for_exception(oserr(errno.ENOSPC)) == (Status.FAILURE, "No space left on device")
    assert status_for_exception(oserr(errno.ENOTEMPTY)) == (Status.FAILURE, "Directory not empty")
    assert status_for_exception(oserr(errno.EEXIST)) == (Status.FAILURE, "File exists")
    assert status_for_exception(oserr(errno.EOPNOTSUPP))[0] == Status.OP_UNSUPPORTED  # type: ignore[index]
    assert status_for_exception(EOFError()) == (Status.EOF, "End of file")
    assert status_for_exception(NotImplementedError())[0] == Status.OP_UNSUPPORTED  # type: ignore[index]
    assert status_for_exception(StatusError(Status.FAILURE, "x")) == (Status.FAILURE, "x")
    assert status_for_exception(RuntimeError()) is None
