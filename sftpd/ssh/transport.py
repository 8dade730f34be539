"""The SSH server transport: Conch's, with sftpd's algorithm policy and socket options."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.conch.ssh import _kex
from twisted.conch.ssh.transport import SSHCiphers, SSHServerTransport


@dataclass(frozen=True)
class TransportPolicy:
    """What a connection may negotiate, in preference order (names as on the wire)."""

    kex: tuple[str, ...]
    ciphers: tuple[str, ...]
    macs: tuple[str, ...]
    host_key_algorithms: tuple[str, ...]
    version: str
    have_moduli: bool = False
    rekey_bytes: int = 1 << 30
    rekey_seconds: float = 3600.0


def available_ciphers() -> set[bytes]:
    """Cipher names this transport implements."""
    return {name for name in SSHCiphers.cipherMap if name != b"none"}


def available_macs() -> set[bytes]:
    """MAC names this transport implements."""
    return {name for name in SSHCiphers.macMap if name != b"none"}


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


class ServerTransport(SSHServerTransport):
    """Conch's server transport restricted to a policy, with Nagle off."""

    policy: TransportPolicy

    def apply_policy(self, policy: TransportPolicy, key_algorithms: Sequence[bytes]) -> None:
        """Restrict negotiation to ``policy``; ``key_algorithms`` are what the host keys can sign."""
        self.policy = policy
        kex = pick(policy.kex, available_kex())
        if not policy.have_moduli:
            kex = [k for k in kex if not _kex.isDynamicPrimesGroup(k)]
        self.supportedKeyExchanges = kex
        self.supportedCiphers = pick(policy.ciphers, available_ciphers())
        self.supportedMACs = pick(policy.macs, available_macs())
        self.supportedPublicKeys = pick(policy.host_key_algorithms, set(key_algorithms))
        self.supportedCompressions = [b"none"]
        self.ourVersionString = b"SSH-2.0-" + policy.version.encode("ascii")

    def connectionMade(self) -> None:
        tcp: Any = self.transport
        set_nodelay = getattr(tcp, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass
        super().connectionMade()
