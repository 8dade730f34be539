"""KEXINIT messages: parse, build, and the server's algorithm negotiation (RFC 4253 7.1)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MSG_KEXINIT = 20
STRICT_C = b"kex-strict-c-v00@openssh.com"
STRICT_S = b"kex-strict-s-v00@openssh.com"
EXT_INFO_C = b"ext-info-c"
EXT_INFO_S = b"ext-info-s"

_U32 = struct.Struct(">I")


class KexInitError(Exception):
    """A KEXINIT that cannot be parsed."""


class NegotiationError(Exception):
    """No algorithm in common for one part of the negotiation (named in the message)."""


def _name_list(raw: bytes) -> tuple[bytes, ...]:
    return tuple(raw.split(b",")) if raw else ()


@dataclass(frozen=True)
class KexInit:
    """A peer's KEXINIT (the name-lists as tuples of names)."""

    kex: tuple[bytes, ...]
    host_key: tuple[bytes, ...]
    enc_cs: tuple[bytes, ...]
    enc_sc: tuple[bytes, ...]
    mac_cs: tuple[bytes, ...]
    mac_sc: tuple[bytes, ...]
    comp_cs: tuple[bytes, ...]
    comp_sc: tuple[bytes, ...]
    first_kex_follows: bool

    @classmethod
    def parse(cls, body: bytes) -> KexInit:
        """Parse a KEXINIT body (the bytes after the message type)."""
        pos = 16  # cookie
        lists: list[tuple[bytes, ...]] = []
        for _ in range(10):
            if pos + 4 > len(body):
                raise KexInitError("KEXINIT truncated")
            (n,) = _U32.unpack_from(body, pos)
            pos += 4
            if pos + n > len(body):
                raise KexInitError("KEXINIT name-list overruns the packet")
            lists.append(_name_list(body[pos : pos + n]))
            pos += n
        if pos + 5 > len(body):
            raise KexInitError("KEXINIT truncated")
        kex, host_key, enc_cs, enc_sc, mac_cs, mac_sc, comp_cs, comp_sc = lists[:8]
        return cls(kex, host_key, enc_cs, enc_sc, mac_cs, mac_sc, comp_cs, comp_sc, body[pos] != 0)


def build_kexinit(
    cookie: bytes,
    kex: Sequence[bytes],
    host_key: Sequence[bytes],
    ciphers: Sequence[bytes],
    macs: Sequence[bytes],
    compressions: Sequence[bytes],
) -> bytes:
    """A KEXINIT body (without the message type), same lists in both directions."""

    def ns(names: Sequence[bytes]) -> bytes:
        raw = b",".join(names)
        return _U32.pack(len(raw)) + raw

    parts = [cookie, ns(kex), ns(host_key), ns(ciphers), ns(ciphers), ns(macs), ns(macs)]
    parts += [ns(compressions), ns(compressions), ns(()), ns(()), b"\0", _U32.pack(0)]
    return b"".join(parts)


@dataclass(frozen=True)
class Choice:
    """The negotiated algorithms, from the server's side (in = client to server)."""

    kex: bytes
    host_key: bytes
    cipher_in: bytes
    cipher_out: bytes
    mac_in: bytes | None  # None with an AEAD cipher: no MAC is negotiated
    mac_out: bytes | None


def _first(part: str, client: Sequence[bytes], server: Sequence[bytes]) -> bytes:
    """The first name on the client's list that the server supports."""
    ours = set(server)
    for name in client:
        if name in ours:
            return name
    raise NegotiationError(f"no common {part} algorithm")


def negotiate(
    client: KexInit,
    *,
    kex: Sequence[bytes],
    host_keys: Sequence[bytes],
    ciphers: Sequence[bytes],
    macs: Sequence[bytes],
    is_aead: Callable[[bytes], bool],
    aead_needs_common_mac: bool = False,
) -> Choice:
    """Pick each algorithm as RFC 4253 7.1 says. An AEAD cipher uses no MAC.

    As OpenSSH (PROTOCOL 1.6: the MAC is not negotiated for an AEAD cipher, on either
    side), a direction with an AEAD cipher needs no common MAC: a client that offers only
    hmac-sha1 still gets chacha20-poly1305, and hmac-sha1 is never used. Every cipher we
    offer as AEAD is an @openssh.com one, which is defined that way (RFC 5647's AES-GCM,
    which names the MAC, is not offered). ``aead_needs_common_mac=True`` refuses such a
    client as Conch does.
    """
    chosen_kex = _first("key exchange", client.kex, kex)
    host_key = _first("host key", client.host_key, host_keys)
    cipher_in = _first("client-to-server cipher", client.enc_cs, ciphers)
    cipher_out = _first("server-to-client cipher", client.enc_sc, ciphers)
    mac_in: bytes | None = None
    mac_out: bytes | None = None
    if aead_needs_common_mac or not is_aead(cipher_in):
        mac_in = _first("client-to-server MAC", client.mac_cs, macs)
    if aead_needs_common_mac or not is_aead(cipher_out):
        mac_out = _first("server-to-client MAC", client.mac_sc, macs)
    if is_aead(cipher_in):
        mac_in = None
    if is_aead(cipher_out):
        mac_out = None
    _first("client-to-server compression", client.comp_cs, [b"none"])
    _first("server-to-client compression", client.comp_sc, [b"none"])
    return Choice(chosen_kex, host_key, cipher_in, cipher_out, mac_in, mac_out)
