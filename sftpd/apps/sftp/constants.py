"""SFTP v3 wire constants: packet types, status codes, flags, limits and extension names."""

from __future__ import annotations

import enum

SFTP_VERSION = 3

# Limits we enforce and advertise through limits@openssh.com (OpenSSH's own values).
MAX_PACKET_LENGTH = 256 * 1024
MAX_READ_LENGTH = 255 * 1024
MAX_WRITE_LENGTH = 255 * 1024
# The framer accepts a little more than MAX_PACKET_LENGTH: a full WRITE carries a header.
FRAMER_MAX_PACKET = MAX_PACKET_LENGTH + 1024
# A DATA reply is uint32 length, byte type, uint32 id, uint32 data length, then the data.
DATA_HEADER_LENGTH = 13


class PacketType(enum.IntEnum):
    """SSH_FXP_* packet types of filexfer version 3."""

    INIT = 1
    VERSION = 2
    OPEN = 3
    CLOSE = 4
    READ = 5
    WRITE = 6
    LSTAT = 7
    FSTAT = 8
    SETSTAT = 9
    FSETSTAT = 10
    OPENDIR = 11
    READDIR = 12
    REMOVE = 13
    MKDIR = 14
    RMDIR = 15
    REALPATH = 16
    STAT = 17
    RENAME = 18
    READLINK = 19
    SYMLINK = 20
    STATUS = 101
    HANDLE = 102
    DATA = 103
    NAME = 104
    ATTRS = 105
    EXTENDED = 200
    EXTENDED_REPLY = 201


class Status(enum.IntEnum):
    """SSH_FX_* status codes of filexfer version 3."""

    OK = 0
    EOF = 1
    NO_SUCH_FILE = 2
    PERMISSION_DENIED = 3
    FAILURE = 4
    BAD_MESSAGE = 5
    NO_CONNECTION = 6
    CONNECTION_LOST = 7
    OP_UNSUPPORTED = 8


class OpenFlag(enum.IntFlag):
    """SSH_FXF_* flags of an OPEN request."""

    READ = 0x01
    WRITE = 0x02
    APPEND = 0x04
    CREAT = 0x08
    TRUNC = 0x10
    EXCL = 0x20


class AttrFlag(enum.IntFlag):
    """SSH_FILEXFER_ATTR_* flags telling which fields an ATTRS structure carries."""

    SIZE = 0x00000001
    UIDGID = 0x00000002
    PERMISSIONS = 0x00000004
    ACMODTIME = 0x00000008
    EXTENDED = 0x80000000


# The same flags as plain ints for hot paths: `int & IntFlag` goes through the enum
# machinery (several Python calls per test).
FXF_READ, FXF_WRITE, FXF_APPEND = int(OpenFlag.READ), int(OpenFlag.WRITE), int(OpenFlag.APPEND)
FXF_CREAT, FXF_TRUNC, FXF_EXCL = int(OpenFlag.CREAT), int(OpenFlag.TRUNC), int(OpenFlag.EXCL)
ATTR_SIZE, ATTR_UIDGID = int(AttrFlag.SIZE), int(AttrFlag.UIDGID)
ATTR_PERMISSIONS, ATTR_ACMODTIME = int(AttrFlag.PERMISSIONS), int(AttrFlag.ACMODTIME)
ATTR_EXTENDED = int(AttrFlag.EXTENDED)

KNOWN_ATTR_FLAGS = int(
    AttrFlag.SIZE | AttrFlag.UIDGID | AttrFlag.PERMISSIONS | AttrFlag.ACMODTIME | AttrFlag.EXTENDED
)

# statvfs@openssh.com f_flag bits.
STATVFS_RDONLY = 0x1
STATVFS_NOSUID = 0x2

# Extension names (as sent on the wire).
EXT_POSIX_RENAME = b"posix-rename@openssh.com"
EXT_STATVFS = b"statvfs@openssh.com"
EXT_FSTATVFS = b"fstatvfs@openssh.com"
EXT_HARDLINK = b"hardlink@openssh.com"
EXT_FSYNC = b"fsync@openssh.com"
EXT_LSETSTAT = b"lsetstat@openssh.com"
EXT_LIMITS = b"limits@openssh.com"
EXT_EXPAND_PATH = b"expand-path@openssh.com"
EXT_COPY_DATA = b"copy-data"
EXT_HOME_DIRECTORY = b"home-directory"
EXT_USERS_GROUPS_BY_ID = b"users-groups-by-id@openssh.com"
EXT_CHECK_FILE_NAME = b"check-file-name"
EXT_CHECK_FILE_HANDLE = b"check-file-handle"
CHECK_FILE_REPLY = b"check-file"

# What SSH_FXP_VERSION advertises, in order: (name, version data).
ADVERTISED_EXTENSIONS: tuple[tuple[bytes, bytes], ...] = (
    (EXT_POSIX_RENAME, b"1"),
    (EXT_STATVFS, b"2"),
    (EXT_FSTATVFS, b"2"),
    (EXT_HARDLINK, b"1"),
    (EXT_FSYNC, b"1"),
    (EXT_LSETSTAT, b"1"),
    (EXT_LIMITS, b"1"),
    (EXT_EXPAND_PATH, b"1"),
    (EXT_COPY_DATA, b"1"),
    (EXT_HOME_DIRECTORY, b"1"),
    (EXT_USERS_GROUPS_BY_ID, b"1"),
    (EXT_CHECK_FILE_NAME, b"1"),
    (EXT_CHECK_FILE_HANDLE, b"1"),
)

# check-file: algorithms we hash with, and the smallest block size the draft allows.
CHECK_FILE_ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")
CHECK_FILE_MIN_BLOCK_SIZE = 256
