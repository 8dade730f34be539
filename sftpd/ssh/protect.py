"""The contract of SSH packet protection (Sealer, Opener), its errors and shared pieces."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Protocol

# Largest packet_length accepted (RFC 4253 asks for at least 35000; OpenSSH sends up to 256 KiB).
MAX_PACKET = 1 << 20
LEN = struct.Struct(">I")
PADTYPE = struct.Struct(">BB")  # padding_length, message type
# A packet whose body (sealing) or packet_length (opening) is at most this is joined and then
# encrypted and MACed with one call each; a larger one goes chunk by chunk, not copying the body.
SMALL = 8192

Padding = Callable[[int], bytes]
Buffer = bytes | bytearray | memoryview


class RandomPool:
    """Random padding bytes, read from os.urandom 4 KiB at a time (each byte used once)."""

    __slots__ = ("_buf", "_pos", "_size")

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._buf = b""
        self._pos = 0

    def __call__(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if end > len(self._buf):
            self._buf = os.urandom(max(self._size, n))
            pos, end = 0, n
        self._pos = end
        return self._buf[pos:end]


random_padding: Padding = RandomPool()


class PacketError(Exception):
    """The peer sent a malformed packet (bad length, alignment or padding)."""


class MacError(PacketError):
    """A packet failed its integrity check."""


class Sealer(Protocol):
    """Turns one outgoing message into wire bytes (a list of chunks to write in order)."""

    def seal(self, seq: int, msg_type: int, body: bytes) -> list[bytes]: ...

    def prepare(self, seq: int) -> None:
        """Derive what packet ``seq`` needs ahead of time (called once the connection is
        idle, so the work is off the path from a request to its reply); optional."""
        ...


class Opener(Protocol):
    """Reads incoming packets: ``start`` on the first ``head_size`` bytes, ``finish`` on all."""

    head_size: int

    def start(self, seq: int, buf: Buffer, pos: int) -> int:
        """From ``head_size`` bytes at ``buf[pos:]``: the packet's size on the wire.

        That is the length field, the packet and the MAC or tag.
        """
        ...

    def finish(self, seq: int, wire: memoryview) -> tuple[int, bytes]:
        """Check and decrypt the packet; return (message type, message body)."""
        ...

    def prepare(self, seq: int) -> None:
        """As Sealer.prepare, for the next incoming packet."""
        ...


def split_padding(plain: bytes, length: int) -> tuple[int, int]:
    """Validate padding_length of a decrypted packet; return (padding length, body end)."""
    padlen = plain[0]
    if padlen < 4 or padlen > length - 2:
        raise PacketError(f"bad padding length {padlen} in packet of {length}")
    return padlen, 4 + length - padlen


class NothingAhead:
    """``prepare`` for protections that have nothing to derive ahead of a packet."""

    __slots__ = ()

    def prepare(self, seq: int) -> None:
        pass
