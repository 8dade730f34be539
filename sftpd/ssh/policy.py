"""What a connection may negotiate: the algorithm policy and the names this transport implements."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from twisted.conch.ssh import _kex

from sftpd.ssh.ciphers import CIPHERS, MACS


@dataclass(frozen=True)
class TransportPolicy:
    """What a connection may negotiate, in preference order (names as on the wire)."""

    kex: tuple[str, ...]
    ciphers: tuple[str, ...]
    macs: tuple[str, ...]
    host_key_algorithms: tuple[str, ...]
    version: str
    have_moduli: bool = False
    rekey_bytes: int = 1 << 30  # <= 0: never by volume
    rekey_seconds: float = 3600.0  # <= 0: never by time


def available_ciphers() -> set[bytes]:
    """Cipher names this transport implements."""
    return set(CIPHERS)


def available_macs() -> set[bytes]:
    """MAC names this transport implements."""
    return set(MACS)


def available_kex() -> set[bytes]:
    """Key exchange names this transport implements."""
    return set(_kex.getSupportedKeyExchanges())


def pick(wanted: Iterable[str], available: set[bytes]) -> list[bytes]:
    """The wanted names that are available, in the wanted order."""
    out: list[bytes] = []
    for name in wanted:
        raw = name.encode("ascii")
        if raw in available and raw not in out:
            out.append(raw)
    return out
