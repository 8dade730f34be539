"""Host keys: create missing ed25519/ECDSA/RSA keys atomically, fingerprint and load them."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.conch.ssh import keys

from sftpd.errors import ConfigError

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _ed25519() -> PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _ecdsa() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _rsa() -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


# File name and generator of each host key, in the order they are offered.
HOST_KEY_FILES: tuple[tuple[str, Callable[[], PrivateKey]], ...] = (
    ("ssh_host_ed25519_key", _ed25519),
    ("ssh_host_ecdsa_key", _ecdsa),
    ("ssh_host_rsa_key", _rsa),
)
_LABELS = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA"}


@dataclass(frozen=True)
class HostKeyInfo:
    """One host key on disk: its SSH type name, file, fingerprint and size."""

    key_type: str  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"
    path: Path
    fingerprint: str  # "SHA256:..." exactly as `ssh-keygen -l` prints it
    bits: int
    created: bool = False  # True when ensure_host_keys generated it just now

    @property
    def label(self) -> str:
        """The short algorithm name ssh-keygen shows in parentheses (ED25519, ECDSA, RSA)."""
        return _LABELS.get(self.key_type, "ECDSA")

    def describe(self) -> str:
        """``BITS SHA256:... PATH (TYPE)``, the shape of ``ssh-keygen -lf PATH``."""
        return f"{self.bits} {self.fingerprint} {self.path} ({self.label})"


def public_line(key: PrivateKey) -> bytes:
    """The OpenSSH one-line public key (``TYPE BASE64``) of ``key``."""
    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def fingerprint(blob: bytes) -> str:
    """``SHA256:`` plus unpadded base64 of the SHA-256 of a public key wire blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).rstrip(b"=")
    return "SHA256:" + digest.decode("ascii")


def _info(path: Path, key: PrivateKey, created: bool) -> HostKeyInfo:
    kind, b64 = public_line(key).split()[:2]
    bits = 256 if isinstance(key, ed25519.Ed25519PrivateKey) else key.key_size
    return HostKeyInfo(kind.decode(), path, fingerprint(base64.b64decode(b64)), bits, created)


def read_private_key(path: Path) -> PrivateKey:
    """Read an unencrypted OpenSSH private key file that only its owner may read.

    Raises ConfigError (source: the file) when it is group/world accessible, unreadable,
    encrypted, unparsable or of an unsupported type (DSA).
    """
    try:
        with open(path, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                raise ConfigError(
                    str(path),
                    "",
                    f"permissions {mode:04o} are too open: a private host key must not be "
                    f"accessible by group or others; expected 0600 (chmod 600 {path})",
                )
            data = f.read()
    except OSError as e:
        raise ConfigError(str(path), "", f"cannot read host key: {e.strerror}") from None
    try:
        # Host keys are the server's own (0600, checked above); RSA validation would cost
        # ~0.2 s per load on every start and protects nothing here.
        key = serialization.load_ssh_private_key(
            data, password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(
            str(path),
            "",
            f"not an unencrypted OpenSSH private key ({e}); expected one "
            "written by `sftpd keygen` or `ssh-keygen -N ''`",
        ) from None
    if not isinstance(
        key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise ConfigError(
            str(path), "", "unsupported host key type; expected ed25519, ECDSA or RSA"
        )
    return key


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Atomically create ``path`` with ``data`` and ``mode``; False if it already exists."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # unlike rename, never replaces a key another process wrote
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def ensure_host_keys(directory: Path) -> list[HostKeyInfo]:
    """Create the missing host keys (and ``.pub`` files) in ``directory``; describe all three.

    The directory is created with mode 0700 if missing; private key files get mode 0600.
    Existing keys are kept. Raises ConfigError when a file or the directory is unusable.
    """
    try:
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True)
            directory.chmod(0o700)
    except OSError as e:
        raise ConfigError(
            str(directory), "", f"cannot create host key directory: {e.strerror}"
        ) from None
    infos = []
    for name, generate in HOST_KEY_FILES:
        path = directory / name
        created = False
        try:
            if not path.exists():
                key = generate()
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                )
                created = _write_new(path, pem, 0o600)
            if not created:
                key = read_private_key(path)
            pub = path.with_name(name + ".pub")
            if not pub.exists():
                _write_new(pub, public_line(key) + b"\n", 0o644)
        except OSError as e:
            raise ConfigError(str(path), "", f"cannot write host key: {e.strerror}") from None
        infos.append(_info(path, key, created))
    return infos


def host_key_infos(directory: Path) -> list[HostKeyInfo]:
    """Describe the host keys present in ``directory`` without creating any."""
    return [
        _info(directory / name, read_private_key(directory / name), False)
        for name, _ in HOST_KEY_FILES
        if (directory / name).exists()
    ]


def load_host_keys(directory: Path) -> dict[bytes, keys.Key]:
    """Map SSH key type name (b"ssh-ed25519", ...) to private Key, for SSHFactory.privateKeys.

    Raises ConfigError when a key file is unusable or no host key exists at all.
    """
    out: dict[bytes, keys.Key] = {}
    for name, _ in HOST_KEY_FILES:
        path = directory / name
        if path.exists():
            key = keys.Key(read_private_key(path))  # type: ignore[no-untyped-call]
            out[key.sshType()] = key  # type: ignore[no-untyped-call]
    if not out:
        raise ConfigError(
            str(directory),
            "",
            "no host keys found; expected ssh_host_*_key files (run `sftpd keygen`)",
        )
    return out


def host_keys_problems(directory: Path) -> list[str]:
    """Why ``ensure_host_keys(directory)`` would fail, without creating anything ([] if fine)."""
    if directory.exists():
        if not directory.is_dir():
            return [f"{directory} exists but is not a directory; expected a directory"]
        problems = []
        for name, _ in HOST_KEY_FILES:
            path = directory / name
            if path.exists():
                try:
                    read_private_key(path)
                except ConfigError as e:
                    problems.append(str(e))
            elif not os.access(directory, os.W_OK | os.X_OK):
                problems.append(f"{path} is missing and {directory} is not writable")
        return problems
    reason = creatable(directory)
    return [] if reason is None else [f"cannot create {directory}: {reason}"]


def creatable(path: Path) -> str | None:
    """Why ``mkdir -p path`` would fail (None: it would work); leaves the disk as it was.

    ``os.access`` says yes to root everywhere, even in /proc, so the nearest existing
    ancestor is tried for real with a temporary directory that is removed at once.
    """
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sftpd-check-", dir=parent))
    except OSError as e:
        return f"{parent}: {e.strerror}"
    return None
