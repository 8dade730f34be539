"""Configuration: frozen dataclasses loaded from TOML; errors name file, key and expectation."""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bcrypt

from sftpd import __version__
from sftpd.config.access import AccessValues, KeyProfileConfig, PermissionTable
from sftpd.config.authcfg import DEFAULT_METHODS, AuthValues, check_require
from sftpd.config.keyopts import KeyLine
from sftpd.config.values import (
    Check,
    got,
    parse_authorized_key,
    read_authorized_keys_lines,
)
from sftpd.edge.config import SERVER_KEYS as EDGE_SERVER_KEYS
from sftpd.edge.config import (
    USER_KEYS,
    EdgeConfig,
    UserEdge,
    build_edge,
    defender_checks,
    server_checks,
    user_checks,
)
from sftpd.errors import ConfigError
from sftpd.events.config import SECTIONS as EVENT_SECTIONS
from sftpd.events.config import EventsConfig, parse_events

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


class ConfigErrors(ConfigError):
    """Several problems at once: ``str()`` gives one ``FILE: key: message`` line per problem.

    ``source``/``key``/``message`` are those of the first problem; ``errors`` holds all.
    """

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(first.source, first.key, first.message)
        self.args = ("\n".join(str(e) for e in self.errors),)


class _Loader(AuthValues, AccessValues):
    """Builds the dataclasses from the parsed TOML document, collecting every problem."""

    has_ca = False  # [server] trusts user CAs: a user may log in by certificate alone

    # Sections.

    def load(self, data: dict[str, Any]) -> Config:
        sections: dict[str, Check] = {
            "server": self.section_check(self.server_checks()),
            "sftp": self.section_check(
                {"umask": self.umask, "max_handles": self.integer(1, 1 << 20)}
            ),
            "exec": self.section_check(
                {
                    "allow_scp": self.boolean,
                    "allow_hashes": self.boolean,
                    "allow_rsync": self.boolean,
                    "rsync_path": self.string,
                    "bwrap_path": self.string,
                }
            ),
            "defender": self.section_check(defender_checks(self)),
            "users": self.users_check,
            "users_db": self.users_db_check,
        }
        server_data = data.get("server")
        self.has_ca = isinstance(server_data, dict) and any(
            k in server_data for k in ("trusted_user_ca_keys", "trusted_user_ca_keys_file")
        )
        for name in EVENT_SECTIONS:  # checked by parse_events below
            sections[name] = lambda where, value: value
        got = self.table(data, "", sections)
        if "users" not in data and "users_db" not in data:
            self.errors.append(self.err("users", "missing; expected at least one [[users]] entry"))
        users: list[tuple[UserConfig, str]] = got.get("users", [])
        server: dict[str, Any] = got.get("server", {})
        cas = server.pop("trusted_user_ca_keys", ()) + server.pop("trusted_user_ca_keys_file", ())
        if cas:
            server["trusted_user_ca_keys"] = tuple(dict.fromkeys(cas))
        offered = server.get("authentication_methods", DEFAULT_METHODS)
        for u, where in users:
            prefix = where.removesuffix(".root")
            self.errors.extend(check_require(self.source, prefix, u.require, offered))
        edge_keys = {k: server.pop(k) for k in EDGE_SERVER_KEYS if k in server}
        edge = build_edge(edge_keys, got.get("defender", {}), self)
        for key, names in ALGORITHM_PRESETS[server.get("algorithms", "modern")].items():
            server.setdefault(key, names)  # explicit lists win over the preset
        return Config(
            server=ServerConfig(**server),
            sftp=SftpConfig(**got.get("sftp", {})),
            exec=ExecConfig(**got.get("exec", {})),
            users=tuple(u for u, _ in users),
            users_db=got.get("users_db"),
            edge=edge,
            events=parse_events(data, self),
        )

    def users_db_check(self, where: str, value: Any) -> UsersDbConfig:
        got = self.section_check(
            {
                "url": self.string,
                "url_env": self.string,
                "cache_seconds": self.number(0, 3600),
            }
        )(where, value)
        if ("url" in got) == ("url_env" in got):
            raise self.err(where, "expected exactly one of url or url_env")
        url = got.get("url")
        if url is not None and not url.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise self.err(
                f"{where}.url",
                "expected sqlite:///ABSOLUTE/PATH, sqlite:RELATIVE/PATH or postgresql://...",
            )
        return UsersDbConfig(**got, base=self.base)

    def section_check(self, checks: dict[str, Check]) -> Check:
        def check(where: str, value: Any) -> dict[str, Any]:
            if not isinstance(value, dict):
                raise self.err(where, f"expected a table ([{where}]), {got(value)}")
            return self.table(value, where, checks)

        return check

    def server_checks(self) -> dict[str, Check]:
        return {
            "listen": self.listen,
            "host_keys_dir": self.path,
            "banner": self.banner,
            "login_grace_time": self.number(1, 86400),
            "max_auth_tries": self.integer(1, 100),
            "auth_failure_delay": self.number(0, 60),
            "max_sessions": self.integer(1, 1000),
            "moduli_file": self.moduli,
            "algorithms": self.choice(tuple(ALGORITHM_PRESETS)),
            "kex_algorithms": self.algorithms(COMPAT_KEX, LEGACY_KEX),
            "ciphers": self.algorithms(COMPAT_CIPHERS, LEGACY_CIPHERS),
            "macs": self.algorithms(COMPAT_MACS, LEGACY_MACS),
            "host_key_algorithms": self.algorithms(
                COMPAT_HOST_KEY_ALGORITHMS, LEGACY_HOST_KEY_ALGORITHMS
            ),
            "rekey_bytes": self.integer(1 << 16, 1 << 62),
            "rekey_seconds": self.number(1, 1 << 31),
            "workers": self.integer(1, 1024),
            "busy_poll_us": self.integer(0, 10000),
            "max_window": self.size(256 << 10, 1 << 30),
            "window_budget": self.size(0, 1 << 40),
            "log_format": self.choice(("text", "json")),
            "log_level": self.choice(LOG_LEVELS, {"warning": "warn"}),
            "trusted_user_ca_keys": self.ca_keys,
            "trusted_user_ca_keys_file": self.ca_keys_file,
            "revoked_keys_file": self.revoked_file,
            "authentication_methods": self.methods,
            **server_checks(self),
        }

    def users_check(self, where: str, value: Any) -> list[tuple[UserConfig, str]]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.err(where, f"expected an array of tables ([[users]]), {got(value)}")
        if not value:
            raise self.err(where, "empty; expected at least one [[users]] entry")
        out: list[tuple[UserConfig, str]] = []
        seen: dict[str, str] = {}
        for i, data in enumerate(value):
            prefix = f"{where}[{i}]"
            user = self.user(prefix, data)
            if user is None:
                continue
            if user.name in seen:
                self.errors.append(
                    self.err(
                        f"{prefix}.name",
                        f"duplicate user name {user.name!r} (already used by {seen[user.name]}); "
                        "expected each name once",
                    )
                )
            seen.setdefault(user.name, prefix)
            out.append((user, f"{prefix}.root"))
        return out

    def user(self, prefix: str, data: dict[str, Any]) -> UserConfig | None:
        before = len(self.errors)
        checks: dict[str, Check] = {
            "name": self.user_name,
            "root": self.path,
            "home": self.home,
            "password_hash": self.password_hash,
            "authorized_keys": self.key_lines,
            "authorized_keys_file": self.key_lines_file,
            "read_only": self.boolean,
            "allow_rsync": self.optional_boolean,
            "allow_exec": self.optional_boolean,
            "principals": self.principals,
            "totp_secret": self.totp_secret,
            "require": self.require,
            **user_checks(self),  # max_sessions, allowed_sources
            **self.access_checks(),
            "quota_size": self.integer(0, 1 << 62),
            "quota_files": self.integer(0, 1 << 62),
            "max_upload_size": self.integer(0, 1 << 62),
            "upload_mode": self.choice(UPLOAD_MODES),
        }
        got = self.table(data, prefix, checks)
        got["edge"] = UserEdge(**{k: got.pop(k) for k in USER_KEYS if k in got})
        for key, what in (("name", "the login name"), ("root", "the directory the user sees as /")):
            if key not in data:
                self.errors.append(self.err(f"{prefix}.{key}", f"missing; expected {what}"))
        if len(self.errors) > before:
            return None
        lines = got.pop("authorized_keys", ()) + got.pop("authorized_keys_file", ())
        got["key_lines"] = lines
        blobs = tuple(line.blob for line in lines) + tuple(k.blob for k in got.get("keys", ()))
        got["authorized_keys"] = tuple(dict.fromkeys(blobs))
        if not got["authorized_keys"] and "password_hash" not in got and not self.has_ca:
            source = (
                " (authorized_keys_file has no key lines)" if "authorized_keys_file" in data else ""
            )
            self.errors.append(
                self.err(
                    prefix,
                    f"user {got['name']!r} has no way to log in{source}; expected password_hash, "
                    "authorized_keys or authorized_keys_file",
                )
            )
            return None
        return UserConfig(**got)


def check_user_table(data: dict[str, Any], source: str) -> UserConfig:
    """One ``[[users]]`` table checked exactly as ``load_config`` checks the file's (for
    users kept elsewhere: the database's rows). ConfigError (ConfigErrors for several
    problems) with keys relative to the table, like ``permissions."/in"[0]``.

    A table without password or key is not refused here: certificates may log it in, and
    whoever writes the table (``sftpd user``) says when it has no way in."""
    loader = _Loader(source, Path("/"))
    loader.has_ca = True
    user = loader.user("", data)
    if len(loader.errors) == 1:
        raise loader.errors[0]
    if loader.errors or user is None:
        raise ConfigErrors(loader.errors)
    return user


def make_root(root: Path) -> None:
    """Create a user's root directory (mode 0o750) if missing; OSError or NotADirectoryError."""
    root.mkdir(mode=0o750, parents=True, exist_ok=True)


def load_config(path: Path) -> Config:
    """Load and validate a TOML config file; nothing on disk is created or changed.

    What serving needs of the disk (user roots, host key directory) is checked by
    ``sftpd.preflight``, which ``serve`` and ``check-config`` share.

    Every problem raises ConfigError naming the file and the key path, e.g.
    ``sftpd.toml: users[1].root: ...``; array indexes are 0-based (``users[0]`` is the first
    ``[[users]]`` entry). Several problems raise ConfigErrors, one line each.
    Relative paths are relative to the directory of the config file.
    """
    source = str(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        data = tomllib.loads(text)
    except OSError as e:
        raise ConfigError(source, "", f"cannot read: {e.strerror}; expected a TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "", "invalid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        text = str(e)
        m = re.fullmatch(r"(.*) \(at (line \d+, column \d+|end of document)\)", text)
        where, what = (m[2], m[1]) if m else ("", text)
        raise ConfigError(source, where, f"invalid TOML: {what}") from None
    loader = _Loader(source, Path(os.path.abspath(path)).parent, text)
    config = loader.load(data)
    if len(loader.errors) == 1:
        raise loader.errors[0]
    if loader.errors:
        raise ConfigErrors(loader.errors)
    return replace(config, source=path)


def _home_keys(home: Path) -> tuple[bytes, ...]:
    files = [home / ".ssh" / "authorized_keys", *sorted((home / ".ssh").glob("id_*.pub"))]
    keys: list[bytes] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for _, line in read_authorized_keys_lines(text):
            try:
                keys.append(parse_authorized_key(line))
            except ValueError:
                continue
    return tuple(dict.fromkeys(keys))


def embedded_default(cwd: Path, home: Path, username: str) -> tuple[Config, str]:
    """The no-config setup: ``username`` gets ``cwd/data`` on 127.0.0.1:2222.

    Login works with any key in ``home/.ssh/authorized_keys`` or ``home/.ssh/id_*.pub`` or
    with the returned random password (only its bcrypt hash is kept). Host keys live in
    ``cwd/keys``. Nothing is created here: ``sftpd.preflight.prepare`` creates ``cwd/data``.
    """
    root = Path(os.path.abspath(cwd / "data"))
    password = secrets.token_urlsafe(12)
    user = UserConfig(
        name=username,
        root=root,
        password_hash=bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)),
        authorized_keys=_home_keys(home),
    )
    server = ServerConfig(host_keys_dir=Path(os.path.abspath(cwd / "keys")))
    return Config(server=server, users=(user,)), password
