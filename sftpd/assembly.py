"""The one assembly point: config -> host keys, portal, algorithm policy, listeners, run."""

from __future__ import annotations

import functools
import itertools
import os
import signal
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.conch.ssh import factory as ssh_factory
from twisted.conch.ssh import keys
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.apps.contract import SessionContext
from sftpd.apps.rsync.sandbox import RuntimeCache
from sftpd.auth.checkers import SERVER_SIG_ALGS
from sftpd.auth.realm import Realm
from sftpd.auth.setup import auth_parts
from sftpd.auth.stores.store import ChainUserStore, DbUserStore
from sftpd.auth.users import AuthorizedKey, StoreUnavailable, TomlUserStore, User, UserStore
from sftpd.config.model import Config, ExecConfig
from sftpd.edge.alive import KEEPALIVE_REQUEST, IdleTimer, KeepAlive
from sftpd.edge.config import EdgeConfig
from sftpd.edge.gate import Edge, EdgeFactory, make_edge
from sftpd.log import announce_listening, conn_fields
from sftpd.runtime.drain import Drain
from sftpd.runtime.listening import ListenError, bind_all
from sftpd.runtime.notify import sd_notify
from sftpd.runtime.threads import Blocking, WorkerPool
from sftpd.ssh.channel import SessionChannel
from sftpd.ssh.connection import Connection
from sftpd.ssh.hostkeys import fingerprint
from sftpd.ssh.policy import TransportPolicy
from sftpd.ssh.transport import ServerTransport
from sftpd.ssh.userauth import AuthSettings, UserAuthServer
from sftpd.ssh.window import WindowBudget, WindowPolicy
from sftpd.storage.atomic import AtomicStorage, clean_temporaries, is_own_temporary
from sftpd.storage.base import Storage
from sftpd.storage.permissions import Table, expand
from sftpd.storage.quota import Limits, MemoryQuotaUsage, QuotaStorage, UserStates, scan_usage
from sftpd.storage.rules import RsyncGrant, RsyncRefusal, RuleDenied, Rules, RulesStorage

log = Logger(namespace="sftpd.assembly")


class ConnectionTransport(ServerTransport):
    """The server transport plus connection open/close log lines."""

    _opened = 0.0
    conn_id = "-"
    factory: Factory
    edge: Any = None  # its EdgeConnection, set by the EdgeFactory
    _idle: IdleTimer | None = None
    _alive: KeepAlive | None = None

    def connectionMade(self) -> None:
        self._opened = time.monotonic()
        self.factory.live.add(self)
        log.info(
            "connection open: conn={conn} peer={peer} pid={pid}",
            pid=os.getpid(),
            event="connection_open",
            **conn_fields(self),
        )
        metrics = getattr(self.factory.login_events, "metrics", None)
        if metrics is not None:
            metrics.connection_opened()
        super().connectionMade()

    # -- dead sessions: idle_timeout and client_alive_interval, once logged in ----------

    def setService(self, service: Any) -> None:
        super().setService(service)
        if service.name == b"ssh-connection" and self._idle is None:
            cfg = self.factory.edge_config
            clock = self.factory.clock
            self._idle = IdleTimer(clock, cfg.idle_timeout, self._idle_out)
            self._alive = KeepAlive(
                clock,
                cfg.client_alive_interval,
                lambda: service.sendGlobalRequest(KEEPALIVE_REQUEST, b"", wantReply=1),
                self._dead,
            )
            self._idle.start()
            self._alive.start()

    def channel_data(self, incoming: bool) -> None:
        """CHANNEL_DATA went by (called by the connection service, both directions)."""
        if self._idle is not None:
            self._idle.touch()
        if incoming and self._alive is not None:
            self._alive.touch()

    def _idle_out(self) -> None:
        log.info(
            "idle timeout: conn={conn} peer={peer} seconds={seconds:g}",
            seconds=self.factory.edge_config.idle_timeout,
            event="idle_timeout",
            **conn_fields(self),
        )
        self.sendDisconnect(DISCONNECT_BY_APPLICATION, b"idle timeout")

    def _dead(self) -> None:
        log.info(
            "client alive timeout: conn={conn} peer={peer}",
            event="client_alive_timeout",
            **conn_fields(self),
        )
        self.sendDisconnect(DISCONNECT_BY_APPLICATION, b"client alive timeout")

    def connectionLost(self, reason: Failure | None = None) -> None:
        for timer in (self._idle, self._alive):
            if timer is not None:
                timer.stop()
        self.factory.live.discard(self)
        if self.factory.on_close is not None:
            self.factory.on_close()
        metrics = getattr(self.factory.login_events, "metrics", None)
        if metrics is not None:
            metrics.connection_closed()
        avatar = getattr(self, "avatar", None)
        user = getattr(getattr(avatar, "ctx", None), "username", None)
        log.info(
            "connection closed: conn={conn} peer={peer} duration={duration:.3f} "
            + ("user={user}" if user is not None else "preauth"),
            duration=time.monotonic() - self._opened,
            user=user,
            authenticated=user is not None,
            event="connection_close",
            **conn_fields(self),
        )
        super().connectionLost(reason)

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        # Conch advertises its host key algorithms; clients read server-sig-algs as the
        # signature algorithms accepted for *user* keys, so list exactly those.
        fixed = [
            (name, b",".join(SERVER_SIG_ALGS) if name == b"server-sig-algs" else value)
            for name, value in extensions
        ]
        super().sendExtInfo(fixed)


class Factory(ssh_factory.SSHFactory):  # type: ignore[misc]
    """SSHFactory with everything injected; ``buildProtocol`` applies the algorithm policy."""

    services = {b"ssh-userauth": UserAuthServer, b"ssh-connection": Connection}
    login_events: Any = None  # the EventsService (logins, connection metrics), or None

    def __init__(
        self,
        *,
        portal: Portal,
        host_keys: dict[bytes, keys.Key],
        policy: TransportPolicy,
        auth_settings: AuthSettings,
        clock: Any,
        primes: dict[int, list[tuple[int, int]]] | None = None,
        auth_methods: tuple[str, ...] = (),
        kbdint: Any = None,
        extra_auth_methods: dict[Any, bytes] | None = None,
        edge_config: EdgeConfig | None = None,
    ) -> None:
        # read by ssh.userauth: the methods offered in order, the keyboard-interactive
        # starter (name -> Deferred[Conversation]) and its credential interface
        self.auth_methods = auth_methods
        self.kbdint = kbdint
        self.extra_auth_methods = extra_auth_methods or {}
        self.portal = portal
        self.edge_config = edge_config if edge_config is not None else EdgeConfig()
        self.on_close: Any = None  # called after each connection closes (draining)
        self.privateKeys = host_keys
        self.publicKeys = {name: key.public() for name, key in host_keys.items()}
        self.primes = primes
        self.policy = policy
        self.auth_settings = auth_settings
        self.clock = clock
        self.live: set[ConnectionTransport] = set()
        self._conn_ids = itertools.count(1)
        self.key_algorithms = [
            alg for key in host_keys.values() for alg in key.supportedSignatureAlgorithms()
        ]

    def buildProtocol(self, addr: Any) -> ConnectionTransport:
        t = ConnectionTransport()
        t.factory = self
        t.conn_id = f"{os.getpid()}-{next(self._conn_ids)}"
        t.apply_policy(self.policy, self.key_algorithms)
        t.login_grace_time = self.auth_settings.login_grace_time  # runs from the TCP connect
        return t


def transport_policy(config: Config, *, have_moduli: bool) -> TransportPolicy:
    """The algorithm policy from [server]."""
    s = config.server
    return TransportPolicy(
        kex=s.kex_algorithms,
        ciphers=s.ciphers,
        macs=s.macs,
        host_key_algorithms=s.host_key_algorithms,
        version=s.banner,
        have_moduli=have_moduli,
        rekey_bytes=s.rekey_bytes,
        rekey_seconds=s.rekey_seconds,
    )


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


def first_login(root: Path, limits: Limits, usage: MemoryQuotaUsage) -> None:
    """A user's first login in this process (a worker thread): remove the upload
    temporaries a crash left, and scan the usage when a quota is set. Sessions wait for it
    in their worker calls; it was queued before any of them (the pool is first in, first
    out), so it never waits behind them."""
    from sftpd.storage.local import LocalStorage

    nbytes = files = 0
    try:
        jail = LocalStorage(root)
        try:
            clean_temporaries(jail)
            if limits.counted:
                nbytes, files = scan_usage(jail)
        finally:
            jail.close()
    except OSError as exc:
        log.warn("first-login scan failed: {error}", error=exc.strerror, event="quota_scan")
    finally:
        usage.scanned(nbytes, files)


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
    config: Config | LiveConfig, *, reactor: Any, blocking: Blocking, events: Any = None
) -> Any:
    """A function that opens a user's jail and builds the context every app receives
    (with the [sftp] and [exec] in force when the user logs in).

    ``events``: the EventsService; its recorder wraps the storage above the rules (so a
    refusal is recorded with its rule)."""
    from sftpd.storage.local import LocalStorage

    counter = itertools.count(1)
    live = config if isinstance(config, LiveConfig) else LiveConfig(config)
    states = UserStates()  # this process's usage per user, shared by their sessions

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
        return SessionContext(
            username=user.name,
            home=key.home if key is not None and key.home is not None else user.home,
            storage=top,
            blocking=blocking,
            rules=rules,
            rsync=rsync_capability(rules, user, limits),
            sftp=config.sftp,
            exec=exec_settings(config.exec, user, key),
            reactor=reactor,
            session_id=f"{os.getpid()}-{next(counter)}",
            allow_sftp=key is None or key.protocols is None or "sftp" in key.protocols,
            key_fingerprint=fingerprint(key.blob) if key is not None else "",
        )

    return make


def load_primes(config: Config) -> dict[int, list[tuple[int, int]]] | None:
    """Diffie-Hellman group-exchange primes from the configured moduli file, if any."""
    path = config.server.moduli_file
    if path is None:
        return None
    from twisted.conch.openssh_compat.primes import parseModuliFile

    primes: dict[int, list[tuple[int, int]]] = parseModuliFile(str(path))
    return primes or None


def build_factory(
    config: Config,
    *,
    reactor: Any,
    blocking: Blocking,
    auth_blocking: Blocking,
    host_keys: dict[bytes, keys.Key],
    dummy_hash: bytes | None = None,
    store: UserStore | None = None,
    live: LiveConfig | None = None,
    events: Any = None,
) -> Factory:
    """Assemble the SSH factory: portal (realm + checkers), keys, policy, limits.

    ``store``: where users come from; the configuration's ``[[users]]`` when None.
    ``live``: the holder SIGHUP updates ([exec], [sftp] for new logins)."""
    users = TomlUserStore.from_config(config.users) if store is None else store
    realm = Realm(
        context_maker(live or config, reactor=reactor, blocking=blocking, events=events),
        clock=reactor,
        max_sessions=config.server.max_sessions,
        make_channel=functools.partial(
            SessionChannel,
            rsync_runtimes=RuntimeCache(),
            window=WindowPolicy(
                config.server.max_window, WindowBudget(config.server.window_budget)
            ),
        ),
        methods=config.server.authentication_methods,
    )
    portal = Portal(realm)
    s = config.server
    parts = auth_parts(
        users,
        auth_blocking,
        methods=s.authentication_methods,
        trusted_cas=s.trusted_user_ca_keys,
        revoked_keys_file=s.revoked_keys_file,
        any_totp=any(u.totp_secret for u in config.users),
        dummy_hash=dummy_hash,
        now=time.time,
    )
    for checker in parts.checkers:
        portal.registerChecker(checker)
    primes = load_primes(config)
    factory = Factory(
        portal=portal,
        host_keys=host_keys,
        policy=transport_policy(config, have_moduli=primes is not None),
        auth_settings=AuthSettings(s.login_grace_time, s.max_auth_tries, s.auth_failure_delay),
        clock=reactor,
        primes=primes,
        auth_methods=parts.methods,
        kbdint=parts.kbdint,
        extra_auth_methods=parts.extra_auth_methods,
        edge_config=config.edge,
    )
    factory.login_events = events  # ssh/userauth.py reports logins to it (None: off)
    return factory


def build_store(config: Config, *, reactor: Any, blocking: Blocking) -> ChainUserStore:
    """The file's ``[[users]]`` then, with ``[users_db]``, the database (migrated here, at
    start; StoreUnavailable or ValueError if it cannot be opened or is too new)."""
    file_users = TomlUserStore.from_config(config.users)
    if config.users_db is None:
        return ChainUserStore(file_users)
    from sftpd.auth.stores.store import open_user_db

    db = open_user_db(config.users_db.resolved_url(), config.users_db.base)
    before, after = db.upgrade()
    if before != after:
        log.info(
            "user database schema upgraded from version {before} to {after}",
            before=before,
            after=after,
            event="db_upgraded",
        )
    both = sorted(file_users.names() & set(db.names()))
    for name in both:
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


RESTART_SECTIONS = ("server", "users_db")  # a change here is only read at start


def reload_config(live: LiveConfig, store: ChainUserStore, *, blocking: Blocking) -> Any:
    """SIGHUP: re-read the file; if it checks, new logins get its users, keys and [exec];
    otherwise log why and keep the running configuration. Returns a Deferred (for tests)."""
    from twisted.internet import defer

    from sftpd.config.model import load_config
    from sftpd.errors import ConfigError
    from sftpd.preflight import prepare

    old = live.config
    if old.source is None:
        log.warn("SIGHUP received; no configuration file to reload", event="sighup")
        return defer.succeed(False)
    source = old.source

    def read() -> tuple[Config | None, list[str], list[str]]:
        # In a worker thread: the file, the disk checks, the roots to create, the database.
        try:
            new = load_config(source)
            prepare(new)  # check as serve does, then create missing user roots
        except ConfigError as e:
            return None, str(e).splitlines(), []
        db_names = store.db.db.names() if store.db is not None else []
        return new, [], db_names

    d = blocking.run(read)

    def apply(found: tuple[Config | None, list[str], list[str]]) -> bool:
        new, problems, db_names = found
        both = sorted({u.name for u in new.users} & set(db_names)) if new is not None else []
        errors = problems + [f"user {n!r} is in the file and in [users_db]" for n in both]
        if errors or new is None:
            for line in errors:
                log.error("reload refused: {problem}", problem=line, event="reload_refused")
            log.error("reload refused; the running configuration is kept", event="reload_refused")
            return False
        for section in RESTART_SECTIONS:
            if getattr(new, section) != getattr(old, section):
                log.warn(
                    "reload: [{section}] changed; it takes effect at the next restart",
                    section=section,
                    event="reload_needs_restart",
                )
        live.config = replace(new, server=old.server, users_db=old.users_db)
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


def adopt_sockets(
    factory: Any, sockets: list[socket.socket], reactor: Any, log_format: str = "text"
) -> list[Any]:
    """Accept on sockets bound by the caller; print each bound address (port 0 = ephemeral).

    Twisted duplicates each descriptor, so the originals are closed here."""
    ports = []
    for s in sockets:
        p = reactor.adoptStreamPort(s.fileno(), s.family, factory)
        s.close()
        addr = p.getHost()
        announce_listening(addr.host, addr.port, log_format)
        ports.append(p)
    return ports


def adopt(factory: Any, fds: str, reactor: Any) -> list[IListeningPort]:
    """Accept on listening sockets inherited from the worker supervisor."""
    from sftpd.runtime.processes import decode_fds

    ports = []
    for fd, family in decode_fds(fds):
        ports.append(reactor.adoptStreamPort(fd, family, factory))
        os.close(fd)  # Twisted accepts on a duplicate: draining must close the socket
    return ports


def serve(
    config: Config,
    *,
    log_format: str | None = None,
    reactor: Any = None,
    sockets: list[list[socket.socket]] | None = None,
) -> int:
    """Run the server in the foreground until SIGINT/SIGTERM; return the exit code.

    ``sockets``: the listening sockets, one list per process, bound by the caller (so it
    can print credentials only once listening works); bound here when None. With
    ``workers > 1`` this process becomes a supervisor of that many worker processes
    sharing the listening sockets (each a full server on its own core). SIGHUP reloads
    the file's users, keys, [sftp] and [exec] for new logins (``reload_config``)."""
    from sftpd.log import start_logging
    from sftpd.runtime.processes import WORKER_FDS_ENV, supervise
    from sftpd.ssh.hostkeys import load_host_keys

    inherited = os.environ.get(WORKER_FDS_ENV)
    if inherited is None and config.server.workers > 1:
        return supervise(config, log_format=log_format, sockets=sockets)
    if inherited is None and sockets is None:
        try:
            sockets = bind_all(config.server.listen)
        except ListenError as exc:
            print(f"sftpd: {exc}", file=sys.stderr)
            return 1

    if reactor is None:
        from sftpd.runtime.reactor import default_reactor

        reactor = default_reactor()
    log_format = log_format or config.server.log_format
    live = LiveConfig(config)
    # Until the store exists, a SIGHUP is only logged; from "listening on" admins may send it.
    signal.signal(
        signal.SIGHUP,
        lambda *_: reactor.callFromThread(
            log.info, "SIGHUP received while starting; the file was just read"
        ),
    )
    events = None
    if config.events.enabled:
        from sftpd.events.service import EventsService

        # With workers > 1 the figures are not summed across workers yet: no worker serves
        # [metrics] listen (they would all bind it), the audit log and hooks work as usual.
        events = EventsService(
            reactor, config.events, serve_metrics=not inherited, temp=is_own_temporary
        )
        if inherited and config.events.metrics_listen is not None:
            log.warn("[metrics] listen is not served with workers > 1 yet", event="metrics_off")
    start_logging(log_format, config.server.log_level)
    if events is not None:
        events.start()
        reactor.addSystemEventTrigger("after", "shutdown", events.stop)
    pool = WorkerPool(reactor, max_threads=16, name="sftpd-storage")
    auth_pool = WorkerPool(reactor, max_threads=2, name="sftpd-bcrypt")
    if events is not None and events.metrics is not None:
        events.metrics.watch_worker_queue(pool.queued)
    if hasattr(reactor, "busy_poll"):
        reactor.busy_poll(
            config.server.busy_poll_us / 1e6,
            quiet=lambda: pool.idle() and auth_pool.idle(),
            processes=config.server.workers,
        )
    host_keys = load_host_keys(config.server.host_keys_dir)
    try:
        store = build_store(config, reactor=reactor, blocking=pool)
    except (StoreUnavailable, ValueError) as exc:
        print(f"sftpd: [users_db]: {exc}", file=sys.stderr, flush=True)
        pool.stop()
        auth_pool.stop()
        return 1
    reload_on_hangup(reactor, live, store, pool, *([events.reopen] if events is not None else []))
    if inherited:
        log.info("worker ready: pid={pid}", pid=os.getpid(), event="worker_ready")
    factory = build_factory(
        config,
        reactor=reactor,
        blocking=pool,
        auth_blocking=auth_pool,
        host_keys=host_keys,
        store=store,
        live=live,
        events=events,
    )
    if config.users_db is not None:
        watch_sessions(
            factory, store, reactor=reactor, every=max(config.users_db.cache_seconds, 0.5)
        )
    edge = make_edge(config.edge, clock=reactor)
    front = EdgeFactory(factory, edge)  # bans, limits, PROXY header: before any SSH byte
    if inherited:
        ports = adopt(front, inherited, reactor)
    else:
        assert sockets is not None
        ports = adopt_sockets(front, sockets[0], reactor, log_format)
    if edge.defender is not None:
        edge.defender.start()
    drain = run_drain(reactor, ports, factory, edge, config.edge.shutdown_grace)
    if not inherited:  # a worker's supervisor speaks to systemd for the whole service
        drain.on_draining = lambda: sd_notify("STOPPING=1")
        reactor.callWhenRunning(sd_notify, "READY=1")

    def shutdown() -> Any:
        from twisted.internet import defer

        if events is not None:
            events.set_draining()  # /healthz answers 503 from now on
        waits = [
            defer.maybeDeferred(p.stopListening) for p in ports if getattr(p, "connected", True)
        ]
        for t in list(factory.live):
            t.loseConnection()
        if edge.defender is not None:
            edge.defender.stop()
        return defer.DeferredList(waits)

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    reactor.addSystemEventTrigger("before", "shutdown", store.close)
    reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
    reactor.addSystemEventTrigger("after", "shutdown", auth_pool.stop)
    reactor.run()
    log.info("stopped")
    return 0


def run_drain(reactor: Any, ports: list[Any], factory: Factory, edge: Edge, grace: float) -> Drain:
    """SIGTERM drains (stop accepting, ``grace`` seconds for the sessions, then stop);
    a second SIGTERM, or SIGINT, stops at once."""
    from twisted.internet import defer

    def stop_accepting() -> Any:
        return defer.DeferredList(
            [defer.maybeDeferred(p.stopListening) for p in ports if getattr(p, "connected", True)]
        )

    drain = Drain(reactor, stop_accepting, lambda: len(factory.live), grace)
    factory.on_close = drain.connection_closed
    reactor.callWhenRunning(drain.install)  # after the reactor's own signal handlers
    return drain
