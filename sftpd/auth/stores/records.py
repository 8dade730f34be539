"""User rows as records, and the queries on them: plain blocking calls, run off the reactor."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from sftpd.auth.stores import schema
from sftpd.auth.stores.schema import Cursor
from sftpd.auth.users import User, user_from_config
from sftpd.config.loader import ConfigErrors, check_user_table
from sftpd.config.model import UserConfig
from sftpd.errors import ConfigError


class Database(Protocol):
    """One SQL engine: transactions over ``?``-placeholder cursors.

    ``transaction`` commits when the block ends cleanly and rolls back otherwise; an engine
    that cannot be reached raises ``StoreUnavailable`` (with a message fit for the log)."""

    kind: str

    def transaction(self) -> AbstractContextManager[Cursor]: ...

    def has_table(self, cur: Cursor, name: str) -> bool: ...

    def close(self) -> None: ...


def fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


@dataclass(frozen=True)
class KeyRecord:
    """One key of a user: ``TYPE BASE64``, its comment, options and per-key profile.

    ``profile`` holds what a ``[[users.keys]]`` table adds (permissions, protocols, home)."""

    key_line: str
    comment: str = ""
    options: tuple[tuple[str, str | None], ...] = ()
    profile: dict[str, Any] = field(default_factory=dict)

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.key_line.split()[1])

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


def options_text(pairs: tuple[tuple[str, str | None], ...]) -> str:
    """The stored (name, value) option pairs as an authorized_keys options field."""
    return ",".join(
        name if value is None else f'{name}="{value.replace(chr(34), chr(92) + chr(34))}"'
        for name, value in pairs
    )


# What ``users.settings`` (JSON) may hold: the ``[[users]]`` keys without a column.
SETTINGS = (
    "max_upload_size",
    "upload_mode",
    "deny_files",
    "hide_files",
    "principals",
    "totp_secret",
    "require",
    "max_sessions",
    "allowed_sources",
)
# What ``user_keys.profile`` (JSON) may hold: the ``[[users.keys]]`` keys.
PROFILE = ("permissions", "protocols", "home")


class InvalidRecord(ValueError):
    """A stored user that does not check as a ``[[users]]`` table would.

    ``problems`` are (field, message) pairs; a field is a column or setting
    (``permissions."/in"[0]``, ``max_upload_size``) or ``key SHA256:...`` for one key. The
    text never holds a password hash or a host path."""

    def __init__(self, name: str, problems: list[tuple[str, str]]) -> None:
        self.name = name
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


@dataclass(frozen=True)
class UserRecord:
    """Everything a ``[[users]]`` table can say, as a row of ``users`` and its keys.

    ``permissions`` is a list or a {directory: list} table (None: everything); ``settings``
    holds further rules keys (max_upload_size, upload_mode, deny_files, hide_files)."""

    name: str
    root: Path
    home: str = "/"
    password_hash: bytes | None = None
    keys: tuple[KeyRecord, ...] = ()
    read_only: bool = False
    allow_rsync: bool | None = None
    allow_exec: bool | None = None
    disabled: bool = False
    permissions: Any = None
    quota_size: int = 0
    quota_files: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The row as the ``[[users]]`` table it stands for, and the names of its keys'
        entries (``authorized_keys[0]``, ``keys[0]``) -> ``key SHA256:...``."""
        data: dict[str, Any] = {
            "name": self.name,
            "root": str(self.root),
            "home": self.home,
            "read_only": self.read_only,
            "quota_size": self.quota_size,
            "quota_files": self.quota_files,
        }
        if self.password_hash is not None:
            data["password_hash"] = self.password_hash.decode("ascii", "replace")
        for column in ("allow_rsync", "allow_exec", "permissions"):
            if getattr(self, column) is not None:
                data[column] = getattr(self, column)
        data.update(self.settings)
        lines: list[str] = []
        profiled: list[dict[str, Any]] = []
        names: dict[str, str] = {}
        for k in self.keys:
            line = f"{k.key_line} {k.comment}".strip()
            names[f"authorized_keys[{len(lines)}]"] = f"key {k.fingerprint}"
            lines.append(f"{options_text(k.options)} {line}" if k.options else line)
            if k.profile:
                names[f"keys[{len(profiled)}]"] = f"key {k.fingerprint}"
                profiled.append({"key": line, **k.profile})
        if lines:
            data["authorized_keys"] = lines
        if profiled:
            data["keys"] = profiled
        return data, names

    def check(self) -> UserConfig:
        """The row checked as the file's ``[[users]]`` are (the same parsers); InvalidRecord
        naming each bad field."""
        problems: list[tuple[str, str]] = []
        if not self.root.is_absolute():
            problems.append(("root", "not an absolute path; expected the directory seen as /"))
        for key in self.settings:
            if key in _COLUMN_NAMES or key not in SETTINGS:
                known = ", ".join(SETTINGS)
                problems.append((f"settings.{key}", f"unknown; expected some of: {known}"))
        for k in self.keys:
            for key in k.profile:
                if key not in PROFILE:
                    known = ", ".join(PROFILE)
                    problems.append(
                        (f"key {k.fingerprint}", f"profile.{key}: unknown; expected: {known}")
                    )
        if problems:
            raise InvalidRecord(self.name, problems)
        data, names = self.table()
        try:
            return check_user_table(data, "users_db")
        except ConfigError as e:
            errors = e.errors if isinstance(e, ConfigErrors) else (e,)
            raise InvalidRecord(self.name, [_field(x, names) for x in errors]) from None

    def to_user(self) -> User:
        """The User the checkers and the realm see, with everything the row says (as
        ``user_from_config`` makes the file's); InvalidRecord if the row does not check."""
        return user_from_config(self.check())

    def public(self) -> dict[str, Any]:
        """A JSON-ready view for ``sftpd user show/list --json`` (never the hash)."""
        return {
            "name": self.name,
            "root": str(self.root),
            "home": self.home,
            "password": self.password_hash is not None,
            "read_only": self.read_only,
            "allow_rsync": self.allow_rsync,
            "allow_exec": self.allow_exec,
            "disabled": self.disabled,
            "permissions": self.permissions,
            "quota_size": self.quota_size,
            "quota_files": self.quota_files,
            **({"settings": _shown(self.settings)} if self.settings else {}),
            "keys": [
                {
                    "fingerprint": k.fingerprint,
                    "type": k.key_line.split()[0],
                    "comment": k.comment,
                    **({"profile": k.profile} if k.profile else {}),
                }
                for k in self.keys
            ],
        }


_COLUMNS = (
    "name, root, home, password_hash, read_only, allow_rsync, allow_exec, disabled, "
    "permissions, quota_size, quota_files, settings"
)


def _shown(settings: dict[str, Any]) -> dict[str, Any]:
    # The TOTP secret is a credential, like the password hash: only whether there is one.
    return {k: (True if k == "totp_secret" else v) for k, v in settings.items()}


_COLUMN_NAMES = frozenset(c.strip() for c in _COLUMNS.split(","))


def _field(error: ConfigError, names: dict[str, str]) -> tuple[str, str]:
    # "keys[0].permissions[1]" -> ("key SHA256:...", "permissions[1]: ...")
    key = error.key.lstrip(".")
    for prefix, name in names.items():
        if key == prefix or key.startswith((prefix + ".", prefix + "[")):
            rest = key[len(prefix) :].lstrip(".")
            return name, f"{rest}: {error.message}" if rest else error.message
    return key, error.message


def _tri(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _opt_int(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _row_to_record(row: Any, keys: tuple[KeyRecord, ...]) -> UserRecord:
    return UserRecord(
        name=row[0],
        root=Path(row[1]),
        home=row[2],
        password_hash=row[3].encode("ascii") if row[3] else None,
        read_only=bool(row[4]),
        allow_rsync=_tri(row[5]),
        allow_exec=_tri(row[6]),
        disabled=bool(row[7]),
        permissions=None if row[8] is None else json.loads(row[8]),
        quota_size=int(row[9]),
        quota_files=int(row[10]),
        settings=json.loads(row[11] or "{}"),
        keys=keys,
    )


def _key_from_row(row: Any) -> KeyRecord:
    options = tuple((str(n), None if v is None else str(v)) for n, v in json.loads(row[2]))
    return KeyRecord(key_line=row[0], comment=row[1], options=options, profile=json.loads(row[3]))


class UserDb:
    """The user queries on one Database; every method is one transaction and blocks."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def kind(self) -> str:
        return self.db.kind

    def upgrade(self) -> tuple[int, int]:
        """Create or migrate the schema to the latest version: (before, after)."""
        with self.db.transaction() as cur:
            return schema.upgrade(cur, self.db.has_table)

    def version(self) -> int:
        with self.db.transaction() as cur:
            return schema.current_version(cur, self.db.has_table)

    def _keys(self, cur: Cursor, name: str) -> tuple[KeyRecord, ...]:
        cur.execute(
            "SELECT key_line, comment, options, profile FROM user_keys "
            "WHERE user_name = ? ORDER BY fingerprint",
            (name,),
        )
        return tuple(_key_from_row(r) for r in cur.fetchall())

    def get(self, name: str) -> UserRecord | None:
        with self.db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM users WHERE name = ?", (name,))
            row = cur.fetchone()
            return None if row is None else _row_to_record(row, self._keys(cur, name))

    def names(self) -> list[str]:
        with self.db.transaction() as cur:
            cur.execute("SELECT name FROM users ORDER BY name")
            return [r[0] for r in cur.fetchall()]

    def all(self) -> Iterator[UserRecord]:
        with self.db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM users ORDER BY name")
            rows = cur.fetchall()
            found = [_row_to_record(r, self._keys(cur, r[0])) for r in rows]
        yield from found

    def enabled(self, names: list[str]) -> set[str]:
        """Which of ``names`` exist and are not disabled (one query, for the session check)."""
        if not names:
            return set()
        marks = ", ".join("?" for _ in names)
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT name FROM users WHERE disabled = 0 AND name IN ({marks})", tuple(names)
            )
            return {r[0] for r in cur.fetchall()}

    def add(self, rec: UserRecord) -> None:
        """Insert a new user with its keys; ValueError if the name exists."""
        with self.db.transaction() as cur:
            cur.execute("SELECT 1 FROM users WHERE name = ?", (rec.name,))
            if cur.fetchone() is not None:
                raise ValueError(f"user {rec.name!r} exists already")
            now = time.time()
            # a count left by a file user of that name is not this user's
            cur.execute("DELETE FROM quota_usage WHERE user_name = ?", (rec.name,))
            cur.execute(
                f"INSERT INTO users ({_COLUMNS}, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*_values(rec), now, now),
            )
            for key in rec.keys:
                _insert_key(cur, rec.name, key)

    def put(self, rec: UserRecord) -> None:
        """Replace an existing user's row and keys; KeyError if there is none."""
        with self.db.transaction() as cur:
            cur.execute("SELECT 1 FROM users WHERE name = ?", (rec.name,))
            if cur.fetchone() is None:
                raise KeyError(rec.name)
            cur.execute(
                "UPDATE users SET root = ?, home = ?, password_hash = ?, read_only = ?, "
                "allow_rsync = ?, allow_exec = ?, disabled = ?, permissions = ?, "
                "quota_size = ?, quota_files = ?, settings = ?, updated = ? WHERE name = ?",
                (*_values(rec)[1:], time.time(), rec.name),
            )
            cur.execute("DELETE FROM user_keys WHERE user_name = ?", (rec.name,))
            for key in rec.keys:
                _insert_key(cur, rec.name, key)

    def update(self, name: str, **changes: Any) -> UserRecord:
        """Change some fields of a user (read, changed, written in one step); KeyError if none."""
        rec = self.get(name)
        if rec is None:
            raise KeyError(name)
        new = replace(rec, **changes)
        self.put(new)
        return new

    def delete(self, name: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM user_keys WHERE user_name = ?", (name,))
            cur.execute("DELETE FROM quota_usage WHERE user_name = ?", (name,))
            cur.execute("DELETE FROM users WHERE name = ?", (name,))
            cur.execute("SELECT 1 FROM users WHERE name = ?", (name,))
            return cur.fetchone() is None

    # Quota usage: one row per user name (file users too), with the root it was counted
    # in; changes arrive as deltas so every node's and worker's changes add up.

    def add_usage(self, name: str, size: int, files: int) -> tuple[int, int] | None:
        """Add deltas to a user's usage in one atomic UPDATE; the new totals, or None when
        the store holds none for ``name`` (nothing is added: the caller counts)."""
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE quota_usage SET bytes = bytes + ?, files = files + ? "
                "WHERE user_name = ? RETURNING bytes, files",
                (size, files, name),
            )
            row = cur.fetchone()
            return None if row is None else (int(row[0]), int(row[1]))

    def usage(self, name: str) -> tuple[int, int] | None:
        """(bytes, files) the store knows of, or None if it was never counted."""
        row = self.usage_row(name)
        return None if row is None else (row[1], row[2])

    def usage_row(self, name: str) -> tuple[str, int, int] | None:
        """(root counted in, bytes, files), or None if the user was never counted."""
        with self.db.transaction() as cur:
            cur.execute("SELECT root, bytes, files FROM quota_usage WHERE user_name = ?", (name,))
            row = cur.fetchone()
            return None if row is None else (str(row[0]), int(row[1]), int(row[2]))

    def set_usage(
        self, name: str, root: str, size: int, files: int, *, replace: bool = True
    ) -> tuple[int, int]:
        """Store a count of ``root`` (a scan); the totals now stored. ``replace=False``
        keeps a row another node stored meanwhile (both counted the same files)."""
        conflict = (
            "DO UPDATE SET root = excluded.root, bytes = excluded.bytes, files = excluded.files"
            if replace
            else "DO NOTHING"
        )
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO quota_usage (user_name, root, bytes, files) VALUES (?, ?, ?, ?) "
                f"ON CONFLICT (user_name) {conflict}",
                (name, root, size, files),
            )
            cur.execute("SELECT bytes, files FROM quota_usage WHERE user_name = ?", (name,))
            row = cur.fetchone()
            return int(row[0]), int(row[1])

    def close(self) -> None:
        self.db.close()


def _values(rec: UserRecord) -> tuple[Any, ...]:
    return (
        rec.name,
        str(rec.root),
        rec.home,
        rec.password_hash.decode("ascii") if rec.password_hash else None,
        int(rec.read_only),
        _opt_int(rec.allow_rsync),
        _opt_int(rec.allow_exec),
        int(rec.disabled),
        None if rec.permissions is None else json.dumps(rec.permissions),
        rec.quota_size,
        rec.quota_files,
        json.dumps(rec.settings),
    )


def _insert_key(cur: Cursor, name: str, key: KeyRecord) -> None:
    cur.execute(
        "INSERT INTO user_keys (user_name, fingerprint, key_line, comment, options, profile) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            name,
            key.fingerprint,
            key.key_line,
            key.comment,
            json.dumps([list(o) for o in key.options]),
            json.dumps(key.profile),
        ),
    )
