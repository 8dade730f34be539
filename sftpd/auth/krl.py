"""Key revocation: OpenSSH KRL files (PROTOCOL.krl) or plain public key lists, re-read on change.

As sshd's ``RevokedKeys``: a key is revoked when it is listed (explicitly, by SHA-1 or by
SHA-256 fingerprint); a certificate is revoked when its certified key or its CA key is,
or when a certificate section for its CA (or for any CA: an empty CA key) lists its key
id or its serial (lists, ranges, bitmaps; serial 0 is never matched, as in OpenSSH).
A revocation file that cannot be read or parsed revokes everything (fails closed, as
sshd does), and says why in ``RevocationFile.error``. KRL signatures are not checked:
the file is trusted as the administrator's own, as sshd does without a signing key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sftpd.auth.wire import Reader, WireError
from sftpd.errors import SftpdError

KRL_MAGIC = b"SSHKRL\n\0"
KRL_FORMAT_VERSION = 1

SECTION_CERTIFICATES = 1
SECTION_EXPLICIT_KEY = 2
SECTION_FINGERPRINT_SHA1 = 3
SECTION_SIGNATURE = 4
SECTION_FINGERPRINT_SHA256 = 5

CERT_SERIAL_LIST = 0x20
CERT_SERIAL_RANGE = 0x21
CERT_SERIAL_BITMAP = 0x22
CERT_KEY_ID = 0x23


class KrlError(SftpdError):
    """A revocation file that cannot be used."""


class RevokedCert(Protocol):
    """What revocation needs of a certificate (certs.CertInfo has it)."""

    @property
    def serial(self) -> int: ...

    @property
    def key_id(self) -> str: ...

    @property
    def ca_blob(self) -> bytes: ...


@dataclass
class CaRevocations:
    """The certificates revoked under one CA (``ca_blob`` empty: under any CA)."""

    serials: set[int] = field(default_factory=set)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    bitmaps: list[tuple[int, int]] = field(default_factory=list)  # (offset, bits)
    key_ids: set[bytes] = field(default_factory=set)

    def serial_revoked(self, serial: int) -> bool:
        if serial == 0:
            return False
        if serial in self.serials or any(lo <= serial <= hi for lo, hi in self.ranges):
            return True
        return any(serial >= off and (bits >> (serial - off)) & 1 for off, bits in self.bitmaps)


@dataclass
class Revocations:
    """A parsed KRL or key list."""

    keys: set[bytes] = field(default_factory=set)
    sha1: set[bytes] = field(default_factory=set)
    sha256: set[bytes] = field(default_factory=set)
    by_ca: dict[bytes, CaRevocations] = field(default_factory=dict)
    krl_version: int | None = None

    def key_revoked(self, blob: bytes) -> bool:
        return (
            blob in self.keys
            or hashlib.sha256(blob).digest() in self.sha256
            or hashlib.sha1(blob).digest() in self.sha1
        )

    def is_revoked(self, key_blob: bytes, cert: RevokedCert | None = None) -> bool:
        """Whether a plain key (or the key certified by ``cert``) is revoked."""
        if self.key_revoked(key_blob):
            return True
        if cert is None:
            return False
        if self.key_revoked(cert.ca_blob):
            return True
        key_id = cert.key_id.encode("utf-8")
        for ca in (cert.ca_blob, b""):
            section = self.by_ca.get(ca)
            if section is not None and (
                key_id in section.key_ids or section.serial_revoked(cert.serial)
            ):
                return True
        return False


def parse_krl(data: bytes) -> Revocations:
    """Parse a binary KRL; KrlError if it is malformed or of an unknown version."""
    try:
        return _parse_krl(data)
    except WireError as e:
        raise KrlError(f"KRL is malformed ({e})") from None


def _parse_krl(data: bytes) -> Revocations:
    r = Reader(data)
    if r.u64().to_bytes(8, "big") != KRL_MAGIC:
        raise KrlError("not an OpenSSH KRL (bad magic)")
    version = r.u32()
    if version != KRL_FORMAT_VERSION:
        raise KrlError(f"KRL format version {version} is not supported (expected 1)")
    out = Revocations(krl_version=r.u64())
    r.u64()  # generated date
    r.u64()  # flags
    r.string()  # reserved
    r.string()  # comment
    while not r.done():
        kind = r.byte()
        body = Reader(r.string())
        if kind == SECTION_CERTIFICATES:
            _parse_cert_section(body, out)
        elif kind in (SECTION_EXPLICIT_KEY, SECTION_FINGERPRINT_SHA1, SECTION_FINGERPRINT_SHA256):
            target = {
                SECTION_EXPLICIT_KEY: out.keys,
                SECTION_FINGERPRINT_SHA1: out.sha1,
                SECTION_FINGERPRINT_SHA256: out.sha256,
            }[kind]
            size = {SECTION_FINGERPRINT_SHA1: 20, SECTION_FINGERPRINT_SHA256: 32}.get(kind)
            while not body.done():
                item = body.string()
                if size is not None and len(item) != size:
                    raise KrlError(f"KRL fingerprint of {len(item)} bytes (expected {size})")
                target.add(item)
        elif kind == SECTION_SIGNATURE:
            # signatures come last and cover what precedes them: nothing follows
            body.string()
            body.string()
        else:
            raise KrlError(f"KRL section type {kind} is not known")
        body.end()
    return out


def _parse_cert_section(body: Reader, out: Revocations) -> None:
    ca = body.string()
    body.string()  # reserved
    section = out.by_ca.setdefault(ca, CaRevocations())
    while not body.done():
        kind = body.byte()
        sub = Reader(body.string())
        if kind == CERT_SERIAL_LIST:
            while not sub.done():
                section.serials.add(sub.u64())
        elif kind == CERT_SERIAL_RANGE:
            lo, hi = sub.u64(), sub.u64()
            if lo > hi:
                raise KrlError(f"KRL serial range {lo}-{hi} is reversed")
            section.ranges.append((lo, hi))
        elif kind == CERT_SERIAL_BITMAP:
            offset = sub.u64()
            bits = sub.mpint()
            if bits < 0:
                raise KrlError("KRL serial bitmap is negative")
            section.bitmaps.append((offset, bits))
        elif kind == CERT_KEY_ID:
            while not sub.done():
                section.key_ids.add(sub.string())
        else:
            raise KrlError(f"KRL certificate section type {kind:#x} is not known")
        sub.end()


def parse_key_list(text: str) -> Revocations:
    """Parse a plain list of public keys (``TYPE BASE64 [COMMENT]`` lines, # comments)."""
    out = Revocations()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        blob = kind = b""
        try:
            blob = base64.b64decode(fields[1], validate=True) if len(fields) > 1 else b""
            kind = Reader(blob).string()
        except (binascii.Error, WireError):
            pass
        if not blob or kind != fields[0].encode("ascii", "replace"):
            raise KrlError(f"line {number}: expected a public key 'TYPE BASE64 [COMMENT]'")
        out.keys.add(blob)
    return out


def parse_revocations(data: bytes) -> Revocations:
    """A KRL if the data starts with the KRL magic, else a list of public keys."""
    if data.startswith(KRL_MAGIC):
        return parse_krl(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KrlError("neither an OpenSSH KRL nor a text list of public keys") from None
    return parse_key_list(text)


_Stat = tuple[int, int, int, int]


class RevocationFile:
    """``revoked_keys_file``: parsed once, re-read when its mtime, size or inode changes.

    Construction raises KrlError so check-config can report a bad file. Later, a file
    that disappears or stops parsing revokes everything until it is fixed.
    """

    def __init__(self, path: Path, stat: Callable[[Path], os.stat_result] = Path.stat) -> None:
        self._path = path
        self._stat = stat
        self._seen: _Stat | None = None
        self._revocations = Revocations()
        self.error: str | None = None
        self._load(self._signature())

    def _signature(self) -> _Stat:
        try:
            st = self._stat(self._path)
        except OSError as e:
            raise KrlError(f"revoked_keys_file cannot be read ({e.strerror})") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def _load(self, seen: _Stat) -> None:
        try:
            data = self._path.read_bytes()
        except OSError as e:
            raise KrlError(f"revoked_keys_file cannot be read ({e.strerror})") from None
        self._revocations = parse_revocations(data)
        self._seen = seen
        self.error = None

    def refresh(self) -> None:
        """Re-read the file if it changed; on failure, record why and revoke everything."""
        try:
            seen = self._signature()
            if seen != self._seen:
                self._load(seen)
        except KrlError as e:
            self.error = str(e)
            self._seen = None

    def is_revoked(self, key_blob: bytes, cert: RevokedCert | None = None) -> bool:
        """Whether the key (or certificate) is revoked, after re-reading a changed file."""
        self.refresh()
        if self.error is not None:
            return True
        return self._revocations.is_revoked(key_blob, cert)
