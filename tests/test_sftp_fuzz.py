"""Property tests: any bytes through framer, decoder, handler; one reply per decodable request."""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftpd.apps.sftp import messages as m
from sftpd.apps.sftp.codec import Framer, decode_request
from sftpd.apps.sftp.constants import PacketType, Status
from sftpd.errors import FramingError
from sftpd.storage.base import File, Storage
from tests.test_sftp_handler import Client, Reply, frame, make_storage, s, u32, u64

FUZZ = settings(
    max_examples=200,
    deadline=None,  # no timing assertions
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Fuzzed requests may set sizes and offsets up to 2**64: cap files so that a SETSTAT or a
# WRITE far out cannot make sparse giants that a later check-file would hash for hours.
CAP = 1 << 20


def _too_big() -> OSError:
    return OSError(errno.EFBIG, os.strerror(errno.EFBIG))


class CappedFile:
    """A real open file whose writes and truncations stay under CAP."""

    def __init__(self, inner: File) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        if offset + len(data) > CAP or self.inner.fstat().st_size > CAP:
            raise _too_big()
        self.inner.pwrite(data, offset)

    def pwrite_nowait(self, data: bytes | bytearray | memoryview, offset: int) -> bool:
        if offset + len(data) > CAP or self.inner.fstat().st_size > CAP:
            raise _too_big()
        written: bool = self.inner.pwrite_nowait(data, offset)
        return written

    def truncate(self, size: int) -> None:
        if size > CAP:
            raise _too_big()
        self.inner.truncate(size)


class CappedStorage:
    """A real storage (the jailed LocalStorage when present) with files kept under CAP."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open(self, path: str, flags: int, mode: int) -> CappedFile:
        return CappedFile(self.inner.open(path, flags, mode))

    def open_nowait(self, path: str, flags: int, mode: int) -> CappedFile | None:
        inner = self.inner.open_nowait(path, flags, mode)
        return None if inner is None else CappedFile(inner)

    def truncate(self, path: str, size: int) -> None:
        if size > CAP:
            raise _too_big()
        self.inner.truncate(path, size)

    def copy_range(
        self, src: CappedFile, src_offset: int, length: int, dst: CappedFile, dst_offset: int
    ) -> None:
        if dst_offset + (length or CAP) > CAP:
            raise _too_big()
        self.inner.copy_range(src.inner, src_offset, length, dst.inner, dst_offset)


@contextmanager
def session() -> Iterator[Client]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        (root / "a").write_bytes(bytes(range(256)) * 4)
        (root / "d").mkdir()
        (root / "d" / "e").write_bytes(b"x" * 300)
        os.symlink("/d", root / "ln")
        inner = make_storage(root)
        client = Client(root, storage=CappedStorage(inner))  # type: ignore[arg-type]
        try:
            yield client
        finally:
            client.app.connection_lost()
            close = getattr(inner, "close", None)
            if close is not None:
                close()


def expected_reply_ids(chunks: list[bytes]) -> tuple[Counter[int | None], bool]:
    """What SftpApp must answer: one reply per decodable request (None = VERSION), and
    whether the session must close (framing error or a packet without an id)."""
    framer = Framer()
    expected: Counter[int | None] = Counter()
    for chunk in chunks:
        try:
            packets = framer.feed(chunk)
        except FramingError:
            return expected, True
        for packet in packets:
            try:
                request = decode_request(packet)
            except m.RequestDecodeError as exc:
                if exc.request_id is None:
                    return expected, True
                expected[exc.request_id] += 1
                continue
            expected[None if isinstance(request, m.Init) else request.id] += 1
    return expected, False


def check_session(client: Client, chunks: list[bytes]) -> list[Reply]:
    for chunk in chunks:
        client.feed(chunk)
    replies = client.replies()
    expected, closes = expected_reply_ids(chunks)
    assert Counter(r.id for r in replies) == expected
    assert client.io.exited == (1 if closes else None)
    for reply in replies:
        if reply.type == PacketType.STATUS:
            assert reply.message != "internal error"
    return replies


# ---- arbitrary bytes ---------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000))
def test_framer_and_decoder_never_raise_anything_else(data: bytes) -> None:
    framer = Framer()
    try:
        packets = framer.feed(data)
    except FramingError:
        return
    for packet in packets:
        try:
            decode_request(packet)
        except m.RequestDecodeError:
            pass


def _packet_like() -> st.SearchStrategy[bytes]:
    """Frames with a plausible type byte and random contents (often decodable)."""
    body = st.tuples(
        st.sampled_from([*range(1, 21), 99, 101, 200]),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=60),
    ).map(lambda t: bytes([t[0]]) + u32(t[1]) + t[2])
    return st.one_of(body.map(frame), st.binary(max_size=40))


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=300), _packet_like()), max_size=20))
def test_arbitrary_bytes_get_one_reply_per_decodable_request(chunks: list[bytes]) -> None:
    with session() as client:
        check_session(client, chunks)


# ---- well-formed requests with random fields ------------------------------------------------

_paths = st.sampled_from(
    [
        *("", ".", "/", "..", "a", "b", "a/b", "/a/../b", "d", "d/e", "/d/f", "ln", "ln/e"),
        *("/ln/../x", "~", "~/a", "~root/x", "\udcff", "a\x00b", "../../../etc/passwd"),
        "/proc/self/root",
    ]
)
_handles = st.one_of(
    st.sampled_from([b"1", b"2", b"3"]),
    st.sampled_from([b"1", b"2", b"3", b"4", b"5", b"6"]),
    st.binary(max_size=6),
)
_small = st.integers(0, 70_000)
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.one_of(_small, st.integers(0, 2**64 - 1))
_offset = st.one_of(st.integers(0, 400), _u64)


@st.composite
def _attrs(draw: st.DrawFn) -> bytes:
    flags, body = 0, b""
    if draw(st.booleans()):
        flags |= 1
        body += u64(draw(_u64))
    if draw(st.booleans()):
        flags |= 2
        body += u32(draw(st.sampled_from([os.getuid(), 0, 12345]))) + u32(os.getgid())
    if draw(st.booleans()):
        flags |= 4
        body += u32(draw(st.integers(0, 0o177777)))
    if draw(st.booleans()):
        flags |= 8
        body += u32(draw(_u32)) + u32(draw(_u32))
    return u32(flags) + body


def _p(*fields: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(*fields).map(b"".join)


_path = _paths.map(s)
_handle = _handles.map(s)
_ext = {
    "posix-rename@openssh.com": _p(_path, _path),
    "statvfs@openssh.com": _path,
    "fstatvfs@openssh.com": _handle,
    "hardlink@openssh.com": _p(_path, _path),
    "fsync@openssh.com": _handle,
    "lsetstat@openssh.com": _p(_path, _attrs()),
    "limits@openssh.com": st.just(b""),
    "expand-path@openssh.com": _path,
    "copy-data": _p(_handle, _small.map(u64), _small.map(u64), _handle, _small.map(u64)),
    "home-directory": st.sampled_from(["", "alice", "bob"]).map(s),
    "users-groups-by-id@openssh.com": _p(
        st.lists(_u32, max_size=5).map(lambda v: s(b"".join(map(u32, v)))),
        st.lists(_u32, max_size=5).map(lambda v: s(b"".join(map(u32, v)))),
    ),
    "check-file-name": _p(
        _path,
        st.sampled_from(["md5", "sha256,md5", "crc32", "", "sha512"]).map(s),
        _small.map(u64),
        _small.map(u64),
        st.sampled_from([0, 1, 255, 256, 1024]).map(u32),
    ),
    "check-file-handle": _p(
        _handle,
        st.sampled_from(["sha1", "md5", "nope"]).map(s),
        _u64.map(u64),
        _u64.map(u64),
        st.sampled_from([0, 256, 4096]).map(u32),
    ),
    "vendor-id": st.binary(max_size=10),
}
_REQUESTS: dict[int, st.SearchStrategy[bytes]] = {
    PacketType.OPEN: _p(_path, st.integers(0, 63).map(u32), _attrs()),
    PacketType.CLOSE: _handle,
    PacketType.READ: _p(_handle, _offset.map(u64), _u32.map(u32)),
    PacketType.WRITE: _p(_handle, _small.map(u64), st.binary(max_size=64).map(s)),
    PacketType.LSTAT: _path,
    PacketType.FSTAT: _handle,
    PacketType.SETSTAT: _p(_path, _attrs()),
    PacketType.FSETSTAT: _p(_handle, _attrs()),
    PacketType.OPENDIR: _path,
    PacketType.READDIR: _handle,
    PacketType.REMOVE: _path,
    PacketType.MKDIR: _p(_path, _attrs()),
    PacketType.RMDIR: _path,
    PacketType.REALPATH: _path,
    PacketType.STAT: _path,
    PacketType.RENAME: _p(_path, _path),
    PacketType.READLINK: _path,
    PacketType.SYMLINK: _p(_path, _path),
}


_OPENERS = st.one_of(
    st.tuples(
        st.just(int(PacketType.OPEN)),
        _p(
            st.sampled_from(["a", "d/e", "new"]).map(s), st.sampled_from([1, 2, 3, 10, 27]).map(u32)
        ),
    ).map(lambda t: (t[0], t[1] + u32(0))),
    st.tuples(st.just(int(PacketType.OPENDIR)), st.sampled_from(["/", "d", "ln"]).map(s)),
)


@st.composite
def _request(draw: st.DrawFn) -> tuple[int, bytes]:
    pick = draw(st.integers(0, 7))
    if pick == 0:
        return draw(_OPENERS)  # handles for the requests that need one
    if pick == 1:  # ... and requests on them
        kind = draw(st.sampled_from([PacketType.READ, PacketType.WRITE, PacketType.READDIR]))
        return kind, draw(_REQUESTS[kind])
    if pick == 2:
        name = draw(st.sampled_from(sorted(_ext)))
        return PacketType.EXTENDED, s(name) + draw(_ext[name])
    ptype = draw(st.sampled_from(sorted(_REQUESTS)))
    return ptype, draw(_REQUESTS[ptype])


@FUZZ
@given(st.lists(_request(), min_size=1, max_size=25), st.integers(1, 50))
def test_well_formed_sequences_answer_each_request_once(
    requests: list[tuple[int, bytes]], chunk: int
) -> None:
    # Handles "1" (the file a, read-write) and "2" (the root directory) exist from the start.
    prelude = [
        (PacketType.OPEN, s("a") + u32(3) + u32(0)),
        (PacketType.OPENDIR, s("/")),
    ]
    requests = prelude + requests
    wire = frame(bytes([PacketType.INIT]) + u32(3)) + b"".join(
        frame(bytes([ptype]) + u32(1000 + i) + body) for i, (ptype, body) in enumerate(requests)
    )
    chunks = [wire[i : i + chunk] for i in range(0, len(wire), chunk)]
    with session() as client:
        replies = check_session(client, chunks)
        assert sorted(r.id for r in replies if r.id is not None) == list(
            range(1000, 1000 + len(requests))
        )
        # Nothing escaped the root: the host tree above it is untouched.
        assert client.root.parent.exists() and sorted(os.listdir(client.root.parent)) == ["root"]


def test_status_replies_are_well_formed() -> None:
    with session() as client:
        reply = client.call(PacketType.STAT, s("/missing"))
        code, length = struct.unpack(">II", reply.body[:8])
        assert code == Status.NO_SUCH_FILE and reply.body[8 : 8 + length].decode()
