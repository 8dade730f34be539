"""Where a Config comes from: the TOML file, checked key by key, or the embedded default."""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import bcrypt

from sftpd.config.access import AccessValues
from sftpd.config.authcfg import DEFAULT_METHODS, AuthValues, check_require
from sftpd.config.model import (
    ALGORITHM_PRESETS,
    COMPAT_CIPHERS,
    COMPAT_HOST_KEY_ALGORITHMS,
    COMPAT_KEX,
    COMPAT_MACS,
    LEGACY_CIPHERS,
    LEGACY_HOST_KEY_ALGORITHMS,
    LEGACY_KEX,
    LEGACY_MACS,
    LOG_LEVELS,
    UPLOAD_MODES,
    Config,
    ExecConfig,
    ServerConfig,
    SftpConfig,
    UserConfig,
    UsersDbConfig,
)
from sftpd.config.values import (
    Check,
    got,
    parse_authorized_key,
    read_authorized_keys_lines,
)
from sftpd.edge.config import SERVER_KEYS as EDGE_SERVER_KEYS
from sftpd.edge.config import (
    USER_KEYS,
    UserEdge,
    build_edge,
    defender_checks,
    server_checks,
    user_checks,
)
from sftpd.errors import ConfigError
from sftpd.events.config import SECTIONS as EVENT_SECTIONS
from sftpd.events.config import parse_events


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
