"""Sans-IO SFTP v3 codec: packet framing, request decoding, response encoding."""

from __future__ import annotations

import struct
from collections.abc import Callable

from sftpd.apps.sftp import messages as m
from sftpd.apps.sftp.attrs import Attrs, encode_attrs
from sftpd.apps.sftp.constants import (
    ATTR_ACMODTIME,
    ATTR_EXTENDED,
    ATTR_PERMISSIONS,
    ATTR_SIZE,
    ATTR_UIDGID,
    CHECK_FILE_REPLY,
    DATA_HEADER_LENGTH,
    EXT_CHECK_FILE_HANDLE,
    EXT_CHECK_FILE_NAME,
    EXT_COPY_DATA,
    EXT_EXPAND_PATH,
    EXT_FSTATVFS,
    EXT_FSYNC,
    EXT_HARDLINK,
    EXT_HOME_DIRECTORY,
    EXT_LIMITS,
    EXT_LSETSTAT,
    EXT_POSIX_RENAME,
    EXT_STATVFS,
    EXT_USERS_GROUPS_BY_ID,
    FRAMER_MAX_PACKET,
    KNOWN_ATTR_FLAGS,
    PacketType,
)
from sftpd.errors import FramingError, PacketDecodeError

_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">IBI")  # packet length, type, request id
_HEAD_STRING = struct.Struct(">IBII")  # ... and a string's length (DATA, HANDLE)

Packet = bytes | memoryview


# --- framing --------------------------------------------------------------------------


# A packet at least this big that arrives in pieces is gathered, not copied into a buffer;
# after this many pieces (a client feeding it a few bytes at a time) it is buffered after all.
_GATHER_FROM = 16 * 1024
_MAX_PARTS = 64


class Framer:
    """Splits a byte stream into SFTP packets (``uint32 length`` + body).

    Data is appended to one ``bytearray``; a read offset advances over complete packets
    and the consumed prefix is dropped only once it is large, so extraction is O(n).
    When nothing is buffered, packets are sliced straight out of the fed ``bytes``
    as memoryviews (no copy). A declared length above ``max_packet`` raises
    FramingError before anything is allocated for it.
    """

    def __init__(self, max_packet: int = FRAMER_MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()
        self._pos = 0
        # A big packet arriving in pieces (an upload's WRITE spans several CHANNEL_DATA):
        # the pieces, joined once it is complete, instead of a copy into ``_buf`` and one
        # out of it. ``_need`` is its whole size, length field included.
        self._parts: list[bytes | memoryview] = []
        self._have = 0
        self._need = 0

    def buffered(self) -> int:
        """Bytes held for a packet not yet complete."""
        return len(self._buf) - self._pos + self._have

    def feed(self, data: bytes) -> list[Packet]:
        """Add ``data``; return the packets it completed (bodies without the length)."""
        packets: list[Packet] = []
        if not isinstance(data, bytes):
            data = bytes(data)  # returned views must not alias a mutable buffer
        parts = self._parts
        if parts:
            parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                if len(parts) > _MAX_PARTS:  # tiny pieces: into the buffer after all
                    self._buf += b"".join(parts)
                    parts.clear()
                    self._have = self._need = 0
                return packets
            data = b"".join(parts)
            parts.clear()
            self._have = self._need = 0
        if self._pos == len(self._buf):
            # Fast path: nothing pending, frame directly from ``data``.
            if self._buf:
                self._buf.clear()
                self._pos = 0
            view = memoryview(data)
            pos = self._take(view, len(view), 0, packets)
            if pos < len(view):
                self._keep(view[pos:])
            return packets
        self._buf += data
        buf = self._buf
        with memoryview(buf) as view:
            pos = self._take(view, len(view), self._pos, packets, copy=True)
        if pos == len(buf):
            buf.clear()
            pos = 0
        elif pos > 65536 and pos * 2 > len(buf):
            del buf[:pos]
            pos = 0
        self._pos = pos
        return packets

    def _keep(self, rest: memoryview) -> None:
        """Hold the start of a packet not yet complete (``_take`` checked its length)."""
        if len(rest) >= 4:
            need = 4 + _U32.unpack_from(rest, 0)[0]
            if need >= _GATHER_FROM:
                self._parts.append(rest)  # a view into the fed bytes: no copy
                self._have, self._need = len(rest), need
                return
        self._buf += rest

    def _take(
        self,
        buf: memoryview,
        end: int,
        pos: int,
        out: list[Packet],
        copy: bool = False,
    ) -> int:
        max_packet = self.max_packet
        while end - pos >= 4:
            (length,) = _U32.unpack_from(buf, pos)
            if length > max_packet:
                raise FramingError(f"declared packet length {length} exceeds {max_packet}")
            if end - pos - 4 < length:
                break
            start = pos + 4
            pos = start + length
            # A copy out of the bytearray (it is resized later); a view into ``bytes``.
            out.append(bytes(buf[start:pos]) if copy else buf[start:pos])
        return pos


# --- decoding -------------------------------------------------------------------------


class Reader:
    """Reads SSH wire fields from a packet; raises PacketDecodeError on short data."""

    __slots__ = ("_buf", "_end", "_pos")

    def __init__(self, buf: Packet, pos: int = 0) -> None:
        self._buf = memoryview(buf)
        self._pos = pos
        self._end = len(self._buf)

    def remaining(self) -> int:
        return self._end - self._pos

    def uint32(self) -> int:
        pos = self._pos
        if self._end - pos < 4:
            raise PacketDecodeError("truncated uint32")
        self._pos = pos + 4
        value: int = _U32.unpack_from(self._buf, pos)[0]
        return value

    def uint64(self) -> int:
        pos = self._pos
        if self._end - pos < 8:
            raise PacketDecodeError("truncated uint64")
        self._pos = pos + 8
        value: int = _U64.unpack_from(self._buf, pos)[0]
        return value

    def view(self) -> memoryview:
        """A string field as a view into the packet (no copy)."""
        length = self.uint32()
        pos = self._pos
        if self._end - pos < length:
            raise PacketDecodeError("truncated string")
        self._pos = pos + length
        return self._buf[pos : pos + length]

    def string(self) -> bytes:
        return bytes(self.view())

    def path(self) -> str:
        """A path string: UTF-8, undecodable bytes kept through surrogateescape."""
        return str(self.view(), "utf-8", "surrogateescape")

    def attrs(self) -> Attrs:
        flags = self.uint32()
        if flags & ~KNOWN_ATTR_FLAGS:
            raise PacketDecodeError(f"unknown attribute flags 0x{flags:08x}")
        size = self.uint64() if flags & ATTR_SIZE else None
        uid = gid = None
        if flags & ATTR_UIDGID:
            uid = self.uint32()
            gid = self.uint32()
        permissions = self.uint32() if flags & ATTR_PERMISSIONS else None
        atime = mtime = None
        if flags & ATTR_ACMODTIME:
            atime = self.uint32()
            mtime = self.uint32()
        extended: tuple[tuple[bytes, bytes], ...] = ()
        if flags & ATTR_EXTENDED:
            count = self.uint32()
            if count > self.remaining() // 8:
                raise PacketDecodeError("extended attribute count exceeds packet")
            extended = tuple((self.string(), self.string()) for _ in range(count))
        return Attrs(size, uid, gid, permissions, atime, mtime, extended)

    def rest(self) -> bytes:
        data = bytes(self._buf[self._pos :])
        self._pos = self._end
        return data

    def check_end(self) -> None:
        if self._pos != self._end:
            raise PacketDecodeError(f"{self._end - self._pos} trailing bytes")


def _uint32_list(data: memoryview) -> tuple[int, ...]:
    if len(data) % 4:
        raise PacketDecodeError("id list length is not a multiple of 4")
    return struct.unpack(f">{len(data) // 4}I", data)


def _algorithms(data: bytes) -> tuple[str, ...]:
    text = data.decode("ascii", "replace")
    return tuple(name.strip() for name in text.split(",") if name.strip())


_Decoder = Callable[[int, Reader], m.Request]

_DECODERS: dict[int, _Decoder] = {
    PacketType.OPEN: lambda i, r: m.Open(i, r.path(), r.uint32(), r.attrs()),
    PacketType.CLOSE: lambda i, r: m.Close(i, r.string()),
    PacketType.READ: lambda i, r: m.Read(i, r.string(), r.uint64(), r.uint32()),
    PacketType.WRITE: lambda i, r: m.Write(i, r.string(), r.uint64(), r.view()),
    PacketType.LSTAT: lambda i, r: m.Lstat(i, r.path()),
    PacketType.FSTAT: lambda i, r: m.Fstat(i, r.string()),
    PacketType.SETSTAT: lambda i, r: m.Setstat(i, r.path(), r.attrs()),
    PacketType.FSETSTAT: lambda i, r: m.Fsetstat(i, r.string(), r.attrs()),
    PacketType.OPENDIR: lambda i, r: m.Opendir(i, r.path()),
    PacketType.READDIR: lambda i, r: m.Readdir(i, r.string()),
    PacketType.REMOVE: lambda i, r: m.Remove(i, r.path()),
    PacketType.MKDIR: lambda i, r: m.Mkdir(i, r.path(), r.attrs()),
    PacketType.RMDIR: lambda i, r: m.Rmdir(i, r.path()),
    PacketType.REALPATH: lambda i, r: m.Realpath(i, r.path()),
    PacketType.STAT: lambda i, r: m.Stat(i, r.path()),
    PacketType.RENAME: lambda i, r: m.Rename(i, r.path(), r.path()),
    PacketType.READLINK: lambda i, r: m.Readlink(i, r.path()),
    PacketType.SYMLINK: lambda i, r: m.Symlink(i, r.path(), r.path()),
}

_EXT_DECODERS: dict[bytes, _Decoder] = {
    EXT_POSIX_RENAME: lambda i, r: m.PosixRename(i, r.path(), r.path()),
    EXT_STATVFS: lambda i, r: m.Statvfs(i, r.path()),
    EXT_FSTATVFS: lambda i, r: m.Fstatvfs(i, r.string()),
    EXT_HARDLINK: lambda i, r: m.Hardlink(i, r.path(), r.path()),
    EXT_FSYNC: lambda i, r: m.Fsync(i, r.string()),
    EXT_LSETSTAT: lambda i, r: m.Lsetstat(i, r.path(), r.attrs()),
    EXT_LIMITS: lambda i, r: m.Limits(i),
    EXT_EXPAND_PATH: lambda i, r: m.ExpandPath(i, r.path()),
    EXT_COPY_DATA: lambda i, r: m.CopyData(
        i, r.string(), r.uint64(), r.uint64(), r.string(), r.uint64()
    ),
    EXT_HOME_DIRECTORY: lambda i, r: m.HomeDirectory(i, r.path()),
    EXT_USERS_GROUPS_BY_ID: lambda i, r: m.UsersGroupsById(
        i, _uint32_list(r.view()), _uint32_list(r.view())
    ),
    EXT_CHECK_FILE_NAME: lambda i, r: m.CheckFileName(
        i, r.path(), _algorithms(r.string()), r.uint64(), r.uint64(), r.uint32()
    ),
    EXT_CHECK_FILE_HANDLE: lambda i, r: m.CheckFileHandle(
        i, r.string(), _algorithms(r.string()), r.uint64(), r.uint64(), r.uint32()
    ),
}
# paramiko's SFTPFile.check() sends the handle form under the older name "check-file".
_EXT_DECODERS[CHECK_FILE_REPLY] = _EXT_DECODERS[EXT_CHECK_FILE_HANDLE]


def _decode_extended(request_id: int, reader: Reader) -> m.Request:
    name = reader.string()
    decoder = _EXT_DECODERS.get(name)
    if decoder is None:
        return m.UnknownExtended(request_id, name, reader.rest())
    return decoder(request_id, reader)


def _decode_init(packet: memoryview) -> m.Init:
    if len(packet) < 5:
        raise m.RequestDecodeError("truncated INIT", None, PacketType.INIT)
    reader = Reader(packet, 1)
    version = reader.uint32()
    # Extension pairs are informational; a malformed tail is ignored, not refused
    # (INIT has no request id a BAD_MESSAGE could answer).
    pairs: list[tuple[bytes, bytes]] = []
    try:
        while reader.remaining():
            pairs.append((reader.string(), reader.string()))
    except PacketDecodeError:
        pass
    return m.Init(version, tuple(pairs))


_READ, _WRITE = int(PacketType.READ), int(PacketType.WRITE)
_U64U32 = struct.Struct(">QI")


def _decode_io(view: memoryview, packet_type: int, request_id: int) -> m.Read | m.Write | None:
    """READ and WRITE, the bulk of a transfer, decoded with two unpacks; None when the
    packet is not well formed (the general decoder then names the problem)."""
    end = len(view)
    if end < 21:
        return None
    (size,) = _U32.unpack_from(view, 5)
    pos = 9 + size
    if packet_type == _READ:
        if pos + 12 != end:
            return None
        offset, length = _U64U32.unpack_from(view, pos)
        return m.Read(request_id, bytes(view[9:pos]), offset, length)
    if pos + 12 > end:
        return None
    offset, length = _U64U32.unpack_from(view, pos)
    start = pos + 12
    if start + length > end:
        return None
    # Bytes after the data string are ignored, as OpenSSH's sftp-server ignores any
    # packet's tail: pkg/sftp before 1.13.6 (rclone 1.60) sends the last WRITE of a
    # concurrent upload with its whole 32 KiB buffer behind a shorter data string.
    return m.Write(request_id, bytes(view[9:pos]), offset, view[start : start + length])


def decode_request(packet: Packet) -> m.Request:
    """Decode one packet body (type byte onwards) into a typed request.

    Raises RequestDecodeError; its ``request_id`` is set when the packet held one.
    """
    view = memoryview(packet)
    if not view:
        raise m.RequestDecodeError("empty packet")
    packet_type = view[0]
    if packet_type == PacketType.INIT:
        return _decode_init(view)
    if len(view) < 5:
        raise m.RequestDecodeError("packet too short for a request id", None, packet_type)
    (request_id,) = _U32.unpack_from(view, 1)
    if packet_type == _READ or packet_type == _WRITE:
        fast = _decode_io(view, packet_type, request_id)
        if fast is not None:
            return fast
    if packet_type == PacketType.EXTENDED:
        decoder: _Decoder | None = _decode_extended
    else:
        decoder = _DECODERS.get(packet_type)
    if decoder is None:
        return m.UnknownRequest(request_id, packet_type)
    reader = Reader(view, 5)
    try:
        request = decoder(request_id, reader)
        reader.check_end()
    except PacketDecodeError as exc:
        raise m.RequestDecodeError(str(exc), request_id, packet_type) from None
    return request


# --- encoding -------------------------------------------------------------------------


def _string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _frame(packet_type: int, body: bytes) -> bytes:
    return _U32.pack(len(body) + 1) + bytes((packet_type,)) + body


def encode_version(version: int, extensions: tuple[tuple[bytes, bytes], ...]) -> bytes:
    body = [_U32.pack(version)]
    for name, data in extensions:
        body.append(_string(name))
        body.append(_string(data))
    return _frame(PacketType.VERSION, b"".join(body))


def encode_status(request_id: int, code: int, message: str = "", language: str = "en") -> bytes:
    body = (
        _U32.pack(request_id)
        + _U32.pack(code)
        + _string(message.encode("utf-8", "surrogateescape"))
        + _string(language.encode("ascii", "replace"))
    )
    return _frame(PacketType.STATUS, body)


def encode_handle(request_id: int, handle: bytes) -> bytes:
    return _HEAD_STRING.pack(9 + len(handle), PacketType.HANDLE, request_id, len(handle)) + handle


def data_header(request_id: int, length: int) -> bytes:
    """The 13-byte header of a DATA reply carrying ``length`` bytes."""
    return _HEAD_STRING.pack(DATA_HEADER_LENGTH - 4 + length, PacketType.DATA, request_id, length)


def encode_name(request_id: int, entries: tuple[m.NameEntry, ...]) -> bytes:
    body = [_U32X2.pack(request_id, len(entries))]
    add, u32 = body.extend, _U32.pack  # listings encode thousands of entries: keep it flat
    for entry in entries:
        filename = entry.filename.encode("utf-8", "surrogateescape")
        long = entry.longname.encode("utf-8", "surrogateescape")
        add((u32(len(filename)), filename, u32(len(long)), long, encode_attrs(entry.attrs)))
    return _frame(PacketType.NAME, b"".join(body))


def name_batch_header(request_id: int, batch: m.NameBatch) -> bytes:
    """The 13-byte header of a NAME reply whose entries are ``batch.wire``."""
    return _HEAD_STRING.pack(9 + len(batch.wire), PacketType.NAME, request_id, batch.entries)


def encode_attrs_reply(request_id: int, attrs: Attrs) -> bytes:
    return _frame(PacketType.ATTRS, _U32.pack(request_id) + encode_attrs(attrs))


def encode_extended_reply(request_id: int, data: bytes) -> bytes:
    return _frame(PacketType.EXTENDED_REPLY, _U32.pack(request_id) + data)


def encode_response_parts(response: m.Response) -> tuple[bytes, m.Payload]:
    """A response as (header, payload); only DATA has a payload, never copied here."""
    if isinstance(response, m.DataResponse):
        return data_header(response.id, len(response.data)), response.data
    if isinstance(response, m.NameBatchResponse):
        return name_batch_header(response.id, response.batch), response.batch.wire
    return encode_response(response), b""


def encode_response(response: m.Response) -> bytes:
    """A whole framed response; a DATA payload is copied exactly once (the join)."""
    if isinstance(response, m.StatusResponse):
        return encode_status(response.id, response.code, response.message, response.language)
    if isinstance(response, m.DataResponse):
        return b"".join((data_header(response.id, len(response.data)), response.data))
    if isinstance(response, m.HandleResponse):
        return encode_handle(response.id, response.handle)
    if isinstance(response, m.NameResponse):
        return encode_name(response.id, response.entries)
    if isinstance(response, m.NameBatchResponse):
        return name_batch_header(response.id, response.batch) + response.batch.wire
    if isinstance(response, m.AttrsResponse):
        return encode_attrs_reply(response.id, response.attrs)
    if isinstance(response, m.ExtendedReply):
        return encode_extended_reply(response.id, response.data)
    return encode_version(response.version, response.extensions)


def pack_strings(items: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Concatenated SSH strings (used inside extended replies)."""
    return b"".join(_string(item) for item in items)


def pack_uint64s(*values: int) -> bytes:
    return struct.pack(f">{len(values)}Q", *values)


# --- client quirks --------------------------------------------------------------------

# Clients whose SYMLINK sends (targetpath, linkpath), the reverse of the draft, whatever
# the server: OpenSSH's sftp (and lftp, sshfs, which run it), paramiko, libssh2 (curl's
# sftp://; "SSH-2.0-libssh2_1.10.0") and Go's pkg/sftp (rclone; "SSH-2.0-Go"). The others
# seen (asyncssh, Node's ssh2, libssh, WinSCP) send the draft order (linkpath,
# targetpath) to a server whose version string is not OpenSSH's, as ours is not.
_REVERSED_SYMLINK_PREFIXES = (b"OpenSSH", b"paramiko", b"libssh2_")
_REVERSED_SYMLINK_EXACT = (b"Go",)


def symlink_target_first(client_version: bytes) -> bool:
    """Whether the client with this SSH version string sends SYMLINK target first."""
    software = client_version
    if software.startswith(b"SSH-"):
        parts = software.split(b"-", 2)
        software = parts[2] if len(parts) == 3 else b""
    software = software.split(b" ", 1)[0].strip()
    return software.startswith(_REVERSED_SYMLINK_PREFIXES) or software in _REVERSED_SYMLINK_EXACT


def symlink_paths(request: m.Symlink, client_version: bytes) -> tuple[str, str]:
    """(target, linkpath) of a SYMLINK request, in the order this client meant."""
    if symlink_target_first(client_version):
        return request.first, request.second
    return request.second, request.first
