"""Known answers, round trips and tampering for sftpd.ssh.ciphers (pure, no Twisted)."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from sftpd.ssh.chacha import AHEAD, chacha_contexts, chacha_nonce
from sftpd.ssh.ciphers import (
    _SMALL,
    CIPHERS,
    MACS,
    MacError,
    PacketError,
    is_aead,
    make_opener,
    make_sealer,
)

KEY = bytes(range(64))
IV = bytes(range(100, 116))
MAC_KEY = bytes((200 + i) % 256 for i in range(64))
KAT_BODY = b"sftpd known answer"
KAT_SEQ = 7

# Wire bytes for message type 94 + KAT_BODY at sequence number 7 with all-zero padding,
# computed with asyncssh's independent implementation (asyncssh.encryption) from the keys above.
KNOWN_ANSWERS = {
    (b"chacha20-poly1305@openssh.com", None): (
        "a39afcb22c1866253af34e7e0703d487b9afb24247c555447ee33d83c77a403e26e9cb0ea76728c34f214448"
    ),
    (b"aes128-gcm@openssh.com", None): (
        "00000020163c3dc3af72dcdaf0503867e8ea4a8243ff1d8d92a9dd5af46fb197bcf2f7f3"
        "d9118fd369a3fa02d11edd1a5188859d"
    ),
    (b"aes256-gcm@openssh.com", None): (
        "000000204445ad000d9932be550c309fb4450b9331b563788b6cf372a7d1ac48fba3a548"
        "79cbd37f0eb87c3bdff0d29015a4a0a4"
    ),
    (b"aes128-ctr", b"hmac-sha2-256-etm@openssh.com"): (
        "0000002092e11dfac96c8a5866697affffc5e5f51ff805b55e20e0d92bb1340860f9bf5a"
        "e304b817e072ef4b9ff189d0643b31e93f9268b1aaf2a528664b129adde81e1b"
    ),
    (b"aes256-ctr", b"hmac-sha2-512-etm@openssh.com"): (
        "000000209f866246c250df6d15e3d0dc889ff1b2c69eee7700d315d87276945a9a8ce192"
        "0dcaef4fbfe735a2c76694d1b151969edf03398b60a78801d302a4f5ae66b23fdf06974e"
        "0ff8b880b047b7f0bfa8ae42457611f69ea202adb5f8ba9bbedeec4c"
    ),
    (b"aes128-ctr", b"hmac-sha2-256"): (
        "9ebf6e80b5429d1e797771a8fa8bebec02af01a92d5785ab2bb1340860f9bf5a0ff4451a"
        "22ca79a26df5394c85e13027ca9b2c04bb682214e90ddcf55884f01c"
    ),
    (b"aes192-ctr", b"hmac-sha2-512"): (
        "b397929534a5df95a98d9d1e4625e8e54616f186f009b0c2fbeceb740ab981679fc7462a"
        "6e81d1150a443af6933d1968edcc6a745366d5331f56cc1256e20c44f97350870531444b"
        "a83cf878b5b834b69d04f7a53293fda70b9fac76ee7e3bf1"
    ),
}

# Every cipher/MAC pair the transport can negotiate.
SUITES = [(c, None) for c in CIPHERS if is_aead(c)] + [
    (c, m) for c in CIPHERS if not is_aead(c) for m in MACS
]
SUITE_IDS = [f"{c.decode()}+{m.decode() if m else 'aead'}" for c, m in SUITES]


def _zero_padding(n: int) -> bytes:
    return bytes(n)


def _open_all(opener: object, seq: int, wire: bytes) -> tuple[int, bytes]:
    mv = memoryview(wire)
    size = opener.start(seq, mv, 0)  # type: ignore[attr-defined]
    assert size == len(wire)
    result: tuple[int, bytes] = opener.finish(seq, mv)  # type: ignore[attr-defined]
    return result


def _padlen(cipher: bytes, mac: bytes | None, body_len: int) -> int:
    """Independent statement of RFC 4253 6 padding (length field excluded for AEAD/EtM)."""
    block = CIPHERS[cipher].block_size
    aad = mac is None or MACS[mac].etm
    covered = body_len + 2 + (0 if aad else 4)
    pad = block - covered % block
    return pad + block if pad < 4 else pad


@pytest.mark.parametrize(("cipher", "mac"), list(KNOWN_ANSWERS))
def test_known_answer_seal_and_open(cipher: bytes, mac: bytes | None) -> None:
    expected = bytes.fromhex(KNOWN_ANSWERS[(cipher, mac)])
    sealer = make_sealer(cipher, mac, KEY, IV, MAC_KEY, padding=_zero_padding)
    assert b"".join(sealer.seal(KAT_SEQ, 94, KAT_BODY)) == expected
    opener = make_opener(cipher, mac, KEY, IV, MAC_KEY)
    assert _open_all(opener, KAT_SEQ, expected) == (94, KAT_BODY)


# Bodies around ciphers._SMALL: small packets are joined and go through one cipher call,
# larger ones chunk by chunk. With _SMALL - 12 the packet_length is _SMALL itself (opened as
# a small packet), with _SMALL it is just above (sealed as small, opened as large).
THRESHOLD_SIZES = [_SMALL - 12, _SMALL, _SMALL + 1]


@pytest.mark.parametrize("size", [40, AHEAD + 5, *THRESHOLD_SIZES])
@pytest.mark.parametrize(("cipher", "mac"), SUITES, ids=SUITE_IDS)
def test_small_and_large_packet_paths(cipher: bytes, mac: bytes | None, size: int) -> None:
    """Both paths round-trip, and both reject a flipped tag byte or ciphertext byte."""
    key, iv, mac_key = os.urandom(64), os.urandom(16), os.urandom(64)
    body = os.urandom(size)
    chunks = make_sealer(cipher, mac, key, iv, mac_key).seal(3, 94, body)
    if b"gcm" not in cipher:  # joined, or chunk by chunk (AES-GCM has one path)
        assert (len(chunks) <= 3) == (size <= _SMALL)
    wire = b"".join(chunks)
    assert _open_all(make_opener(cipher, mac, key, iv, mac_key), 3, wire) == (94, body)
    for pos in (len(wire) - 1, 4 + size // 2):  # in the tag; in the body's ciphertext
        bad = bytearray(wire)
        bad[pos] ^= 0x40
        opener = make_opener(cipher, mac, key, iv, mac_key)
        mv = memoryview(bytes(bad))
        assert opener.start(3, mv, 0) == len(wire)  # the length field is untouched
        with pytest.raises(MacError):
            opener.finish(3, mv)


asyncssh_encryption = pytest.importorskip("asyncssh.encryption")


@pytest.mark.parametrize(("cipher", "mac"), SUITES, ids=SUITE_IDS)
def test_matches_asyncssh_both_ways(cipher: bytes, mac: bytes | None) -> None:
    """Byte-for-byte equal to asyncssh when sealing; opens what asyncssh seals (many packets)."""
    spec = CIPHERS[cipher]
    key, iv, mac_key = os.urandom(64), os.urandom(16), os.urandom(64)
    extra = (mac, mac_key[: MACS[mac].size], MACS[mac].etm) if mac else ()
    theirs_out = asyncssh_encryption.get_encryption(
        cipher, key[: spec.key_size], iv[: spec.iv_size], *extra
    )
    theirs_in = asyncssh_encryption.get_encryption(
        cipher, key[: spec.key_size], iv[: spec.iv_size], *extra
    )
    ours_out = make_sealer(cipher, mac, key, iv, mac_key, padding=_zero_padding)
    ours_in = make_opener(cipher, mac, key, iv, mac_key)
    packets = [(0, 0), (1, 1), (2, 15), (3, 16), (4, 1000), (5, 32768), (2**32 - 1, 7)]
    for seq, size in packets + list(enumerate(THRESHOLD_SIZES, 6)):
        body = os.urandom(size)
        padlen = _padlen(cipher, mac, size)
        plain = bytes([padlen, 94]) + body + bytes(padlen)
        ct, tag = theirs_out.encrypt_packet(seq, len(plain).to_bytes(4, "big"), plain)
        assert b"".join(ours_out.seal(seq, 94, body)) == ct + tag
        ct, tag = theirs_in.encrypt_packet(seq, len(plain).to_bytes(4, "big"), plain)
        assert _open_all(ours_in, seq, ct + tag) == (94, body)


@pytest.mark.parametrize("ahead", ["none", "right", "wrong", "twice", "mid"])
def test_chacha_key_material_made_ahead_matches_asyncssh(ahead: str) -> None:
    """``prepare`` (key stream and Poly1305 key made while idle) never changes a byte:
    made for the right sequence number, a wrong one, twice, not at all, or (opening)
    between ``start`` and ``finish``; bodies on each side of the AHEAD key stream."""
    cipher = b"chacha20-poly1305@openssh.com"
    key = os.urandom(64)
    theirs = asyncssh_encryption.get_encryption(cipher, key, b"")
    ours_out = make_sealer(cipher, None, key, b"", b"", padding=_zero_padding)
    ours_in = make_opener(cipher, None, key, b"", b"")
    sizes = [0, 1, AHEAD - 10, AHEAD - 9, AHEAD - 2, AHEAD, AHEAD + 7, 4096, _SMALL, 40000]
    for seq, size in enumerate(sizes, 2**32 - 3):
        seq &= 2**32 - 1
        body = os.urandom(size)
        padlen = _padlen(cipher, None, size)
        plain = bytes([padlen, 94]) + body + bytes(padlen)
        ct, tag = theirs.encrypt_packet(seq, len(plain).to_bytes(4, "big"), plain)
        for side in (ours_out, ours_in):
            if ahead in ("right", "twice"):
                side.prepare(seq)
            if ahead == "twice":
                side.prepare(seq)
            if ahead == "wrong":
                side.prepare(seq + 1)
        assert b"".join(ours_out.seal(seq, 94, body)) == ct + tag
        wire = memoryview(ct + tag)
        assert ours_in.start(seq, wire, 0) == len(wire)
        if ahead == "mid":
            ours_in.prepare(seq)
        assert ours_in.finish(seq, wire) == (94, body)


# RFC 8439 2.4.2: key 00..1f, counter 1, nonce 00000000 0000004a 00000000.
SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
SUNSCREEN_CT = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)


def test_rfc8439_chacha20_through_openssh_nonce_layout() -> None:
    """OpenSSH's 64-bit counter + 64-bit nonce mapped onto cryptography's 16-byte nonce.

    The RFC nonce 00000000 0000004a 00000000 with a 32-bit counter is the same state as a
    zero high counter word plus the 64-bit nonce 0000004a00000000; block 0 is skipped as
    the Poly1305 key, so the payload starts at counter 1 as in the RFC example.
    """
    main, _ = chacha_contexts(bytes(range(32)) + bytes(32))
    main.reset_nonce(chacha_nonce(int.from_bytes(bytes.fromhex("0000004a00000000"), "big")))
    main.update(bytes(64))  # block 0: the Poly1305 key
    assert main.update(SUNSCREEN) == SUNSCREEN_CT


def test_rfc8439_poly1305_key_generation() -> None:
    """RFC 8439 2.6.2: the one-time key is the first 32 bytes of block 0."""
    main, _ = chacha_contexts(bytes(range(0x80, 0xA0)) + bytes(32))
    main.reset_nonce(chacha_nonce(int.from_bytes(bytes.fromhex("0001020304050607"), "big")))
    assert main.update(bytes(64))[:32] == bytes.fromhex(
        "8ad5a08b905f81cc815040274ab29471a833b637e3fd0da508dbb8e2fdd1a646"
    )


def test_rfc8439_poly1305_tag() -> None:
    """RFC 8439 2.5.2, the MAC the chacha20-poly1305 suite composes."""
    key = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    tag = Poly1305.generate_tag(key, b"Cryptographic Forum Research Group")
    assert tag == bytes.fromhex("a8061dc1305136c6c22b8baf0c0127a9")


def test_chacha_length_uses_k1_and_payload_k2() -> None:
    """Swapping the halves of the key changes both the length and the payload encryption."""
    body = b"x" * 40
    a = b"".join(
        make_sealer(b"chacha20-poly1305@openssh.com", None, KEY, b"", b"").seal(3, 94, body)
    )
    swapped = KEY[32:] + KEY[:32]
    b = b"".join(
        make_sealer(b"chacha20-poly1305@openssh.com", None, swapped, b"", b"").seal(3, 94, body)
    )
    assert a[:4] != b[:4] and a[4:8] != b[4:8]


@settings(max_examples=40, deadline=None)
@given(
    suite=st.sampled_from(SUITES),
    sizes=st.lists(st.integers(0, 70000), min_size=1, max_size=6),
    first_seq=st.integers(0, 2**32 - 1),
    msg_type=st.integers(1, 255),
)
def test_round_trip_many_packets(
    suite: tuple[bytes, bytes | None], sizes: list[int], first_seq: int, msg_type: int
) -> None:
    cipher, mac = suite
    key, iv, mac_key = os.urandom(64), os.urandom(16), os.urandom(64)
    sealer = make_sealer(cipher, mac, key, iv, mac_key)
    opener = make_opener(cipher, mac, key, iv, mac_key)
    for i, size in enumerate(sizes):
        seq = (first_seq + i) & 0xFFFFFFFF
        body = os.urandom(size)
        wire = b"".join(sealer.seal(seq, msg_type, body))
        tag = 16 if mac is None else MACS[mac].size
        clear = 4 if mac is None or MACS[mac].etm else 0
        assert (len(wire) - tag - clear) % CIPHERS[cipher].block_size == 0
        assert _open_all(opener, seq, wire) == (msg_type, body)


@settings(max_examples=60, deadline=None)
@given(suite=st.sampled_from(SUITES), data=st.data())
def test_tampering_any_byte_never_yields_a_packet(
    suite: tuple[bytes, bytes | None], data: st.DataObject
) -> None:
    cipher, mac = suite
    key, iv, mac_key = os.urandom(64), os.urandom(16), os.urandom(64)
    body = os.urandom(data.draw(st.integers(0, 300)))
    wire = bytearray(b"".join(make_sealer(cipher, mac, key, iv, mac_key).seal(9, 94, body)))
    pos = data.draw(st.integers(0, len(wire) - 1))
    wire[pos] ^= data.draw(st.integers(1, 255))
    stream = memoryview(bytes(wire) + os.urandom(4096))  # whatever follows on the wire
    opener = make_opener(cipher, mac, key, iv, mac_key)
    with pytest.raises(PacketError):  # MacError is a PacketError
        size = opener.start(9, stream, 0)
        if size > len(stream):
            raise PacketError("waits for bytes that never authenticate")
        opener.finish(9, stream[:size])


# AES-GCM authenticates with its own invocation counter instead of the sequence number.
SEQ_SUITES = [s for s in SUITES if b"gcm" not in s[0]]


@pytest.mark.parametrize(("cipher", "mac"), SEQ_SUITES)
def test_wrong_sequence_number_fails(cipher: bytes, mac: bytes | None) -> None:
    key, iv, mac_key = os.urandom(64), os.urandom(16), os.urandom(64)
    wire = b"".join(make_sealer(cipher, mac, key, iv, mac_key).seal(5, 94, b"payload"))
    opener = make_opener(cipher, mac, key, iv, mac_key)
    with pytest.raises(PacketError):
        mv = memoryview(wire + os.urandom(1024))
        size = opener.start(6, mv, 0)
        opener.finish(6, mv[:size])


def test_tag_failure_is_a_mac_error() -> None:
    for cipher, mac in SUITES:
        key, iv, mac_key = os.urandom(64), os.urandom(16), os.urandom(64)
        wire = bytearray(b"".join(make_sealer(cipher, mac, key, iv, mac_key).seal(1, 94, b"z")))
        wire[-1] ^= 1
        opener = make_opener(cipher, mac, key, iv, mac_key)
        mv = memoryview(bytes(wire))
        size = opener.start(1, mv, 0)
        with pytest.raises(MacError):
            opener.finish(1, mv[:size])


def test_aead_needs_no_mac_and_stream_ciphers_do() -> None:
    assert is_aead(b"chacha20-poly1305@openssh.com")
    assert is_aead(b"aes256-gcm@openssh.com")
    assert not is_aead(b"aes128-ctr")
    with pytest.raises(ValueError):
        make_sealer(b"aes128-ctr", None, KEY, IV, MAC_KEY)
