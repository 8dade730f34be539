"""READs answered from the page cache on the reactor thread (preadv2 RWF_NOWAIT), and only those."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from sftpd.apps.sftp.constants import OpenFlag, PacketType, Status
from sftpd.apps.sftp.handler import READ_CLAMP
from sftpd.storage.files import LocalFile
from sftpd.storage.local import LocalStorage
from tests.test_sftp_handler import Client, s, u32
from tests.test_sftp_handler import root as root  # the fixture
from tests.test_sftp_protocol import QueuedBlocking, _open_handle, read_packet

LIMIT = 64 * 1024  # the most pread_cached may answer, in the File-level tests


def test_a_small_file_is_read_without_a_worker(root: Path) -> None:
    data = os.urandom(4096)
    (root / "f").write_bytes(data)
    blocking = QueuedBlocking()
    c = Client(root, blocking=blocking)
    h = _open_handle(c, blocking)
    c.feed(read_packet(1, h, 0, 261120) + read_packet(2, h, 4096, 257024))
    assert blocking.calls == []  # nothing waited for a worker thread
    first, second = c.replies()
    assert (first.id, first.data) == (1, data)
    assert (second.id, second.code) == (2, Status.EOF)


def needs_inline_reads(root: Path) -> None:
    """Skip unless this file system answers reads from its page cache without waiting
    (RWF_NOWAIT; tmpfs, ext4, XFS, Btrfs do; NFS, FUSE and some overlays do not)."""
    (root / "probe").write_bytes(b"x")
    file = LocalStorage(root).open("/probe", os.O_RDONLY, 0)
    try:
        if file.pread_cached(1, 0, 1) is None:
            pytest.skip("reads here are never answered from the page cache inline")
    finally:
        file.close()


def test_a_full_size_read_of_cached_data_needs_no_worker(root: Path) -> None:
    """Up to the largest READ answered (255 KiB), cached data is copied on the reactor
    thread: a worker hand-off and back costs more CPU than the copy."""
    needs_inline_reads(root)
    data = os.urandom(3 * READ_CLAMP)
    (root / "big").write_bytes(data)
    blocking = QueuedBlocking()
    c = Client(root, blocking=blocking)
    h = _open_handle(c, blocking, "big")
    c.feed(read_packet(1, h, 0, 1 << 20))  # more than READ_CLAMP: clamped
    assert blocking.calls == []
    assert c.replies()[0].data == data[:READ_CLAMP]
    tail = len(data) - 1000
    c.feed(read_packet(2, h, tail, READ_CLAMP))
    assert blocking.calls == [] and c.replies()[0].data == data[tail:]


class Turns:
    """A reactor's callLater(0) as the real one runs it: a call made during a turn runs on
    the next turn (twisted.internet.task.Clock would run it at once)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def callLater(self, delay: float, fn: Any, *args: Any) -> None:
        self.calls.append((fn, args))

    def turn(self) -> None:
        calls, self.calls = self.calls, []
        for fn, args in calls:
            fn(*args)


def test_a_burst_of_inline_reads_yields_to_other_sessions(root: Path) -> None:
    """A client that pipelines many full-size READs of cached data is answered a couple of
    MiB per reactor turn, not all at once (inline READs finish at once, so the in-flight
    limits never stop them); every reply still comes, in order."""
    needs_inline_reads(root)
    data = os.urandom(40 * READ_CLAMP)
    (root / "big").write_bytes(data)
    blocking, reactor = QueuedBlocking(), Turns()
    c = Client(root, blocking=blocking, reactor=reactor)
    h = _open_handle(c, blocking, "big")
    c.feed(b"".join(read_packet(i, h, i * READ_CLAMP, READ_CLAMP) for i in range(40)))
    turns = [len(c.replies())]
    while len(c.received) < 41 and len(turns) < 100:  # (the OPEN's reply is counted too)
        reactor.turn()
        turns.append(len(c.replies()))
    assert blocking.calls == []  # all inline
    assert turns[0] < 40 and all(0 < n <= 10 for n in turns), turns
    replies = c.received[1:]
    assert [r.id for r in replies] == list(range(40))
    assert b"".join(r.data for r in replies) == data


def test_uncached_data_waits_for_a_worker(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalFile, "pread_cached", lambda self, size, offset, limit: None)
    (root / "f").write_bytes(b"abc")
    blocking = QueuedBlocking()
    c = Client(root, blocking=blocking)
    h = _open_handle(c, blocking)
    c.feed(read_packet(1, h, 0, 100))
    assert c.replies() == [] and len(blocking.calls) == 1
    blocking.release_all()
    assert c.replies()[0].data == b"abc"


def test_a_write_only_handle_reads_nothing(root: Path) -> None:
    (root / "w").write_bytes(b"secret")
    c = Client(root)
    c.send(PacketType.OPEN, s("w"), u32(OpenFlag.WRITE), u32(0))
    h = c.replies()[0].handle
    c.feed(read_packet(1, h, 0, 100))
    (reply,) = c.replies()
    assert reply.type == PacketType.STATUS and reply.code == Status.FAILURE


def test_local_file_pread_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(bytes(range(256)) * 32)  # 8 KiB
    file = LocalFile(os.open(tmp_path / "f", os.O_RDONLY))  # not known to be local
    try:
        with monkeypatch.context() as patch:
            # nothing but preadv2(RWF_NOWAIT) on the reactor thread: an fstat may wait
            # on a server (NFS, FUSE)
            patch.setattr(os, "fstat", lambda fd: pytest.fail("fstat on the reactor thread"))
            assert file.pread_cached(100, 10, 4096) == file.pread(100, 10)
            assert file.pread_cached(1 << 20, 8000, 4096) == file.pread(1 << 20, 8000)  # EOF
            assert file.pread_cached(100, 8192, 4096) == b""  # at the end
            assert file.pread_cached(100, 1 << 40, 4096) == b""  # far past it
            assert file.pread_cached(8192, 0, 4096) is None  # pread would return more
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        evicted = file.pread_cached(100, 0, 4096)
    finally:
        file.close()
    if evicted is not None:
        pytest.skip("this file system keeps its pages (tmpfs): eviction cannot be shown")
    assert evicted is None  # it would have waited for the disk: left to a worker


def test_pread_cached_only_where_pread_would_answer_the_same(tmp_path: Path) -> None:
    (tmp_path / "w").write_bytes(b"secret")
    storage = LocalStorage(tmp_path)
    write_only = storage.open("/w", os.O_WRONLY, 0)
    try:
        assert write_only.pread_cached(100, 6, 4096) is None  # not even "end of file"
        assert write_only.pread_cached(100, 0, 4096) is None  # never readable here
    finally:
        write_only.close()
    # procfs: st_size is 0 but pread returns data; the answer must be pread's or None
    proc = LocalStorage("/proc/self").open("/status", os.O_RDONLY, 0)
    try:
        cached = proc.pread_cached(65536, 0, 65536)
        assert cached is None or cached.startswith(b"Name:")
    finally:
        proc.close()


def test_a_file_system_without_nowait_reads_is_not_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_bytes(b"data")
    file = LocalStorage(tmp_path).open("/f", os.O_RDONLY, 0)
    calls: list[int] = []

    def unsupported(fd: int, buffers: object, offset: int, flags: int = 0) -> int:
        calls.append(flags)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))  # as NFS, FUSE

    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "preadv", unsupported)
            assert file.pread_cached(100, 0, 4096) is None
            assert file.pread_cached(100, 0, 4096) is None
        assert len(calls) == 1  # the second READ went straight to a worker
        assert file.pread(100, 0) == b"data"
    finally:
        file.close()


def test_a_file_in_memory_is_read_without_the_flag(tmp_path: Path) -> None:
    """tmpfs takes no RWF_NOWAIT; without swap its pages are the file, so a plain read
    cannot wait for a device. The same rules: only pread's own answer counts."""
    data = bytes(range(256)) * 32
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    file = LocalFile(fd, in_memory=True)
    try:
        assert file.pread_cached(100, 10, 4096) == data[10:110]
        assert file.pread_cached(1 << 20, 8000, 4096) == data[8000:]  # to the end
        assert file.pread_cached(100, 8192, 4096) == b""
        assert file.pread_cached(8192, 0, 4096) is None  # pread would return more
    finally:
        file.close()


def test_tmpfs_files_count_as_in_memory_only_without_swap() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here")
    storage = LocalStorage(shm)
    name = f"sftpd-test-{os.getpid()}"
    (shm / name).write_bytes(b"in memory")
    try:
        file = storage.open("/" + name, os.O_RDONLY, 0)
        try:
            if storage._memory_files:  # no swap on this machine
                assert file._read_flags == 0
                assert file.pread_cached(100, 0, 4096) == b"in memory"
            else:  # with swap a page may be on disk: RWF_NOWAIT, which tmpfs refuses
                assert file._read_flags == os.RWF_NOWAIT
                assert file.pread_cached(100, 0, 4096) is None
        finally:
            file.close()
    finally:
        (shm / name).unlink()
        storage.close()


def test_a_bulk_read_costs_the_reactor_one_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A READ that pread would answer with more than the limit is left to a worker before
    any buffer of the limit's size is read (downloads must not pay for it twice)."""
    (tmp_path / "big").write_bytes(os.urandom(3 * LIMIT))
    file = LocalFile(os.open(tmp_path / "big", os.O_RDONLY))  # not known to be local
    sizes: list[int] = []
    real = os.preadv

    def counting(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        sizes.extend(len(b) for b in buffers)
        return real(fd, buffers, offset, flags)

    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "preadv", counting)
            assert file.pread_cached(261120, 0, LIMIT) is None
            assert sizes == [1]
            tail = 3 * LIMIT - 100  # the last 100 bytes: answered here
            assert file.pread_cached(261120, tail, LIMIT) == file.pread(100, tail)
    finally:
        file.close()


def test_on_a_local_file_system_the_size_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where fstat cannot wait (ext4, XFS, Btrfs, tmpfs), the size says what pread would
    return: one read of exactly that, none at the end or for a bulk read."""
    data = os.urandom(3 * LIMIT)
    (tmp_path / "big").write_bytes(data)
    storage = LocalStorage(tmp_path)
    if not storage._root_local:
        pytest.skip("the temporary directory is not on a local file system")
    file = storage.open("/big", os.O_RDONLY, 0)
    sizes: list[int] = []
    real_preadv, real_pread = os.preadv, os.pread

    def counting_preadv(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        sizes.extend(len(b) for b in buffers)
        return real_preadv(fd, buffers, offset, flags)

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        sizes.append(n)
        return real_pread(fd, n, offset)

    end = len(data)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "preadv", counting_preadv)
            patch.setattr(os, "pread", counting_pread)
            assert file.pread_cached(261120, 0, LIMIT) is None  # bulk
            assert file.pread_cached(261120, end, LIMIT) == b""  # at the end
            assert file.pread_cached(100, end + 5, LIMIT) == b""  # past it
            assert sizes == []
            assert file.pread_cached(261120, end - 100, LIMIT) == data[-100:]
            assert file.pread_cached(50, 10, LIMIT) == data[10:60]
            assert sizes == [100, 50]
    finally:
        file.close()


def test_on_a_local_disk_uncached_pages_are_left_to_a_worker(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(8192))
    storage = LocalStorage(tmp_path)
    if not storage._root_local or storage._root_in_memory:
        pytest.skip("needs a local disk file system")
    file = storage.open("/f", os.O_RDONLY, 0)
    try:
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        evicted = file.pread_cached(8192, 0, LIMIT)
    finally:
        file.close()
    if evicted is not None:
        pytest.skip("this file system keeps its pages (tmpfs): eviction cannot be shown")
    assert evicted is None
