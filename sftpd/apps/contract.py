"""The contract between a session channel and the app serving it (SFTP, scp, rsync, hashes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sftpd.config.model import ExecConfig, SftpConfig
from sftpd.runtime.threads import Blocking
from sftpd.storage.base import Storage
from sftpd.storage.rules import NO_RSYNC, RsyncGrant, RsyncRefusal, Rules


class ChannelIO(Protocol):
    """What the session channel offers the app running on it."""

    def write(self, data: bytes) -> None:
        """Send bytes to the client's stdout (buffered by the channel; never blocks)."""
        ...

    def write_parts(self, head: bytes, body: bytes | memoryview) -> None:
        """Same as ``write(head + body)`` without joining a large body (no extra copy)."""
        ...

    def write_stderr(self, data: bytes) -> None:
        """Send bytes to the client's stderr (SSH extended data type 1)."""
        ...

    def exit(self, status: int) -> None:
        """Send exit-status ``status``, then EOF and close the channel. Idempotent."""
        ...

    def pending_output(self) -> int:
        """Bytes written but not yet sent: held for the peer's window, plus what the
        connection's socket has not taken yet (shared by the connection's channels)."""
        ...

    def pause_reading(self) -> None:
        """Stop granting the client window: it can send at most what the window still allows."""
        ...

    def resume_reading(self) -> None:
        """Grant the client window again (re-opens what was consumed while paused)."""
        ...


class ChannelApp(Protocol):
    """An app on a session channel. The channel calls these; the app answers through ChannelIO."""

    def data_received(self, data: bytes) -> None:
        """Client stdin bytes."""
        ...

    def eof_received(self) -> None:
        """The client sent EOF on stdin."""
        ...

    def output_drained(self) -> None:
        """Output that was pending has been sent (resume producing if paused). May come
        when nothing was paused: check ``pending_output`` again."""
        ...

    def connection_lost(self) -> None:
        """The channel is closed: release every resource (handles, processes)."""
        ...


@dataclass(frozen=True)
class SessionContext:
    """Everything an app needs about the logged-in user.

    ``storage`` already applies ``rules`` (the same object, for what a protocol must ask
    itself: statvfs's read-only flag, the mode a finished upload gets). rsync, which cannot
    go through the storage, runs only on the ``rsync`` grant the rules built.
    """

    username: str
    home: str
    storage: Storage
    blocking: Blocking
    rules: Rules = field(default_factory=Rules)
    rsync: RsyncGrant | RsyncRefusal = NO_RSYNC
    sftp: SftpConfig = field(default_factory=SftpConfig)
    exec: ExecConfig = field(default_factory=ExecConfig)
    client_version: bytes = b""
    reactor: Any = None
    session_id: str = ""
    # The login key's profile: whether the sftp subsystem is served (scp, rsync and the
    # hashes are switched in ``exec``), and the key's fingerprint for denial log lines.
    allow_sftp: bool = True
    key_fingerprint: str = ""
