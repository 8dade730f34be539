"""Users and configuration that change while the server runs: the user store, SIGHUP reloads."""

from __future__ import annotations

import signal
from dataclasses import replace
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.auth.stores.store import ChainUserStore, DbUserStore
from sftpd.auth.users import StoreUnavailable, TomlUserStore
from sftpd.config.model import Config
from sftpd.contexts import LiveConfig
from sftpd.runtime.threads import Blocking
from sftpd.ssh.factory import Factory

log = Logger(namespace="sftpd.reload")


def build_store(config: Config, *, reactor: Any, blocking: Blocking) -> ChainUserStore:
    """The file's ``[[users]]`` then, with ``[users_db]``, the database, migrated here at
    start. ValueError for a bad URL or a schema newer than this sftpd. A database that
    cannot be reached does not stop the server: its logins are refused (the log says why)
    until it answers, and the schema is migrated then."""
    file_users = TomlUserStore.from_config(config.users)
    if config.users_db is None:
        return ChainUserStore(file_users)
    from sftpd.auth.stores.store import open_user_db

    db = open_user_db(config.users_db.resolved_url(), config.users_db.base)
    try:
        before, after = db.upgrade()
        names = set(db.names())
    except StoreUnavailable as e:
        cached = DbUserStore(
            db, blocking, clock=reactor, cache_seconds=config.users_db.cache_seconds,
            migrated=False,
        )  # fmt: skip
        cached.start_retrying(str(e))
        return ChainUserStore(file_users, cached)
    if before != after:
        log.info(
            "user database schema upgraded from version {before} to {after}",
            before=before,
            after=after,
            event="db_upgraded",
        )
    for name in sorted(file_users.names() & names):
        log.warn(
            "user {user} is in the config file and the database; the file's entry is used",
            user=name,
            event="user_in_both",
        )
    cached = DbUserStore(db, blocking, clock=reactor, cache_seconds=config.users_db.cache_seconds)
    return ChainUserStore(file_users, cached)


def watch_sessions(factory: Factory, store: ChainUserStore, *, reactor: Any, every: float) -> Any:
    """Every ``every`` seconds, close the connections of users that were disabled or removed
    since they logged in (one query for all logged-in names). A store that cannot answer
    closes nothing: its users keep their sessions until it answers again."""
    from twisted.internet.task import LoopingCall

    def username(t: Any) -> str | None:
        return getattr(getattr(getattr(t, "avatar", None), "ctx", None), "username", None)

    state = {"down": False}

    def check() -> Any:
        names = sorted({n for t in factory.live if (n := username(t)) is not None})
        if not names:
            return None

        def close_gone(found: set[str]) -> None:
            for t in list(factory.live):
                name = username(t)
                if name is not None and name not in found:
                    log.info(
                        "user {user} was disabled or removed: closing conn={conn}",
                        user=name,
                        conn=t.conn_id,
                        event="session_revoked",
                    )
                    t.sendDisconnect(11, b"account disabled or removed")  # BY_APPLICATION

        def answered(found: set[str]) -> None:
            if state["down"]:
                log.info("session check: the user store answers again", event="store_up")
            state["down"] = False
            close_gone(found)

        def unavailable(reason: Failure) -> None:
            reason.trap(StoreUnavailable)
            if not state["down"]:  # once per outage, not every period
                log.warn(
                    "session check skipped until the store answers: {error}",
                    error=str(reason.value),
                    event="store_down",
                )
            state["down"] = True

        return store.still_enabled(names).addCallbacks(answered, unavailable)

    loop = LoopingCall(check)
    loop.clock = reactor
    loop.start(every, now=False).addErrback(lambda f: log.failure("session check", f))
    return loop


# A change here is only read at start (the field of Config, what the admin wrote). The
# edge (listening limits, timeouts, PROXY, defender) and the event sinks are built once.
RESTART_SECTIONS = {
    "server": "[server]",
    "users_db": "[users_db]",
    "edge": "[server]'s limits, timeouts and PROXY keys, or [defender],",
    "events": "[audit], [metrics] or [[hooks]]",
}


def reload_config(live: LiveConfig, store: ChainUserStore, *, blocking: Blocking) -> Any:
    """SIGHUP: re-read the file; if it checks, new logins get its users, keys and [exec];
    otherwise log why and keep the running configuration. Returns a Deferred (for tests)."""
    from twisted.internet import defer

    from sftpd.config.loader import load_config
    from sftpd.errors import ConfigError
    from sftpd.preflight import prepare

    old = live.config
    if old.source is None:
        log.warn("SIGHUP received; no configuration file to reload", event="sighup")
        return defer.succeed(False)
    source = old.source

    def read() -> tuple[Config | None, list[str], list[str], str | None]:
        # In a worker thread: the file, the disk checks, the roots to create, the database.
        try:
            new = load_config(source)
            prepare(new)  # check as serve does, then create missing user roots
        except ConfigError as e:
            return None, str(e).splitlines(), [], None
        try:
            db_names = store.db.db.names() if store.db is not None else []
        except StoreUnavailable as e:  # the file's users win in the chain anyway
            return new, [], [], str(e)
        return new, [], db_names, None

    d = blocking.run(read)

    def apply(found: tuple[Config | None, list[str], list[str], str | None]) -> bool:
        new, problems, db_names, unreachable = found
        if unreachable is not None and new is not None:
            log.warn(
                "reload: the user database is unreachable ({error}); names in both it and "
                "the file were not checked (the file's entry is used)",
                error=unreachable,
                event="reload_db_unreachable",
            )
        both = sorted({u.name for u in new.users} & set(db_names)) if new is not None else []
        errors = problems + [f"user {n!r} is in the file and in [users_db]" for n in both]
        if errors or new is None:
            for line in errors:
                log.error("reload refused: {problem}", problem=line, event="reload_refused")
            log.error("reload refused; the running configuration is kept", event="reload_refused")
            return False
        for section, shown in RESTART_SECTIONS.items():
            if getattr(new, section) != getattr(old, section):
                log.warn(
                    "reload: {section} changed; it takes effect at the next restart",
                    section=shown,
                    event="reload_needs_restart",
                )
        kept = {section: getattr(old, section) for section in RESTART_SECTIONS}
        live.config = replace(new, **kept)
        store.replace_file_users(TomlUserStore.from_config(new.users))
        log.info("reloaded: {count} user(s) from the file", count=len(new.users), event="reloaded")
        return True

    def failed(reason: Failure) -> bool:
        log.error("reload refused: {error}", error=str(reason.value), event="reload_refused")
        return False

    return d.addCallback(apply).addErrback(failed)


def reload_on_hangup(
    reactor: Any, live: LiveConfig, store: ChainUserStore, blocking: Blocking, *also: Any
) -> None:
    """SIGHUP (sent by admins, logrotate, and by a supervisor to its workers) reloads the
    file; ``also``: callables run on the reactor thread at each SIGHUP (the audit file's
    reopen)."""

    def reload() -> None:
        log.info("SIGHUP received; reloading the configuration", event="sighup")
        for call in also:
            call()
        reload_config(live, store, blocking=blocking)

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))
