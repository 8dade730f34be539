"""ServerTransport in memory: framing, strict KEX, rekeying; real clients for every cipher."""

# The tests drive untyped Conch objects (client transports, iosim, Failure).
# mypy: disable-error-code="no-untyped-call,union-attr"

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.conch.avatar import ConchUser
from twisted.conch.ssh import _kex, channel, connection, factory, keys, userauth
from twisted.conch.ssh import transport as conch_transport
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from sftpd.config import model as config
from sftpd.ssh.ciphers import make_opener, make_sealer
from sftpd.ssh.kexinit import STRICT_C, STRICT_S, KexInit
from sftpd.ssh.keyexchange import KeyExchange
from sftpd.ssh.packets import PacketReader
from sftpd.ssh.policy import TransportPolicy
from sftpd.ssh.transport import ServerTransport

HOST_KEY = keys.Key(ed25519.Ed25519PrivateKey.generate())
MSG_DISCONNECT, MSG_IGNORE, MSG_UNIMPLEMENTED, MSG_DEBUG, MSG_SERVICE_REQUEST = 1, 2, 3, 4, 5
MSG_KEXINIT, MSG_NEWKEYS = 20, 21
CLIENT_VERSION = b"SSH-2.0-OpenSSH_9.9 test\r\n"


def policy(**kw: Any) -> TransportPolicy:
    return TransportPolicy(
        kex=config.COMPAT_KEX,
        ciphers=config.COMPAT_CIPHERS,
        macs=config.COMPAT_MACS,
        host_key_algorithms=config.COMPAT_HOST_KEY_ALGORITHMS,
        version="sftpd_test",
        **kw,
    )


class EchoChannel(channel.SSHChannel):
    """Any channel type: sends back what it receives, then EOF and close."""

    name = b"direct-tcpip"

    def dataReceived(self, data: bytes) -> None:
        self.write(data)

    def eofReceived(self) -> None:
        self.conn.sendEOF(self)
        self.loseConnection()


class EchoUser(ConchUser):
    def __init__(self) -> None:
        super().__init__()
        self.channelLookup[b"direct-tcpip"] = EchoChannel


@implementer(IRealm)
class EchoRealm:
    def requestAvatar(self, avatar_id: Any, mind: Any, *ifaces: Any) -> Any:
        return ifaces[0], EchoUser(), lambda: None


class UserAuth(userauth.SSHUserAuthServer):
    clock = Clock()  # keep Conch's login timeout off the global reactor


class Factory(factory.SSHFactory):
    publicKeys = {b"ssh-ed25519": HOST_KEY.public()}
    privateKeys = {b"ssh-ed25519": HOST_KEY}
    primes = None
    services = {b"ssh-userauth": UserAuth, b"ssh-connection": connection.SSHConnection}

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.portal = Portal(EchoRealm())
        self.portal.registerChecker(InMemoryUsernamePasswordDatabaseDontUse(u=b"pw"))


def make_server(clock: Clock | None = None, **kw: Any) -> ServerTransport:
    t = ServerTransport()
    t.factory = Factory(clock or Clock())
    t.apply_policy(policy(**kw), [b"ssh-ed25519"])
    return t


# -- crafting and reading plaintext packets (the initial key exchange) ------------------------


def ns(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def plain_packet(msg_type: int, body: bytes = b"") -> bytes:
    payload = bytes([msg_type]) + body
    pad = 8 - (len(payload) + 5) % 8
    if pad < 4:
        pad += 8
    return struct.pack(">IB", len(payload) + 1 + pad, pad) + payload + bytes(pad)


def kexinit(
    kex: list[bytes],
    ciphers: list[bytes] | None = None,
    macs: list[bytes] | None = None,
    first_follows: bool = False,
) -> bytes:
    ciphers = ciphers or [b"aes128-ctr"]
    macs = macs or [b"hmac-sha2-256"]
    lists = [kex, [b"ssh-ed25519"], ciphers, ciphers, macs, macs, [b"none"], [b"none"], [], []]
    body = os.urandom(16) + b"".join(ns(b",".join(x)) for x in lists)
    return plain_packet(MSG_KEXINIT, body + bytes([first_follows]) + bytes(4))


def sent_messages(tr: StringTransport) -> list[tuple[int, bytes]]:
    """The server's version line skipped, its plaintext packets parsed independently."""
    data = tr.value()
    pos = data.index(b"\r\n") + 2
    out = []
    while pos < len(data):
        length, pad = struct.unpack_from(">IB", data, pos)
        payload = data[pos + 5 : pos + 4 + length - pad]
        out.append((payload[0], payload[1:]))
        pos += 4 + length
    return out


def started(**kw: Any) -> tuple[ServerTransport, StringTransport]:
    server = make_server(**kw)
    tr = StringTransport()
    server.makeConnection(tr)
    return server, tr


def disconnect_reason(tr: StringTransport) -> int | None:
    for msg, body in sent_messages(tr):
        if msg == MSG_DISCONNECT:
            return int(struct.unpack(">I", body[:4])[0])
    return None


# -- version line and framing ------------------------------------------------------------------


def test_server_kexinit_advertises_strict_kex_and_policy_order() -> None:
    server, tr = started()
    assert tr.value().startswith(b"SSH-2.0-sftpd_test\r\n")
    [(msg, body)] = sent_messages(tr)
    assert msg == MSG_KEXINIT
    offer = KexInit.parse(body)
    assert STRICT_S in offer.kex and b"ext-info-s" in offer.kex
    assert offer.enc_sc[0] == b"chacha20-poly1305@openssh.com"
    assert offer.enc_sc[:3] == tuple(c.encode() for c in config.COMPAT_CIPHERS[:3])
    assert offer.mac_sc[:2] == (b"hmac-sha2-256-etm@openssh.com", b"hmac-sha2-512-etm@openssh.com")
    assert offer.comp_sc == (b"none",)


def test_lines_before_the_version_and_byte_by_byte_delivery() -> None:
    server, tr = started()
    stream = b"hello\r\n" + CLIENT_VERSION + kexinit([b"curve25519-sha256"])
    for i in range(len(stream)):
        server.dataReceived(stream[i : i + 1])
    assert server.otherVersionString == CLIENT_VERSION.strip()
    assert server.kexAlg == b"curve25519-sha256"
    assert not tr.disconnecting


def test_unsupported_version_and_endless_version_line_disconnect() -> None:
    server, tr = started()
    server.dataReceived(b"SSH-1.5-old\r\n")
    assert tr.disconnecting
    server, tr = started()
    server.dataReceived(b"x" * 5000)
    assert tr.disconnecting and disconnect_reason(tr) == 2


def test_packet_reader_any_split_gives_the_same_messages() -> None:
    key, iv = os.urandom(64), os.urandom(16)
    sealer = make_sealer(b"aes128-gcm@openssh.com", None, key, iv, b"")
    bodies = [os.urandom(n) for n in (0, 1, 100, 40000, 7)]
    stream = b"".join(b"".join(sealer.seal(i, 94, b)) for i, b in enumerate(bodies))
    for step in (1, 3, 1000, len(stream)):
        reader = PacketReader()
        opener = make_opener(b"aes128-gcm@openssh.com", None, key, iv, b"")
        got: list[bytes] = []
        for i in range(0, len(stream), step):
            reader.feed(stream[i : i + step])
            while (m := reader.read_packet(opener, len(got))) is not None:
                got.append(m[1])
        assert got == bodies and reader.pending == 0
        assert len(reader._buf) == 0  # nothing kept once all is consumed (idle sessions)


def test_malformed_kexinit_and_transport_messages_disconnect() -> None:
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + plain_packet(MSG_KEXINIT, os.urandom(16) + ns(b"x")))
    assert tr.disconnecting and disconnect_reason(tr) == 2
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + plain_packet(MSG_DEBUG))  # no fields at all
    assert tr.disconnecting and disconnect_reason(tr) == 2
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + plain_packet(MSG_DISCONNECT, b"\0\0"))
    assert tr.disconnecting


@pytest.mark.parametrize("msg", [31, 32, 33, 34, 40])
def test_kex_messages_of_another_method_disconnect(msg: int) -> None:
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + kexinit([b"curve25519-sha256"]))
    server.dataReceived(plain_packet(msg, bytes(4)))
    assert tr.disconnecting and disconnect_reason(tr) == 2


def test_kex_message_out_of_turn_is_a_clean_disconnect() -> None:
    """KEX_DH_GEX_INIT during an ECDH exchange made Conch raise AttributeError (self.p)."""
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + kexinit([b"curve25519-sha256"]))
    server.dataReceived(plain_packet(32, b"\x00\x00\x00\x00"))
    assert tr.disconnecting
    assert disconnect_reason(tr) == 2  # DISCONNECT_PROTOCOL_ERROR


def test_wrong_first_kex_packet_guess_is_ignored() -> None:
    server, tr = started()
    offer = kexinit([b"ecdh-sha2-nistp256", b"curve25519-sha256"], first_follows=True)
    server.dataReceived(CLIENT_VERSION + offer)
    # Picked by the client's order, but our first choice differs: the guess counts as
    # wrong (RFC 4253 7, as OpenSSH), so its KEX packet is skipped.
    assert server.kexAlg == b"ecdh-sha2-nistp256" and server.ignoreNextPacket
    server.dataReceived(plain_packet(30, ns(os.urandom(65))))
    assert not tr.disconnecting and not server.ignoreNextPacket
    # A guessed group-exchange request is dropped as well, though ECDH was chosen.
    server, tr = started()
    offer = kexinit(
        [b"diffie-hellman-group-exchange-sha256", b"curve25519-sha256"], first_follows=True
    )
    server.dataReceived(CLIENT_VERSION + offer)
    assert server.kexAlg == b"curve25519-sha256" and server.ignoreNextPacket
    server.dataReceived(plain_packet(34, struct.pack(">III", 2048, 3072, 8192)))
    assert not tr.disconnecting and not server.ignoreNextPacket


@settings(max_examples=200, deadline=None)
@given(
    st.booleans(),
    st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=64)), max_size=6),
)
def test_arbitrary_messages_never_raise(strict: bool, messages: list[tuple[int, bytes]]) -> None:
    """Any framed message, before or after KEXINIT: handled or a clean disconnect."""
    server, tr = started()
    kex = [b"curve25519-sha256", *([STRICT_C] if strict else [])]
    server.dataReceived(CLIENT_VERSION + kexinit(kex))
    for msg, body in messages:
        server.dataReceived(plain_packet(msg, body))
    assert server._strict is strict
    if any(msg == MSG_DISCONNECT for msg, _ in messages):
        assert tr.disconnecting


# -- strict KEX ---------------------------------------------------------------------------------

UNEXPECTED = {
    "IGNORE": plain_packet(MSG_IGNORE, ns(b"")),
    "DEBUG": plain_packet(MSG_DEBUG, b"\0" + ns(b"hi") + ns(b"")),
    "UNIMPLEMENTED": plain_packet(MSG_UNIMPLEMENTED, struct.pack(">I", 0)),
    "SERVICE_REQUEST": plain_packet(MSG_SERVICE_REQUEST, ns(b"ssh-userauth")),
    "channel message": plain_packet(94, b"\0" * 8),
}


@pytest.mark.parametrize("name", list(UNEXPECTED))
def test_strict_kex_unexpected_message_during_initial_kex_disconnects(name: str) -> None:
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + kexinit([b"curve25519-sha256", STRICT_C]))
    assert server._strict and not tr.disconnecting
    server.dataReceived(UNEXPECTED[name])
    assert tr.disconnecting
    assert disconnect_reason(tr) == 2  # DISCONNECT_PROTOCOL_ERROR


def test_strict_kex_kexinit_must_be_the_first_packet() -> None:
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + UNEXPECTED["IGNORE"])
    assert not tr.disconnecting  # strictness is not known yet
    server.dataReceived(kexinit([b"curve25519-sha256", STRICT_C]))
    assert tr.disconnecting and disconnect_reason(tr) == 2


def test_without_strict_kex_ignore_is_tolerated_but_services_are_not() -> None:
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + UNEXPECTED["IGNORE"] + kexinit([b"curve25519-sha256"]))
    server.dataReceived(UNEXPECTED["IGNORE"] + UNEXPECTED["DEBUG"])
    assert not tr.disconnecting
    server.dataReceived(UNEXPECTED["SERVICE_REQUEST"])  # never before keys, strict or not
    assert tr.disconnecting


def test_newkeys_and_kex_replies_out_of_order_disconnect() -> None:
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + plain_packet(MSG_NEWKEYS))
    assert tr.disconnecting
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + plain_packet(30, ns(b"\0" * 32)))
    assert tr.disconnecting
    server, tr = started()
    k = kexinit([b"curve25519-sha256"])
    server.dataReceived(CLIENT_VERSION + k + k)  # a second KEXINIT within one exchange
    assert tr.disconnecting


CHACHA = b"chacha20-poly1305@openssh.com"


@pytest.mark.parametrize("strict", [True, False])
def test_negotiation_follows_the_client_order_strict_or_not(strict: bool) -> None:
    """Both sides must reach the same choice from the same two KEXINITs, whatever strictness."""
    server, tr = started()
    kex = [b"curve25519-sha256", *([STRICT_C] if strict else [])]
    macs = [b"hmac-sha2-512-etm@openssh.com", b"hmac-sha2-256"]
    server.dataReceived(CLIENT_VERSION + kexinit(kex, ciphers=[b"aes256-ctr", CHACHA], macs=macs))
    assert server._strict is strict and not tr.disconnecting
    assert server.nextEncryptions.outCipType == b"aes256-ctr"
    assert server.nextEncryptions.outMACType == b"hmac-sha2-512-etm@openssh.com"
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + kexinit(kex, ciphers=[CHACHA], macs=[b"hmac-sha1"]))
    assert not tr.disconnecting  # as OpenSSH: an AEAD cipher needs no common MAC ...
    assert server.nextEncryptions.outCipType == CHACHA
    server, tr = started()
    server.dataReceived(CLIENT_VERSION + kexinit(kex, ciphers=[b"aes128-ctr"], macs=[b"hmac-sha1"]))
    assert tr.disconnecting and disconnect_reason(tr) == 3  # ... a MAC-using cipher does


# -- against Conch's client in memory (fine for sequence numbers, rekey, tampering) ---------------


class ConchClient(conch_transport.SSHClientTransport):
    """Conch's client (aes-ctr + HMAC only); ``strict`` adds OpenSSH's strict KEX to it."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.received: list[tuple[int, bytes]] = []
        self.errors: list[int] = []
        self.secure = 0
        self.supportedCiphers = [b"aes128-ctr"]
        self.supportedMACs = [b"hmac-sha2-256"]
        if strict:
            self.supportedKeyExchanges = [*self.supportedKeyExchanges, STRICT_C]

    def verifyHostKey(self, pub: bytes, fingerprint: bytes) -> Any:
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.secure += 1

    def receiveError(self, reason: int, desc: bytes) -> None:
        self.errors.append(reason)

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        super().sendPacket(messageType, payload)
        if self.strict and messageType == MSG_NEWKEYS:
            self.outgoingPacketSequence = 0

    def _newKeys(self) -> None:
        if self.strict:
            self.incomingPacketSequence = 0
        super()._newKeys()

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if messageNum >= 50:
            self.received.append((messageNum, payload))
        else:
            super().dispatchMessage(messageNum, payload)


def connected(strict: bool = False, **kw: Any) -> tuple[ServerTransport, ConchClient, Clock, Any]:
    clock = Clock()
    server = make_server(clock, **kw)
    client, srv, pump = iosim.connectedServerAndClient(lambda: server, lambda: ConchClient(strict))
    pump.flush()
    assert srv is server and server.completed_kex == 1 and client.secure == 1
    return server, client, clock, pump


@pytest.mark.parametrize("strict", [False, True])
def test_sequence_numbers_reset_after_newkeys_only_in_strict_mode(strict: bool) -> None:
    server, client, clock, pump = connected(strict)
    assert server._strict is strict
    client.sendIgnore(b"after newkeys")
    pump.flush()
    # Strict: one packet (the IGNORE) since NEWKEYS; otherwise KEXINIT, KEX, NEWKEYS, IGNORE.
    assert server.incomingPacketSequence == (1 if strict else 4)
    assert not client.errors and not server.transport.disconnecting


def test_tampered_packet_is_a_mac_error_and_disconnects() -> None:
    server, client, clock, pump = connected()
    client.sendIgnore(b"x" * 100)
    wire = bytearray(client.transport.stream.pop())
    wire[30] ^= 0x01
    client.transport.stream.append(bytes(wire))
    pump.flush()
    assert client.errors == [5]  # DISCONNECT_MAC_ERROR, read by the client
    assert server.transport.disconnecting


def test_rekey_by_volume_queues_messages_and_delivers_them_in_order() -> None:
    server, client, clock, pump = connected(rekey_bytes=64 * 1024)
    bodies = [i.to_bytes(4, "big") + os.urandom(1020) for i in range(300)]
    for b in bodies:
        server.sendPacket(94, b)
    assert server._blockedByKeyExchange  # sent during the rekey: held back, not lost
    pump.flush()
    assert [b for _, b in client.received] == bodies
    assert server.completed_kex >= 2 and client.secure == server.completed_kex
    assert not client.errors


def test_rekey_by_incoming_volume() -> None:
    server, client, clock, pump = connected(rekey_bytes=32 * 1024)
    for _ in range(100):
        client.sendIgnore(b"y" * 1000)
        pump.flush()
    assert server.completed_kex >= 3 and not client.errors


@pytest.mark.parametrize("strict", [False, True])
def test_rekey_by_time_with_an_injected_clock(strict: bool) -> None:
    server, client, clock, pump = connected(strict, rekey_seconds=600.0)
    first_kexinit = server.ourKexInitPayload
    clock.advance(599)
    pump.flush()
    assert server.completed_kex == 1
    clock.advance(1)
    pump.flush()
    assert server.completed_kex == 2 and client.secure == 2
    assert STRICT_S in KexInit.parse(first_kexinit[1:]).kex
    assert STRICT_S not in KexInit.parse(server.ourKexInitPayload[1:]).kex
    client.sendIgnore(b"still fine")
    pump.flush()
    assert not client.errors and len(clock.getDelayedCalls()) == 1


def test_client_initiated_rekey_and_no_timer_after_disconnect() -> None:
    server, client, clock, pump = connected()
    client.sendKexInit()
    pump.flush()
    assert server.completed_kex == 2
    assert len(clock.getDelayedCalls()) == 1
    server.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_rekey_by_packet_count_even_with_volume_rekey_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(KeyExchange, "_rekey_packets", 50)  # MAX_PACKETS_PER_KEY
    server, client, clock, pump = connected(rekey_bytes=0)
    for _ in range(120):
        server.sendPacket(94, b"tiny")
    pump.flush()
    assert server.completed_kex >= 3 and len(client.received) == 120


@pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields")
def test_group_exchange_handshake_and_rekey() -> None:
    """diffie-hellman-group-exchange (messages 34, 31, 32, 33) when a moduli file is present."""
    clock = Clock()
    server = make_server(clock, have_moduli=True)
    server.factory.primes = {2048: [_kex.getDHGeneratorAndPrime(b"diffie-hellman-group14-sha1")]}

    def client() -> ConchClient:
        c = ConchClient()
        c.supportedKeyExchanges = [b"diffie-hellman-group-exchange-sha256"]
        return c

    c, srv, pump = iosim.connectedServerAndClient(lambda: server, client)
    pump.flush()
    assert server.kexAlg == b"diffie-hellman-group-exchange-sha256"
    assert server.completed_kex == 1 and c.secure == 1
    server.sendKexInit()
    pump.flush()
    assert server.completed_kex == 2 and not c.errors


def test_rekey_disabled_by_zero_limits() -> None:
    server, client, clock, pump = connected(rekey_bytes=0, rekey_seconds=0)
    for _ in range(50):
        server.sendPacket(94, b"z" * 4000)
    pump.flush()
    assert server.completed_kex == 1 and clock.getDelayedCalls() == []
