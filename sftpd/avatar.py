"""The logged-in user (session channels only, at most N); a connection tolerant of late messages."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.conch.avatar import ConchUser
from twisted.conch.error import ConchError
from twisted.conch.ssh import connection, transport
from twisted.internet import abstract
from twisted.logger import Logger

from sftpd.session import SessionChannel
from sftpd.session_api import SessionContext

log = Logger(namespace="sftpd.avatar")
_DATA_HEADER = struct.Struct(">LL")
_EXT_HEADER = struct.Struct(">LLL")
_MAX_WINDOW = 0xFFFFFFFF  # RFC 4254 5.2: a window may not grow past 2^32 - 1


class Avatar(ConchUser):  # type: ignore[misc]
    """One authenticated connection of one user."""

    def __init__(
        self,
        ctx: SessionContext,
        *,
        clock: Any,
        max_sessions: int,
        on_logout: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self._clock = clock
        self._max_sessions = max_sessions
        self._sessions: set[SessionChannel] = set()
        self._on_logout = on_logout
        self.channelLookup = {}
        self.subsystemLookup = {}

    def lookupChannel(
        self, channelType: bytes, windowSize: int, maxPacket: int, data: bytes
    ) -> SessionChannel:
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
        ch = SessionChannel(
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
        close = getattr(self.ctx.storage, "close", None)
        if close is not None:
            try:
                close()
            except OSError:
                pass
        if self._on_logout is not None:
            self._on_logout()


# Conch's ssh_CHANNEL_* look the channel up with self.channels[n]: a message for a
# channel already closed (legal, it crossed our CLOSE) raises KeyError and a packet under
# 4 bytes struct.error, each ending the whole connection. The guard ignores the first
# and answers the second with a protocol-error disconnect.
def _guard(name: str) -> Callable[[Any, bytes], Any]:
    original = getattr(connection.SSHConnection, name)

    def method(self: connection.SSHConnection, packet: bytes) -> Any:
        if len(packet) < 4:
            t: Any = self.transport
            t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"short channel message")
            return None
        (local,) = struct.unpack(">L", packet[:4])
        if local not in self.channels:
            log.debug("message {name} for unknown channel {local}", name=name, local=local)
            return None
        return original(self, packet)

    method.__name__ = name
    return method


def _write_backlog(tcp: Any) -> int:
    """Bytes Twisted holds for ``tcp`` that the kernel has not taken yet."""
    if not isinstance(tcp, abstract.FileDescriptor):
        return 0
    return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen


class _OutputWatch:
    """A streaming producer on the TCP connection: Twisted tells it when its write buffer
    fills and when it has drained; a drain wakes every channel's app (see
    ``SessionChannel.pending_output``, which counts the buffer)."""

    def __init__(self, conn: Connection, tcp: Any) -> None:
        self._conn = conn
        self._tcp = tcp
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        tcp = self._tcp
        if tcp.disconnecting:
            # A paused streaming producer keeps Twisted from closing a flushed connection.
            tcp.unregisterProducer()
            return
        self._conn.output_drained()

    def stopProducing(self) -> None:
        self.paused = False


class Connection(connection.SSHConnection):  # type: ignore[misc]
    """Conch's connection service, tolerant of messages for channels that are gone,
    withholding window adjustments from a channel whose app paused reading, and watching
    the TCP write buffer so that apps stop producing while the client does not read."""

    _tcp: Any = None
    _watch: _OutputWatch | None = None

    def serviceStarted(self) -> None:
        super().serviceStarted()
        tcp = getattr(self.transport, "transport", None)
        register = getattr(tcp, "registerProducer", None)
        if register is not None and getattr(tcp, "producer", None) is None:
            self._tcp = tcp
            self._watch = _OutputWatch(self, tcp)
            register(self._watch, True)

    def serviceStopped(self) -> None:
        tcp, self._tcp = self._tcp, None
        if tcp is not None and getattr(tcp, "producer", None) is self._watch:
            tcp.unregisterProducer()
        super().serviceStopped()

    def output_backlog(self) -> int:
        """Bytes sent on this connection that the socket has not taken yet (all channels)."""
        return _write_backlog(self._tcp) if self._tcp is not None else 0

    def output_drained(self) -> None:
        for channel in list(self.channels.values()):
            drained = getattr(channel, "transport_drained", None)
            if drained is not None:
                drained()

    def ssh_CHANNEL_WINDOW_ADJUST(self, packet: bytes) -> None:
        t: Any = self.transport
        if len(packet) < 8:
            t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"short channel message")
            return
        local, add = _DATA_HEADER.unpack_from(packet)
        channel = self.channels.get(local)
        if channel is None:
            log.debug("WINDOW_ADJUST for unknown channel {local}", local=local)
            return
        if channel.remoteWindowLeft + add > _MAX_WINDOW:
            log.warn(
                "channel {local}: window adjust of {add} takes the window past 2^32-1",
                local=local,
                add=add,
            )
            t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"window exceeds 2^32-1")
            return
        channel.addWindowBytes(add)

    # Conch's SSHService dispatches by getattr on the message name; CHANNEL_DATA goes direct.
    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        if messageNum == connection.MSG_CHANNEL_DATA:
            self.ssh_CHANNEL_DATA(packet)  # the hot message, without a getattr dispatch
        else:
            super().packetReceived(messageNum, packet)

    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        """CHANNEL_DATA with one copy of the data (Conch's getNS(packet[4:]) makes two)."""
        if len(packet) < 8:
            t: Any = self.transport
            t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"short channel message")
            return
        local, size = _DATA_HEADER.unpack_from(packet)
        channel = self.channels.get(local)
        if channel is None:
            log.debug("CHANNEL_DATA for unknown channel {local}", local=local)
            return
        if size > len(packet) - 8:
            t = self.transport
            t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"truncated channel data")
            return
        if size > channel.localWindowLeft or size > channel.localMaxPacket:
            log.warn("channel {local}: peer sent more than its window", local=local)
            self.sendClose(channel)
            return
        channel.localWindowLeft -= size
        if channel.localWindowLeft < channel.localWindowSize // 2:
            self.adjustWindow(channel, channel.localWindowSize - channel.localWindowLeft)
        channel.dataReceived(packet[8 : 8 + size])

    def sendData(self, channel: Any, data: bytes | memoryview) -> None:
        # Conch builds this with NS(data) and another concatenation: two copies of every
        # byte sent; one is enough.
        if channel.localClosed:
            return
        remote = self.channelsToRemoteChannel[channel]
        t: Any = self.transport
        t.sendPacket(connection.MSG_CHANNEL_DATA, _DATA_HEADER.pack(remote, len(data)) + data)

    # As sendData: Conch's copies twice; replaced, no super().
    def sendExtendedData(self, channel: Any, dataType: int, data: bytes | memoryview) -> None:
        if channel.localClosed:
            return
        remote = self.channelsToRemoteChannel[channel]
        header = _EXT_HEADER.pack(remote, dataType, len(data))
        t: Any = self.transport
        t.sendPacket(connection.MSG_CHANNEL_EXTENDED_DATA, header + data)

    # Conch's sends every adjust asked for; a paused channel keeps the client waiting.
    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        if getattr(channel, "reading_paused", False):
            return  # SessionChannel.resume_reading re-opens the window
        super().adjustWindow(channel, bytesToAdd)


# Set on our subclass at import, not on Conch's class (Conch's stays as it is).
for _name in (
    "ssh_CHANNEL_OPEN_CONFIRMATION",
    "ssh_CHANNEL_OPEN_FAILURE",
    "ssh_CHANNEL_EXTENDED_DATA",
    "ssh_CHANNEL_EOF",
    "ssh_CHANNEL_CLOSE",
    "ssh_CHANNEL_REQUEST",
    "ssh_CHANNEL_SUCCESS",
    "ssh_CHANNEL_FAILURE",
):
    setattr(Connection, _name, _guard(_name))
