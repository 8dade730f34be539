"""Storage calls answered on the reactor thread (open_nowait, pwrite_nowait, close_nowait,
fstat_nowait):
only where the kernel promises not to wait for a device, and inside the same jail."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sftpd.apps.sftp.constants import OpenFlag, PacketType, Status
from sftpd.storage.enforce import RulesStorage
from sftpd.storage.local import LocalStorage
from sftpd.storage.rules import Rules
from tests.test_sftp_handler import Client, s, u32, u64
from tests.test_sftp_protocol import QueuedBlocking, read_packet

WRITE_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@pytest.fixture
def shm_root() -> Iterator[Path]:
    """A root on tmpfs, on a machine without swap (where tmpfs files live in memory)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    root = Path(tempfile.mkdtemp(prefix="sftpd-nowait-", dir="/dev/shm"))
    try:
        probe = LocalStorage(root)
        in_memory = probe._root_in_memory and probe.uses_openat2
        probe.close()
        if not in_memory:
            pytest.skip("/dev/shm is not tmpfs, swap is configured, or no openat2 here")
        yield root
    finally:
        shutil.rmtree(root)


def test_in_memory_root_opens_writes_and_closes_inline(shm_root: Path) -> None:
    storage = LocalStorage(shm_root)
    try:
        file = storage.open_nowait("/new", WRITE_NEW, 0o640)
        assert file is not None
        assert file.pwrite_nowait(b"written at once", 0) is True
        assert file.close_nowait() is True
        with pytest.raises(OSError) as closed:
            file.pread(1, 0)
        assert closed.value.errno == errno.EBADF
        assert (shm_root / "new").read_bytes() == b"written at once"
        assert (shm_root / "new").stat().st_mode & 0o777 == 0o640
        again = storage.open_nowait("/new", os.O_RDWR | os.O_TRUNC, 0)  # existing, truncated
        assert again is not None and again.fstat().st_size == 0
        assert again.close_nowait() is True
    finally:
        storage.close()


def test_inline_opens_stay_in_the_jail(shm_root: Path) -> None:
    (shm_root / "etc").mkdir()
    (shm_root / "etc" / "hostname").write_bytes(b"the jailed one")
    os.symlink("/etc/hostname", shm_root / "absolute")
    os.symlink("../../../../../../etc/hostname", shm_root / "dotdot")
    storage = LocalStorage(shm_root)
    try:
        for name in ("/absolute", "/dotdot", "/../../etc/hostname"):
            file = storage.open_nowait(name, os.O_RDONLY, 0)
            assert file is not None
            assert file.pread(100, 0) == b"the jailed one"
            file.close()
        created = storage.open_nowait("/../../made-here", WRITE_NEW, 0o600)
        assert created is not None
        created.close()
        assert (shm_root / "made-here").exists()
    finally:
        storage.close()


def test_inline_open_refuses_what_open_refuses(shm_root: Path) -> None:
    os.mkfifo(shm_root / "fifo")  # opening it for reading would block: it is never opened
    (shm_root / "dir").mkdir()
    storage = LocalStorage(shm_root)
    try:
        with pytest.raises(OSError) as fifo:
            storage.open_nowait("/fifo", os.O_RDONLY, 0)
        assert fifo.value.errno == errno.EINVAL and fifo.value.strerror == "Not a regular file"
        with pytest.raises(IsADirectoryError):
            storage.open_nowait("/dir", os.O_RDONLY, 0)
        with pytest.raises(FileExistsError):
            storage.open_nowait("/dir", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with pytest.raises(FileNotFoundError) as missing:
            storage.open_nowait("/no/such", WRITE_NEW, 0o600)
        assert str(shm_root) not in str(missing.value)  # no host path in the error
    finally:
        storage.close()


def test_a_lookup_that_crosses_a_mount_is_left_to_a_worker() -> None:
    """RESOLVE_NO_XDEV: the root's file system was judged local; a mount below it (here
    /proc under /) might be a network one, so nothing on it is opened inline."""
    storage = LocalStorage("/")
    try:
        if not (storage._root_local and storage.uses_openat2):
            pytest.skip("/ is not on a local file system here, or no openat2")
        assert storage.open_nowait("/proc/self/status", os.O_RDONLY, 0) is None
        file = storage.open("/proc/self/status", os.O_RDONLY, 0)  # a worker's open works
        try:
            assert file.pread(5, 0) == b"Name:"
            assert file.fstat_nowait() is None  # nor its fstat
            assert file.close_nowait() is False  # not a local disk: closed on a worker
        finally:
            file.close()
    finally:
        storage.close()


def test_on_a_disk_only_cached_read_only_opens_are_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path)
    try:
        if not (storage._root_local and storage.uses_openat2):
            pytest.skip("the temporary directory is not on a local file system")
        monkeypatch.setattr(storage, "_root_in_memory", False)  # as on ext4, XFS, Btrfs
        (tmp_path / "f").write_bytes(b"on disk")
        os.stat(tmp_path / "f")  # its dentry is cached now
        file = storage.open_nowait("/f", os.O_RDONLY, 0)
        assert file is not None and file.pread(10, 0) == b"on disk"
        st = file.fstat_nowait()  # an open file's inode is in memory
        assert st is not None and st.st_size == 7 and st.st_ino == os.stat(tmp_path / "f").st_ino
        assert file.pwrite_nowait(b"x", 0) is False  # writes may wait for the disk
        assert file.close_nowait() is True  # a read-only close does not
        for flags in (os.O_WRONLY, os.O_RDWR, WRITE_NEW, os.O_RDONLY | os.O_TRUNC):
            assert storage.open_nowait("/f", flags, 0o600) is None
        written = storage.open("/f", os.O_RDWR, 0)  # opened by a worker for writing
        assert written.close_nowait() is False
        written.close()
    finally:
        storage.close()


def test_read_only_users_get_no_inline_writes(shm_root: Path) -> None:
    (shm_root / "f").write_bytes(b"keep")
    storage = RulesStorage(LocalStorage(shm_root), Rules(read_only=True))
    try:
        with pytest.raises(PermissionError):
            storage.open_nowait("/f", os.O_RDWR, 0)
        with pytest.raises(PermissionError):
            storage.open_nowait("/g", WRITE_NEW, 0o600)
        file = storage.open_nowait("/f", os.O_RDONLY, 0)
        assert file is not None
        with pytest.raises(PermissionError):
            file.pwrite_nowait(b"lost", 0)
        assert file.close_nowait() is True
        assert (shm_root / "f").read_bytes() == b"keep" and not (shm_root / "g").exists()
    finally:
        storage.close()


def test_small_upload_and_download_need_no_worker(shm_root: Path) -> None:
    """OPEN, WRITE, CLOSE, then OPEN, FSTAT, READ, READ (EOF), CLOSE: all answered in
    order with no call handed to a worker thread."""
    blocking = QueuedBlocking()
    c = Client(shm_root, blocking=blocking)
    data = os.urandom(4096)
    create = OpenFlag.WRITE | OpenFlag.CREAT | OpenFlag.TRUNC
    c.send(PacketType.OPEN, s("up"), u32(create), u32(0))
    h = c.replies()[0].handle
    c.send(PacketType.WRITE, s(h), u64(0), s(data))
    c.send(PacketType.CLOSE, s(h))
    assert [r.code for r in c.replies()] == [Status.OK, Status.OK]
    assert (shm_root / "up").read_bytes() == data
    c.send(PacketType.OPEN, s("up"), u32(OpenFlag.READ), u32(0))
    h = c.replies()[0].handle
    c.send(PacketType.FSTAT, s(h))
    (attrs,) = c.replies()
    assert attrs.attrs.size == 4096
    c.feed(read_packet(1, h, 0, 32768) + read_packet(2, h, 4096, 32768))
    c.send(PacketType.CLOSE, s(h))
    first, eof, closed = c.replies()
    assert first.data == data and eof.code == Status.EOF and closed.code == Status.OK
    assert blocking.calls == []
    assert c.app.handler.handles.used == 0


def test_a_big_write_still_goes_to_a_worker(shm_root: Path) -> None:
    blocking = QueuedBlocking()
    c = Client(shm_root, blocking=blocking)
    c.send(PacketType.OPEN, s("big"), u32(OpenFlag.WRITE | OpenFlag.CREAT), u32(0))
    h = c.replies()[0].handle
    data = os.urandom(200_000)
    c.send(PacketType.WRITE, s(h), u64(0), s(data))
    assert c.replies() == [] and len(blocking.calls) == 1
    blocking.release_all()
    assert c.replies()[0].code == Status.OK
    assert (shm_root / "big").read_bytes() == data


def test_a_write_only_handle_at_its_end_reads_an_error_not_eof(shm_root: Path) -> None:
    """pread on a write-only fd fails; the inline read must not answer "end of file"."""
    c = Client(shm_root)
    c.send(PacketType.OPEN, s("w"), u32(OpenFlag.WRITE | OpenFlag.CREAT), u32(0))
    h = c.replies()[0].handle
    c.send(PacketType.WRITE, s(h), u64(0), s(b"secret"))
    assert c.replies()[0].code == Status.OK
    c.feed(read_packet(1, h, 6, 100))
    (reply,) = c.replies()
    assert reply.type == PacketType.STATUS and reply.code == Status.FAILURE
