"""Drive FileZilla's SFTP engine (fzsftp, protocol 11) the way FileZilla's engine does."""

from __future__ import annotations

import mmap
import os
import select
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

PROTOCOL_BANNER = "fzSftp started, protocol_version=11"

# Event types (FileZilla src/engine/sftp/event.h): one byte, '0' + type, then N lines.
REPLY, DONE, ERROR, VERBOSE, INFO, STATUS, RECV, SEND, LISTENTRY = range(9)
ASK_HOSTKEY, ASK_HOSTKEY_CHANGED, ASK_HOSTKEY_BETTERALG, ASK_PASSWORD = range(9, 13)
TRANSFER, REQUEST_PREAMBLE, REQUEST_INSTRUCTION = range(13, 16)
USED_QUOTA_RECV, USED_QUOTA_SEND = 16, 17
KEX_ALGORITHM, HOSTKEY = 18, 25
IO_SIZE, IO_OPEN, IO_NEXTBUF, IO_FINALIZE = 26, 27, 28, 29
_COUNT = 30

# Lines following the type byte (FileZilla src/engine/sftp/input_parser.cpp).
_NO_LINES = {USED_QUOTA_RECV, USED_QUOTA_SEND, IO_SIZE}
_TWO_LINES = {ASK_HOSTKEY, ASK_HOSTKEY_CHANGED, ASK_HOSTKEY_BETTERALG}

SHM_SIZE = 256 * 1024  # FileZilla's engine maps a few buffers of 128 KiB or so
_BUF = 64 * 1024  # buffer handed to fzsftp per io_nextbuf


@dataclass
class Event:
    type: int
    lines: list[str]


@dataclass
class Result:
    """What one command produced: success flag, reply text, errors and list entries."""

    ok: bool
    reply: str = ""
    errors: list[str] = field(default_factory=list)
    entries: list[tuple[str, int, str]] = field(default_factory=list)  # longname, mtime, name
    transferred: int = 0


@dataclass
class _Io:
    """The local side of one transfer: a file read from (upload) or written to (download)."""

    path: Path
    download: bool
    fh: BinaryIO | None = None
    pending: int = -1  # shm offset of the buffer fzsftp holds, -1 if none


class FzSftp:
    """One fzsftp child process, with the shared memory FileZilla gives it for transfers."""

    def __init__(
        self, *, home: Path, password: str | None = None, trust_hostkey: str = "n"
    ) -> None:
        self.password = password
        self.trust = trust_hostkey  # "y" always, "n" once (FileZilla's answers), "" refuses
        self.hostkey_lines: list[str] = []
        self.hostkey_asked = 0
        self.password_asked = 0
        self.log: list[Event] = []
        self._memfd = os.memfd_create("fzsftp-test-shm")
        os.ftruncate(self._memfd, SHM_SIZE)
        self._shm = mmap.mmap(self._memfd, SHM_SIZE)
        self._io: _Io | None = None
        self.proc = subprocess.Popen(
            ["fzsftp", "-v"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=(self._memfd,),
            # fzsftp keeps "always trusted" host keys in $PUTTYDIR/sshhostkeys (else ~/.putty).
            env={**os.environ, "HOME": str(home), "PUTTYDIR": str(home / ".putty")},
        )
        self._buf = b""
        banner = self._next_event(30)
        if banner.type != REPLY or banner.lines[0] != PROTOCOL_BANNER:
            raise AssertionError(f"unexpected fzsftp banner {banner}")

    # -- low level -------------------------------------------------------------------------
    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def _fill(self, deadline: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError("fzsftp did not answer; events so far:\n" + self.transcript())
        chunk = os.read(fd, 65536)
        if not chunk:
            raise EOFError("fzsftp exited; events so far:\n" + self.transcript())
        self._buf += chunk

    def _line(self, deadline: float) -> str:
        while b"\n" not in self._buf:
            self._fill(deadline)
        raw, self._buf = self._buf.split(b"\n", 1)
        return raw.rstrip(b"\r").decode("utf-8", "replace")

    def _next_event(self, timeout: float) -> Event:
        deadline = time.monotonic() + timeout
        while not self._buf:
            self._fill(deadline)
        etype = self._buf[0] - ord("0")
        self._buf = self._buf[1:]
        if not 0 <= etype < _COUNT:
            raise AssertionError(f"unknown fzsftp event type {etype}")
        n = (
            0
            if etype in _NO_LINES
            else 2
            if etype in _TWO_LINES
            else 3
            if etype == LISTENTRY
            else 1
        )
        ev = Event(etype, [self._line(deadline) for _ in range(n)])
        self.log.append(ev)
        return ev

    def transcript(self) -> str:
        return "\n".join(f"{e.type}: {e.lines}" for e in self.log[-60:])

    # -- commands --------------------------------------------------------------------------
    def command(
        self, line: str, *, local: Path | None = None, download: bool = False, timeout: float = 60
    ) -> Result:
        """Send one command and serve fzsftp's requests until it reports Reply or Done."""
        self._io = _Io(local, download) if local is not None else None
        self._send(line)
        res = Result(ok=False)
        while True:
            ev = self._next_event(timeout)
            t = ev.type
            if t == REPLY:
                res.ok, res.reply = True, ev.lines[0]
                break
            if t == DONE:
                res.ok = ev.lines[0] == "1"
                break
            if t == ERROR:
                res.errors.append(ev.lines[0])
            elif t == LISTENTRY:
                res.entries.append((ev.lines[0], int(ev.lines[1] or 0), ev.lines[2]))
            elif t == TRANSFER:
                res.transferred += int(ev.lines[0])
            elif t == HOSTKEY:
                self.hostkey_lines.append(ev.lines[0])
            elif t in (ASK_HOSTKEY, ASK_HOSTKEY_CHANGED):
                self.hostkey_asked += 1
                self._send(self.trust)
            elif t == ASK_PASSWORD:
                self.password_asked += 1
                if self.password is None or self.password_asked > 1:
                    # FileZilla gives up when the same prompt comes back (sftpcontrolsocket.cpp).
                    res.errors.append("Authentication failed.")
                    self.proc.kill()
                    break
                self._send(self.password)
            elif t == USED_QUOTA_RECV:
                self._send("-0-")  # unlimited, as FileZilla answers without a speed limit
            elif t == USED_QUOTA_SEND:
                self._send("-1-")
            elif t in (IO_OPEN, IO_NEXTBUF, IO_FINALIZE, IO_SIZE):
                self._send(self._serve_io(t, ev.lines))
        self._close_local()
        return res

    def _close_local(self) -> None:
        if self._io is not None and self._io.fh is not None:
            self._io.fh.close()
        self._io = None

    def _serve_io(self, etype: int, lines: list[str]) -> str:
        """Answer fzsftp's shared-memory file I/O requests (uxsftp.c in FileZilla's putty/)."""
        io = self._io
        if io is None:
            return "--"
        if etype == IO_SIZE:
            return f"-{io.path.stat().st_size}"
        if etype == IO_OPEN:
            offset = int(lines[0])
            if io.download:
                if offset == 2**64 - 1:  # resume: append to what is there
                    io.fh = open(io.path, "r+b")
                    io.fh.seek(0, os.SEEK_END)
                else:
                    io.fh = open(io.path, "wb")
            else:
                io.fh = open(io.path, "rb")
                io.fh.seek(offset)
            return f"-{self._memfd} {SHM_SIZE} {io.fh.tell()}"
        fh = io.fh
        assert fh is not None
        if io.download:
            filled = int(lines[0] or 0)
            if io.pending >= 0 and filled:
                fh.write(self._shm[io.pending : io.pending + filled])
            if etype == IO_FINALIZE:
                io.pending = -1
                fh.flush()
                return "-1"
            io.pending = 0
            return f"-0 {_BUF}"
        data = fh.read(_BUF)
        if not data:
            return "-"  # EOF
        self._shm[0 : len(data)] = data
        return f"-0 {len(data)}"

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self._send("exit")
                except BrokenPipeError:
                    pass
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()
            self._shm.close()
            os.close(self._memfd)

    def __enter__(self) -> FzSftp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
