"""What a login gets: its rules, its storage stack (rules, atomic, quota, jail), its context."""

from __future__ import annotations

import itertools
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from sftpd.apps.contract import SessionContext
from sftpd.auth.forced import forced_directory
from sftpd.auth.users import AuthorizedKey, User
from sftpd.config.model import Config, ExecConfig
from sftpd.runtime.threads import Blocking
from sftpd.ssh.hostkeys import fingerprint
from sftpd.storage.atomic import AtomicStorage, clean_temporaries
from sftpd.storage.base import Storage
from sftpd.storage.enforce import RulesStorage
from sftpd.storage.permissions import Table, expand
from sftpd.storage.quota import (
    Limits,
    MemoryQuotaUsage,
    QuotaStorage,
    QuotaUsage,
    UserStates,
    scan_usage,
)
from sftpd.storage.rules import RsyncGrant, RsyncRefusal, RuleDenied, Rules
from sftpd.storage.usage import StoreQuotaUsage, UsageStore

SYNC_EVERY = 0.5  # seconds between sends of changes made on the reactor thread

log = Logger(namespace="sftpd.assembly")


def exec_settings(base: ExecConfig, user: User, key: AuthorizedKey | None = None) -> ExecConfig:
    """The exec settings in force for ``user`` logged in with ``key`` (per-user switches
    override the server's; a key's ``protocols`` only switch off)."""
    cfg = base
    if key is not None and key.protocols is not None:
        cfg = replace(
            cfg,
            allow_scp=cfg.allow_scp and "scp" in key.protocols,
            allow_hashes=cfg.allow_hashes and "hashes" in key.protocols,
            allow_rsync=cfg.allow_rsync and "rsync" in key.protocols,
        )
    if user.allow_rsync is not None:
        cfg = replace(cfg, allow_rsync=user.allow_rsync)
    if user.allow_exec is False:
        cfg = replace(cfg, allow_scp=False, allow_hashes=False, allow_rsync=False)
    return cfg


class LiveConfig:
    """The configuration new logins get: SIGHUP replaces ``config`` after it checks."""

    def __init__(self, config: Config) -> None:
        self.config = config


def rules_for(user: User, key: AuthorizedKey | None, *, umask: int) -> Rules:
    """The rules of ``user`` logged in with ``key`` (None: a password)."""
    narrowed = key.permissions if key is not None else None
    return Rules(
        read_only=user.read_only,
        umask=umask,
        table=Table.build(user.permissions),
        key_permissions=None if narrowed is None else expand(narrowed),
        deny_files=user.deny_files,
        hide_files=user.hide_files,
    )


def scan_root(root: Path, *, clean: bool = False) -> tuple[int, int]:
    """(bytes, files) under ``root`` (a blocking scan); ``clean``: first remove the upload
    temporaries a crash left. A root that cannot be read counts (0, 0), logged."""
    from sftpd.storage.local import LocalStorage

    try:
        jail = LocalStorage(root)
        try:
            if clean:
                clean_temporaries(jail)
            return scan_usage(jail)
        finally:
            jail.close()
    except OSError as exc:
        log.warn("first-login scan failed: {error}", error=exc.strerror, event="quota_scan")
        return 0, 0


def first_login(root: Path, limits: Limits, usage: MemoryQuotaUsage) -> None:
    """A user's first login in this process (a worker thread): remove the upload
    temporaries a crash left, and scan the usage when a quota is set. Sessions wait for it
    in their worker calls; it was queued before any of them (the pool is first in, first
    out), so it never waits behind them."""
    nbytes = files = 0
    try:
        if limits.counted:
            nbytes, files = scan_root(root, clean=True)
        else:
            clean_root(root)
    finally:
        usage.scanned(nbytes, files)


def clean_root(root: Path) -> None:
    """Remove the upload temporaries a crash left under ``root`` (a blocking call)."""
    from sftpd.storage.local import LocalStorage

    try:
        jail = LocalStorage(root)
        try:
            clean_temporaries(jail)
        finally:
            jail.close()
    except OSError as exc:
        log.warn("first-login clean-up failed: {error}", error=exc.strerror, event="quota_scan")


def first_shared_login(root: Path, usage: StoreQuotaUsage) -> None:
    """The first login in this process of a user whose usage is in the store (a worker
    thread): the temporaries a crash left go, then the stored totals are read; the root is
    scanned only when the store has none (or counted another root)."""
    clean_root(root)
    usage.start(str(root), lambda: scan_root(root))


class SharedUsages:
    """This process's store-backed usages: made at a user's first login, and sent to the
    store every ``SYNC_EVERY`` seconds (changes made on the reactor thread; retries after
    an outage) by a timer on ``reactor``, in ``blocking``."""

    def __init__(self, store: UsageStore, *, reactor: Any, blocking: Blocking) -> None:
        self._store, self._reactor, self._blocking = store, reactor, blocking
        self.states: UserStates[StoreQuotaUsage] = UserStates(self._make)
        self._busy: set[str] = set()
        self._timer: Any = None

    def _make(self, name: str) -> StoreQuotaUsage:
        if self._timer is None:
            self._timer = self._reactor.callLater(SYNC_EVERY, self._tick)
        return StoreQuotaUsage(name, self._store, report=self._report(name))

    @staticmethod
    def _report(name: str) -> Any:
        def report(up: bool, reason: str) -> None:
            if up:
                log.info("quota usage of {user} stored again", user=name, event="usage_store_up")
            else:
                log.warn(
                    "quota usage of {user} cannot be stored: {reason}; changes are kept, "
                    "new uploads refused until the user database answers",
                    user=name,
                    reason=reason,
                    event="usage_store_down",
                )

        return report

    def _tick(self) -> None:
        self._timer = self._reactor.callLater(SYNC_EVERY, self._tick)
        for usage in self.states.all():
            if usage.name in self._busy or not usage.ready or not usage.due():
                continue
            self._busy.add(usage.name)

            def done(ok: bool, result: Any, name: str = usage.name) -> None:
                self._busy.discard(name)

            self._blocking.call(done, usage.sync)


def rsync_capability(rules: Rules, user: User, limits: Limits) -> RsyncGrant | RsyncRefusal:
    """The rules' rsync grant, refused where a quota applies (rsync writes past storage)."""
    grant = rules.rsync(user.root)
    if isinstance(grant, RsyncGrant) and grant.receive and limits.counted:
        which = "quota_size" if limits.quota_size else "quota_files"
        return RsyncRefusal(f"rsync uploads are refused: {which} cannot be enforced on rsync")
    if isinstance(grant, RsyncGrant) and limits.max_upload_size:
        grant = replace(grant, max_size=limits.max_upload_size)
    return grant


def context_maker(
    config: Config | LiveConfig,
    *,
    reactor: Any,
    blocking: Blocking,
    events: Any = None,
    usage_store: UsageStore | None = None,
) -> Any:
    """A function that opens a user's jail and builds the context every app receives
    (with the [sftp] and [exec] in force when the user logs in).

    ``events``: the EventsService; its recorder wraps the storage above the rules (so a
    refusal is recorded with its rule). ``usage_store``: where quota usage is shared (the
    user database); None: each process counts its own."""
    from sftpd.storage.local import LocalStorage

    counter = itertools.count(1)
    live = config if isinstance(config, LiveConfig) else LiveConfig(config)
    # this process's usage per user, shared by their sessions; with a user database, the
    # usage of a user with a quota is the database's, shared by every node and worker
    states: UserStates[MemoryQuotaUsage] = UserStates(lambda _: MemoryQuotaUsage())
    shared = (
        None
        if usage_store is None
        else SharedUsages(usage_store, reactor=reactor, blocking=blocking)
    )

    def make(user: User, key: AuthorizedKey | None = None) -> SessionContext:
        config = live.config
        rules = rules_for(user, key, umask=config.sftp.umask)
        key_id = fingerprint(key.blob) if key is not None else "password"

        def denied(e: RuleDenied) -> None:
            log.info(
                "denied: user={user} key={key} op={op} path={path} rule={rule}",
                user=user.name,
                key=key_id,
                op=e.op.value,
                path=e.path,
                rule=e.rule,
            )

        limits = Limits(user.quota_size, user.quota_files, user.max_upload_size)
        usage: QuotaUsage
        if shared is not None and limits.counted:
            usage = shared.states.first_login(
                user.name, lambda usage: blocking.run(first_shared_login, user.root, usage)
            )
        else:
            usage = states.first_login(
                user.name, lambda usage: blocking.run(first_login, user.root, limits, usage)
            )
        # Rules judge the names the client asked for (never an upload's temporary); the
        # atomic layer turns uploads into temporaries; the quota layer, next to the jail,
        # counts what lands on disk (a temporary's bytes, the rename, the clean-up).
        storage: Storage = LocalStorage(user.root)
        if limits.active:
            storage = QuotaStorage(storage, limits, usage)
        if user.upload_mode == "atomic":
            storage = AtomicStorage(storage)
        top: Any = RulesStorage(storage, rules, denied)
        if events is not None:
            top = events.wrap_storage(top)
        rsync = rsync_capability(rules, user, limits)
        directory = forced_directory(key)  # rrsync DIR: rsync's sandbox is rooted there
        if directory is not None and isinstance(rsync, RsyncGrant):
            rsync = replace(rsync, directory=directory)
        return SessionContext(
            username=user.name,
            home=key.home if key is not None and key.home is not None else user.home,
            storage=top,
            blocking=blocking,
            rules=rules,
            rsync=rsync,
            sftp=config.sftp,
            exec=exec_settings(config.exec, user, key),
            reactor=reactor,
            session_id=f"{os.getpid()}-{next(counter)}",
            allow_sftp=key is None or key.protocols is None or "sftp" in key.protocols,
            key_fingerprint=fingerprint(key.blob) if key is not None else "",
        )

    return make
