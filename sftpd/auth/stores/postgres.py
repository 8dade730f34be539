"""The shared user database: PostgreSQL through psycopg 3 and a connection pool, with timeouts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sftpd.auth.stores.schema import Cursor
from sftpd.auth.users import StoreUnavailable

CONNECT_TIMEOUT = 3  # seconds to reach the server
STATEMENT_TIMEOUT_MS = 5000  # no query may hold a login longer
POOL_TIMEOUT = 5.0  # seconds to wait for a free (or new) connection


class _QmarkCursor:
    """A psycopg cursor that takes the ``?`` placeholders the shared queries are written with."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._cur.execute(sql.replace("?", "%s"), params)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        rows: list[Any] = self._cur.fetchall()
        return rows


class PostgresDatabase:
    """A pool of connections to one PostgreSQL database, shared by many sftpd nodes.

    The pool checks a connection before lending it, so after a database restart the dead
    ones are replaced; while the server is down each attempt fails within the connect and
    pool timeouts with StoreUnavailable, and the login is refused instead of hanging."""

    kind = "postgresql"

    def __init__(self, url: str, *, max_size: int = 8) -> None:
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(
            url,
            min_size=0,
            max_size=max_size,
            timeout=POOL_TIMEOUT,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs={
                "connect_timeout": CONNECT_TIMEOUT,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                "application_name": "sftpd",
            },
            reconnect_timeout=0,
        )
        self._pool.open(wait=False)

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield _QmarkCursor(cur)
        except PoolTimeout:
            raise StoreUnavailable(
                f"postgresql: no connection within {POOL_TIMEOUT:g} s (is the server up?)"
            ) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StoreUnavailable(f"postgresql: {first}") from None

    def has_table(self, cur: Cursor, name: str) -> bool:
        cur.execute("SELECT to_regclass(?) IS NOT NULL", (name,))
        row: Any = cur.fetchone()
        return bool(row[0])

    def close(self) -> None:
        self._pool.close()
