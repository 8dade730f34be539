"""The defender's bans in the user database: blocking queries, and their store off the reactor."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer

from sftpd.auth.stores.records import Database
from sftpd.auth.stores.store import ChainUserStore
from sftpd.edge.bans import Ban
from sftpd.runtime.threads import Blocking

_COLUMNS = "source, banned_until, ban_count, reason"


def _ban(row: Any) -> Ban:
    source, until, count, reason = row
    return Ban(source=str(source), until=float(until), count=int(count), reason=str(reason))


class BanDb:
    """The ``bans`` table (schema step 3); every method is one transaction and blocks.

    Rows stay after a ban ends (they carry the repeat count for doubling) until a
    defender forgets them, ``ban_time_max`` minutes later, or an admin removes them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def all(self) -> list[Ban]:
        with self.db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM bans ORDER BY source")
            return [_ban(r) for r in cur.fetchall()]

    def get(self, source: str) -> Ban | None:
        with self.db.transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM bans WHERE source = ?", (source,))
            row = cur.fetchone()
            return None if row is None else _ban(row)

    def put(self, ban: Ban) -> None:
        """Insert or replace the ban of ``ban.source`` (the latest writer wins)."""
        with self.db.transaction() as cur:
            cur.execute(
                f"INSERT INTO bans ({_COLUMNS}, created) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (source) DO UPDATE SET banned_until = excluded.banned_until, "
                "ban_count = excluded.ban_count, reason = excluded.reason, "
                "created = excluded.created",
                (ban.source, ban.until, ban.count, ban.reason, time.time()),
            )

    def remove(self, source: str) -> bool:
        """Forget ``source``'s ban and history; True if there was a row."""
        with self.db.transaction() as cur:
            cur.execute("SELECT 1 FROM bans WHERE source = ?", (source,))
            had = cur.fetchone() is not None
            cur.execute("DELETE FROM bans WHERE source = ?", (source,))
            return had


class DbBanStore:
    """A :class:`sftpd.edge.defender.BanStore` on :class:`BanDb`: every query runs in
    ``blocking`` (the worker pool), never on the reactor thread; the database's own
    timeouts bound each one, and a failure (``StoreUnavailable``) fails the Deferred."""

    def __init__(self, bans: BanDb, blocking: Blocking) -> None:
        self.bans = bans
        self._blocking = blocking

    def put(self, ban: Ban) -> defer.Deferred[None]:
        return self._blocking.run(self.bans.put, ban)

    def remove(self, source: str) -> defer.Deferred[bool]:
        return self._blocking.run(self.bans.remove, source)

    def all(self) -> defer.Deferred[list[Ban]]:
        return self._blocking.run(self.bans.all)


def ban_store_of(users: ChainUserStore, blocking: Blocking) -> DbBanStore | None:
    """The ban store in the same database as ``users``' (None without ``[users_db]``)."""
    if users.db is None:
        return None
    return DbBanStore(BanDb(users.db.db.db), blocking)
