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
from sftpd.auth.users import AuthorizedKey, User
from sftpd.config.keyopts import KeyOptions, OptionError, parse_options


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


def key_options(pairs: tuple[tuple[str, str | None], ...]) -> KeyOptions | None:
    """The stored (name, value) option pairs as parsed OpenSSH key options; None when they
    no longer parse (such a key grants nothing, rather than a login without its options)."""
    if not pairs:
        return KeyOptions()
    text = ",".join(
        name if value is None else f'{name}="{value.replace(chr(34), chr(92) + chr(34))}"'
        for name, value in pairs
    )
    try:
        return parse_options(text)
    except (OptionError, ValueError):
        return None


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

    def to_user(self) -> User:
        """The User the checkers and the realm see."""
        return User(
            name=self.name,
            root=self.root,
            home=self.home,
            password_hash=self.password_hash,
            keys=tuple(
                AuthorizedKey(k.blob, k.comment, opts)
                for k in self.keys
                if (opts := key_options(k.options)) is not None
            ),
            read_only=self.read_only,
            allow_rsync=self.allow_rsync,
            allow_exec=self.allow_exec,
        )

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
            **({"settings": self.settings} if self.settings else {}),
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
