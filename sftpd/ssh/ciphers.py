"""SSH packet protection for one direction: none, CTR/CBC + HMAC (EtM or not), AES-GCM, ChaCha20."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import (
    Cipher,
    CipherAlgorithm,
    CipherContext,
    algorithms,
    modes,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sftpd.ssh.chacha import ChaChaOpener, ChaChaSealer
from sftpd.ssh.protect import (
    LEN,
    MAX_PACKET,
    PADTYPE,
    SMALL,
    Buffer,
    MacError,
    NothingAhead,
    Opener,
    PacketError,
    Padding,
    Sealer,
    random_padding,
    split_padding,
)

__all__ = [
    "CIPHERS",
    "MACS",
    "MAX_PACKET",
    "MacError",
    "Opener",
    "PacketError",
    "Sealer",
    "is_aead",
    "make_opener",
    "make_sealer",
]

_MASK64 = (1 << 64) - 1

_SEQ = struct.Struct(">I")
_LEN = LEN
_PADTYPE = PADTYPE
_HEAD = struct.Struct(">IBB")  # packet_length, padding_length, message type
_NONCE64 = struct.Struct(">Q")
_SMALL = SMALL  # (tests use this name)


@dataclass(frozen=True)
class CipherSpec:
    """Key material sizes, padding block size and construction of one cipher."""

    key_size: int
    iv_size: int
    block_size: int
    kind: str  # "none", "stream" (CTR/CBC contexts), "gcm", "chacha"
    algorithm: Callable[[bytes], CipherAlgorithm] | None = None
    mode: Callable[[bytes], modes.CBC | modes.CTR] | None = None


@dataclass(frozen=True)
class MacSpec:
    """Hash, key/tag size and ordering (encrypt-then-MAC or not) of one MAC."""

    hash: Callable[[], hashes.HashAlgorithm]
    size: int
    etm: bool


CIPHERS: dict[bytes, CipherSpec] = {
    b"chacha20-poly1305@openssh.com": CipherSpec(64, 0, 8, "chacha"),
    b"aes128-gcm@openssh.com": CipherSpec(16, 12, 16, "gcm"),
    b"aes256-gcm@openssh.com": CipherSpec(32, 12, 16, "gcm"),
    b"aes128-ctr": CipherSpec(16, 16, 16, "stream", algorithms.AES, modes.CTR),
    b"aes192-ctr": CipherSpec(24, 16, 16, "stream", algorithms.AES, modes.CTR),
    b"aes256-ctr": CipherSpec(32, 16, 16, "stream", algorithms.AES, modes.CTR),
    # Legacy, offered only when an administrator lists them explicitly.
    b"aes128-cbc": CipherSpec(16, 16, 16, "stream", algorithms.AES, modes.CBC),
    b"aes192-cbc": CipherSpec(24, 16, 16, "stream", algorithms.AES, modes.CBC),
    b"aes256-cbc": CipherSpec(32, 16, 16, "stream", algorithms.AES, modes.CBC),
    b"3des-cbc": CipherSpec(24, 8, 8, "stream", TripleDES, modes.CBC),
}

MACS: dict[bytes, MacSpec] = {
    b"hmac-sha2-256-etm@openssh.com": MacSpec(hashes.SHA256, 32, True),
    b"hmac-sha2-512-etm@openssh.com": MacSpec(hashes.SHA512, 64, True),
    b"hmac-sha2-256": MacSpec(hashes.SHA256, 32, False),
    b"hmac-sha2-512": MacSpec(hashes.SHA512, 64, False),
    # Legacy, offered only when an administrator lists them explicitly.
    b"hmac-sha1": MacSpec(hashes.SHA1, 20, False),
    b"hmac-md5": MacSpec(hashes.MD5, 16, False),
}


def is_aead(cipher: bytes) -> bool:
    """True when the cipher authenticates by itself (no MAC is negotiated with it)."""
    spec = CIPHERS.get(cipher)
    return spec is not None and spec.kind in ("gcm", "chacha")


def _padding_length(payload_len: int, block: int, aad: bool) -> int:
    """Random padding length: at least 4, aligning the (non-AAD part of the) packet to ``block``."""
    covered = payload_len + 1 + (0 if aad else 4)
    pad = block - covered % block
    return pad + block if pad < 4 else pad


class _Hmac:
    """One keyed HMAC template per direction, copied for each packet."""

    __slots__ = ("size", "template")

    def __init__(self, spec: MacSpec, key: bytes) -> None:
        self.size = spec.size
        self.template = crypto_hmac.HMAC(key[: spec.size], spec.hash())

    def check(self, h: crypto_hmac.HMAC, tag: memoryview) -> None:
        try:
            h.verify(bytes(tag))
        except InvalidSignature:
            raise MacError("bad MAC") from None


class StreamSealer(NothingAhead):
    """none, or a CTR/CBC context with an HMAC, either over plaintext or (EtM) over ciphertext."""

    def __init__(
        self,
        block: int,
        ctx: CipherContext | None,
        mac: _Hmac | None,
        etm: bool,
        padding: Padding = random_padding,
    ) -> None:
        self._block = block
        self._ctx = ctx
        self._mac = mac
        self._etm = etm
        self._padding = padding

    def seal(self, seq: int, msg_type: int, body: bytes) -> list[bytes]:
        etm = self._etm
        padlen = _padding_length(len(body) + 1, self._block, etm)
        head = _HEAD.pack(len(body) + 2 + padlen, padlen, msg_type)
        pad = self._padding(padlen)
        ctx = self._ctx
        mac = self._mac
        if ctx is None:
            return [head, body, pad]
        if mac is None:
            return [ctx.update(head), ctx.update(body), ctx.update(pad)]
        h = mac.template.copy()
        h.update(_SEQ.pack(seq))
        if len(body) <= _SMALL:  # one cipher call and one MAC update (it copies the body)
            if etm:
                clear = head[:4]
                ct = ctx.update(b"".join((head[4:], body, pad)))
                h.update(clear)
                h.update(ct)
                return [clear, ct, h.finalize()]
            plain = b"".join((head, body, pad))
            h.update(plain)
            return [ctx.update(plain), h.finalize()]
        if etm:
            clear = head[:4]
            out = [clear, ctx.update(head[4:]), ctx.update(body), ctx.update(pad)]
            for chunk in out:
                h.update(chunk)
            out.append(h.finalize())
            return out
        h.update(head)
        h.update(body)
        h.update(pad)
        return [ctx.update(head), ctx.update(body), ctx.update(pad), h.finalize()]


class StreamOpener(NothingAhead):
    """Inverse of StreamSealer. EtM verifies before it decrypts; the old order cannot."""

    def __init__(
        self,
        block: int,
        ctx: CipherContext | None,
        mac: _Hmac | None,
        etm: bool,
        chained: bool = False,
    ) -> None:
        self._block = block
        self._chained = chained  # CBC: decrypt whole blocks only
        self._ctx = ctx
        self._mac = mac
        self._etm = etm
        self._tag = mac.size if mac else 0
        self.head_size = 4 if etm else block
        self._first = b""
        self._length = 0

    def start(self, seq: int, buf: Buffer, pos: int) -> int:
        if self._etm:
            length: int = _LEN.unpack_from(buf, pos)[0]
            aligned = length % self._block == 0
        else:
            head = bytes(buf[pos : pos + self._block])
            first = self._ctx.update(head) if self._ctx is not None else head
            self._first = first
            length = _LEN.unpack_from(first)[0]
            aligned = (length + 4) % self._block == 0
        if length < 5 or length > MAX_PACKET or not aligned:
            raise PacketError(f"bad packet length {length}")
        self._length = length
        return 4 + length + self._tag

    def finish(self, seq: int, wire: memoryview) -> tuple[int, bytes]:
        length = self._length
        end = 4 + length
        mac = self._mac
        ctx = self._ctx
        if self._etm:
            assert mac is not None and ctx is not None  # EtM is built only with a cipher and MAC
            h = mac.template.copy()
            h.update(_SEQ.pack(seq))
            h.update(wire[:end])
            mac.check(h, wire[end:])
            if self._chained or length <= _SMALL:
                plain = ctx.update(wire[4:end])
                padlen, body_end = split_padding(plain, length)
                return plain[1], plain[2 : body_end - 4]
            start = ctx.update(wire[4:6])
            padlen, body_end = split_padding(start, length)
            body = ctx.update(wire[6:body_end])
            ctx.update(wire[body_end:end])  # keep the CTR keystream in step
            return start[1], body
        first = self._first
        self._first = b""
        block = self._block
        rest = ctx.update(wire[block:end]) if ctx is not None else bytes(wire[block:end])
        if mac is not None:
            h = mac.template.copy()
            h.update(_SEQ.pack(seq))
            h.update(first)
            h.update(rest)
            mac.check(h, wire[end:])
        padlen, body_end = split_padding(first[4:], length)
        if body_end <= block:
            body = first[6:body_end]
        else:
            body = b"".join((first[6:], memoryview(rest)[: body_end - block]))
        return first[5], body


class GcmSealer(NothingAhead):
    """AES-GCM as OpenSSH does it: length as AAD, 4-byte fixed + 8-byte counter nonce."""

    def __init__(self, key: bytes, iv: bytes, padding: Padding = random_padding) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")
        self._padding = padding

    def seal(self, seq: int, msg_type: int, body: bytes) -> list[bytes]:
        padlen = _padding_length(len(body) + 1, 16, True)
        clear = _LEN.pack(len(body) + 2 + padlen)
        plain = b"".join((_PADTYPE.pack(padlen, msg_type), body, self._padding(padlen)))
        nonce = self._fixed + _NONCE64.pack(self._counter)
        self._counter = (self._counter + 1) & _MASK64
        return [clear, self._aead.encrypt(nonce, plain, clear)]


class GcmOpener(NothingAhead):
    """Inverse of GcmSealer."""

    head_size = 4

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")
        self._length = 0

    def start(self, seq: int, buf: Buffer, pos: int) -> int:
        length: int = _LEN.unpack_from(buf, pos)[0]
        if length < 16 or length > MAX_PACKET or length % 16:
            raise PacketError(f"bad packet length {length}")
        self._length = length
        return 4 + length + 16

    def finish(self, seq: int, wire: memoryview) -> tuple[int, bytes]:
        nonce = self._fixed + _NONCE64.pack(self._counter)
        self._counter = (self._counter + 1) & _MASK64
        try:
            plain = self._aead.decrypt(nonce, wire[4:], wire[:4])
        except InvalidTag:
            raise MacError("bad AES-GCM tag") from None
        padlen, body_end = split_padding(plain, self._length)
        return plain[1], plain[2 : body_end - 4]


def _stream_context(spec: CipherSpec, key: bytes, iv: bytes) -> Cipher[modes.CBC | modes.CTR]:
    assert spec.algorithm is not None and spec.mode is not None
    return Cipher(spec.algorithm(key[: spec.key_size]), spec.mode(iv[: spec.block_size]))


def _mac(mac: bytes, key: bytes) -> tuple[_Hmac, bool]:
    spec = MACS[mac]
    return _Hmac(spec, key), spec.etm


def make_sealer(
    cipher: bytes,
    mac: bytes | None,
    key: bytes,
    iv: bytes,
    mac_key: bytes,
    padding: Padding = random_padding,
) -> Sealer:
    """Outgoing protection for a negotiated cipher (and MAC, None for AEAD ciphers)."""
    if cipher == b"none":
        return StreamSealer(8, None, None, False, padding)
    spec = CIPHERS[cipher]
    if spec.kind == "chacha":
        return ChaChaSealer(key[:64], padding)
    if spec.kind == "gcm":
        return GcmSealer(key[: spec.key_size], iv[:12], padding)
    if mac is None:
        raise ValueError(f"{cipher!r} needs a MAC")
    hm, etm = _mac(mac, mac_key)
    ctx = _stream_context(spec, key, iv).encryptor()
    return StreamSealer(spec.block_size, ctx, hm, etm, padding)


def make_opener(cipher: bytes, mac: bytes | None, key: bytes, iv: bytes, mac_key: bytes) -> Opener:
    """Incoming protection for a negotiated cipher (and MAC, None for AEAD ciphers)."""
    if cipher == b"none":
        return StreamOpener(8, None, None, False)
    spec = CIPHERS[cipher]
    if spec.kind == "chacha":
        return ChaChaOpener(key[:64])
    if spec.kind == "gcm":
        return GcmOpener(key[: spec.key_size], iv[:12])
    if mac is None:
        raise ValueError(f"{cipher!r} needs a MAC")
    hm, etm = _mac(mac, mac_key)
    ctx = _stream_context(spec, key, iv).decryptor()
    return StreamOpener(spec.block_size, ctx, hm, etm, chained=spec.mode is modes.CBC)
