"""SSH server transport: Conch's key exchange under sftpd's packet path, strict KEX and rekey."""

# Conch's transport classes are untyped: subclassing them and overriding their methods needs
# these relaxations here (and only here and in ssh/keyexchange.py).
# mypy: disable-error-code="misc,no-untyped-call,no-any-return"
# Each Conch internal used here is checked against Twisted by tests/test_conch_contract.py.

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import Any

from twisted.conch.ssh import _kex
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.transport import (
    DISCONNECT_BY_APPLICATION,
    DISCONNECT_CONNECTION_LOST,
    DISCONNECT_MAC_ERROR,
    DISCONNECT_PROTOCOL_ERROR,
    MSG_DISCONNECT,
    MSG_NEWKEYS,
    MSG_UNIMPLEMENTED,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sftpd.log import conn_fields
from sftpd.ssh.ciphers import MacError, Opener, PacketError, Sealer, make_opener, make_sealer
from sftpd.ssh.keyexchange import NEVER, KeyExchange
from sftpd.ssh.login import LoginPhase
from sftpd.ssh.packets import PacketReader
from sftpd.ssh.policy import (
    TransportPolicy,
    available_ciphers,
    available_kex,
    available_macs,
    pick,
)
from sftpd.ssh.sockwrite import SocketWriter
from sftpd.ssh.window import grow_receive_buffer

log = Logger(namespace="sftpd.ssh.transport")

_SEQ_MASK = 0xFFFFFFFF
_U32 = struct.Struct(">I")
_MAX_VERSION_BYTES = 4096  # version line plus any lines before it
# Largest packet_length before the first NEWKEYS (OpenSSH's limit for any packet): a peer
# that stalls in the key exchange pins at most this much.
MAX_PACKET_BEFORE_KEYS = 256 * 1024


class ServerTransport(LoginPhase, KeyExchange):
    """Conch's server transport with sftpd's packet path.

    Conch still runs the key exchange methods, host key signatures, key derivation and
    services. This class owns everything under them: framing, packet protection (see
    ``sftpd.ssh.ciphers``), which message is legal when, and the packet and byte counts;
    KEXINIT negotiation, strict KEX and rekeying by volume and time are its base's
    (``sftpd.ssh.keyexchange``). Compression is never negotiated.
    """

    policy: TransportPolicy | None = None
    clock: IReactorTime | None = None  # default: the factory's ``clock``, else the reactor
    supportedCompressions = [b"none"]

    _closed = False
    _dispatch_seq = 0
    _junk = 0
    _rcvbuf_for = 0  # the largest window the socket's receive buffer was sized for

    @property
    def closed(self) -> bool:
        """Whether the connection is closing or closed (nothing more is sent on it)."""
        return self._closed

    def apply_policy(self, policy: TransportPolicy, key_algorithms: Sequence[bytes]) -> None:
        """Restrict negotiation to ``policy``; ``key_algorithms``: what the host keys can sign."""
        self.policy = policy
        kex = pick(policy.kex, available_kex())
        if not policy.have_moduli:
            kex = [k for k in kex if not _kex.isDynamicPrimesGroup(k)]
        self.supportedKeyExchanges = kex
        self.supportedCiphers = pick(policy.ciphers, available_ciphers())
        self.supportedMACs = pick(policy.macs, available_macs())
        self.supportedPublicKeys = pick(policy.host_key_algorithms, set(key_algorithms))
        self.supportedCompressions = [b"none"]
        self.ourVersionString = b"SSH-2.0-" + policy.version.encode("ascii")

    def _clock(self) -> IReactorTime:
        clock = self.clock or getattr(getattr(self, "factory", None), "clock", None)
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        return clock  # type: ignore[return-value]

    # -- connection life ---------------------------------------------------------------

    def connectionMade(self) -> None:
        tcp: Any = self.transport
        # No Nagle delay for small replies; and TCP keepalive, as OpenSSH's TCPKeepAlive
        # default: a peer that vanished (a dropped network, a suspended laptop) is found
        # and its session closed, instead of holding a session slot forever.
        for option in ("setTcpNoDelay", "setTcpKeepAlive"):
            setter = getattr(tcp, option, None)
            if setter is not None:
                try:
                    setter(True)
                except OSError:
                    pass
        policy = self.policy
        limit = policy.rekey_bytes if policy is not None else TransportPolicy.rekey_bytes
        self._rekey_bytes = limit if limit > 0 else NEVER
        self._tcp: Any = self.transport
        self._writer = SocketWriter(self.transport)
        self._reader = PacketReader(max_wire=4 + MAX_PACKET_BEFORE_KEYS)
        self._sealer: Sealer = make_sealer(b"none", None, b"", b"", b"")
        self._opener: Opener = make_opener(b"none", None, b"", b"", b"")
        self.start_login_timer()
        super().connectionMade()  # version line, then our KEXINIT

    def size_receive_buffer(self, window: int) -> None:
        """A channel's receive window grew to ``window``: make the socket keep up."""
        handle = getattr(self.transport, "getHandle", None)
        sock = handle() if handle is not None else None
        if isinstance(sock, socket.socket) and window > self._rcvbuf_for:
            self._rcvbuf_for = window
            granted = grow_receive_buffer(sock, window)
            log.debug(
                "conn={conn}: window {window}, SO_RCVBUF {granted}",
                window=window,
                granted=granted,
                **conn_fields(self),
            )

    def connectionLost(self, reason: Any = None) -> None:
        self._closed = True
        self._cancel_rekey()
        self.cancel_login_timer()
        # Conch's, minus its log line (sftpd.assembly logs the close with context).
        if self.service:
            self.service.serviceStopped()
        if hasattr(self, "avatar"):
            self.logoutFunction()

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # Conch logs every peer DISCONNECT as an error, the normal "bye" included.
        normal = reasonCode in (DISCONNECT_BY_APPLICATION, DISCONNECT_CONNECTION_LOST)
        (log.debug if normal else log.warn)(
            "peer disconnected: conn={conn} peer={peer} code={code} reason={reason}",
            code=reasonCode,
            reason=description,
            **conn_fields(self),
        )

    # Conch's goes through sendPacket (queued during a KEX); ours is written at once, once.
    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if self._closed:
            return
        self._write_packet(MSG_DISCONNECT, _U32.pack(reason) + NS(desc) + NS(b""))
        self._closed = True
        self._cancel_rekey()
        self.cancel_login_timer()
        log.info(
            "disconnecting: conn={conn} peer={peer} code={code} reason={reason}",
            code=reason,
            reason=desc,
            **conn_fields(self),
        )
        tcp: Any = self.transport
        tcp.loseConnection()

    # Conch's parses without length checks (a short packet raises); ours does not.
    def ssh_DISCONNECT(self, packet: bytes) -> None:
        self._closed = True
        self._cancel_rekey()
        self.cancel_login_timer()
        code = _U32.unpack_from(packet)[0] if len(packet) >= 4 else 0
        size = _U32.unpack_from(packet, 4)[0] if len(packet) >= 8 else 0
        self.receiveError(code, packet[8 : 8 + size])
        self._tcp.loseConnection()

    # -- incoming ------------------------------------------------------------------------

    # Replaces Conch's (getPacket, its SSHCiphers): our PacketReader and opener, no super().
    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        reader = self._reader
        reader.feed(data)
        if not self.gotVersion and not self._read_version():
            return
        while not self._closed:
            seq = self.incomingPacketSequence
            try:
                message = reader.read_packet(self._opener, seq)
            except MacError:
                self.sendDisconnect(DISCONNECT_MAC_ERROR, b"bad MAC")
                return
            except PacketError as e:
                self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, str(e).encode())
                return
            if message is None:
                # Idle until more bytes arrive (replies to what came are out): make the
                # next packets' key material now, off the path from request to reply.
                self._opener.prepare(seq)
                self._sealer.prepare(self.outgoingPacketSequence)
                return
            self.incomingPacketSequence = (seq + 1) & _SEQ_MASK
            self._dispatch_seq = seq
            self._bytes_in += reader.last_size
            self._packets_in += 1
            self.dispatchMessage(message[0], message[1])
            if self._bytes_in >= self._rekey_bytes or self._packets_in >= self._rekey_packets:
                self._maybe_rekey()

    def _read_version(self) -> bool:
        reader = self._reader
        while True:
            line = reader.read_line()
            if line is None:
                if reader.pending + self._junk > _MAX_VERSION_BYTES:
                    self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"version line too long")
                return False
            if not line.startswith(b"SSH-"):
                self._junk += len(line) + 2
                continue
            self.gotVersion = True
            self.otherVersionString = line
            remote = line.split(b"-", 2)[1]
            if remote not in self.supportedVersions:
                self._unsupportedVersionReceived(remote)
                return False
            return True

    # Conch's dispatches any message at any time; ours refuses what is not legal now.
    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if messageNum >= 50 and not self._peer_in_kex:
            service = self.service
            if service is not None:
                service.packetReceived(messageNum, payload)
                return
        elif 30 <= messageNum <= 49 and self.ignoreNextPacket and self._peer_in_kex:
            self.ignoreNextPacket = False  # the client's wrongly guessed first KEX packet
            return
        elif not self._expected(messageNum):
            self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"unexpected message %d" % (messageNum,))
            return
        if messageNum >= 50:
            super().dispatchMessage(messageNum, payload)
            return
        try:
            super().dispatchMessage(messageNum, payload)
        except Exception:
            # Conch's transport and KEX handlers parse without checking lengths, and some
            # assume state a message out of turn does not have (e.g. KEX_DH_GEX_INIT outside
            # a group exchange: AttributeError). Any of it is bad input from this peer.
            log.debug("malformed or out-of-turn message {n}", n=messageNum)
            self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"malformed message %d" % messageNum)

    # Conch's sends the *next* packet's number; RFC 4253 11.4 wants the rejected one's.
    def sendUnimplemented(self) -> None:
        self.sendPacket(MSG_UNIMPLEMENTED, _U32.pack(self._dispatch_seq))

    # -- outgoing ------------------------------------------------------------------------

    # Conch's KEX queueing on its private state (its _newKeys flushes it); sealed by us.
    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE:
            if not self._allowedKeyExchangeMessageType(messageType):
                self._blockedByKeyExchange.append((messageType, payload))
                return
        self._write_packet(messageType, payload)
        if self._bytes_out >= self._rekey_bytes or self._packets_out >= self._rekey_packets:
            self._maybe_rekey()

    def _write_packet(self, msg_type: int, payload: bytes) -> None:
        if self._closed:
            return
        seq = self.outgoingPacketSequence
        chunks = self._sealer.seal(seq, msg_type, payload)
        size = sum(map(len, chunks))
        self._writer.write(chunks, size)
        self.outgoingPacketSequence = (seq + 1) & _SEQ_MASK
        self._bytes_out += size
        self._packets_out += 1
        if msg_type == MSG_NEWKEYS:
            self._newkeys_written()
