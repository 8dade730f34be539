"""Key exchange on sftpd's transport: KEXINIT negotiation, strict KEX, NEWKEYS and rekeying."""

# Conch's transport classes are untyped: subclassing them and overriding their methods needs
# these relaxations here (and only here and in ssh/transport.py).
# mypy: disable-error-code="misc,no-untyped-call,no-any-return"
# Each Conch internal used here is checked against Twisted by tests/test_conch_contract.py.

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from twisted.conch.ssh import _kex
from twisted.conch.ssh.transport import (
    DISCONNECT_KEY_EXCHANGE_FAILED,
    DISCONNECT_PROTOCOL_ERROR,
    MSG_DISCONNECT,
    MSG_EXT_INFO,
    MSG_KEXINIT,
    MSG_NEWKEYS,
    MSG_SERVICE_ACCEPT,
    MSG_SERVICE_REQUEST,
    SSHCiphers,
    SSHServerTransport,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sftpd.ssh.ciphers import Opener, Sealer, is_aead, make_opener, make_sealer
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
from sftpd.ssh.policy import TransportPolicy

if TYPE_CHECKING:
    from sftpd.ssh.packets import PacketReader

NEVER = 1 << 62
# Rekey after this many packets in a direction whatever the byte limit (as OpenSSH): the
# sequence number is chacha20-poly1305's nonce and must not wrap under one key.
MAX_PACKETS_PER_KEY = 1 << 31
_MSG_KEX_INIT = 30  # KEXDH_INIT, KEX_ECDH_INIT, hybrid INIT and GEX_REQUEST_OLD share it
_MSG_GEX_INIT = 32
_MSG_GEX_REQUEST = 34


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


class KeyExchange(SSHServerTransport):
    """The key exchange half of :class:`sftpd.ssh.transport.ServerTransport`.

    Conch runs the key exchange methods, host key signatures and key derivation; this
    class negotiates over exactly what our KEXINIT offered, enforces strict KEX (only the
    exchange itself before the first NEWKEYS, sequence numbers reset at each NEWKEYS),
    switches each direction's keys on its own NEWKEYS and starts a new exchange by volume
    (``_rekey_bytes``, ``_rekey_packets``) and by time (the policy's ``rekey_seconds``).
    """

    completed_kex = 0  # key exchanges completed on this connection

    _strict = False
    _initial_done = False
    _kexinit_received = 0
    _kexinit_sent = 0
    _peer_in_kex = False  # between the client's KEXINIT and its NEWKEYS
    _sent_newkeys = False  # our NEWKEYS of the running exchange is out
    # what was sent and received under the current keys; the packet path counts them
    _bytes_in = 0
    _bytes_out = 0
    _packets_in = 0
    _packets_out = 0
    _rekey_bytes = NEVER
    _rekey_packets = MAX_PACKETS_PER_KEY
    _rekey_call: IDelayedCall | None = None

    if TYPE_CHECKING:  # provided by the packet path (sftpd/ssh/transport.py)
        policy: TransportPolicy | None
        _closed: bool
        _dispatch_seq: int
        _reader: PacketReader
        _sealer: Sealer
        _opener: Opener

        def _clock(self) -> IReactorTime: ...
        def _write_packet(self, msg_type: int, payload: bytes) -> None: ...

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

    def _newkeys_written(self) -> None:
        """Our NEWKEYS is on the wire: what we send from now on is sealed with the new keys."""
        nxt = self.nextEncryptions
        # Conch's _keySetup derives the keys (setKeys) just before sending NEWKEYS.
        assert isinstance(nxt, _NextKeys) and nxt.sealer is not None
        self._sealer = nxt.sealer
        self._sent_newkeys = True
        if self._strict:
            self.outgoingPacketSequence = 0

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
                or max(self._packets_in, self._packets_out) >= self._rekey_packets
            )
        ):
            self.sendKexInit()

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
