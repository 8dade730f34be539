"""The sans-IO SFTP codec: hand-made packets decoded whole, byte by byte, with trailing data."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sftpd.apps.sftp import messages as m
from sftpd.apps.sftp.attrs import Attrs, encode_attrs, longname
from sftpd.apps.sftp.codec import (
    Framer,
    Reader,
    decode_request,
    encode_name,
    encode_response,
    encode_response_parts,
    symlink_paths,
    symlink_target_first,
)
from sftpd.apps.sftp.constants import Status
from sftpd.errors import FramingError, PacketDecodeError

# (body as sent after the uint32 length, the request it decodes to)
REQUESTS: list[tuple[bytes, m.Request]] = [
    (b"\x01\x00\x00\x00\x03", m.Init(3)),
    (
        b"\x01\x00\x00\x00\x06\x00\x00\x00\x03a@b\x00\x00\x00\x011",
        m.Init(6, ((b"a@b", b"1"),)),
    ),
    (
        b"\x03\x00\x00\x00\x01\x00\x00\x00\x05a.txt\x00\x00\x00\x1a\x00\x00\x00\x04\x00\x00\x01\xa4",
        m.Open(1, "a.txt", 0x1A, Attrs(permissions=0o644)),
    ),
    (b"\x04\x00\x00\x00\x02\x00\x00\x00\x02h1", m.Close(2, b"h1")),
    (
        b"\x05\x00\x00\x00\x03\x00\x00\x00\x02h1\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x80\x00",
        m.Read(3, b"h1", 65536, 32768),
    ),
    (
        b"\x06\x00\x00\x00\x04\x00\x00\x00\x02h1\x00\x00\x00\x00\x00\x00\x00\x10"
        b"\x00\x00\x00\x05hello",
        m.Write(4, b"h1", 16, b"hello"),
    ),
    (b"\x07\x00\x00\x00\x05\x00\x00\x00\x01/", m.Lstat(5, "/")),
    (b"\x08\x00\x00\x00\x06\x00\x00\x00\x02h1", m.Fstat(6, b"h1")),
    (
        b"\x09\x00\x00\x00\x07\x00\x00\x00\x01f\x00\x00\x00\x0f"
        b"\x00\x00\x00\x00\x00\x00\x00\x2a\x00\x00\x03\xe8\x00\x00\x03\xe9"
        b"\x00\x00\x81\xa4\x00\x00\x00\x05\x00\x00\x00\x06",
        m.Setstat(7, "f", Attrs(42, 1000, 1001, 0o100644, 5, 6)),
    ),
    (
        b"\x0a\x00\x00\x00\x08\x00\x00\x00\x02h1\x80\x00\x00\x00\x00\x00\x00\x01"
        b"\x00\x00\x00\x01k\x00\x00\x00\x01v",
        m.Fsetstat(8, b"h1", Attrs(extended=((b"k", b"v"),))),
    ),
    (b"\x0b\x00\x00\x00\x09\x00\x00\x00\x03dir", m.Opendir(9, "dir")),
    (b"\x0c\x00\x00\x00\x0a\x00\x00\x00\x02h2", m.Readdir(10, b"h2")),
    (b"\x0d\x00\x00\x00\x0b\x00\x00\x00\x01f", m.Remove(11, "f")),
    (b"\x0e\x00\x00\x00\x0c\x00\x00\x00\x01d\x00\x00\x00\x00", m.Mkdir(12, "d", Attrs())),
    (b"\x0f\x00\x00\x00\x0d\x00\x00\x00\x01d", m.Rmdir(13, "d")),
    (b"\x10\x00\x00\x00\x0e\x00\x00\x00\x01.", m.Realpath(14, ".")),
    (b"\x11\x00\x00\x00\x0f\x00\x00\x00\x05caf\xc3\xa9", m.Stat(15, "caf\u00e9")),
    (b"\x11\x00\x00\x00\x0f\x00\x00\x00\x02\xff/", m.Stat(15, "\udcff/")),
    (b"\x12\x00\x00\x00\x10\x00\x00\x00\x01a\x00\x00\x00\x01b", m.Rename(16, "a", "b")),
    (b"\x13\x00\x00\x00\x11\x00\x00\x00\x02ln", m.Readlink(17, "ln")),
    (b"\x14\x00\x00\x00\x12\x00\x00\x00\x01t\x00\x00\x00\x02ln", m.Symlink(18, "t", "ln")),
    (b"\x63\x00\x00\x00\x13whatever", m.UnknownRequest(19, 0x63)),
    (b"\x65\x00\x00\x00\x13", m.UnknownRequest(19, 0x65)),
    (
        b"\xc8\x00\x00\x00\x14\x00\x00\x00\x18posix-rename@openssh.com"
        b"\x00\x00\x00\x01a\x00\x00\x00\x01b",
        m.PosixRename(20, "a", "b"),
    ),
    (
        b"\xc8\x00\x00\x00\x15\x00\x00\x00\x13statvfs@openssh.com\x00\x00\x00\x01/",
        m.Statvfs(21, "/"),
    ),
    (
        b"\xc8\x00\x00\x00\x16\x00\x00\x00\x14fstatvfs@openssh.com\x00\x00\x00\x02h1",
        m.Fstatvfs(22, b"h1"),
    ),
    (
        b"\xc8\x00\x00\x00\x17\x00\x00\x00\x14hardlink@openssh.com"
        b"\x00\x00\x00\x01a\x00\x00\x00\x01b",
        m.Hardlink(23, "a", "b"),
    ),
    (
        b"\xc8\x00\x00\x00\x18\x00\x00\x00\x11fsync@openssh.com\x00\x00\x00\x02h1",
        m.Fsync(24, b"h1"),
    ),
    (
        b"\xc8\x00\x00\x00\x19\x00\x00\x00\x14lsetstat@openssh.com\x00\x00\x00\x01l"
        b"\x00\x00\x00\x04\x00\x00\x01\xed",
        m.Lsetstat(25, "l", Attrs(permissions=0o755)),
    ),
    (b"\xc8\x00\x00\x00\x1a\x00\x00\x00\x12limits@openssh.com", m.Limits(26)),
    (
        b"\xc8\x00\x00\x00\x1b\x00\x00\x00\x17expand-path@openssh.com\x00\x00\x00\x03~/x",
        m.ExpandPath(27, "~/x"),
    ),
    (
        b"\xc8\x00\x00\x00\x1c\x00\x00\x00\x09copy-data\x00\x00\x00\x02h1"
        b"\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02"
        b"\x00\x00\x00\x02h2\x00\x00\x00\x00\x00\x00\x00\x03",
        m.CopyData(28, b"h1", 1, 2, b"h2", 3),
    ),
    (
        b"\xc8\x00\x00\x00\x1d\x00\x00\x00\x0ehome-directory\x00\x00\x00\x00",
        m.HomeDirectory(29, ""),
    ),
    (
        b"\xc8\x00\x00\x00\x1e\x00\x00\x00\x1eusers-groups-by-id@openssh.com"
        b"\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x03\xe8\x00\x00\x00\x04\x00\x00\x00\x64",
        m.UsersGroupsById(30, (0, 1000), (100,)),
    ),
    (
        b"\xc8\x00\x00\x00\x1f\x00\x00\x00\x0fcheck-file-name\x00\x00\x00\x01f"
        b"\x00\x00\x00\x0amd5,sha256\x00\x00\x00\x00\x00\x00\x00\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        m.CheckFileName(31, "f", ("md5", "sha256"), 0, 0, 0),
    ),
    (
        b"\xc8\x00\x00\x00\x20\x00\x00\x00\x11check-file-handle\x00\x00\x00\x02h1"
        b"\x00\x00\x00\x04sha1\x00\x00\x00\x00\x00\x00\x01\x00"
        b"\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x04\x00",
        m.CheckFileHandle(32, b"h1", ("sha1",), 256, 4096, 1024),
    ),
    (
        b"\xc8\x00\x00\x00\x21\x00\x00\x00\x09vendor-idxyz",
        m.UnknownExtended(33, b"vendor-id", b"xyz"),
    ),
]

IDS = [f"{type(req).__name__}-{i}" for i, (_, req) in enumerate(REQUESTS)]


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(("body", "expected"), REQUESTS, ids=IDS)
def test_decode_whole(body: bytes, expected: m.Request) -> None:
    assert decode_request(body) == expected
    assert decode_request(memoryview(body)) == expected


@pytest.mark.parametrize(("body", "expected"), REQUESTS, ids=IDS)
def test_decode_byte_by_byte(body: bytes, expected: m.Request) -> None:
    framer = Framer()
    wire = framed(body)
    packets = []
    for i in range(len(wire)):
        got = framer.feed(wire[i : i + 1])
        if i < len(wire) - 1:
            assert got == []
        packets.extend(got)
    assert len(packets) == 1 and framer.buffered() == 0
    assert decode_request(packets[0]) == expected


@pytest.mark.parametrize(("body", "expected"), REQUESTS, ids=IDS)
def test_decode_with_trailing_data(body: bytes, expected: m.Request) -> None:
    framer = Framer()
    nxt = framed(b"\x10\x00\x00\x00\x63\x00\x00\x00\x01.")
    packets = framer.feed(framed(body) + nxt[:6])
    assert len(packets) == 1 and framer.buffered() == 6
    assert decode_request(packets[0]) == expected
    (second,) = framer.feed(nxt[6:])
    assert decode_request(second) == m.Realpath(99, ".")
    assert decode_request(packets[0]) == expected  # earlier packets stay valid


STRICT = [
    (body, req)
    for body, req in REQUESTS
    # these take any tail (WRITE: see test_write_ignores_bytes_after_its_data)
    if not isinstance(req, m.Init | m.UnknownRequest | m.UnknownExtended | m.Write)
]


@pytest.mark.parametrize(("body", "expected"), STRICT)
def test_trailing_bytes_inside_packet_are_refused(body: bytes, expected: m.Request) -> None:
    with pytest.raises(m.RequestDecodeError) as info:
        decode_request(body + b"\x00")
    assert info.value.request_id == struct.unpack(">I", body[1:5])[0]
    assert info.value.packet_type == body[0]


def test_every_request_at_once_and_in_odd_chunks() -> None:
    wire = b"".join(framed(body) for body, _ in REQUESTS)
    expected = [req for _, req in REQUESTS]
    assert [decode_request(p) for p in Framer().feed(wire)] == expected
    for chunk in (2, 3, 7, 64, 1000):
        framer = Framer()
        packets = []
        for i in range(0, len(wire), chunk):
            packets.extend(framer.feed(wire[i : i + chunk]))
        assert [decode_request(p) for p in packets] == expected


def test_write_data_is_a_view_into_the_packet() -> None:
    body = REQUESTS[5][0]
    (packet,) = Framer().feed(framed(body))
    request = decode_request(packet)
    assert isinstance(request, m.Write) and isinstance(request.data, memoryview)
    assert request.data.obj is (packet.obj if isinstance(packet, memoryview) else packet)


def _rclone_last_write(request_id: int, handle: bytes, offset: int, data: bytes) -> bytes:
    """A WRITE as pkg/sftp < 1.13.6 (rclone 1.60) sends the last chunk of a concurrent
    ReadFrom: the data string says ``len(data)`` but the packet carries the whole 32 KiB
    buffer (the first ``len(data)`` bytes being the data)."""
    buf = data + bytes(32768 - len(data))
    head = struct.pack(">BII", 6, request_id, len(handle)) + handle
    return head + struct.pack(">QI", offset, len(data)) + buf


def test_write_ignores_bytes_after_its_data() -> None:
    """rclone 1.60 uploading 100,000 bytes: the fourth WRITE declares 1,696 bytes of data
    in a packet of 32,790 bytes, behind three full ones, fed as the SSH channel delivers
    them (straddling). OpenSSH's sftp-server ignores the tail; so must we (it was
    "Bad message: 31072 trailing bytes")."""
    data = os.urandom(100_000)
    wire = b""
    for n, offset in enumerate(range(0, len(data), 32768)):
        chunk = data[offset : offset + 32768]
        wire += framed(_rclone_last_write(31 + n, b"5", offset, chunk))
    assert len(wire) == 4 * (4 + 32790)
    for step in (len(wire), 32768, 32759, 1000, 7):
        framer = Framer()
        packets: list[bytes | memoryview] = []
        for i in range(0, len(wire), step):
            packets.extend(framer.feed(wire[i : i + step]))
        writes = [decode_request(p) for p in packets]
        assert all(isinstance(w, m.Write) for w in writes)
        assert [(w.id, w.offset, len(w.data)) for w in writes if isinstance(w, m.Write)] == [
            (31, 0, 32768),
            (32, 32768, 32768),
            (33, 65536, 32768),
            (34, 98304, 1696),
        ]
        assert b"".join(bytes(w.data) for w in writes if isinstance(w, m.Write)) == data
    # the general decoder agrees (a WRITE the fast path leaves to it still fails cleanly)
    with pytest.raises(m.RequestDecodeError) as info:
        decode_request(_io_body(6, b"h", 0, struct.pack(">I", 9) + b"short"))
    assert info.value.request_id == 9


def _io_body(kind: int, handle: bytes, offset: int, tail: bytes) -> bytes:
    return struct.pack(">BII", kind, 9, len(handle)) + handle + struct.pack(">Q", offset) + tail


@pytest.mark.parametrize("handle", [b"", b"1", b"h" * 300])
def test_read_and_write_decode_exactly_and_refuse_bad_lengths(handle: bytes) -> None:
    """READ and WRITE have their own two-unpack decoder; it must agree with the spec and
    leave every malformed packet to the general decoder's errors (with the request id)."""
    read = _io_body(5, handle, 1 << 40, struct.pack(">I", 32768))
    assert decode_request(read) == m.Read(9, handle, 1 << 40, 32768)
    write = _io_body(6, handle, 7, struct.pack(">I", 3) + b"abc")
    decoded = decode_request(write)
    assert isinstance(decoded, m.Write) and bytes(decoded.data) == b"abc"
    assert (decoded.id, decoded.handle, decoded.offset) == (9, handle, 7)
    empty = decode_request(_io_body(6, handle, 0, struct.pack(">I", 0)))
    assert isinstance(empty, m.Write) and bytes(empty.data) == b""
    tail = decode_request(_io_body(6, handle, 7, struct.pack(">I", 2) + b"abc"))
    assert isinstance(tail, m.Write) and bytes(tail.data) == b"ab"  # the tail is ignored
    for bad in (
        read + b"x",  # trailing byte
        read[:-1],  # short length field
        _io_body(6, handle, 7, struct.pack(">I", 4) + b"abc"),  # data shorter than declared
        struct.pack(">BII", 5, 9, len(handle) + 50) + handle + bytes(12),  # handle overruns
    ):
        with pytest.raises(m.RequestDecodeError) as info:
            decode_request(bad)
        assert info.value.request_id == 9


# ---- decode errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "request_id", "why"),
    [
        (b"", None, "empty"),
        (b"\x11", None, "no id"),
        (b"\x11\x00\x00\x01", None, "short id"),
        (b"\x01\x00\x00", None, "short INIT"),
        (b"\x11\x00\x00\x00\x07\x00\x00\x00\x0aabc", 7, "short string"),
        (b"\x11\x00\x00\x00\x07\x00\x00", 7, "truncated string length"),
        (b"\x11\x00\x00\x00\x07\x00\x00\x00\x01/x", 7, "trailing bytes"),
        (b"\x09\x00\x00\x00\x07\x00\x00\x00\x01f\x00\x00\x00\x10", 7, "unknown attr flag"),
        (b"\x09\x00\x00\x00\x07\x00\x00\x00\x01f\x40\x00\x00\x00", 7, "unknown high attr flag"),
        (b"\x09\x00\x00\x00\x07\x00\x00\x00\x01f\x00\x00\x00\x01\x00\x00", 7, "short size"),
        (
            b"\x09\x00\x00\x00\x07\x00\x00\x00\x01f\x80\x00\x00\x00\xff\xff\xff\xff",
            7,
            "huge extended count",
        ),
        (b"\x05\x00\x00\x00\x08\x00\x00\x00\x02h1\x00\x00\x00\x00", 8, "bad uint64"),
        (b"\x05\x00\x00\x00\x08\x00\x00\x00\x02h1" + b"\x00" * 8 + b"\x00\x00", 8, "bad uint32"),
        (b"\xc8\x00\x00\x00\x09\x00\x00\x00\x05limi", 9, "short extension name"),
        (
            b"\xc8\x00\x00\x00\x09\x00\x00\x00\x1eusers-groups-by-id@openssh.com"
            b"\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x00",
            9,
            "id list not a multiple of 4",
        ),
        (b"\xc8\x00\x00\x00\x09\x00\x00\x00\x12limits@openssh.comx", 9, "extension trailing"),
    ],
)
def test_decode_errors(body: bytes, request_id: int | None, why: str) -> None:
    with pytest.raises(m.RequestDecodeError) as info:
        decode_request(body)
    assert isinstance(info.value, PacketDecodeError)
    assert info.value.request_id == request_id, why


def test_init_tolerates_a_malformed_extension_tail() -> None:
    assert decode_request(b"\x01\x00\x00\x00\x03\x00\x00\x00\x09ab") == m.Init(3)


# ---- framing -----------------------------------------------------------------------------


def test_oversized_declared_length_fails_without_allocating() -> None:
    framer = Framer()
    with pytest.raises(FramingError):
        framer.feed(b"\xff\xff\xff\xff" + b"\x00" * 10)
    framer = Framer()
    framer.feed(framed(b"\x11\x00\x00\x00\x01")[:3])
    with pytest.raises(FramingError):
        framer.feed(framed(b"\x11\x00\x00\x00\x01")[3:] + b"\x00\x04\x04\x01")  # 257 KiB + 1
    assert framer.buffered() < 64


def test_max_packet_boundary() -> None:
    framer = Framer(max_packet=16)
    assert framer.feed(b"\x00\x00\x00\x10" + b"\x11" * 16) == [b"\x11" * 16]
    with pytest.raises(FramingError):
        Framer(max_packet=16).feed(b"\x00\x00\x00\x11")
    assert Framer().max_packet == 256 * 1024 + 1024


def test_buffer_is_compacted_not_grown() -> None:
    framer = Framer()
    packet = framed(b"\x11\x00\x00\x00\x01\x00\x00\x00\x40" + b"p" * 64)
    stream = packet * 5000
    count = 0
    largest = 0
    for i in range(0, len(stream), 1001):  # odd chunks keep a partial packet buffered
        count += len(framer.feed(stream[i : i + 1001]))
        largest = max(largest, len(framer._buf))
    assert count == 5000 and framer.buffered() == 0
    assert largest <= 2 * 65536 + 2 * 1001


def test_packets_from_a_buffered_stream_are_independent_copies() -> None:
    framer = Framer()
    a = framed(b"\x11\x00\x00\x00\x01\x00\x00\x00\x01a")
    framer.feed(a[:2])
    (first,) = framer.feed(a[2:] + a[:2])
    for _ in range(100):
        framer.feed(a[2:] + a[:2])
    assert bytes(first) == a[4:]


def test_zero_length_packet_is_framed_and_refused_by_decoder() -> None:
    (packet,) = Framer().feed(b"\x00\x00\x00\x00")
    with pytest.raises(m.RequestDecodeError):
        decode_request(packet)


# ---- responses ----------------------------------------------------------------------------


def test_encode_status() -> None:
    assert encode_response(m.StatusResponse(5, Status.NO_SUCH_FILE, "No such file")) == (
        b"\x00\x00\x00\x1f\x65\x00\x00\x00\x05\x00\x00\x00\x02"
        b"\x00\x00\x00\x0cNo such file\x00\x00\x00\x02en"
    )


def test_encode_handle() -> None:
    assert encode_response(m.HandleResponse(7, b"12")) == (
        b"\x00\x00\x00\x0b\x66\x00\x00\x00\x07\x00\x00\x00\x0212"
    )


def test_encode_data_copies_payload_at_most_once() -> None:
    payload = b"abc"
    response = m.DataResponse(9, payload)
    assert encode_response(response) == b"\x00\x00\x00\x0c\x67\x00\x00\x00\x09\x00\x00\x00\x03abc"
    header, body = encode_response_parts(response)
    assert header == b"\x00\x00\x00\x0c\x67\x00\x00\x00\x09\x00\x00\x00\x03"
    assert body is payload
    header, body = encode_response_parts(m.StatusResponse(1, Status.OK, "Success"))
    assert body == b"" and header == encode_response(m.StatusResponse(1, Status.OK, "Success"))


def test_encode_name() -> None:
    entry = m.NameEntry("\udcffa", "-rw-r--r-- x", Attrs(size=1))
    assert encode_response(m.NameResponse(1, (entry,))) == (
        b"\x00\x00\x00\x2b\x68\x00\x00\x00\x01\x00\x00\x00\x01"
        b"\x00\x00\x00\x02\xffa\x00\x00\x00\x0c-rw-r--r-- x"
        b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01"
    )


def test_encode_attrs_reply() -> None:
    assert encode_response(m.AttrsResponse(2, Attrs(size=3, permissions=0o644))) == (
        b"\x00\x00\x00\x15\x69\x00\x00\x00\x02\x00\x00\x00\x05"
        b"\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x01\xa4"
    )


def test_encode_extended_reply() -> None:
    assert encode_response(m.ExtendedReply(3, b"xyz")) == (
        b"\x00\x00\x00\x08\xc9\x00\x00\x00\x03xyz"
    )


def test_encode_version() -> None:
    assert encode_response(m.VersionResponse(3, ((b"a", b"1"),))) == (
        b"\x00\x00\x00\x0f\x02\x00\x00\x00\x03\x00\x00\x00\x01a\x00\x00\x00\x011"
    )


def test_attrs_round_trip_and_every_field() -> None:
    full = Attrs(1 << 40, 1, 2, 0o100755, 3, 4, ((b"n", b"v"), (b"", b"")))
    data = encode_attrs(full)
    assert data == (
        b"\x80\x00\x00\x0f\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02"
        b"\x00\x00\x81\xed\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00\x02"
        b"\x00\x00\x00\x01n\x00\x00\x00\x01v\x00\x00\x00\x00\x00\x00\x00\x00"
    )
    reader = Reader(data)
    assert reader.attrs() == full
    reader.check_end()
    assert encode_attrs(Attrs()) == b"\x00\x00\x00\x00"
    # Values beyond uint32 are clamped rather than breaking the encoder.
    assert encode_attrs(Attrs(atime=-5, mtime=1 << 40))[4:] == b"\x00\x00\x00\x00\xff\xff\xff\xff"


def test_full_attrs_one_pack_and_clamped_when_out_of_range() -> None:
    plain = Attrs(5, 1000, 1000, 0o100644, 7, 8)
    assert encode_attrs(plain) == struct.pack(">IQIIIII", 0xF, 5, 1000, 1000, 0o100644, 7, 8)
    wild = Attrs(-1, 1 << 33, 1, 0o100644, -5, 1 << 40)  # every field present, some too big
    assert encode_attrs(wild) == struct.pack(
        ">IQIIIII", 0xF, 0, 0xFFFFFFFF, 1, 0o100644, 0, 0xFFFFFFFF
    )


# ---- longname ----------------------------------------------------------------------------


@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def _stat(mode: int, nlink: int, uid: int, gid: int, size: int, mtime: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, nlink, uid, gid, size, mtime, mtime, mtime))


def test_longname_is_ls_l_shaped(utc: None) -> None:
    mtime = 1764054300  # 2025-11-25 07:05 UTC
    st = _stat(0o040755, 2, 1000, 1000, 4096, mtime)
    assert longname("name", st, now=mtime + 60) == (
        "drwxr-xr-x    2 1000     1000         4096 Nov 25 07:05 name"
    )
    old = _stat(0o100644, 1, 0, 0, 7, mtime - 400 * 86400)
    assert (
        longname("f", old, now=mtime) == "-rw-r--r--    1 0        0               7 Oct 21  2024 f"
    )
    link = _stat(0o120777, 1, 0, 0, 3, mtime)
    assert longname("l", link, now=mtime).startswith("lrwxrwxrwx ")
    suid = _stat(0o104755, 1, 0, 0, 0, mtime)
    assert longname("s", suid, now=mtime).startswith("-rwsr-xr-x ")


def test_longname_uses_names_when_known(utc: None) -> None:
    from sftpd.apps.sftp.attrs import IdNames

    st = _stat(0o100600, 1, 0, 0, 1, 0)
    assert longname("x", st, IdNames(), now=0).split()[2:4] == ["root", "root"]
    unknown = _stat(0o100600, 1, 3_999_999_999, 3_999_999_999, 1, 0)
    assert longname("x", unknown, IdNames(), now=0).split()[2:4] == ["3999999999"] * 2


# ---- the symlink quirk --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "target_first"),
    [
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", True),
        (b"SSH-2.0-OpenSSH_for_Windows_9.5", True),
        (b"SSH-2.0-paramiko_3.4.0", True),
        (b"SSH-2.0-Go", True),
        (b"SSH-2.0-libssh2_1.10.0", True),  # curl
        (b"SSH-2.0-libssh2_1.11.1_DEV", True),
        (b"SSH-2.0-ssh2js1.16.0", False),  # Node's ssh2
        (b"SSH-2.0-AsyncSSH_2.14.2", False),
        (b"SSH-2.0-libssh_0.10.6", False),
        (b"SSH-2.0-Gopher", False),
        (b"SSH-2.0-PuTTY_Release_0.80", False),
        (b"", False),
        (b"garbage", False),
    ],
)
def test_symlink_order_from_client_version(version: bytes, target_first: bool) -> None:
    assert symlink_target_first(version) is target_first
    request = m.Symlink(1, "first", "second")
    expected = ("first", "second") if target_first else ("second", "first")
    assert symlink_paths(request, version) == expected


def test_pure_modules_do_not_import_twisted() -> None:
    code = (
        "import sys\n"
        "import sftpd.apps.sftp.codec, sftpd.apps.sftp.constants\n"
        "import sftpd.apps.sftp.attrs, sftpd.apps.sftp.messages\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] == 'twisted')\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_name_batch_wire_is_what_encode_name_writes(tmp_path: Path) -> None:
    """A READDIR batch made in its wire form (IdNames.wire_entries) is byte for byte the
    NAME packet encode_name makes of the same entries: ASCII and non-UTF-8 names, a recent
    and an old date, and a time past 2106 (attributes a v3 uint32 cannot carry)."""
    from sftpd.apps.sftp.attrs import IdNames, attrs_from_stat
    from sftpd.apps.sftp.codec import encode_response, encode_response_parts

    names = ["plain", "ünïcode", os.fsdecode(b"raw\xff"), "old", "future"]
    for name in names:
        (tmp_path / name).write_bytes(b"x" * len(name))
    os.utime(tmp_path / "old", (0, 0))
    os.utime(tmp_path / "future", (2**33, 2**33))
    entries = [(n, os.lstat(tmp_path / n)) for n in names]
    now = time.time()
    ids = IdNames()
    expected = encode_name(
        7, tuple(m.NameEntry(n, ids.longname(n, st, now), attrs_from_stat(st)) for n, st in entries)
    )
    out: list[bytes] = []
    added = IdNames().wire_entries(entries, now, out)
    batch = m.NameBatch(len(entries), b"".join(out))
    assert added == len(batch.wire)
    response = m.NameBatchResponse(7, batch)
    head, body = encode_response_parts(response)
    assert head + body == expected == encode_response(response)


@pytest.mark.parametrize("piece", [1, 3, 1000, 32768, 70000])
def test_big_packets_in_pieces_come_out_whole(piece: int) -> None:
    """Big packets (gathered piece by piece, or buffered when the pieces are tiny) and
    small ones between them come out byte for byte, and buffered() counts what is held."""
    bodies = [bytes([i]) * n for i, n in enumerate((200_000, 5, 70_000, 16 * 1024, 9))]
    stream = b"".join(framed(b) for b in bodies)
    framer = Framer()
    out: list[bytes] = []
    fed = 0
    for i in range(0, len(stream), piece):
        out += [bytes(p) for p in framer.feed(stream[i : i + piece])]
        fed += len(stream[i : i + piece])
        taken = sum(len(b) + 4 for b in out)
        assert framer.buffered() == fed - taken
    assert out == bodies and framer.buffered() == 0


def test_gathered_packet_then_oversized_length_fails() -> None:
    framer = Framer()
    big = framed(b"\x07" * 100_000)
    assert framer.feed(big[:40_000]) == []
    with pytest.raises(FramingError):
        framer.feed(big[40_000:] + b"\xff\xff\xff\xff")
