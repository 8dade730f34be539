"""Legacy scp (``scp -O``) over the jailed storage: options, the shared driver, the sink (-t)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sftpd.apps.contract import ChannelIO, SessionContext
from sftpd.apps.scp.proto import (
    ACK,
    DirEnd,
    DirStart,
    FileData,
    FileEnd,
    FileStart,
    ProtocolError,
    RemoteError,
    SinkEvent,
    SinkParser,
    Times,
    encode_error,
)
from sftpd.storage import vpath
from sftpd.storage.atomic import abandon
from sftpd.storage.base import File, Storage
from sftpd.storage.quota import LimitExceeded, check_upload
from sftpd.storage.rules import RuleDenied

__all__ = [
    "ScpAbort",
    "ScpDriver",
    "ScpNotServed",
    "ScpOptions",
    "ScpSink",
    "ScpUsageError",
    "parse_scp_args",
    "strerror_text",
]

P = ParamSpec("P")
T = TypeVar("T")

log = Logger(namespace="sftpd.apps.scp.sink")

WRITE_CHUNK = 256 * 1024


# Unparsed upload bytes beyond this stop the channel window (see ScpSink._feed).
_PAUSE_INPUT_AT = 1024 * 1024


class ScpUsageError(Exception):
    """The scp command line is not one a legacy scp client sends."""


class ScpNotServed(ScpUsageError):
    """Neither -t nor -f: someone asked to run the scp *client* here, which is never served."""


@dataclass(frozen=True)
class ScpOptions:
    """What ``scp [-v] [-r] [-p] [-d] (-t|-f) [--] PATH...`` asked for."""

    sink: bool
    recursive: bool = False
    preserve: bool = False
    target_dir: bool = False
    paths: tuple[bytes, ...] = ()


def parse_scp_args(argv: list[bytes]) -> ScpOptions:
    """Parse the words after ``scp`` (getopt style: flags may be combined, ``--`` ends them)."""
    flags: set[str] = set()
    rest = list(argv)
    while rest and rest[0].startswith(b"-") and rest[0] != b"-":
        word = rest.pop(0)
        if word == b"--":
            break
        flags.update(word[1:].decode("ascii", "replace"))
    if "t" not in flags and "f" not in flags:
        raise ScpNotServed("neither -t nor -f")
    if "t" in flags and "f" in flags:
        raise ScpUsageError("-t and -f exclude each other")
    unknown = sorted(flags - set("vrpdtfq"))
    if unknown:
        raise ScpUsageError(f"unsupported option -- {unknown[0]!r}")
    return ScpOptions(
        sink="t" in flags,
        recursive="r" in flags,
        preserve="p" in flags,
        target_dir="d" in flags,
        paths=tuple(rest),
    )


class _Lost(Exception):
    """The channel closed: stop without answering."""


class ScpAbort(Exception):
    """End the session now with this exit status (the peer was already told)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def strerror_text(exc: OSError) -> str:
    if isinstance(exc, RuleDenied):
        return exc.reason  # names the rule, as the SFTP status message does
    if isinstance(exc, LimitExceeded):  # names the limit and the numbers
        return str(exc.strerror)
    return os.strerror(exc.errno) if exc.errno else "Input/output error"


def _stat_or_none(storage: Storage, path: str) -> os.stat_result | None:
    try:
        return storage.stat(path)
    except FileNotFoundError:
        return None


class ScpDriver:
    """What sink and source share: the coroutine, input and drain waits, exactly one exit."""

    def __init__(self, ctx: SessionContext, io: ChannelIO, opts: ScpOptions) -> None:
        self._ctx = ctx
        self._io = io
        self._opts = opts
        self._storage = ctx.storage
        self._errors = 0
        self._lost = False
        self._file: File | None = None
        self._input_waiter: Deferred[None] | None = None
        self._drain_waiter: Deferred[None] | None = None
        self._input_paused = False

    def start(self) -> None:
        Deferred.fromCoroutine(self._main())

    async def _main(self) -> None:
        status = 1
        try:
            status = await self._run()
        except _Lost:
            await self._close_file()
            return
        except ScpAbort as abort:
            status = abort.status
        except Exception:
            log.failure("scp failed for {user}", user=self._ctx.username)
            self._io.write(encode_error(b"internal server error", fatal=True))
        await self._close_file()
        self._io.exit(status)

    async def _run(self) -> int:
        raise NotImplementedError

    # ---- ChannelApp ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._feed(data)
        self._wake_input()

    def eof_received(self) -> None:
        self._feed_eof()
        self._wake_input()

    def output_drained(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None:
            waiter.callback(None)

    def connection_lost(self) -> None:
        self._lost = True
        abandon = getattr(self._ctx.storage, "abandon", None)  # an events recorder's
        if abandon is not None:
            abandon()  # a file still open is incomplete, whatever closes it next
        self._wake_input()
        self.output_drained()

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError

    def _feed_eof(self) -> None:
        raise NotImplementedError

    # ---- helpers ---------------------------------------------------------------------
    def _wake_input(self) -> None:
        waiter, self._input_waiter = self._input_waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _check(self) -> None:
        if self._lost:
            raise _Lost()

    async def _more_input(self) -> None:
        self._check()
        if self._input_paused:
            self._input_paused = False
            self._io.resume_reading()
        waiter: Deferred[None] = Deferred()
        self._input_waiter = waiter
        await waiter
        self._check()

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        result = await self._ctx.blocking.run(fn, *args, **kwargs)
        self._check()
        return result

    async def _open(self, path: str, flags: int, mode: int) -> File:
        file = await self._ctx.blocking.run(self._storage.open, path, flags, mode)
        self._file = file  # closed by _close_file even if the channel is gone
        self._check()
        return file

    async def _close_file(self) -> OSError | None:
        file, self._file = self._file, None
        if file is None:
            return None
        if self._unfinished():
            abandon(file)  # an atomic upload that did not end cleanly never lands
        try:
            await self._ctx.blocking.run(file.close)
        except OSError as exc:
            return exc
        return None

    def _unfinished(self) -> bool:
        """Whether the open file's transfer has not ended cleanly (the sink says)."""
        return True

    def _warn(self, message: str) -> None:
        """Send ``\\x01scp: message`` (the transfer goes on) and count an error."""
        self._errors += 1
        self._io.write(encode_error(os.fsencode(message), fatal=False))

    def _status(self) -> int:
        return 1 if self._errors else 0


@dataclass
class _Upload:
    path: str
    shown: str
    mode: int
    existed: bool
    times: Times | None
    offset: int = 0
    error: str | None = None


@dataclass
class _Dir:
    path: str
    shown: str
    mode: int
    set_mode: bool
    times: Times | None


class ScpSink(ScpDriver):
    """``scp -t TARGET``: receive files and trees and write them to storage."""

    def __init__(self, ctx: SessionContext, io: ChannelIO, opts: ScpOptions) -> None:
        super().__init__(ctx, io, opts)
        # bigger pieces than the parser default: fewer trips to the blocking pool per file
        self._parser = SinkParser(recursive=opts.recursive, max_chunk=WRITE_CHUNK)
        self._upload: _Upload | None = None
        self._stack: list[_Dir] = []
        self._target = ""
        self._target_shown = ""
        self._target_is_dir = False

    def _unfinished(self) -> bool:
        return self._upload is not None  # _end_file clears it before closing

    def _feed(self, data: bytes) -> None:
        self._parser.feed(data)
        # The disk may be slower than the client: stop granting window past 1 MiB of
        # unparsed input (resumed when the driver asks for more input).
        if not self._input_paused and self._parser.buffered > _PAUSE_INPUT_AT:
            self._input_paused = True
            self._io.pause_reading()

    def _feed_eof(self) -> None:
        self._parser.feed_eof()

    def _fatal(self, message: str) -> ScpAbort:
        self._io.write(encode_error(os.fsencode(message), fatal=True))
        return ScpAbort(1)

    async def _next(self) -> SinkEvent:
        while (event := self._parser.next_event()) is None:
            await self._more_input()
        return event

    async def _run(self) -> int:
        if len(self._opts.paths) != 1:
            raise self._fatal("ambiguous target")
        self._target_shown = os.fsdecode(self._opts.paths[0])
        self._target = vpath.normalize(self._target_shown, self._ctx.home)
        try:
            st = await self._call(self._storage.stat, self._target)
            self._target_is_dir = stat.S_ISDIR(st.st_mode)
            problem = None if self._target_is_dir else OSError(errno.ENOTDIR, "")
        except OSError as exc:
            problem = exc
        if self._opts.target_dir and problem is not None:
            raise self._fatal(f"{self._target_shown}: {strerror_text(problem)}")
        self._io.write(ACK)
        times: Times | None = None
        while True:
            event = await self._next()
            if isinstance(event, Times):
                times = event
                self._io.write(ACK)
            elif isinstance(event, FileStart):
                await self._start_file(event, times)
                times = None
            elif isinstance(event, FileData):
                await self._write(event.data)
            elif isinstance(event, FileEnd):
                await self._end_file(event)
            elif isinstance(event, DirStart):
                await self._start_dir(event, times)
                times = None
            elif isinstance(event, DirEnd):
                if not self._stack:
                    self._io.write(ACK)
                    return self._status()
                await self._end_dir(self._stack.pop())
                self._io.write(ACK)
            elif isinstance(event, RemoteError):
                self._errors += 1
                if event.fatal:
                    return 1
            elif isinstance(event, ProtocolError):
                log.info(
                    "scp protocol error from {user}: {msg}",
                    user=self._ctx.username,
                    msg=event.message,
                )
                raise self._fatal(event.message)
            else:  # EndOfInput
                return self._status()

    def _destination(self, name: bytes) -> tuple[str, str]:
        """(virtual path, path as OpenSSH would show it) for a C or D record's name."""
        text = os.fsdecode(name)
        if self._stack:
            top = self._stack[-1]
            return vpath.normalize(text, top.path), f"{top.shown}/{text}"
        if self._target_is_dir:
            sep = "" if self._target_shown == "/" else "/"
            return vpath.normalize(text, self._target), f"{self._target_shown}{sep}{text}"
        return self._target, self._target_shown

    def _mode(self, mode: int) -> int:
        """The mode a file or directory ends with: the sender's with -p, else the one the
        rules give a new one. The storage's rules drop setuid/setgid/sticky either way."""
        return mode if self._opts.preserve else self._ctx.rules.create_mode(mode)

    async def _slash_error(self, path: str) -> OSError:
        """open(2) of ``dir/`` when dir is no directory: ENOTDIR, EISDIR or the parent's error."""
        st = await self._call(_stat_or_none, self._storage, path)
        if st is not None:
            return OSError(errno.ENOTDIR, "")
        parent = await self._call(_stat_or_none, self._storage, vpath.split(path)[0])
        return OSError(errno.EISDIR if parent is not None else errno.ENOENT, "")

    async def _start_file(self, event: FileStart, times: Times | None) -> None:
        path, shown = self._destination(event.name)
        mode = self._mode(event.mode)
        try:
            if shown.endswith("/"):
                raise await self._slash_error(path)
            st = await self._call(_stat_or_none, self._storage, path)
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, "")
            if st is not None and not stat.S_ISREG(st.st_mode):
                self._parser.reject()
                self._warn(f"{shown}: not a regular file")
                return
            await self._call(check_upload, self._storage, event.size)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            await self._open(path, flags, mode | stat.S_IWUSR)
        except OSError as exc:
            self._parser.reject()
            self._warn(f"{shown}: {strerror_text(exc)}")
            return
        self._parser.accept()
        self._upload = _Upload(path, shown, mode, existed=st is not None, times=times)
        self._io.write(ACK)

    async def _write(self, data: bytes) -> None:
        upload, file = self._upload, self._file
        if upload is None or file is None:
            raise RuntimeError("file data outside a file")
        if upload.error is None:
            try:
                await self._call(file.pwrite, data, upload.offset)
            except OSError as exc:  # keep reading, to stay in step with the sender
                upload.error = f"{upload.shown}: {strerror_text(exc)}"
        upload.offset += len(data)

    async def _end_file(self, event: FileEnd) -> None:
        upload, file = self._upload, self._file
        if upload is None or file is None:
            raise RuntimeError("end of a file never started")
        self._upload = None
        if event.error is not None:
            self._errors += 1  # the sender could not read its file; it said so itself
            abandon(file)  # what arrived is not the file: an atomic upload keeps the old one
        note = upload.error
        if note is None and (self._opts.preserve or not upload.existed):
            try:
                await self._call(file.chmod, upload.mode)
            except OSError as exc:
                note = f"{upload.shown}: set mode: {strerror_text(exc)}"
        closing = await self._close_file()
        self._check()
        if closing is not None and note is None:
            note = f"{upload.shown}: close: {strerror_text(closing)}"
        if upload.times is not None and upload.error is None:
            try:
                t = upload.times
                await self._call(self._storage.utime, upload.path, t.atime, t.mtime)
            except (OSError, OverflowError, ValueError) as exc:
                if note is None:
                    why = strerror_text(exc) if isinstance(exc, OSError) else "out of range"
                    note = f"{upload.shown}: set times: {why}"
        if note is None:
            self._io.write(ACK)
        else:
            self._warn(note)

    async def _start_dir(self, event: DirStart, times: Times | None) -> None:
        path, shown = self._destination(event.name)
        mode = self._mode(event.mode)
        try:
            st = await self._call(_stat_or_none, self._storage, path)
            if st is None:
                await self._call(self._storage.mkdir, path, mode | stat.S_IRWXU)
            elif not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, "")
            elif self._opts.preserve:
                await self._try(self._storage.chmod, path, mode)
        except OSError as exc:
            self._parser.reject()
            self._warn(f"{shown}: {strerror_text(exc)}")
            return
        self._parser.accept()
        set_mode = st is None or self._opts.preserve
        self._stack.append(_Dir(path, shown, mode, set_mode, times))
        self._io.write(ACK)

    async def _end_dir(self, done: _Dir) -> None:
        if done.times is not None:
            await self._try(self._storage.utime, done.path, done.times.atime, done.times.mtime)
        if done.set_mode:
            await self._try(self._storage.chmod, done.path, done.mode)

    async def _try(self, fn: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
        """Best effort, as OpenSSH's ``(void) chmod(...)`` on directories."""
        try:
            await self._call(fn, *args, **kwargs)
        except (OSError, OverflowError, ValueError):
            pass
