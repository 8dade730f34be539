"""The SSH connection service: cheap CHANNEL_DATA, the receive window, late channel messages."""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch.ssh import connection, transport
from twisted.internet import abstract
from twisted.logger import Logger

log = Logger(namespace="sftpd.connection")
_DATA_HEADER = struct.Struct(">LL")
_EXT_HEADER = struct.Struct(">LLL")
_CHANNEL_ID = struct.Struct(">L")
_MAX_WINDOW = 0xFFFFFFFF  # RFC 4254 5.2: a window may not grow past 2^32 - 1


class _ChannelGuard(connection.SSHConnection):  # type: ignore[misc]
    """Conch's ssh_CHANNEL_* look the channel up with ``self.channels[n]``: a message for a
    channel already closed (legal, it crossed our CLOSE) raises KeyError and a packet under
    4 bytes struct.error, each ending the whole connection. Each override here ignores the
    first and answers the second with a protocol-error disconnect, then calls Conch's."""

    def _for_open_channel(self, name: str, packet: bytes) -> bool:
        if len(packet) < 4:
            t: Any = self.transport
            t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"short channel message")
            return False
        (local,) = _CHANNEL_ID.unpack_from(packet)
        if local not in self.channels:
            log.debug("message {name} for unknown channel {local}", name=name, local=local)
            return False
        return True

    def ssh_CHANNEL_OPEN_CONFIRMATION(self, packet: bytes) -> None:
        if self._for_open_channel("CHANNEL_OPEN_CONFIRMATION", packet):
            super().ssh_CHANNEL_OPEN_CONFIRMATION(packet)

    def ssh_CHANNEL_OPEN_FAILURE(self, packet: bytes) -> None:
        if self._for_open_channel("CHANNEL_OPEN_FAILURE", packet):
            super().ssh_CHANNEL_OPEN_FAILURE(packet)

    def ssh_CHANNEL_EXTENDED_DATA(self, packet: bytes) -> None:
        if self._for_open_channel("CHANNEL_EXTENDED_DATA", packet):
            super().ssh_CHANNEL_EXTENDED_DATA(packet)

    def ssh_CHANNEL_EOF(self, packet: bytes) -> None:
        if self._for_open_channel("CHANNEL_EOF", packet):
            super().ssh_CHANNEL_EOF(packet)

    def ssh_CHANNEL_CLOSE(self, packet: bytes) -> None:
        if self._for_open_channel("CHANNEL_CLOSE", packet):
            super().ssh_CHANNEL_CLOSE(packet)

    def ssh_CHANNEL_REQUEST(self, packet: bytes) -> None:
        if self._for_open_channel("CHANNEL_REQUEST", packet):
            super().ssh_CHANNEL_REQUEST(packet)

    def ssh_CHANNEL_SUCCESS(self, packet: bytes) -> None:
        if self._for_open_channel("CHANNEL_SUCCESS", packet):
            super().ssh_CHANNEL_SUCCESS(packet)

    def ssh_CHANNEL_FAILURE(self, packet: bytes) -> None:
        if self._for_open_channel("CHANNEL_FAILURE", packet):
            super().ssh_CHANNEL_FAILURE(packet)


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


class Connection(_ChannelGuard):
    """Conch's connection service, tolerant of messages for channels that are gone,
    withholding window adjustments from a channel whose app paused reading, and watching
    the TCP write buffer so that apps stop producing while the client does not read."""

    _tcp: Any = None
    _watch: _OutputWatch | None = None
    _seen: Any = None  # the transport's channel_data(incoming) (idle timers), if any

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self._seen = getattr(self.transport, "channel_data", None)
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
        if self._seen is not None:
            self._seen(True)
        used = getattr(channel, "window_used", None)
        if used is not None:
            used(size)  # SessionChannel: early top-ups, a window grown to the round trip
        elif channel.localWindowLeft < channel.localWindowSize // 2:
            self.adjustWindow(channel, channel.localWindowSize - channel.localWindowLeft)
        channel.dataReceived(packet[8 : 8 + size])

    def sendData(self, channel: Any, data: bytes | memoryview) -> None:
        # Conch builds this with NS(data) and another concatenation: two copies of every
        # byte sent; one is enough.
        if channel.localClosed:
            return
        remote = self.channelsToRemoteChannel[channel]
        if self._seen is not None:
            self._seen(False)
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
