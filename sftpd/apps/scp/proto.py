"""Sans-IO legacy scp (rcp) protocol: sink-side record parser, ack reader and record encoders."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import Literal

from sftpd.apps.cmdline import display

__all__ = [
    "ACK",
    "END",
    "AckReader",
    "DirEnd",
    "DirStart",
    "EndOfInput",
    "FileData",
    "FileEnd",
    "FileStart",
    "ProtocolError",
    "RemoteError",
    "Response",
    "SinkEvent",
    "SinkParser",
    "Times",
    "encode_dir_start",
    "encode_error",
    "encode_file_start",
    "encode_times",
    "safe_name",
]

ACK = b"\x00"
END = b"E\n"
MAX_LINE = 8192
MAX_CHUNK = 64 * 1024
_MAX_DIGITS = 19  # no more digits than 2**63 - 1 has; the value is checked as well
_MAX_NUMBER = (1 << 63) - 1  # a file size or a time must fit an off_t / time_t


@dataclass(frozen=True)
class FileStart:
    """``C<mode> <size> <name>``: a regular file follows (after the receiver accepts it)."""

    mode: int
    size: int
    name: bytes


@dataclass(frozen=True)
class FileData:
    """A piece of the current file's contents."""

    data: bytes


@dataclass(frozen=True)
class FileEnd:
    """The byte after the data: ``error`` is None for ``\\0``, else the sender's warning."""

    error: bytes | None = None


@dataclass(frozen=True)
class DirStart:
    """``D<mode> 0 <name>``: a directory whose records follow (after the receiver accepts)."""

    mode: int
    name: bytes


@dataclass(frozen=True)
class DirEnd:
    """``E``: the current directory is complete (at the top level: the sender is done)."""


@dataclass(frozen=True)
class Times:
    """``T<mtime> <usec> <atime> <usec>``: times for the next C or D record."""

    mtime: int
    atime: int


@dataclass(frozen=True)
class RemoteError:
    """``\\x01msg`` (warning, transfer goes on) or ``\\x02msg`` (fatal) from the peer."""

    message: bytes
    fatal: bool


@dataclass(frozen=True)
class ProtocolError:
    """The stream is broken; ``message`` is the text to report (after ``scp: ``). Final."""

    message: str


@dataclass(frozen=True)
class EndOfInput:
    """The peer closed its side cleanly between records."""


SinkEvent = (
    FileStart
    | FileData
    | FileEnd
    | DirStart
    | DirEnd
    | Times
    | RemoteError
    | ProtocolError
    | EndOfInput
)
Response = Literal[True] | RemoteError | EndOfInput  # True: a ``\0`` ack


class _State(Enum):
    RECORD = auto()
    DECIDE_FILE = auto()
    DECIDE_DIR = auto()
    DATA = auto()
    DATA_END = auto()
    DATA_END_MESSAGE = auto()
    BROKEN = auto()


def safe_name(name: bytes) -> bool:
    """True if ``name`` is one plain path component: no ``/``, not ``.``/``..``, no controls."""
    if name in (b"", b".", b".."):
        return False
    return not any(byte == 0x2F or byte < 0x20 or byte == 0x7F for byte in name)


class _Bad(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _number(field: bytes, what: str) -> int:
    if not field or not field.isdigit():
        raise _Bad(f"protocol error: {what} not present")
    # Nineteen digits still reach 9999999999999999999 > 2**63 - 1: check the value too,
    # before anything acts on it (a sink would otherwise create and truncate the file).
    if len(field) > _MAX_DIGITS or int(field) > _MAX_NUMBER:
        raise _Bad(f"protocol error: {what} out of range")
    return int(field)


def _parse_times(body: bytes) -> Times:
    fields = body.split(b" ")
    if len(fields) != 4:
        raise _Bad("protocol error: times not delimited")
    mtime = _number(fields[0], "mtime.sec")
    musec = _number(fields[1], "mtime.usec")
    atime = _number(fields[2], "atime.sec")
    ausec = _number(fields[3], "atime.usec")
    if musec > 999999 or ausec > 999999:
        raise _Bad("protocol error: times out of range")
    return Times(mtime=mtime, atime=atime)


def _parse_entry(kind: int, body: bytes) -> tuple[int, int, bytes]:
    """Parse ``<mode> <size> <name>`` (after the C or D) into (mode, size, name)."""
    mode_field = body[:4]
    if len(mode_field) != 4 or any(b not in b"01234567" for b in mode_field):
        raise _Bad("protocol error: bad mode")
    if body[4:5] != b" ":
        raise _Bad("protocol error: mode not delimited")
    size_field, sep, name = body[5:].partition(b" ")
    size = _number(size_field, "size")
    if not sep:
        raise _Bad("protocol error: size not delimited")
    if not safe_name(name):
        raise _Bad(f"error: unexpected filename: {display(name)}")
    if kind == ord("D") and size != 0:
        raise _Bad("protocol error: directory size not zero")
    return int(mode_field, 8), size, name


class SinkParser:
    """Turns the bytes a sender writes into events, one at a time.

    Feed bytes in any split with ``feed``, then call ``next_event`` until it returns None
    (more bytes needed, or a decision is pending). After a FileStart or DirStart the
    receiver must call ``accept()`` (it acknowledged: data or nested records follow) or
    ``reject()`` (it answered with an error: the sender skips that file or directory).
    A ProtocolError or a fatal RemoteError is the last event.
    """

    def __init__(self, *, recursive: bool, max_chunk: int = MAX_CHUNK) -> None:
        self._recursive = recursive
        self._max_chunk = max_chunk
        self._buf = bytearray()
        self._eof = False
        self._state = _State.RECORD
        self._remaining = 0
        self._pending_size = 0
        self.depth = 0

    def feed(self, data: bytes) -> None:
        """Add bytes received from the sender."""
        if self._state is not _State.BROKEN and not self._eof:
            self._buf += data

    def feed_eof(self) -> None:
        """The sender closed its side."""
        self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf)

    @property
    def awaiting_decision(self) -> bool:
        """True after a FileStart/DirStart until ``accept`` or ``reject`` is called."""
        return self._state in (_State.DECIDE_FILE, _State.DECIDE_DIR)

    def accept(self) -> None:
        """The receiver acknowledged the pending FileStart or DirStart."""
        if self._state is _State.DECIDE_FILE:
            self._remaining = self._pending_size
            self._state = _State.DATA
        elif self._state is _State.DECIDE_DIR:
            self.depth += 1
            self._state = _State.RECORD
        else:
            raise RuntimeError("accept() without a pending FileStart or DirStart")

    def reject(self) -> None:
        """The receiver refused the pending FileStart or DirStart with an error line."""
        if not self.awaiting_decision:
            raise RuntimeError("reject() without a pending FileStart or DirStart")
        self._state = _State.RECORD

    def next_event(self) -> SinkEvent | None:
        """The next event, or None when more input (or a decision) is needed."""
        try:
            return self._next()
        except _Bad as bad:
            return self._break(bad.message)

    def _break(self, message: str) -> ProtocolError:
        self._state = _State.BROKEN
        self._buf.clear()
        return ProtocolError(message)

    def _line(self) -> bytes | None:
        """Take one ``\\n``-terminated line (without the newline) off the buffer."""
        end = self._buf.find(b"\n", 0, MAX_LINE)
        if end < 0:
            if len(self._buf) >= MAX_LINE:
                raise _Bad("protocol error: record too long")
            if self._eof and self._buf:
                raise _Bad("protocol error: lost connection")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line

    def _next(self) -> SinkEvent | None:
        state = self._state
        if state is _State.RECORD:
            return self._record()
        if state is _State.DATA:
            return self._data()
        if state is _State.DATA_END:
            if not self._buf:
                if self._eof:
                    raise _Bad("protocol error: lost connection")
                return None
            first = self._buf[0]
            if first == 0:
                del self._buf[:1]
                self._state = _State.RECORD
                return FileEnd()
            if first not in (1, 2):
                raise _Bad("protocol error: expected end of file data")
            self._state = _State.DATA_END_MESSAGE
            return self._data_end_message()
        if state is _State.DATA_END_MESSAGE:
            return self._data_end_message()
        return None  # awaiting a decision, or broken

    def _data_end_message(self) -> SinkEvent | None:
        line = self._line()
        if line is None:
            return None
        self._state = _State.RECORD
        if line[0] == 2:
            self._state = _State.BROKEN
            return RemoteError(message=line[1:], fatal=True)
        return FileEnd(error=line[1:])

    def _data(self) -> SinkEvent | None:
        if self._remaining == 0:
            self._state = _State.DATA_END
            return self._next()
        if not self._buf:
            if self._eof:
                raise _Bad("protocol error: lost connection")
            return None
        take = min(self._remaining, len(self._buf), self._max_chunk)
        chunk = bytes(self._buf[:take])
        del self._buf[:take]
        self._remaining -= take
        if self._remaining == 0:
            self._state = _State.DATA_END
        return FileData(chunk)

    def _record(self) -> SinkEvent | None:
        if not self._buf:
            return EndOfInput() if self._eof else None
        if self._buf[0] == 0x0A:
            raise _Bad("protocol error: unexpected <newline>")
        line = self._line()
        if line is None:
            return None
        kind = line[0]
        if kind in (1, 2):
            if kind == 2:
                self._state = _State.BROKEN
            return RemoteError(message=line[1:], fatal=kind == 2)
        if kind == ord("E"):
            if line != b"E":
                raise _Bad("protocol error: bad end of directory record")
            self.depth = max(self.depth - 1, 0)
            return DirEnd()
        if kind == ord("T"):
            return _parse_times(line[1:])
        if kind not in (ord("C"), ord("D")):
            raise _Bad("protocol error: expected control record")
        mode, size, name = _parse_entry(kind, line[1:])
        if kind == ord("D"):
            if not self._recursive:
                raise _Bad("protocol error: received directory without -r")
            self._state = _State.DECIDE_DIR
            return DirStart(mode=mode, name=name)
        self._pending_size = size
        self._state = _State.DECIDE_FILE
        return FileStart(mode=mode, size=size, name=name)


class AckReader:
    """Reads what the receiver answers a sender: ``\\0``, ``\\x01msg\\n`` or ``\\x02msg\\n``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False

    def feed(self, data: bytes) -> None:
        """Add bytes received from the receiver."""
        if not self._eof:
            self._buf += data

    def feed_eof(self) -> None:
        """The receiver closed its side."""
        self._eof = True

    def next_response(self) -> Response | None:
        """True for an ack, a RemoteError, EndOfInput at EOF, or None if more bytes are needed.

        Like OpenSSH, any other first byte is a fatal error whose text runs to the newline.
        """
        if not self._buf:
            return EndOfInput() if self._eof else None
        if self._buf[0] == 0:
            del self._buf[:1]
            return True
        end = self._buf.find(b"\n", 0, MAX_LINE)
        if end < 0:
            if len(self._buf) < MAX_LINE and not self._eof:
                return None
            line, self._eof = bytes(self._buf[:MAX_LINE]), True
            self._buf.clear()
        else:
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
        message = line[1:] if line[0] in (1, 2) else line
        return RemoteError(message=message, fatal=line[0] != 1)


def encode_file_start(mode: int, size: int, name: bytes) -> bytes:
    """``C<mode> <size> <name>\\n``; ``name`` must be a safe name without a newline."""
    return b"C%04o %d %s\n" % (mode & 0o7777, size, name)


def encode_dir_start(mode: int, name: bytes) -> bytes:
    """``D<mode> 0 <name>\\n``."""
    return b"D%04o 0 %s\n" % (mode & 0o7777, name)


def encode_times(mtime: int, atime: int) -> bytes:
    """``T<mtime> 0 <atime> 0\\n`` (whole seconds, as OpenSSH sends)."""
    return b"T%d 0 %d 0\n" % (mtime, atime)


def encode_error(message: bytes, *, fatal: bool) -> bytes:
    """``\\x01scp: message\\n`` (warning) or ``\\x02scp: message\\n`` (fatal)."""
    flat = message.replace(b"\n", b" ")
    return (b"\x02" if fatal else b"\x01") + b"scp: " + flat + b"\n"
