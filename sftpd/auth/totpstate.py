"""TOTP codes accepted once per server: the last accepted step per user, shared by processes.

Without sharing, each worker process of a ``workers > 1`` server would accept a code once
itself, so a code could log in once per worker. The last accepted time step per user is
therefore kept where every process sees it, and claimed atomically (one SQL upsert that
only moves forward: of two connections presenting the same code, one gets the row):

- with ``[users_db]``, in its ``totp_steps`` table (schema migration 3), so a code is also
  accepted once across every sftpd node sharing the database;
- else, with ``workers > 1``, in a SQLite file in the runtime directory the supervisor
  creates for its workers (private, mode 0700, removed when it exits): SQLite's own file
  locking serialises the processes, WAL keeps it cheap, and nothing of it outlives the
  server (a code is valid for 90 s at most, so nothing needs to survive a restart);
- else (one process) in memory.

Claims run in the worker pool, never on the reactor thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer

from sftpd.auth.stores.records import Database
from sftpd.auth.totp import MemoryTotpState
from sftpd.runtime.threads import Blocking

TABLE = "totp_steps"
_CLAIM = (
    f"INSERT INTO {TABLE} (user_name, step) VALUES (?, ?) "
    f"ON CONFLICT (user_name) DO UPDATE SET step = excluded.step WHERE {TABLE}.step < excluded.step"
)
CREATE = f"CREATE TABLE IF NOT EXISTS {TABLE} (user_name TEXT PRIMARY KEY, step BIGINT NOT NULL)"


class SharedTotpState(Protocol):
    """``totp.TotpState``'s claim, answered through a Deferred (a query may block)."""

    def claim(self, user: str, step: int) -> defer.Deferred[bool]: ...


class ProcessTotpState:
    """One process's memory: enough when the server is one process."""

    def __init__(self) -> None:
        self._memory = MemoryTotpState()

    def claim(self, user: str, step: int) -> defer.Deferred[bool]:
        return defer.succeed(self._memory.claim(user, step))


class SqlTotpState:
    """The last accepted step per user in a SQL table (SQLite or PostgreSQL).

    ``create``: make the table on first use (the runtime file); the user database gets it
    from its schema migrations. A database that cannot answer fails the claim with
    StoreUnavailable, and the login is refused."""

    def __init__(self, db: Database, blocking: Blocking, *, create: bool = False) -> None:
        self._db = db
        self._blocking = blocking
        self._create = create

    def _claim(self, user: str, step: int) -> bool:
        with self._db.transaction() as cur:
            if self._create:
                cur.execute(CREATE)
            result: Any = cur.execute(_CLAIM, (user, step))
            return bool(result.rowcount == 1)

    def claim(self, user: str, step: int) -> defer.Deferred[bool]:
        return self._blocking.run(self._claim, user, step)

    def close(self) -> None:
        self._db.close()


def shared_totp_state(
    store: Any, blocking: Blocking, runtime_dir: str | None = None
) -> SharedTotpState:
    """The state a server's processes share: the user database's table when ``store`` (a
    ChainUserStore) has one, else a file in ``runtime_dir`` (the supervisor's, given to
    each worker: ``runtime.processes.RUNTIME_DIR_ENV``), else memory."""
    db_store = getattr(store, "db", None)
    user_db = getattr(db_store, "db", None)
    database = getattr(user_db, "db", None)
    if database is not None:
        return SqlTotpState(database, blocking)
    if runtime_dir:
        from sftpd.auth.stores.sqlite import SqliteDatabase

        path = Path(runtime_dir) / "totp.db"
        return SqlTotpState(SqliteDatabase(path), blocking, create=True)
    return ProcessTotpState()
