"""SSH wire encoding (RFC 4251 section 5) for the sans-IO auth modules: a strict reader."""

from __future__ import annotations

import base64
import hashlib
import struct


class WireError(ValueError):
    """Bytes that do not decode as the expected SSH wire fields."""


class Reader:
    """Reads SSH wire fields from bytes; every short read raises WireError."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise WireError(f"truncated: {n} bytes wanted at offset {self._pos}")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def byte(self) -> int:
        return self._take(1)[0]

    def boolean(self) -> bool:
        return self.byte() != 0

    def u32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def string(self) -> bytes:
        return self._take(self.u32())

    def mpint(self) -> int:
        raw = self.string()
        return int.from_bytes(raw, "big", signed=True) if raw else 0

    @property
    def offset(self) -> int:
        return self._pos

    def done(self) -> bool:
        return self._pos == len(self._data)

    def end(self) -> None:
        """Raise WireError if bytes are left over."""
        if not self.done():
            raise WireError(f"{len(self._data) - self._pos} trailing bytes")


def string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def fingerprint(blob: bytes) -> str:
    """``SHA256:`` plus unpadded base64 of the SHA-256 of a public key wire blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).rstrip(b"=")
    return "SHA256:" + digest.decode("ascii")
