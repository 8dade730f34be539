"""The database user store (cached lookups off the reactor) and the chain of TOML then database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sftpd.auth.stores.records import UserDb
from sftpd.auth.users import DEFAULT_PASSWORD_COST, MemoryUserStore, User
from sftpd.runtime.threads import Blocking

log = Logger(namespace="sftpd.auth.stores")


def open_user_db(url: str, base: Path) -> UserDb:
    """Open (not yet migrate) the database at ``url`` (a relative SQLite path is taken from
    ``base``, the config file's directory); ValueError on a bad URL."""
    if url.startswith("sqlite:"):
        from sftpd.auth.stores.sqlite import SqliteDatabase

        rest = url.removeprefix("sqlite:")
        rest = rest[2:] if rest.startswith("//") else rest  # sqlite:///abs -> /abs
        if not rest:
            raise ValueError("sqlite: URL without a path; expected sqlite:///PATH or sqlite:PATH")
        path = Path(rest)
        return UserDb(SqliteDatabase(path if path.is_absolute() else base / path))
    if url.startswith(("postgresql://", "postgres://")):
        from sftpd.auth.stores.postgres import PostgresDatabase

        return UserDb(PostgresDatabase(url))
    raise ValueError("expected a sqlite: or postgresql:// URL")


class DbUserStore:
    """Users from a database: each name's answer is reused for ``cache_seconds``.

    A login within that time costs no query, and a change made in the database (by this
    node's CLI or another node) reaches logins within it. Queries run in ``blocking`` (the
    worker pool), never on the reactor thread; the database's own timeouts bound them."""

    def __init__(
        self,
        db: UserDb,
        blocking: Blocking,
        *,
        clock: Any,
        cache_seconds: float = 5.0,
        password_cost: int = DEFAULT_PASSWORD_COST,
    ) -> None:
        self.db = db
        self._blocking = blocking
        self._clock = clock
        self.cache_seconds = cache_seconds
        self._cost = password_cost
        self._cache: dict[str, tuple[float, User | None]] = {}

    @property
    def password_cost(self) -> int:
        return self._cost

    def _fetch(self, name: str) -> User | None:
        rec = self.db.get(name)
        return None if rec is None or rec.disabled else rec.to_user()

    def lookup(self, name: str) -> defer.Deferred[User | None]:
        now = self._clock.seconds()
        hit = self._cache.get(name)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return defer.succeed(hit[1])

        def keep(user: User | None) -> User | None:
            if self.cache_seconds > 0:
                self._cache[name] = (now, user)
            return user

        return self._blocking.run(self._fetch, name).addCallback(keep)

    def still_enabled(self, names: list[str]) -> defer.Deferred[set[str]]:
        """Which of ``names`` may still be logged in (a fresh query, for the session check);
        the cache entries of the others are dropped, so their next login asks again."""

        def forget(found: set[str]) -> set[str]:
            for name in names:
                if name not in found:
                    self._cache.pop(name, None)
            return found

        return self._blocking.run(self.db.enabled, names).addCallback(forget)

    def add_usage(self, name: str, size: int, files: int) -> defer.Deferred[tuple[int, int] | None]:
        """Add quota usage deltas (bytes, files) for ``name``, atomically in the database,
        so every node and worker process sees the same total; the new totals (None: never
        counted, nothing added)."""
        return self._blocking.run(self.db.add_usage, name, size, files)

    def usage(self, name: str) -> defer.Deferred[tuple[int, int] | None]:
        """The (bytes, files) the database holds for ``name``; None: never counted (scan)."""
        return self._blocking.run(self.db.usage, name)

    def close(self) -> defer.Deferred[None]:
        self._cache.clear()
        return self._blocking.run(self.db.close)


class DbUsageStore:
    """The usage seam of sftpd.storage.usage on the user database (blocking calls, worker
    threads only); the usage of file users is kept there too, under their names."""

    def __init__(self, db: UserDb) -> None:
        self._db = db

    def load(self, name: str) -> tuple[str, int, int] | None:
        return self._db.usage_row(name)

    def add(self, name: str, nbytes: int, files: int) -> tuple[int, int] | None:
        return self._db.add_usage(name, nbytes, files)

    def store(
        self, name: str, root: str, nbytes: int, files: int, *, replace: bool
    ) -> tuple[int, int]:
        return self._db.set_usage(name, root, nbytes, files, replace=replace)


class ChainUserStore:
    """The ``[[users]]`` of the file first, then the database (if any).

    A name lives in one of them only (``check-config`` and ``sftpd user add`` refuse a name
    in both). ``replace_file_users`` swaps the file's users on SIGHUP."""

    def __init__(self, file_users: MemoryUserStore, db: DbUserStore | None = None) -> None:
        self._file = file_users
        self.db = db

    @property
    def password_cost(self) -> int:
        return self.db.password_cost if self.db is not None else self._file.password_cost

    def replace_file_users(self, file_users: MemoryUserStore) -> None:
        self._file = file_users

    def file_names(self) -> frozenset[str]:
        return self._file.names()

    def usage_store(self) -> DbUsageStore | None:
        """Where quota usage is shared (the database), or None: each process counts its own."""
        return None if self.db is None else DbUsageStore(self.db.db)

    def lookup(self, name: str) -> defer.Deferred[User | None]:
        d = self._file.lookup(name)
        if self.db is None:
            return d
        db = self.db

        def next_store(user: User | None) -> Any:
            return user if user is not None else db.lookup(name)

        return d.addCallback(next_store)

    def still_enabled(self, names: list[str]) -> defer.Deferred[set[str]]:
        """Which of ``names`` are still users (the file's now, the database's asked fresh)."""
        in_file = {n for n in names if n in self._file.names()}
        rest = [n for n in names if n not in in_file]
        if self.db is None or not rest:
            return defer.succeed(in_file)
        return self.db.still_enabled(rest).addCallback(lambda found: found | in_file)

    def close(self) -> defer.Deferred[None]:
        waits = [self._file.close()]
        if self.db is not None:
            waits.append(self.db.close())
        return defer.gatherResults(waits).addCallback(lambda _: None)
