"""The logged-in user's avatar: session channels only, at most N per connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.conch.avatar import ConchUser
from twisted.conch.error import ConchError
from twisted.conch.ssh import connection
from twisted.internet import defer

from sftpd.apps.contract import SessionContext

# Builds the channel for a session: (ctx, clock=, on_closed=, remoteWindow=, remoteMaxPacket=,
# data=, avatar=) -> channel. The assembly passes the SSH layer's SessionChannel, so this
# layer never imports SSH internals.
ChannelFactory = Callable[..., Any]


class Avatar(ConchUser):  # type: ignore[misc]
    """One authenticated connection of one user."""

    user: Any = None  # the User record the checker found (set by the realm)

    def __init__(
        self,
        ctx: SessionContext,
        *,
        clock: Any,
        max_sessions: int,
        make_channel: ChannelFactory,
        on_logout: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self._clock = clock
        self._max_sessions = max_sessions
        self._make_channel = make_channel
        self._sessions: set[Any] = set()
        self._on_logout = on_logout
        self.pending: list[defer.Deferred[Any]] = []  # apps still closing their files
        self.channelLookup = {}
        self.subsystemLookup = {}

    def lookupChannel(
        self, channelType: bytes, windowSize: int, maxPacket: int, data: bytes
    ) -> Any:
        if channelType != b"session":
            raise ConchError(
                "only session channels are allowed", connection.OPEN_UNKNOWN_CHANNEL_TYPE
            )
        if len(self._sessions) >= self._max_sessions:
            raise ConchError("too many sessions", connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
        if maxPacket < 1:
            raise ConchError(
                "maximum packet size too small", connection.OPEN_ADMINISTRATIVELY_PROHIBITED
            )
        ch = self._make_channel(
            self.ctx,
            clock=self._clock,
            on_closed=self._sessions.discard,
            remoteWindow=windowSize,
            remoteMaxPacket=maxPacket,
            data=data,
            avatar=self,
        )
        self._sessions.add(ch)
        return ch

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> int:
        return 0  # no port forwarding, no keepalive replies beyond failure

    def logout(self) -> None:
        # Conch stops the channels first: an app may still be closing its files on a
        # worker (``pending``); the storage (the jail's root) closes after them.
        waiting = [d for d in self.pending if not d.called]
        self.pending = []
        if waiting:
            defer.DeferredList(waiting).addBoth(lambda _: self._close_storage())
        else:
            self._close_storage()
        if self._on_logout is not None:
            self._on_logout()

    def _close_storage(self) -> None:
        close = getattr(self.ctx.storage, "close", None)
        if close is not None:
            try:
                close()
            except OSError:
                pass
