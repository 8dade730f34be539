"""Configuration: frozen dataclasses loaded from TOML, with errors naming file, key and expectation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sftpd import __version__

# Algorithm names offered by default (modern only). Admins may opt in to others by
# listing them explicitly in [server]; see config.example.toml.
DEFAULT_KEX = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group-exchange-sha256",  # only offered when a moduli file is present
)
DEFAULT_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
DEFAULT_MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
DEFAULT_HOST_KEY_ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)


@dataclass(frozen=True)
class UserConfig:
    """One account: where its jail is and how it proves who it is."""

    name: str
    root: Path
    home: str = "/"
    password_hash: bytes | None = None
    # Public key blobs in SSH wire format (the base64-decoded middle field of a key line).
    authorized_keys: tuple[bytes, ...] = ()
    read_only: bool = False
    # None: use the server-wide [exec] setting.
    allow_rsync: bool | None = None
    allow_exec: bool | None = None


@dataclass(frozen=True)
class ServerConfig:
    """Listening, host keys, algorithms and authentication limits."""

    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 2222),)
    host_keys_dir: Path = Path("keys")
    banner: str = f"sftpd_{__version__}"
    login_grace_time: float = 120.0
    max_auth_tries: int = 6
    auth_failure_delay: float = 1.0
    max_sessions: int = 10
    moduli_file: Path | None = None
    kex_algorithms: tuple[str, ...] = DEFAULT_KEX
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    macs: tuple[str, ...] = DEFAULT_MACS
    host_key_algorithms: tuple[str, ...] = DEFAULT_HOST_KEY_ALGORITHMS
    rekey_bytes: int = 1 << 30
    rekey_seconds: float = 3600.0
    workers: int = 1
    log_format: str = "text"  # "text" or "json"
    log_level: str = "info"


@dataclass(frozen=True)
class SftpConfig:
    """SFTP protocol settings."""

    umask: int = 0o022
    max_handles: int = 1024


@dataclass(frozen=True)
class ExecConfig:
    """Which exec commands (scp, rsync, hash commands) are served, and the binaries used."""

    allow_scp: bool = True
    allow_hashes: bool = True
    allow_rsync: bool = True
    rsync_path: str = "rsync"
    bwrap_path: str = "bwrap"


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from (None: embedded default)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    sftp: SftpConfig = field(default_factory=SftpConfig)
    exec: ExecConfig = field(default_factory=ExecConfig)
    users: tuple[UserConfig, ...] = ()
    source: Path | None = None
