"""The SFTP extensions we advertise: OpenSSH's set, copy-data, home-directory, check-file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from sftpd.apps.sftp import messages as m
from sftpd.apps.sftp.attrs import IdNames
from sftpd.apps.sftp.codec import pack_strings, pack_uint64s
from sftpd.apps.sftp.constants import (
    CHECK_FILE_ALGORITHMS,
    CHECK_FILE_MIN_BLOCK_SIZE,
    CHECK_FILE_REPLY,
    MAX_PACKET_LENGTH,
    MAX_READ_LENGTH,
    MAX_WRITE_LENGTH,
    STATVFS_NOSUID,
    STATVFS_RDONLY,
    Status,
)
from sftpd.storage.base import File, Storage

if TYPE_CHECKING:
    from sftpd.apps.sftp.handler import SftpHandler

_U64_MASK = 0xFFFFFFFFFFFFFFFF
# Room for the reply's own header (type, id, strings) inside one packet.
_REPLY_BUDGET = MAX_PACKET_LENGTH - 1024
_HASH_CHUNK = 1024 * 1024


async def posix_rename(h: SftpHandler, request: m.PosixRename) -> m.Response:
    old, new = h.path(request.oldpath), h.path(request.newpath)
    await h.run(h.storage.rename, old, new, overwrite=True)
    return h.ok(request.id)


def statvfs_reply(request_id: int, st: os.statvfs_result, read_only: bool) -> m.ExtendedReply:
    flag = 0
    if st.f_flag & os.ST_RDONLY or read_only:
        flag |= STATVFS_RDONLY
    if st.f_flag & os.ST_NOSUID:
        flag |= STATVFS_NOSUID
    values = (
        st.f_bsize,
        st.f_frsize,
        st.f_blocks,
        st.f_bfree,
        st.f_bavail,
        st.f_files,
        st.f_ffree,
        st.f_favail,
        st.f_fsid,
        flag,
        st.f_namemax,
    )
    return m.ExtendedReply(request_id, pack_uint64s(*(v & _U64_MASK for v in values)))


async def statvfs(h: SftpHandler, request: m.Statvfs) -> m.Response:
    path = h.path(request.path)
    st = await h.run(h.storage.statvfs, path)
    return statvfs_reply(request.id, st, h.ctx.rules.read_only_at(path))


async def fstatvfs(h: SftpHandler, request: m.Fstatvfs) -> m.Response:
    entry = h.handles.acquire_file(request.handle)
    try:
        st = await h.ctx.blocking.run(entry.file.statvfs)
    finally:
        h.handles.release(entry)
    return statvfs_reply(request.id, st, h.ctx.rules.read_only_at(entry.path))


async def hardlink(h: SftpHandler, request: m.Hardlink) -> m.Response:
    await h.run(h.storage.link, h.path(request.oldpath), h.path(request.newpath))
    return h.ok(request.id)


async def fsync(h: SftpHandler, request: m.Fsync) -> m.Response:
    await h.with_file(request.handle, lambda f: f.fsync())
    return h.ok(request.id)


async def lsetstat(h: SftpHandler, request: m.Lsetstat) -> m.Response:
    await h.setstat(h.path(request.path), request.attrs, follow=False)
    return h.ok(request.id)


async def limits(h: SftpHandler, request: m.Limits) -> m.Response:
    data = pack_uint64s(
        MAX_PACKET_LENGTH, MAX_READ_LENGTH, MAX_WRITE_LENGTH, h.ctx.sftp.max_handles
    )
    return m.ExtendedReply(request.id, data)


def _expand_home(path: str, username: str, home: str) -> str:
    """``~`` and ``~/x`` (or ``~user`` for oneself) become the home directory."""
    if not path.startswith("~"):
        return path
    user, sep, rest = path[1:].partition("/")
    if user and user != username:
        raise m.StatusError(Status.NO_SUCH_FILE, "No such user")
    return home.rstrip("/") + "/" + rest if sep else home


async def expand_path(h: SftpHandler, request: m.ExpandPath) -> m.Response:
    path = _expand_home(request.path, h.ctx.username, h.ctx.home)
    return await h.name_reply(request.id, h.path(path))


async def home_directory(h: SftpHandler, request: m.HomeDirectory) -> m.Response:
    if request.username not in ("", h.ctx.username):
        raise m.StatusError(Status.NO_SUCH_FILE, "No such user")
    return await h.name_reply(request.id, h.path(h.ctx.home))


async def copy_data(h: SftpHandler, request: m.CopyData) -> m.Response:
    if request.read_handle == request.write_handle:
        raise m.StatusError(Status.FAILURE, "read and write handles must differ")
    src = h.handles.acquire_file(request.read_handle)
    try:
        dst = h.handles.acquire_file(request.write_handle)
        try:
            if not src.readable or not dst.writable:
                raise m.StatusError(Status.PERMISSION_DENIED, "Permission denied")
            await h.run(
                h.storage.copy_range,
                src.file,
                request.read_offset,
                request.read_length,
                dst.file,
                request.write_offset,
            )
        finally:
            h.handles.release(dst)
    finally:
        h.handles.release(src)
    return h.ok(request.id)


def _names_reply(uids: tuple[int, ...], gids: tuple[int, ...], names: IdNames) -> bytes:
    users = pack_strings([(names.user(uid) or "").encode("utf-8", "replace") for uid in uids])
    groups = pack_strings([(names.group(gid) or "").encode("utf-8", "replace") for gid in gids])
    if len(users) + len(groups) + 8 > _REPLY_BUDGET:
        raise m.StatusError(Status.FAILURE, "reply too large")
    return pack_strings([users, groups])


async def users_groups_by_id(h: SftpHandler, request: m.UsersGroupsById) -> m.Response:
    data: bytes = await h.run(_names_reply, request.uids, request.gids, h.names)
    return m.ExtendedReply(request.id, data)


# ---- check-file (draft-ietf-secsh-filexfer-extensions-00) ------------------------------


def choose_algorithm(offered: tuple[str, ...]) -> str:
    """The first algorithm of the client's list that we support."""
    for name in offered:
        if name.lower() in CHECK_FILE_ALGORITHMS:
            return name.lower()
    raise m.StatusError(Status.OP_UNSUPPORTED, "no supported hash algorithm")


def hash_range(file: File, algorithm: str, start: int, length: int, block_size: int) -> bytes:
    """Hashes of [start, start+length) (length 0: to end of file), one per ``block_size``
    bytes or one for the whole range when ``block_size`` is 0 (blocking)."""
    if block_size and block_size < CHECK_FILE_MIN_BLOCK_SIZE:
        raise m.StatusError(
            Status.FAILURE, f"block size must be at least {CHECK_FILE_MIN_BLOCK_SIZE}"
        )
    size = file.fstat().st_size
    end = size if length == 0 else min(size, start + length)
    start = min(start, end)
    digest_size = hashlib.new(algorithm, usedforsecurity=False).digest_size
    if block_size:
        blocks = -(-(end - start) // block_size)
        if blocks * digest_size > _REPLY_BUDGET:
            raise m.StatusError(Status.FAILURE, "too many blocks for one reply")
        step = block_size
    else:
        step = max(end - start, 1)
    digests = []
    offset = start
    while True:
        block_end = min(offset + step, end)
        digest = hashlib.new(algorithm, usedforsecurity=False)
        pos = offset
        while pos < block_end:
            chunk = file.pread(min(_HASH_CHUNK, block_end - pos), pos)
            if not chunk:
                block_end = pos  # the file shrank: stop at its new end
                end = pos
                break
            digest.update(chunk)
            pos += len(chunk)
        if block_size and pos == offset:
            break  # no bytes: no block
        digests.append(digest.digest())
        offset = block_end
        if offset >= end:
            break
    return b"".join(digests)


def _check_file_reply(algorithm: str, digests: bytes) -> bytes:
    return pack_strings([CHECK_FILE_REPLY, algorithm.encode("ascii")]) + digests


def _hash_path(
    storage: Storage, path: str, algorithm: str, start: int, length: int, block_size: int
) -> bytes:
    file = storage.open(path, os.O_RDONLY, 0)
    try:
        return hash_range(file, algorithm, start, length, block_size)
    finally:
        file.close()


async def check_file_name(h: SftpHandler, request: m.CheckFileName) -> m.Response:
    algorithm = choose_algorithm(request.algorithms)
    digests: bytes = await h.run(
        _hash_path,
        h.storage,
        h.path(request.path),
        algorithm,
        request.start_offset,
        request.length,
        request.block_size,
    )
    return m.ExtendedReply(request.id, _check_file_reply(algorithm, digests))


async def check_file_handle(h: SftpHandler, request: m.CheckFileHandle) -> m.Response:
    algorithm = choose_algorithm(request.algorithms)
    entry = h.handles.acquire_file(request.handle)
    try:
        if not entry.readable:
            raise m.StatusError(Status.PERMISSION_DENIED, "handle not open for reading")
        digests: bytes = await h.run(
            hash_range,
            entry.file,
            algorithm,
            request.start_offset,
            request.length,
            request.block_size,
        )
    finally:
        h.handles.release(entry)
    return m.ExtendedReply(request.id, _check_file_reply(algorithm, digests))


Handler = Callable[[Any, Any], Coroutine[Any, Any, m.Response]]

# Decoded extension request type -> implementation.
HANDLERS: dict[type, Handler] = {
    m.PosixRename: posix_rename,
    m.Statvfs: statvfs,
    m.Fstatvfs: fstatvfs,
    m.Hardlink: hardlink,
    m.Fsync: fsync,
    m.Lsetstat: lsetstat,
    m.Limits: limits,
    m.ExpandPath: expand_path,
    m.CopyData: copy_data,
    m.HomeDirectory: home_directory,
    m.UsersGroupsById: users_groups_by_id,
    m.CheckFileName: check_file_name,
    m.CheckFileHandle: check_file_handle,
}
