"""Legacy scp source (``scp -f``): send files and trees from the jailed storage."""

from __future__ import annotations

import os
import stat

from twisted.internet.defer import Deferred

from sftpd.apps.contract import ChannelIO, SessionContext
from sftpd.apps.scp.proto import (
    ACK,
    END,
    AckReader,
    EndOfInput,
    encode_dir_start,
    encode_file_start,
    encode_times,
)
from sftpd.apps.scp.sink import ScpAbort, ScpDriver, ScpOptions, strerror_text
from sftpd.storage import vpath
from sftpd.storage.base import File, Storage

__all__ = ["ScpSource"]

CHUNK = 64 * 1024
HIGH_WATER = 256 * 1024  # stop reading while this much output waits for the peer's window
MAX_DEPTH = 100  # directory nesting sent


def _read_full(file: File, size: int, offset: int) -> bytes:
    """Read ``size`` bytes unless the file ends first (pread may return less)."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        piece = file.pread(size - got, offset + got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _list_names(storage: Storage, path: str) -> list[str]:
    handle = storage.opendir(path)
    try:
        names: list[str] = []
        while batch := handle.read(256):
            names.extend(name for name, _ in batch if name not in (".", ".."))
    finally:
        handle.close()
    return sorted(names)


class ScpSource(ScpDriver):
    """``scp -f PATH...``: send files and trees from storage, one record at a time."""

    def __init__(self, ctx: SessionContext, io: ChannelIO, opts: ScpOptions) -> None:
        super().__init__(ctx, io, opts)
        self._acks = AckReader()

    def _feed(self, data: bytes) -> None:
        self._acks.feed(data)

    def _feed_eof(self) -> None:
        self._acks.feed_eof()

    async def _drained(self) -> None:
        while self._io.pending_output() > HIGH_WATER:
            self._check()
            waiter: Deferred[None] = Deferred()
            self._drain_waiter = waiter
            await waiter
        self._check()

    async def _response(self) -> bool:
        """Wait for the receiver's answer: True for an ack, False for a warning."""
        while (answer := self._acks.next_response()) is None:
            await self._more_input()
        if answer is True:
            return True
        if isinstance(answer, EndOfInput):
            raise ScpAbort(1)  # lost connection
        self._errors += 1
        if answer.fatal:
            raise ScpAbort(1)
        return False

    async def _run(self) -> int:
        await self._response()  # the receiver says it is ready
        for raw in self._opts.paths:
            shown = os.fsdecode(raw)
            while len(shown) > 1 and shown.endswith("/"):
                shown = shown[:-1]
            await self._send(vpath.normalize(shown, self._ctx.home), shown, 0)
        return self._status()

    def _record_name(self, path: str, shown: str) -> bytes | None:
        name = shown.rpartition("/")[2]
        if name in ("", ".", ".."):
            name = vpath.split(path)[1]
        encoded = os.fsencode(name)
        if not encoded:
            self._warn(f"{shown}: cannot be sent by name")
            return None
        if b"\n" in encoded:
            self._warn(f"{shown}: name contains a newline")
            return None
        return encoded

    async def _times(self, st: os.stat_result) -> bool:
        if not self._opts.preserve:
            return True
        self._io.write(encode_times(int(st.st_mtime), int(st.st_atime)))
        return await self._response()

    async def _send(self, path: str, shown: str, depth: int) -> None:
        try:
            st = await self._call(self._storage.stat, path)
        except OSError as exc:
            self._warn(f"{shown}: {strerror_text(exc)}")
            return
        if stat.S_ISDIR(st.st_mode) and self._opts.recursive:
            await self._send_dir(path, shown, st, depth)
            return
        if not stat.S_ISREG(st.st_mode):
            self._warn(f"{shown}: not a regular file")
            return
        name = self._record_name(path, shown)
        if name is None:
            return
        try:
            file = await self._open(path, os.O_RDONLY, 0)
            st = await self._call(file.fstat)
        except OSError as exc:
            await self._close_file()
            self._warn(f"{shown}: {strerror_text(exc)}")
            return
        if await self._times(st):
            self._io.write(encode_file_start(st.st_mode & 0o7777, st.st_size, name))
            if await self._response():
                await self._stream(file, st.st_size, shown)
                return
        await self._close_file()

    async def _stream(self, file: File, size: int, shown: str) -> None:
        problem: str | None = None
        offset = 0
        while offset < size:
            amount = min(CHUNK, size - offset)
            data = b""
            if problem is None:
                try:
                    data = await self._call(_read_full, file, amount, offset)
                except OSError as exc:
                    problem = strerror_text(exc)
                if problem is None and len(data) < amount:
                    problem = "file shrank while being sent"
            if len(data) < amount:  # keep the receiver in step: pad with zeros
                data += bytes(amount - len(data))
            self._io.write(data)
            offset += amount
            await self._drained()
        closing = await self._close_file()
        if problem is None and closing is not None:
            problem = strerror_text(closing)
        if problem is None:
            self._io.write(ACK)
        else:
            self._warn(f"{shown}: {problem}")
        await self._response()

    async def _send_dir(self, path: str, shown: str, st: os.stat_result, depth: int) -> None:
        if depth >= MAX_DEPTH:
            self._warn(f"{shown}: directories nested too deeply")
            return
        try:
            names = await self._call(_list_names, self._storage, path)
        except OSError as exc:
            self._warn(f"{shown}: {strerror_text(exc)}")
            return
        name = self._record_name(path, shown)
        if name is None or not await self._times(st):
            return
        self._io.write(encode_dir_start(st.st_mode & 0o7777, name))
        if not await self._response():
            return
        prefix = "" if shown == "/" else shown
        for child in names:
            await self._send(vpath.normalize(child, path), f"{prefix}/{child}", depth + 1)
        self._io.write(END)
        await self._response()
