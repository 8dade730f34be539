"""The database user store (cached lookups off the reactor) and the chain of TOML then database."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.auth.stores.records import InvalidRecord, UserDb
from sftpd.auth.users import DEFAULT_PASSWORD_COST, MemoryUserStore, StoreUnavailable, User
from sftpd.runtime.threads import Blocking

log = Logger(namespace="sftpd.auth.stores")
RETRY_SECONDS = 5.0  # how often a database unreachable at start is tried again


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
        migrated: bool = True,
    ) -> None:
        self.db = db
        self._blocking = blocking
        self._clock = clock
        self.cache_seconds = cache_seconds
        self._cost = password_cost
        self._cache: dict[str, tuple[float, User | None]] = {}
        # The schema is migrated once, by the first call that reaches the database: at
        # start, or (a database down then) by a retry or a login once it answers.
        self._migrated = migrated
        self._schema_lock = threading.Lock()
        self._upgraded: tuple[int, int] | None = None  # to log, on the reactor thread
        self._retry: Any = None
        self._down: str | None = None  # the outage logged (None: none since the last up)

    @property
    def password_cost(self) -> int:
        return self._cost

    @property
    def ready(self) -> bool:
        """Whether the schema is migrated (the database answered once since start)."""
        return self._migrated

    def _prepare(self) -> None:
        # In a worker thread: migrate the schema once; StoreUnavailable while unreachable.
        if self._migrated:
            return
        with self._schema_lock:
            if self._migrated:
                return
            try:
                self._upgraded = self.db.upgrade()
            except ValueError as e:  # a schema newer than this sftpd: nothing is read
                raise StoreUnavailable(str(e)) from None
            self._migrated = True

    def _announce(self) -> None:
        # On the reactor thread: say once that the database answers (and was migrated).
        if self._upgraded is None:
            return
        before, after = self._upgraded
        self._upgraded = None
        self._down = None
        log.info(
            "user database reachable: schema version {after} (was {before}); "
            "database logins are served",
            before=before,
            after=after,
            event="db_ready",
        )

    def start_retrying(self, reason: str, every: float = RETRY_SECONDS) -> None:
        """The database could not be reached at start: log it, and try again every
        ``every`` seconds until the schema is migrated (a login may get there first)."""
        if self._down is None:  # once per outage, not at every try
            log.warn(
                "user database unreachable: {error}; database logins are refused until it "
                "answers, then its schema is migrated (trying every {every:g} s)",
                error=reason,
                every=every,
                event="db_unreachable",
            )
            self._down = reason

        def attempt() -> None:
            self._retry = None
            if self._migrated:
                self._announce()
                return
            d = self._blocking.run(self._prepare)

            def failed(reason: Failure) -> None:
                # StoreUnavailable, or anything else the engine raised: keep trying.
                self.start_retrying(str(reason.value) or type(reason.value).__name__, every)

            d.addCallbacks(lambda _: self._announce(), failed)

        self._retry = self._clock.callLater(every, attempt)

    def _fetch(self, name: str) -> User | InvalidRecord | None:
        self._prepare()
        rec = self.db.get(name)
        if rec is None or rec.disabled:
            return None
        try:
            return rec.to_user()
        except InvalidRecord as e:
            return e

    def lookup(self, name: str) -> defer.Deferred[User | None]:
        now = self._clock.seconds()
        hit = self._cache.get(name)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return defer.succeed(hit[1])

        def keep(found: User | InvalidRecord | None) -> User | None:
            self._announce()
            user = None if isinstance(found, InvalidRecord) else found
            if isinstance(found, InvalidRecord):
                # Refused, not served with fewer rules; logged once per cache period.
                log.error(
                    "user {user} in the user database does not check, login refused: {problems}",
                    user=name,
                    problems=str(found),
                    event="user_invalid",
                )
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

        return self._blocking.run(self._enabled, names).addCallback(forget)

    def _enabled(self, names: list[str]) -> set[str]:
        self._prepare()
        return self.db.enabled(names)

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
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
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
