"""The rsync opening, sans-IO: a remote-shell client on one side, rsync's daemon on the other.

The client speaks the remote-shell flavour of the protocol: it sends its protocol version as
4 bytes (little-endian) and expects the server's back the same way. The sandboxed rsync is a
daemon: it greets with ``@RSYNCD: <version>[ <digests>]``, wants the same line back plus the
module name, answers ``@RSYNCD: OK`` (or ``@ERROR ...``), then reads the argument block. This
object translates between the two, byte by byte if need be, and hands over: after
:class:`Running` bytes pass through untouched. It does no I/O; each ``feed_*`` returns what
to do, in order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sftpd.apps.rsync.args import ServerArgs

MAX_PREAMBLE = 1024 * 1024  # client bytes held back, daemon greeting lines
_OK = b"@RSYNCD: OK"


@dataclass(frozen=True)
class ToDaemon:
    """Write these bytes to rsync's stdin."""

    data: bytes


@dataclass(frozen=True)
class ToClient:
    """Send these bytes to the client's stdout."""

    data: bytes


@dataclass(frozen=True)
class DaemonSays:
    """An informational line of the daemon's (a motd line, say): log it, nothing more."""

    line: bytes


@dataclass(frozen=True)
class Running:
    """Handed over: ``daemon_rest`` goes to the client, ``client_rest`` to rsync, as data."""

    daemon_rest: bytes
    client_rest: bytes


@dataclass(frozen=True)
class ClientError:
    """The client broke the opening (a protocol error); the opening is over."""

    reason: str


@dataclass(frozen=True)
class DaemonError:
    """The daemon refused or misbehaved (rsync is then unavailable); the opening is over."""

    reason: str


Event = ToDaemon | ToClient | DaemonSays | Running | ClientError | DaemonError


def daemon_arguments(args: ServerArgs, protocol: int, module: bytes) -> bytes:
    """The argument block a daemon client sends after ``@RSYNCD: OK``."""
    words = [b"--server"]
    if args.sender:
        words.append(b"--sender")
    words += [*args.options, b"."]
    words += [module + path for path in args.paths]
    sep = b"\x00" if protocol >= 30 else b"\n"
    return b"".join(word + sep for word in words) + sep


class Opening:
    """Translates one opening; see the module docstring. Finished after Running or an error."""

    def __init__(self, args: ServerArgs, module: bytes) -> None:
        self._args = args
        self._module = module
        self._client = bytearray()  # client bytes not yet handed to rsync
        self._daemon = bytearray()  # daemon bytes during the greeting
        self._client_version: int | None = None
        self._daemon_version: int | None = None
        self._digests = b""
        self._greeted = False
        self.finished = False

    @property
    def awaiting_version(self) -> bool:
        """True while the client's 4-byte protocol version has not all arrived."""
        return self._client_version is None and len(self._client) < 4

    def feed_client(self, data: bytes) -> list[Event]:
        if self.finished:
            return []
        self._client += data
        if len(self._client) > MAX_PREAMBLE:
            return self._end(ClientError("client preamble too long"))
        return self._advance()

    def feed_daemon(self, data: bytes) -> list[Event]:
        if self.finished:
            return []
        self._daemon += data
        if len(self._daemon) > MAX_PREAMBLE:
            return self._end(DaemonError("daemon greeting too long"))
        return self._advance()

    def _end(self, event: Event, events: list[Event] | None = None) -> list[Event]:
        self.finished = True
        return [*(events or []), event]

    def _advance(self) -> list[Event]:
        if self._daemon_version is None:
            line = self._line()
            if line is None:
                return []
            fields = line.split()
            try:
                if fields[0] != b"@RSYNCD:":
                    raise ValueError(line)
                self._daemon_version = int(fields[1].split(b".")[0])
            except (IndexError, ValueError):
                return self._end(DaemonError(f"unexpected daemon greeting {line!r}"))
            self._digests = b" ".join(fields[2:])
        if self._client_version is None:
            if len(self._client) < 4:
                return []
            (self._client_version,) = struct.unpack("<i", bytes(self._client[:4]))
            del self._client[:4]
            if not 20 <= self._client_version <= 1000:
                return self._end(ClientError(f"client protocol version {self._client_version}"))
        client, daemon = self._client_version, self._daemon_version
        events: list[Event] = []
        if not self._greeted:
            self._greeted = True
            greeting = b"@RSYNCD: %d.0" % client
            if self._digests and client >= 30:
                greeting += b" " + self._digests
            events.append(ToDaemon(greeting + b"\n" + self._module + b"\n"))
        while (line := self._line()) is not None:
            if line == _OK:
                args = daemon_arguments(self._args, min(client, daemon), self._module)
                events += [ToDaemon(args), ToClient(struct.pack("<i", daemon))]
                rest, self._daemon = bytes(self._daemon), bytearray()
                pending, self._client = bytes(self._client), bytearray()
                return self._end(Running(rest, pending), events)
            if line.startswith(b"@ERROR"):
                return self._end(DaemonError(f"daemon refused: {line!r}"), events)
            events.append(DaemonSays(line))
        return events

    def _line(self) -> bytes | None:
        end = self._daemon.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._daemon[:end]).rstrip(b"\r")
        del self._daemon[: end + 1]
        return line
