"""OpenSSH user certificates (PROTOCOL.certkeys): verified with cryptography, sans-IO.

``verify_user_cert`` does what sshd does for a certificate offered in publickey
authentication before it checks the user's signature: the CA must be trusted and its
signature good (never SHA-1 ``ssh-rsa``, as OpenSSH 8.2+), the certificate a user
certificate, inside its validity window (with a small clock-skew allowance), naming an
allowed principal (a certificate without principals is refused, as sshd does for
``TrustedUserCAKeys``), and its critical options understood: ``source-address`` must
match the client's address, ``force-command`` must map onto what sftpd can enforce (as
the ``command=`` key option), and any other critical option refuses the certificate.
Extensions (``permit-pty``...) grant things sftpd does not offer and are ignored.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import SSHCertificate, SSHCertificateType

from sftpd.auth.wire import Reader, WireError, fingerprint
from sftpd.config.keyopts import ForcedCommand, OptionError, parse_command
from sftpd.errors import SftpdError

CERT_SUFFIX = b"-cert-v01@openssh.com"
# Certificate key types accepted, and the number of public key fields after the nonce.
CERT_KEY_TYPES: dict[bytes, int] = {
    b"ssh-ed25519-cert-v01@openssh.com": 1,
    b"ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    b"ssh-rsa-cert-v01@openssh.com": 2,
}
# publickey algorithm names a client uses for a certificate -> the signature algorithm
# it signs the session with (the certified key's). Offer these in server-sig-algs.
CERT_SIGNATURE_ALGORITHMS: dict[bytes, bytes] = {
    b"ssh-ed25519-cert-v01@openssh.com": b"ssh-ed25519",
    b"ecdsa-sha2-nistp256-cert-v01@openssh.com": b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384-cert-v01@openssh.com": b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521-cert-v01@openssh.com": b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512-cert-v01@openssh.com": b"rsa-sha2-512",
    b"rsa-sha2-256-cert-v01@openssh.com": b"rsa-sha2-256",
}
# CA signature algorithms accepted on a certificate (no SHA-1 "ssh-rsa").
CA_SIGNATURE_ALGORITHMS = frozenset(
    {
        b"ssh-ed25519",
        b"ecdsa-sha2-nistp256",
        b"ecdsa-sha2-nistp384",
        b"ecdsa-sha2-nistp521",
        b"rsa-sha2-256",
        b"rsa-sha2-512",
    }
)
KNOWN_CRITICAL_OPTIONS = frozenset({b"force-command", b"source-address"})
CLOCK_SKEW = 60.0
FOREVER = 0xFFFFFFFFFFFFFFFF


class CertError(SftpdError):
    """A certificate refused; ``reason`` says why, for the auth log line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CertInfo:
    """What a verified certificate says, for the checker and the log line."""

    key_blob: bytes  # the certified public key, plain (verify the user's signature with it)
    key_id: str
    serial: int
    ca_blob: bytes
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    force_command: ForcedCommand | None
    source_address: tuple[str, ...] | None

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint(self.ca_blob)

    def describe(self) -> str:
        """``cert_id=... serial=N ca=SHA256:...`` for the auth log line (id is client text)."""
        return f"cert_id={self.key_id!r} serial={self.serial} ca={self.ca_fingerprint}"


def is_certificate(blob: bytes) -> bool:
    """Whether a publickey blob is an OpenSSH certificate (by its key type name)."""
    try:
        return Reader(blob).string().endswith(CERT_SUFFIX)
    except WireError:
        return False


@dataclass(frozen=True)
class _Raw:
    key_type: bytes
    ca_blob: bytes
    signature_algorithm: bytes


def _walk(blob: bytes) -> _Raw:
    """Read the fields cryptography does not expose: the CA blob and its signature name."""
    r = Reader(blob)
    key_type = r.string()
    fields = CERT_KEY_TYPES.get(key_type)
    if fields is None:
        raise CertError(f"certificate type {key_type[:60]!r} is not accepted")
    r.string()  # nonce
    for _ in range(fields):
        r.string()
    r.u64()  # serial
    r.u32()  # type
    for _ in range(2):  # key id, principals
        r.string()
    r.u64()
    r.u64()
    for _ in range(3):  # critical options, extensions, reserved
        r.string()
    ca_blob = r.string()
    signature = Reader(r.string())
    r.end()
    return _Raw(key_type, ca_blob, signature.string())


def _openssh_blob(key: object) -> bytes:
    text = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return base64.b64decode(text.split()[1])


def load_certificate(blob: bytes) -> tuple[SSHCertificate, _Raw]:
    """Parse a certificate blob; CertError if it is not one sftpd accepts."""
    try:
        raw = _walk(blob)
    except WireError as e:
        raise CertError(f"certificate does not decode ({e})") from None
    line = raw.key_type + b" " + base64.b64encode(blob)
    try:
        cert = serialization.load_ssh_public_identity(line)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertError(f"certificate does not parse ({e})") from None
    if not isinstance(cert, SSHCertificate):
        raise CertError("not a certificate")
    return cert, raw


def verify_user_cert(
    blob: bytes,
    *,
    trusted_cas: Iterable[bytes],
    principals: Iterable[str],
    client_address: str,
    now: float,
    skew: float = CLOCK_SKEW,
) -> CertInfo:
    """Verify a user certificate offered for login; return what it certifies.

    ``trusted_cas`` are CA public key blobs; ``principals`` the names this user may
    log in as (the user's ``principals``, default its name). Raises CertError.
    """
    cert, raw = load_certificate(blob)
    ca = fingerprint(raw.ca_blob)
    if raw.ca_blob not in set(trusted_cas):
        raise CertError(f"certificate signed by an untrusted CA ({ca})")
    if raw.signature_algorithm not in CA_SIGNATURE_ALGORITHMS:
        name = raw.signature_algorithm[:40].decode("ascii", "replace")
        raise CertError(f"CA signature algorithm {name!r} refused (SHA-1 ssh-rsa is obsolete)")
    try:
        cert.verify_cert_signature()
    except (InvalidSignature, ValueError):
        raise CertError(f"bad CA signature ({ca})") from None
    if cert.type != SSHCertificateType.USER:
        raise CertError("a host certificate cannot be used to log in")
    if now + skew < cert.valid_after:
        raise CertError(f"certificate not yet valid (valid after {cert.valid_after})")
    if cert.valid_before != FOREVER and now - skew >= cert.valid_before:
        raise CertError(f"certificate expired (valid before {cert.valid_before})")
    names = tuple(p.decode("utf-8", "replace") for p in cert.valid_principals)
    if not names:
        raise CertError("certificate lists no principals")
    allowed = set(principals)
    if not any(n in allowed for n in names):
        raise CertError("no certificate principal is allowed for this user")
    options = cert.critical_options
    for option in sorted(options):
        if option not in KNOWN_CRITICAL_OPTIONS:
            shown = option[:40].decode("utf-8", "replace")
            raise CertError(f"unknown critical option {shown!r}")
    sources = None
    if b"source-address" in options:
        sources = _source_address(options[b"source-address"])
        if not _address_in(client_address, sources):
            raise CertError("client address is not in the certificate's source-address")
    force = None
    if b"force-command" in options:
        text = options[b"force-command"].decode("utf-8", "replace")
        try:
            force = parse_command(text, "force-command")
        except OptionError as e:
            raise CertError(f"force-command {e.reason}") from None
    return CertInfo(
        key_blob=_openssh_blob(cert.public_key()),
        key_id=cert.key_id.decode("utf-8", "replace"),
        serial=cert.serial,
        ca_blob=raw.ca_blob,
        principals=names,
        valid_after=cert.valid_after,
        valid_before=cert.valid_before,
        force_command=force,
        source_address=sources,
    )


def _source_address(value: bytes) -> tuple[str, ...]:
    """The source-address list: addresses or networks, as OpenSSH's addr_match_cidr_list."""
    entries = tuple(value.decode("ascii", "replace").split(","))
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=True)
        except ValueError:
            raise CertError(f"source-address entry {entry[:60]!r} is not ADDRESS[/BITS]") from None
    return entries


def _address_in(address: str, entries: tuple[str, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for entry in entries:
        net = ipaddress.ip_network(entry, strict=True)
        if net.version == addr.version and addr in net:
            return True
    return False
