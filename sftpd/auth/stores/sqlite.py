"""The embedded user database: stdlib sqlite3 in WAL mode, one connection behind a lock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftpd.auth.stores.schema import Cursor
from sftpd.auth.users import StoreUnavailable

BUSY_TIMEOUT_MS = 5000  # a writer (the CLI, another worker) holds the lock at most this long


class SqliteDatabase:
    """A SQLite file shared by the server's worker processes and the ``sftpd user`` CLI.

    WAL mode lets readers (logins) go on while the CLI writes; queries are short, so one
    connection serialised by a lock serves the worker threads that call it."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=BUSY_TIMEOUT_MS / 1000,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as e:
                raise StoreUnavailable(f"sqlite: cannot open the user database: {e}") from None
            self._conn = conn
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock:
            conn = self._connect()
            try:
                cur = conn.cursor()
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreUnavailable(f"sqlite: {e}") from None
            try:
                yield cur
            except sqlite3.OperationalError as e:
                conn.rollback()
                raise StoreUnavailable(f"sqlite: {e}") from None
            except BaseException:
                conn.rollback()
                raise
            else:
                conn.commit()
            finally:
                cur.close()

    def has_table(self, cur: Cursor, name: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        row: Any = cur.fetchone()
        return row is not None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
