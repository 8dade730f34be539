"""chacha20-poly1305@openssh.com (PROTOCOL.chacha20poly1305), with per-packet keys made ahead."""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.poly1305 import Poly1305

from sftpd.ssh.protect import (
    LEN,
    MAX_PACKET,
    PADTYPE,
    SMALL,
    Buffer,
    MacError,
    PacketError,
    Padding,
    random_padding,
    split_padding,
)

# cryptography's 16-byte ChaCha20 nonce for OpenSSH's 64-bit one. OpenSSH uses the original
# ChaCha20 (64-bit little-endian block counter, then a 64-bit nonce: the sequence number as
# a big-endian uint64). cryptography takes the last four state words as 16 bytes: the
# counter (here 0, or 1 for the payload, which starts at block 1), then the nonce.
chacha_nonce = struct.Struct(">8xQ").pack
_SEQ64 = struct.Struct(">Q").pack
_COUNTER1 = (1).to_bytes(8, "little")
_ZERO16 = bytes(16)
_ZERO4 = bytes(4)
# Key stream made ahead per packet: block 0 (the Poly1305 key) and this much of the payload's.
AHEAD = 448
_ZERO_AHEAD = bytes(64 + AHEAD)


def chacha_contexts(key: bytes) -> tuple[CipherContext, CipherContext]:
    """The two ChaCha20 instances, rewound per packet: K_2 (payload, returned first) from
    the first 256 bits of the key, K_1 (the length) from the second."""
    main = Cipher(algorithms.ChaCha20(key[:32], _ZERO16), None).encryptor()
    return main, Cipher(algorithms.ChaCha20(key[32:64], _ZERO16), None).encryptor()


def _xor(data: Buffer, stream: bytes) -> bytes:
    """``data`` XOR the first len(data) bytes of ``stream`` (no library call)."""
    n = len(data)
    mixed = int.from_bytes(data, "little") ^ int.from_bytes(stream[:n], "little")
    return mixed.to_bytes(n, "little")


class _KeyMaterial:
    """What one sequence number needs: the length's key stream, a Poly1305 keyed with
    block 0 of the payload cipher, and the first AHEAD bytes of the payload's key stream.

    ``prepare`` makes it ahead (when the connection is idle) so that a small packet costs
    its critical path one Poly1305 update and two XORs. After ``prepare`` the payload
    context stands at payload byte AHEAD of that packet; ``take`` hands the material over
    once (a Poly1305 object is single-use)."""

    __slots__ = ("_lc", "_main", "_ready")

    def __init__(self, key: bytes) -> None:
        self._main, self._lc = chacha_contexts(key)
        self._ready: tuple[int, int, Poly1305, bytes] | None = None

    def prepare(self, seq: int) -> None:
        ready = self._ready
        if ready is not None and ready[0] == seq:
            return
        nonce = chacha_nonce(seq)
        lc, main = self._lc, self._main
        lc.reset_nonce(nonce)
        length_stream = LEN.unpack(lc.update(_ZERO4))[0]  # XORed into packet_length
        main.reset_nonce(nonce)
        block = main.update(_ZERO_AHEAD)
        self._ready = (seq, length_stream, Poly1305(block[:32]), block[64:])

    def length_stream(self, seq: int) -> int:
        ready = self._ready
        if ready is None or ready[0] != seq:
            self.prepare(seq)
            ready = self._ready
            assert ready is not None
        return ready[1]

    def take(self, seq: int) -> tuple[int, Poly1305, bytes]:
        ready = self._ready
        if ready is None or ready[0] != seq:
            self.prepare(seq)
            ready = self._ready
            assert ready is not None
        self._ready = None
        return ready[1], ready[2], ready[3]

    def rest(self, data: Buffer) -> bytes:
        """The payload cipher on bytes from payload offset AHEAD on (after ``take``)."""
        return self._main.update(data)

    def whole(self, seq: int) -> CipherContext:
        """The payload cipher rewound to payload offset 0 of ``seq`` (for big packets)."""
        main = self._main
        main.reset_nonce(_COUNTER1 + _SEQ64(seq))
        return main


class ChaChaSealer:
    """Outgoing chacha20-poly1305@openssh.com."""

    __slots__ = ("_keys", "_padding")

    def __init__(self, key: bytes, padding: Padding = random_padding) -> None:
        self._keys = _KeyMaterial(key)
        self._padding = padding

    def prepare(self, seq: int) -> None:
        self._keys.prepare(seq)

    def seal(self, seq: int, msg_type: int, body: bytes) -> list[bytes]:
        n = len(body)
        padlen = 7 - (n + 1) % 8  # 8-byte alignment of all but the length, at least 4
        if padlen < 4:
            padlen += 8
        keys = self._keys
        length_stream, poly, stream = keys.take(seq)
        clear = LEN.pack((n + 2 + padlen) ^ length_stream)
        if n <= SMALL:
            plain = b"".join((PADTYPE.pack(padlen, msg_type), body, self._padding(padlen)))
            if len(plain) <= AHEAD:
                packet = clear + _xor(plain, stream)
            else:
                packet = b"".join((clear, _xor(plain[:AHEAD], stream), keys.rest(plain[AHEAD:])))
            poly.update(packet)
            return [packet, poly.finalize()]
        main = keys.whole(seq)
        head = clear + main.update(PADTYPE.pack(padlen, msg_type))
        middle = main.update(body)
        tail = main.update(self._padding(padlen))
        poly.update(head)
        poly.update(middle)
        poly.update(tail)
        return [head, middle, tail, poly.finalize()]


class ChaChaOpener:
    """Inverse of ChaChaSealer: the tag is checked before anything but the length is decrypted."""

    __slots__ = ("_keys", "_length")

    head_size = 4

    def __init__(self, key: bytes) -> None:
        self._keys = _KeyMaterial(key)
        self._length = 0

    def prepare(self, seq: int) -> None:
        self._keys.prepare(seq)

    def start(self, seq: int, buf: Buffer, pos: int) -> int:
        stream = self._keys.length_stream(seq)
        length: int = LEN.unpack_from(buf, pos)[0] ^ stream
        if length < 8 or length > MAX_PACKET or length % 8:
            raise PacketError(f"bad packet length {length}")
        self._length = length
        return length + 20

    def finish(self, seq: int, wire: memoryview) -> tuple[int, bytes]:
        length = self._length
        end = 4 + length
        keys = self._keys
        _, poly, stream = keys.take(seq)
        poly.update(wire[:end])
        try:
            poly.verify(bytes(wire[end:]))
        except InvalidSignature:
            raise MacError("bad Poly1305 tag") from None
        if length <= SMALL:
            if length <= AHEAD:
                plain = _xor(wire[4:end], stream)
            else:
                plain = _xor(wire[4 : 4 + AHEAD], stream) + keys.rest(wire[4 + AHEAD : end])
            padlen, body_end = split_padding(plain, length)
            return plain[1], plain[2 : body_end - 4]
        main = keys.whole(seq)
        start = main.update(wire[4:6])
        padlen, body_end = split_padding(start, length)
        return start[1], main.update(wire[6:body_end])
