"""Exec test support: a recording ChannelIO and contexts over a real jailed temp directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sftpd.apps.contract import ChannelApp, SessionContext
from sftpd.apps.dispatch import make_exec_app
from sftpd.apps.scp.proto import (
    ACK,
    AckReader,
    DirEnd,
    DirStart,
    EndOfInput,
    FileData,
    FileEnd,
    FileStart,
    RemoteError,
    Response,
    SinkEvent,
    SinkParser,
    Times,
)
from sftpd.config.model import ExecConfig, SftpConfig
from sftpd.runtime.threads import InlineBlocking
from sftpd.storage.enforce import RulesStorage
from sftpd.storage.local import LocalStorage
from sftpd.storage.rules import Rules


@dataclass
class RecordingIO:
    """A ChannelIO that records everything; ``pending`` is what pending_output() reports."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exits: list[int] = field(default_factory=list)
    write_sizes: list[int] = field(default_factory=list)
    after_exit: int = 0
    pending: int = 0

    def write(self, data: bytes) -> None:
        self.after_exit += bool(self.exits)
        self.stdout += data
        self.write_sizes.append(len(data))

    def write_stderr(self, data: bytes) -> None:
        self.after_exit += bool(self.exits)
        self.stderr += data

    def exit(self, status: int) -> None:
        self.exits.append(status)

    def pending_output(self) -> int:
        return self.pending

    @property
    def status(self) -> int | None:
        """The one exit status sent (None while running); fails on a second exit."""
        assert len(self.exits) <= 1, f"exit sent {len(self.exits)} times"
        assert self.after_exit == 0, "output after exit"
        return self.exits[0] if self.exits else None


def make_ctx(
    root: Path,
    *,
    home: str = "/",
    read_only: bool = False,
    exec_config: ExecConfig | None = None,
    umask: int = 0o022,
) -> SessionContext:
    """A session context over ``root`` with the real jailed storage and inline blocking."""
    rules = Rules(read_only=read_only, umask=umask)
    return SessionContext(
        username="alice",
        home=home,
        storage=RulesStorage(LocalStorage(root), rules),
        blocking=InlineBlocking(),
        rules=rules,
        rsync=rules.rsync(root),
        sftp=SftpConfig(umask=umask),
        exec=exec_config or ExecConfig(),
    )


def run_exec(command: bytes, ctx: SessionContext) -> tuple[ChannelApp, RecordingIO]:
    io = RecordingIO()
    return make_exec_app(command, ctx, io), io


class ScpSender:
    """Plays the OpenSSH client sending files (``scp -O local host:target``) to our sink."""

    def __init__(self, app: ChannelApp, io: RecordingIO) -> None:
        self.app = app
        self.io = io
        self._reader = AckReader()
        self._seen = 0

    def send(self, data: bytes) -> None:
        self.app.data_received(data)

    def response(self) -> Response | None:
        """The sink's next answer (True for an ack), or None if it said nothing yet."""
        self._reader.feed(bytes(self.io.stdout[self._seen :]))
        self._seen = len(self.io.stdout)
        return self._reader.next_response()

    def file(
        self, name: bytes, data: bytes, *, mode: int = 0o644, times: tuple[int, int] | None = None
    ) -> Response | None:
        """Send one file as OpenSSH does (T, C, data, \\0), stopping at a refusal."""
        if times is not None:
            self.send(b"T%d 0 %d 0\n" % times)
            if (answer := self.response()) is not True:
                return answer
        self.send(b"C%04o %d %s\n" % (mode, len(data), name))
        if (answer := self.response()) is not True:
            return answer
        self.send(data + ACK)
        return self.response()

    def dir_start(
        self, name: bytes, *, mode: int = 0o755, times: tuple[int, int] | None = None
    ) -> Response | None:
        if times is not None:
            self.send(b"T%d 0 %d 0\n" % times)
            if (answer := self.response()) is not True:
                return answer
        self.send(b"D%04o 0 %s\n" % (mode, name))
        return self.response()

    def dir_end(self) -> Response | None:
        self.send(b"E\n")
        return self.response()

    def finish(self) -> None:
        self.app.eof_received()


def scp_download(app: ChannelApp, io: RecordingIO, *, refuse: bytes = b"") -> list[SinkEvent]:
    """Play the OpenSSH client receiving (``scp -O host:src local``) against our source.

    Every record is acknowledged except a C or D record named ``refuse``, which gets a
    ``\\x01`` error. Returns the events (FileData merged per file) the client parsed.
    """
    parser = SinkParser(recursive=True)
    events: list[SinkEvent] = []
    seen = 0
    app.data_received(ACK)
    while True:
        parser.feed(bytes(io.stdout[seen:]))
        seen = len(io.stdout)
        event = parser.next_event()
        if event is None:
            if io.exits:
                parser.feed_eof()
                event = parser.next_event()
                if event is None or isinstance(event, EndOfInput):
                    return events
            else:
                raise AssertionError(f"source is stuck after {events!r}")
        if isinstance(event, FileData) and events and isinstance(events[-1], FileData):
            events[-1] = FileData(events[-1].data + event.data)
        else:
            events.append(event)
        if isinstance(event, FileStart | DirStart):
            if event.name == refuse:
                parser.reject()
                app.data_received(b"\x01scp: refused by the test\n")
            else:
                parser.accept()
                app.data_received(ACK)
        elif isinstance(event, Times | FileEnd | DirEnd):
            app.data_received(ACK)
        elif not isinstance(event, FileData | RemoteError):
            raise AssertionError(f"unexpected {event!r}")
