"""Typed, frozen SFTP v3 requests (extensions included) and responses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sftpd.apps.sftp.attrs import EMPTY_ATTRS, Attrs
from sftpd.apps.sftp.constants import Status
from sftpd.errors import PacketDecodeError

# Paths are bytes on the wire; we hold them as str decoded from UTF-8 with
# surrogateescape so that any byte sequence round-trips.
# WRITE payloads are ``bytes`` or a ``memoryview`` into the received packet.
Payload = bytes | memoryview


class RequestDecodeError(PacketDecodeError):
    """A malformed request. ``request_id`` is set when the packet was long enough to
    carry one, so the handler can answer SSH_FX_BAD_MESSAGE to it."""

    def __init__(self, message: str, request_id: int | None = None, packet_type: int | None = None):
        super().__init__(message)
        self.request_id = request_id
        self.packet_type = packet_type


# --- requests -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Init:
    """SSH_FXP_INIT: the client's version and extension pairs. It has no request id."""

    version: int
    extensions: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Open:
    id: int
    path: str
    pflags: int
    attrs: Attrs = EMPTY_ATTRS


@dataclass(frozen=True, slots=True)
class Close:
    id: int
    handle: bytes


@dataclass(frozen=True, slots=True)
class Read:
    id: int
    handle: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Write:
    id: int
    handle: bytes
    offset: int
    data: Payload


@dataclass(frozen=True, slots=True)
class Lstat:
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class Fstat:
    id: int
    handle: bytes


@dataclass(frozen=True, slots=True)
class Setstat:
    id: int
    path: str
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class Fsetstat:
    id: int
    handle: bytes
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class Opendir:
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class Readdir:
    id: int
    handle: bytes


@dataclass(frozen=True, slots=True)
class Remove:
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class Mkdir:
    id: int
    path: str
    attrs: Attrs = EMPTY_ATTRS


@dataclass(frozen=True, slots=True)
class Rmdir:
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class Realpath:
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class Stat:
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class Rename:
    id: int
    oldpath: str
    newpath: str


@dataclass(frozen=True, slots=True)
class Readlink:
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class Symlink:
    """SSH_FXP_SYMLINK with its two paths in wire order; which one is the target
    depends on the client (see codec.symlink_paths)."""

    id: int
    first: str
    second: str


@dataclass(frozen=True, slots=True)
class UnknownRequest:
    """A packet type we do not know; answered with SSH_FX_OP_UNSUPPORTED."""

    id: int
    packet_type: int


# --- extended requests ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PosixRename:
    id: int
    oldpath: str
    newpath: str


@dataclass(frozen=True, slots=True)
class Statvfs:
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class Fstatvfs:
    id: int
    handle: bytes


@dataclass(frozen=True, slots=True)
class Hardlink:
    id: int
    oldpath: str
    newpath: str


@dataclass(frozen=True, slots=True)
class Fsync:
    id: int
    handle: bytes


@dataclass(frozen=True, slots=True)
class Lsetstat:
    id: int
    path: str
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class Limits:
    id: int


@dataclass(frozen=True, slots=True)
class ExpandPath:
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class CopyData:
    id: int
    read_handle: bytes
    read_offset: int
    read_length: int
    write_handle: bytes
    write_offset: int


@dataclass(frozen=True, slots=True)
class HomeDirectory:
    id: int
    username: str


@dataclass(frozen=True, slots=True)
class UsersGroupsById:
    id: int
    uids: tuple[int, ...]
    gids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CheckFileName:
    id: int
    path: str
    algorithms: tuple[str, ...]
    start_offset: int
    length: int
    block_size: int


@dataclass(frozen=True, slots=True)
class CheckFileHandle:
    id: int
    handle: bytes
    algorithms: tuple[str, ...]
    start_offset: int
    length: int
    block_size: int


@dataclass(frozen=True, slots=True)
class UnknownExtended:
    """An extension we do not implement; answered with SSH_FX_OP_UNSUPPORTED."""

    id: int
    name: bytes
    data: bytes


# Requests that carry a request id (every one but INIT).
IdRequest = (
    Open
    | Close
    | Read
    | Write
    | Lstat
    | Fstat
    | Setstat
    | Fsetstat
    | Opendir
    | Readdir
    | Remove
    | Mkdir
    | Rmdir
    | Realpath
    | Stat
    | Rename
    | Readlink
    | Symlink
    | UnknownRequest
    | PosixRename
    | Statvfs
    | Fstatvfs
    | Hardlink
    | Fsync
    | Lsetstat
    | Limits
    | ExpandPath
    | CopyData
    | HomeDirectory
    | UsersGroupsById
    | CheckFileName
    | CheckFileHandle
    | UnknownExtended
)

Request = Init | IdRequest


# --- responses ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionResponse:
    version: int
    extensions: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class StatusResponse:
    id: int
    code: Status
    message: str = ""
    language: str = "en"


@dataclass(frozen=True, slots=True)
class HandleResponse:
    id: int
    handle: bytes


@dataclass(frozen=True, slots=True)
class DataResponse:
    id: int
    data: Payload


class NameEntry(NamedTuple):  # a NamedTuple: a listing builds one per entry
    filename: str
    longname: str
    attrs: Attrs = EMPTY_ATTRS


@dataclass(frozen=True, slots=True)
class NameResponse:
    id: int
    entries: tuple[NameEntry, ...]


class NameBatch(NamedTuple):
    """A listing's entries already in their wire form (what a READDIR reads on a worker):
    ``entries`` of them, each filename, longname and attributes, in ``wire``."""

    entries: int
    wire: bytes


@dataclass(frozen=True, slots=True)
class NameBatchResponse:
    """SSH_FXP_NAME for a READDIR batch; the same packet as NameResponse, made ahead."""

    id: int
    batch: NameBatch


@dataclass(frozen=True, slots=True)
class AttrsResponse:
    id: int
    attrs: Attrs


@dataclass(frozen=True, slots=True)
class ExtendedReply:
    """SSH_FXP_EXTENDED_REPLY; ``data`` is the extension-specific payload after the id."""

    id: int
    data: bytes


Response = (
    VersionResponse
    | StatusResponse
    | HandleResponse
    | DataResponse
    | NameResponse
    | NameBatchResponse
    | AttrsResponse
    | ExtendedReply
)


class StatusError(Exception):
    """Raised inside request handling to answer with a specific status and message."""

    def __init__(self, code: Status, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
