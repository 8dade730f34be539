"""SSH server transport: Conch's key exchange under sftpd's packet path, strict KEX and rekey."""

# Conch's transport classes are untyped: subclassing them and overriding their methods needs
# these relaxations here (and only here).
# mypy: disable-error-code="misc,no-untyped-call,no-any-return"
# Each Conch internal used here is checked against Twisted by tests/test_conch_contract.py.

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

from twisted.conch.ssh import _kex
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.transport import (
    DISCONNECT_BY_APPLICATION,
    DISCONNECT_CONNECTION_LOST,
    DISCONNECT_KEY_EXCHANGE_FAILED,
    DISCONNECT_MAC_ERROR,
    DISCONNECT_PROTOCOL_ERROR,
    MSG_DISCONNECT,
    MSG_EXT_INFO,
    MSG_KEXINIT,
    MSG_NEWKEYS,
    MSG_SERVICE_ACCEPT,
    MSG_SERVICE_REQUEST,
    MSG_UNIMPLEMENTED,
    SSHCiphers,
    SSHServerTransport,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sftpd.log import conn_fields
from sftpd.ssh.ciphers import (
    MacError,
    Opener,
    PacketError,
    Sealer,
    is_aead,
    make_opener,
    make_sealer,
)
from sftpd.ssh.kexinit import (
    EXT_INFO_C,
    EXT_INFO_S,
    STRICT_C,
    STRICT_S,
    KexInit,
    KexInitError,
    NegotiationError,
    build_kexinit,
    negotiate,
)
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
_NEVER = 1 << 62
# Rekey after this many packets in a direction whatever the byte limit (as OpenSSH): the
# sequence number is chacha20-poly1305's nonce and must not wrap under one key.
MAX_PACKETS_PER_KEY = 1 << 31
_MSG_KEX_INIT = 30  # KEXDH_INIT, KEX_ECDH_INIT, hybrid INIT and GEX_REQUEST_OLD share it
_MSG_GEX_INIT = 32
_MSG_GEX_REQUEST = 34
# Largest packet_length before the first NEWKEYS (OpenSSH's limit for any packet): a peer
# that stalls in the key exchange pins at most this much.
MAX_PACKET_BEFORE_KEYS = 256 * 1024


class _NextKeys(SSHCiphers):
    """Conch's pending-keys object, building sftpd's sealer and opener from the derived keys."""

    sealer: Sealer | None = None
    opener: Opener | None = None

    def __init__(
        self, cipher_out: bytes, cipher_in: bytes, mac_out: bytes | None, mac_in: bytes | None
    ) -> None:
        # With an AEAD cipher no MAC is negotiated; report the cipher as the MAC.
        super().__init__(cipher_out, cipher_in, mac_out or cipher_out, mac_in or cipher_in)
        self._mac_out = mac_out
        self._mac_in = mac_in

    # Conch's _keySetup calls this before NEWKEYS; we build our sealer/opener, not its ciphers.
    def setKeys(
        self,
        outIV: bytes,
        outKey: bytes,
        inIV: bytes,
        inKey: bytes,
        outInteg: bytes,
        inInteg: bytes,
    ) -> None:
        self.sealer = make_sealer(self.outCipType, self._mac_out, outKey, outIV, outInteg)
        self.opener = make_opener(self.inCipType, self._mac_in, inKey, inIV, inInteg)


class ServerTransport(LoginPhase, SSHServerTransport):
    """Conch's server transport with sftpd's packet path.

    Conch still runs the key exchange methods, host key signatures, key derivation and
    services. This class owns everything under them: framing, packet protection (see
    ``sftpd.ssh.ciphers``), KEXINIT negotiation, strict KEX, and rekeying by volume and time.
    Each direction switches keys on its own NEWKEYS; compression is never negotiated.
    """

    policy: TransportPolicy | None = None
    clock: IReactorTime | None = None  # default: the factory's ``clock``, else the reactor
    supportedCompressions = [b"none"]
    completed_kex = 0  # key exchanges completed on this connection

    _strict = False
    _initial_done = False
    _kexinit_received = 0
    _kexinit_sent = 0
    _peer_in_kex = False  # between the client's KEXINIT and its NEWKEYS
    _sent_newkeys = False  # our NEWKEYS of the running exchange is out
    _closed = False
    _dispatch_seq = 0
    _bytes_in = 0
    _bytes_out = 0
    _packets_in = 0
    _packets_out = 0
    _rekey_bytes = _NEVER
    _rekey_call: IDelayedCall | None = None
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
        self._rekey_bytes = limit if limit > 0 else _NEVER
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
            if self._bytes_in >= self._rekey_bytes or self._packets_in >= MAX_PACKETS_PER_KEY:
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

    def _expected(self, n: int) -> bool:
        """Whether a transport message (or any message during KEX) is legal now."""
        if self._strict and not self._initial_done:
            # Strict KEX: nothing but the key exchange itself (IGNORE, DEBUG too).
            if not (n in (MSG_DISCONNECT, MSG_KEXINIT, MSG_NEWKEYS) or 30 <= n <= 49):
                return False
        if n >= 50 or n in (MSG_SERVICE_REQUEST, MSG_SERVICE_ACCEPT, MSG_EXT_INFO):
            return self._initial_done and not self._peer_in_kex
        if n == MSG_KEXINIT:
            return not self._peer_in_kex
        if n == MSG_NEWKEYS:
            return self._peer_in_kex and self._sent_newkeys
        if 30 <= n <= 49:
            if not self._peer_in_kex or self._sent_newkeys:
                return False
            # Only what a server receives in the negotiated method (Conch dispatches by number).
            if not _kex.isDynamicPrimesGroup(self.kexAlg):
                return n == _MSG_KEX_INIT
            group_sent = hasattr(self, "dhSecretKey")
            return n == _MSG_GEX_INIT if group_sent else n in (_MSG_KEX_INIT, _MSG_GEX_REQUEST)
        return True

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
        if self._bytes_out >= self._rekey_bytes or self._packets_out >= MAX_PACKETS_PER_KEY:
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
            nxt = self.nextEncryptions
            # Conch's _keySetup derives the keys (setKeys) just before sending NEWKEYS.
            assert isinstance(nxt, _NextKeys) and nxt.sealer is not None
            self._sealer = nxt.sealer
            self._sent_newkeys = True
            if self._strict:
                self.outgoingPacketSequence = 0

    # -- key exchange --------------------------------------------------------------------

    # Conch's offers zlib, no strict KEX; ours sets the same private state Conch's sets.
    def sendKexInit(self) -> None:
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE:
            raise RuntimeError(f"cannot send KEXINIT in state {self._keyExchangeState}")
        kex = [*self.supportedKeyExchanges, EXT_INFO_S]
        if not self._kexinit_sent:
            kex.append(STRICT_S)  # only meaningful in the first KEXINIT
        self._kexinit_sent += 1
        body = build_kexinit(
            os.urandom(16),
            kex,
            self.supportedPublicKeys,
            self.supportedCiphers,
            self.supportedMACs,
            [b"none"],
        )
        self.ourKexInitPayload = bytes((MSG_KEXINIT,)) + body
        self._write_packet(MSG_KEXINIT, body)
        self._keyExchangeState = self._KEY_EXCHANGE_REQUESTED
        self._blockedByKeyExchange = []

    # Not Conch's (no strict KEX, unchecked lengths); sets what its KEX handlers read:
    # kexAlg, keyAlg, nextEncryptions, both KEXINIT payloads, _peerSupportsExtensions.
    def ssh_KEXINIT(self, packet: bytes) -> None:
        try:
            theirs = KexInit.parse(packet)
        except KexInitError as e:
            self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, str(e).encode())
            return
        self._kexinit_received += 1
        if self._kexinit_received == 1:
            self._strict = STRICT_C in theirs.kex
            if self._strict and self._dispatch_seq != 0:
                self.sendDisconnect(
                    DISCONNECT_PROTOCOL_ERROR, b"strict KEX: KEXINIT was not the first packet"
                )
                return
        # Negotiate over exactly what our KEXINIT offered: the client computes the same
        # result from the same two lists. (So a client without strict KEX can still get
        # chacha20-poly1305 or EtM, Terrapin-prone for it, as with OpenSSH's server.)
        try:
            choice = negotiate(
                theirs,
                kex=self.supportedKeyExchanges,
                host_keys=self.supportedPublicKeys,
                ciphers=self.supportedCiphers,
                macs=self.supportedMACs,
                is_aead=is_aead,
            )
        except NegotiationError as e:
            self.sendDisconnect(DISCONNECT_KEY_EXCHANGE_FAILED, str(e).encode())
            return
        self.otherKexInitPayload = bytes((MSG_KEXINIT,)) + packet
        self.kexAlg = choice.kex
        self.keyAlg = choice.host_key
        self.nextEncryptions = _NextKeys(
            choice.cipher_out, choice.cipher_in, choice.mac_out, choice.mac_in
        )
        self.outgoingCompressionType = self.incomingCompressionType = b"none"
        if self._kexinit_received == 1:
            self._peerSupportsExtensions = EXT_INFO_C in theirs.kex
        self._peer_in_kex = True
        self._sent_newkeys = False
        if self._keyExchangeState == self._KEY_EXCHANGE_NONE:
            self.sendKexInit()  # the client started this exchange
        self._keyExchangeState = self._KEY_EXCHANGE_PROGRESSING
        if theirs.first_kex_follows and (
            theirs.kex[:1] != tuple(self.supportedKeyExchanges[:1])
            or theirs.host_key[:1] != tuple(self.supportedPublicKeys[:1])
        ):
            self.ignoreNextPacket = True  # the client guessed wrong

    def _newKeys(self) -> None:
        nxt = self.nextEncryptions
        if not isinstance(nxt, _NextKeys) or nxt.opener is None:
            self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"NEWKEYS before key exchange")
            return
        self._opener = nxt.opener
        if self._strict:
            self.incomingPacketSequence = 0
        self._peer_in_kex = False
        self._sent_newkeys = False
        self._initial_done = True
        self._reader.max_wire = 0  # from now on the opener's limit
        self.completed_kex += 1
        self._bytes_in = self._bytes_out = self._packets_in = self._packets_out = 0
        self._schedule_rekey()
        super()._newKeys()  # state back to NONE; sends what was queued during the exchange

    # -- rekeying ------------------------------------------------------------------------

    def _maybe_rekey(self) -> None:
        if (
            self._keyExchangeState == self._KEY_EXCHANGE_NONE
            and self._initial_done
            and not self._closed
            and (
                max(self._bytes_in, self._bytes_out) >= self._rekey_bytes
                or max(self._packets_in, self._packets_out) >= MAX_PACKETS_PER_KEY
            )
        ):
            self.sendKexInit()

    def _clock(self) -> IReactorTime:
        clock = self.clock or getattr(getattr(self, "factory", None), "clock", None)
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        return clock  # type: ignore[return-value]

    def _schedule_rekey(self) -> None:
        self._cancel_rekey()
        policy = self.policy
        seconds = policy.rekey_seconds if policy is not None else TransportPolicy.rekey_seconds
        if seconds > 0 and not self._closed:
            self._rekey_call = self._clock().callLater(seconds, self._rekey_timer)

    def _cancel_rekey(self) -> None:
        call = self._rekey_call
        self._rekey_call = None
        if call is not None and call.active():
            call.cancel()

    def _rekey_timer(self) -> None:
        self._rekey_call = None
        if self._keyExchangeState == self._KEY_EXCHANGE_NONE and not self._closed:
            self.sendKexInit()  # if an exchange is running, its end schedules the next timer
