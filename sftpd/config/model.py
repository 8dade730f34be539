"""The configuration model: frozen dataclasses, algorithm presets and allowed values."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sftpd import __version__
from sftpd.config.access import KeyProfileConfig, PermissionTable
from sftpd.config.authcfg import DEFAULT_METHODS
from sftpd.config.keyopts import KeyLine
from sftpd.edge.config import EdgeConfig, UserEdge
from sftpd.events.config import EventsConfig

# Algorithm presets, chosen by [server] algorithms; explicit lists in [server] win.
# "compat": OpenSSH's own default offer (NIST ECDH and ECDSA, encrypt-and-MAC HMACs).
COMPAT_KEX = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group-exchange-sha256",  # only offered when a moduli file is present
)
COMPAT_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
COMPAT_MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
COMPAT_HOST_KEY_ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
# "modern", the default: what ssh-audit passes without a [fail] or [warn] (no NIST curves,
# MACs only encrypt-then-MAC; the ECDSA host key file may exist but is not offered).
DEFAULT_KEX = tuple(k for k in COMPAT_KEX if not k.startswith("ecdh-sha2-"))
DEFAULT_CIPHERS = COMPAT_CIPHERS
DEFAULT_MACS = tuple(m for m in COMPAT_MACS if m.endswith("-etm@openssh.com"))
DEFAULT_HOST_KEY_ALGORITHMS = tuple(
    h for h in COMPAT_HOST_KEY_ALGORITHMS if not h.startswith("ecdsa-")
)
ALGORITHM_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "modern": {
        "kex_algorithms": DEFAULT_KEX,
        "ciphers": DEFAULT_CIPHERS,
        "macs": DEFAULT_MACS,
        "host_key_algorithms": DEFAULT_HOST_KEY_ALGORITHMS,
    },
    "compat": {
        "kex_algorithms": COMPAT_KEX,
        "ciphers": COMPAT_CIPHERS,
        "macs": COMPAT_MACS,
        "host_key_algorithms": COMPAT_HOST_KEY_ALGORITHMS,
    },
}

# Legacy names Conch can negotiate; never offered unless an admin lists them.
LEGACY_KEX = ("diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1")
LEGACY_CIPHERS = ("aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc")
LEGACY_MACS = ("hmac-sha1", "hmac-md5")
LEGACY_HOST_KEY_ALGORITHMS = ("ssh-rsa", "ssh-dss")

UPLOAD_MODES = ("atomic", "direct")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
EMBEDDED_SOURCE = "(embedded default)"


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
    # Authentication (issue 17): every key line with its options, in file order (the
    # blobs above are theirs, deduplicated); certificate principals (None: the name);
    # a base32 TOTP secret; chains of methods that must all succeed.
    key_lines: tuple[KeyLine, ...] = ()
    principals: tuple[str, ...] | None = None
    totp_secret: str | None = None
    require: tuple[tuple[str, ...], ...] = ()
    # max_sessions (concurrent logins over all connections) and allowed_sources
    edge: UserEdge = field(default_factory=UserEdge)
    # What the user may do (see config/access.py): () = everything everywhere.
    permissions: PermissionTable = ()
    deny_files: tuple[str, ...] = ()
    hide_files: tuple[str, ...] = ()
    # [[users.keys]]: keys with their own profile (their blobs log in too).
    keys: tuple[KeyProfileConfig, ...] = ()
    # Limits (0 = unlimited) and how uploads land ("atomic": a temporary renamed on close).
    quota_size: int = 0
    quota_files: int = 0
    max_upload_size: int = 0
    upload_mode: str = "atomic"


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
    algorithms: str = "modern"  # the preset the four lists below default to
    kex_algorithms: tuple[str, ...] = DEFAULT_KEX
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    macs: tuple[str, ...] = DEFAULT_MACS
    host_key_algorithms: tuple[str, ...] = DEFAULT_HOST_KEY_ALGORITHMS
    rekey_bytes: int = 1 << 30
    rekey_seconds: float = 3600.0
    workers: int = 1
    busy_poll_us: int = 100
    max_window: int = 16 << 20  # a channel's receive window grows to this at most
    window_budget: int = 256 << 20  # growth of all windows of a process, together
    log_format: str = "text"  # "text" or "json"
    log_level: str = "info"
    # Authentication (issue 17): user CA keys (wire blobs, the file's merged in), the
    # revocation file, and the methods offered, in order.
    trusted_user_ca_keys: tuple[bytes, ...] = ()
    revoked_keys_file: Path | None = None
    authentication_methods: tuple[str, ...] = DEFAULT_METHODS


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
class UsersDbConfig:
    """``[users_db]``: a database of users beside (or instead of) ``[[users]]``.

    ``url`` is ``sqlite:///abs/path.db``, ``sqlite:rel/path.db`` (relative to the config
    file) or ``postgresql://...``; with ``url_env`` it is read from that environment
    variable at start instead. ``cache_seconds``: how long a looked-up user is reused, and
    so the longest a change takes to reach logins and open sessions."""

    url: str = ""
    url_env: str | None = None
    cache_seconds: float = 5.0
    base: Path = Path(".")  # the config file's directory, for relative SQLite paths

    def resolved_url(self) -> str:
        """The URL in force (from the environment when ``url_env`` is set); ValueError if
        that variable is unset or empty."""
        if self.url_env is not None:
            url = os.environ.get(self.url_env, "")
            if not url:
                raise ValueError(
                    f"url_env: the environment variable {self.url_env} is not set or empty"
                )
            return url
        return self.url


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from (None: embedded default)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    sftp: SftpConfig = field(default_factory=SftpConfig)
    exec: ExecConfig = field(default_factory=ExecConfig)
    users: tuple[UserConfig, ...] = ()
    source: Path | None = None
    users_db: UsersDbConfig | None = None
    # [server]'s connection limits, timeouts and PROXY keys, and [defender]
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    events: EventsConfig = field(default_factory=EventsConfig)  # [audit] [metrics] [[hooks]]
