"""The emitting API the protocols and the auth code call: sinks, the server hub, session recorders.

Wiring (one ``Events`` per server process, built by the assembly)::

    events = Events([audit, hooks, metrics], clock=reactor, temp=rules.is_own_temp)
    events.login(Identity.of(user, "SHA256:...", "ssh", host, port, conn_id))
    rec = events.session(Identity.of(user, auth, "sftp", host, port, conn_id))
    rec.opened(handle, "/in/a.filepart", write=True, truncate=True, size=0)
    rec.wrote(handle, offset, data)         # before or after the write: the bytes written
    rec.closed(handle)                      # no event yet: a temporary name
    rec.renamed("/in/a.filepart", "/in/a")  # one upload event for /in/a
    rec.connection_lost()                   # open uploads become "incomplete"

Every call returns at once: sinks queue their work (audit writer thread, hook queue).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from twisted.logger import Logger

from sftpd.events.model import Event, Identity
from sftpd.events.uploads import Clock, SessionTransfers, TempNames, UserUploads

_log = Logger(namespace="sftpd.events")


class EventSink(Protocol):
    """Receives every completed operation; must not block (queue, don't write)."""

    def emit(self, event: Event) -> None: ...


class Events:
    """The server's event hub: hands each event to every sink; one sink failing spares the rest."""

    def __init__(
        self,
        sinks: Sequence[EventSink],
        clock: Clock,
        temp: Callable[[str], bool] | None = None,
        *,
        hash_uploads: bool = True,
    ) -> None:
        self._sinks = tuple(sinks)
        self._hash = hash_uploads
        self._clock = clock
        self._temp = TempNames(temp)
        self._users: dict[str, UserUploads] = {}
        self._sessions: dict[str, int] = {}

    def emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink.emit(event)
            except Exception:
                _log.failure("event sink {sink} failed", sink=type(sink).__name__)

    def emit_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.emit(event)

    def login(self, who: Identity) -> None:
        self.emit(Event("login", who, self._clock.seconds()))

    def login_failed(self, who: Identity, reason: str) -> None:
        """A failed login; ``reason`` like "wrong password", "unknown user" (never the secret)."""
        self.emit(
            Event("login_failed", who, self._clock.seconds(), outcome="denied", reason=reason)
        )

    def session(self, who: Identity) -> SessionEvents:
        """A recorder for one app session (one SFTP subsystem, one scp or rsync command)."""
        user = self._users.get(who.user)
        if user is None:
            user = self._users[who.user] = UserUploads()
        self._sessions[who.user] = self._sessions.get(who.user, 0) + 1
        transfers = SessionTransfers(who, user, self._clock, self._temp, hash_uploads=self._hash)
        return SessionEvents(self, who, transfers, self._clock)

    def _session_ended(self, user: str) -> None:
        count = self._sessions.get(user, 0) - 1
        if count > 0:
            self._sessions[user] = count
            return
        self._sessions.pop(user, None)
        uploads = self._users.get(user)
        if uploads is not None:
            uploads.expire(self._clock.seconds())
        if uploads is not None and not uploads.pending:
            del self._users[user]


class SessionEvents:
    """What an app calls as it serves requests; each completed operation goes to the sinks."""

    def __init__(
        self,
        hub: Events,
        who: Identity,
        transfers: SessionTransfers,
        clock: Clock,
    ) -> None:
        self._hub = hub
        self._clock = clock
        self.who = who
        self._transfers = transfers
        self._ended = False

    def opened(self, handle: object, path: str, *, write: bool, truncate: bool, size: int) -> None:
        self._transfers.opened(handle, path, write=write, truncate=truncate, size=size)

    def wrote(self, handle: object, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._transfers.wrote(handle, offset, data)

    def copied(self, handle: object, offset: int, count: int) -> None:
        """``count`` bytes of unknown content arrived at ``offset`` (a server-side copy)."""
        self._transfers.copied(handle, offset, count)

    def read(self, handle: object, count: int) -> None:
        self._transfers.read(handle, count)

    def failed(self, handle: object, error: str) -> None:
        self._transfers.failed(handle, error)

    def closed(self, handle: object, *, error: str = "", size: int | None = None) -> None:
        self._hub.emit_all(self._transfers.closed(handle, error=error, size=size))

    def lost(self, handle: object) -> None:
        """The client went away with ``handle`` open (its app is closing it): incomplete."""
        self._hub.emit_all(self._transfers.lost(handle))

    def renamed(self, old: str, new: str, *, error: str = "") -> None:
        self._hub.emit_all(self._transfers.renamed(old, new, error=error))

    def removed(self, path: str, *, error: str = "") -> None:
        self._hub.emit_all(self._transfers.removed(path, error=error))

    def mkdir(self, path: str, *, error: str = "") -> None:
        self._simple("mkdir", path, error)

    def rmdir(self, path: str, *, error: str = "") -> None:
        self._simple("rmdir", path, error)

    def denied(self, op: str, path: str, rule: str, target: str = "") -> None:
        """``op`` on ``path`` was refused by ``rule`` (e.g. "read_only", "quota")."""
        now = self._clock.seconds()
        self._hub.emit(Event(op, self.who, now, path, target, outcome="denied", reason=rule))

    def transferred(self, op: str, path: str, count: int, size: int | None) -> None:
        """A completed transfer someone else did (rsync's own log): one event, no tracking."""
        now = self._clock.seconds()
        self._hub.emit(Event(op, self.who, now, path, bytes=count, size=size))

    def connection_lost(self) -> None:
        """The session ended; call once (later calls do nothing)."""
        if self._ended:
            return
        self._ended = True
        self._hub.emit_all(self._transfers.connection_lost())
        self._hub._session_ended(self.who.user)

    def _simple(self, op: str, path: str, error: str) -> None:
        now = self._clock.seconds()
        outcome = "error" if error else "ok"
        self._hub.emit(Event(op, self.who, now, path, outcome=outcome, reason=error))
