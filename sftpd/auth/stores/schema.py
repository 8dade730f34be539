"""The user database schema, versioned: forward migrations that SQLite and PostgreSQL share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

# Each migration takes the schema from version N to N + 1 (index N). Only portable SQL:
# TEXT, INTEGER, BIGINT, DOUBLE PRECISION; booleans as 0/1 integers; JSON as TEXT.
# Never edit a released step: add one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: users and their keys
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            root TEXT NOT NULL,
            home TEXT NOT NULL DEFAULT '/',
            password_hash TEXT,
            read_only INTEGER NOT NULL DEFAULT 0,
            allow_rsync INTEGER,
            allow_exec INTEGER,
            disabled INTEGER NOT NULL DEFAULT 0,
            permissions TEXT,
            quota_size BIGINT NOT NULL DEFAULT 0,
            quota_files BIGINT NOT NULL DEFAULT 0,
            settings TEXT NOT NULL DEFAULT '{}',
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE user_keys (
            user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            fingerprint TEXT NOT NULL,
            key_line TEXT NOT NULL,
            comment TEXT NOT NULL DEFAULT '',
            options TEXT NOT NULL DEFAULT '[]',
            profile TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (user_name, fingerprint)
        )""",
    ),
    (  # 2: quota usage, kept by deltas so several nodes agree
        """CREATE TABLE usage (
            user_name TEXT PRIMARY KEY REFERENCES users(name) ON DELETE CASCADE,
            bytes BIGINT NOT NULL DEFAULT 0,
            files BIGINT NOT NULL DEFAULT 0
        )""",
    ),
    (  # 3: the last TOTP time step accepted per user (file users too: no reference), so
        # a code is accepted once across worker processes and nodes (auth/totpstate.py)
        """CREATE TABLE totp_steps (
            user_name TEXT PRIMARY KEY,
            step BIGINT NOT NULL
        )""",
    ),
    (  # 4: usage for file users too (no foreign key), with the root it was counted in
        """CREATE TABLE quota_usage (
            user_name TEXT PRIMARY KEY,
            root TEXT NOT NULL,
            bytes BIGINT NOT NULL DEFAULT 0,
            files BIGINT NOT NULL DEFAULT 0
        )""",
        """INSERT INTO quota_usage (user_name, root, bytes, files)
            SELECT usage.user_name, users.root, usage.bytes, usage.files
            FROM usage JOIN users ON users.name = usage.user_name""",
        "DROP TABLE usage",
    ),
    (  # 5: the defender's bans, shared by every node and worker process
        """CREATE TABLE bans (
            source TEXT PRIMARY KEY,
            banned_until DOUBLE PRECISION NOT NULL,
            ban_count INTEGER NOT NULL DEFAULT 1,
            reason TEXT NOT NULL DEFAULT 'score',
            created DOUBLE PRECISION NOT NULL
        )""",
    ),
)
LATEST = len(MIGRATIONS)


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use, with ``?`` placeholders."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def current_version(cur: Cursor, has_table: Callable[[Cursor, str], bool]) -> int:
    """The schema version of the database (0: empty)."""
    if not has_table(cur, "schema_version"):
        return 0
    cur.execute("SELECT version FROM schema_version")
    row = cur.fetchone()
    return int(row[0]) if row else 0


def upgrade(
    cur: Cursor, has_table: Callable[[Cursor, str], bool], target: int = LATEST
) -> tuple[int, int]:
    """Run the missing migrations up to ``target`` in the caller's transaction.

    Returns (version before, version after). A database newer than this sftpd raises
    ValueError: an older sftpd must not write to a schema it does not know."""
    before = current_version(cur, has_table)
    if before > LATEST:
        raise ValueError(
            f"the user database has schema version {before}, newer than this sftpd's "
            f"{LATEST}; expected an sftpd at least as new as the one that upgraded it"
        )
    if before == 0:
        cur.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        cur.execute("INSERT INTO schema_version (version) VALUES (0)")
    for version in range(before, target):
        for statement in MIGRATIONS[version]:
            cur.execute(statement)
        cur.execute("UPDATE schema_version SET version = ?", (version + 1,))
    return before, max(before, target)
