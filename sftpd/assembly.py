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
from typing import Any

from twisted.conch.ssh import factory as ssh_factory
from twisted.conch.ssh import keys
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.apps.contract import SessionContext
from sftpd.apps.rsync.sandbox import RuntimeCache
from sftpd.auth.checkers import (
    SERVER_SIG_ALGS,
    PasswordChecker,
    PublicKeyChecker,
)
from sftpd.auth.realm import Realm
from sftpd.auth.users import TomlUserStore, User, UserStore
from sftpd.config.model import Config, ExecConfig
from sftpd.log import announce_listening, conn_fields
from sftpd.runtime.listening import ListenError, bind_all
from sftpd.runtime.threads import Blocking, WorkerPool
from sftpd.ssh.channel import SessionChannel
from sftpd.ssh.connection import Connection
from sftpd.ssh.transport import ServerTransport, TransportPolicy
from sftpd.ssh.userauth import AuthSettings, UserAuthServer
from sftpd.storage.rules import Rules, RulesStorage

log = Logger(namespace="sftpd.assembly")


class ConnectionTransport(ServerTransport):
    """The server transport plus connection open/close log lines."""

    _opened = 0.0
    conn_id = "-"
    factory: Factory

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

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.live.discard(self)
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
    ) -> None:
        self.portal = portal
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


def exec_settings(base: ExecConfig, user: User) -> ExecConfig:
    """The exec settings in force for ``user`` (per-user switches override the server's)."""
    cfg = base
    if user.allow_rsync is not None:
        cfg = replace(cfg, allow_rsync=user.allow_rsync)
    if user.allow_exec is False:
        cfg = replace(cfg, allow_scp=False, allow_hashes=False, allow_rsync=False)
    return cfg


def context_maker(config: Config, *, reactor: Any, blocking: Blocking, events: Any = None) -> Any:
    """A function that opens a user's jail and builds the context every app receives.

    ``events``: the EventsService; its recorder wraps the storage above the rules (so a
    refusal is recorded with its rule)."""
    from sftpd.storage.local import LocalStorage

    counter = itertools.count(1)

    def make(user: User) -> SessionContext:
        rules = Rules(read_only=user.read_only, umask=config.sftp.umask)
        storage: Any = RulesStorage(LocalStorage(user.root), rules)
        if events is not None:
            storage = events.wrap_storage(storage)
        return SessionContext(
            username=user.name,
            home=user.home,
            storage=storage,
            blocking=blocking,
            rules=rules,
            rsync=rules.rsync(user.root),
            sftp=config.sftp,
            exec=exec_settings(config.exec, user),
            reactor=reactor,
            session_id=f"{os.getpid()}-{next(counter)}",
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
    events: Any = None,
) -> Factory:
    """Assemble the SSH factory: portal (realm + checkers), keys, policy, limits.

    ``store``: where users come from; the configuration's ``[[users]]`` when None."""
    users = TomlUserStore.from_config(config.users) if store is None else store
    realm = Realm(
        context_maker(config, reactor=reactor, blocking=blocking, events=events),
        clock=reactor,
        max_sessions=config.server.max_sessions,
        make_channel=functools.partial(SessionChannel, rsync_runtimes=RuntimeCache()),
    )
    portal = Portal(realm)
    portal.registerChecker(
        # The unknown-user dummy hash costs what the store's hashes cost: the TOML store
        # reads that from its hashes once, here; a database store from its setting.
        PasswordChecker(users, auth_blocking, dummy_hash, rounds=users.password_cost)
    )
    portal.registerChecker(PublicKeyChecker(users))
    primes = load_primes(config)
    s = config.server
    factory = Factory(
        portal=portal,
        host_keys=host_keys,
        policy=transport_policy(config, have_moduli=primes is not None),
        auth_settings=AuthSettings(s.login_grace_time, s.max_auth_tries, s.auth_failure_delay),
        clock=reactor,
        primes=primes,
    )
    factory.login_events = events  # ssh/userauth.py reports logins to it (None: off)
    return factory


def ignore_hangup(reactor: Any, *also: Any) -> None:
    """Log SIGHUP (sent by admins and logrotate) instead of dying of it: no reload yet.

    ``also``: callables run on the reactor thread at each SIGHUP (the audit file's reopen)."""

    def logged() -> None:
        log.warn("SIGHUP received; reloading is not supported, carrying on", event="sighup")
        for call in also:
            call()

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(logged))


def adopt_sockets(
    factory: Factory, sockets: list[socket.socket], reactor: Any, log_format: str = "text"
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


def adopt(factory: Factory, fds: str, reactor: Any) -> list[IListeningPort]:
    """Accept on listening sockets inherited from the worker supervisor."""
    from sftpd.runtime.processes import decode_fds

    return [reactor.adoptStreamPort(fd, family, factory) for fd, family in decode_fds(fds)]


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
    sharing the listening sockets (each a full server on its own core). SIGHUP is logged
    and otherwise ignored (there is no reload yet)."""
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
    events = None
    if config.events.enabled:
        from sftpd.events.service import EventsService

        # With workers > 1 the figures are not summed across workers yet: no worker serves
        # [metrics] listen (they would all bind it), the audit log and hooks work as usual.
        events = EventsService(reactor, config.events, serve_metrics=not inherited)
        if inherited and config.events.metrics_listen is not None:
            log.warn("[metrics] listen is not served with workers > 1 yet", event="metrics_off")
    # before "listening on": from then on admins may send it
    ignore_hangup(reactor, *([events.reopen] if events is not None else []))
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
    store = TomlUserStore.from_config(config.users)
    factory = build_factory(
        config,
        reactor=reactor,
        blocking=pool,
        auth_blocking=auth_pool,
        host_keys=host_keys,
        store=store,
        events=events,
    )
    if inherited:
        ports = adopt(factory, inherited, reactor)
    else:
        assert sockets is not None
        ports = adopt_sockets(factory, sockets[0], reactor, log_format)

    def shutdown() -> Any:
        from twisted.internet import defer

        if events is not None:
            events.set_draining()  # /healthz answers 503 from now on
        waits = [defer.maybeDeferred(p.stopListening) for p in ports]
        for t in list(factory.live):
            t.loseConnection()
        return defer.DeferredList(waits)

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    reactor.addSystemEventTrigger("before", "shutdown", store.close)
    reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
    reactor.addSystemEventTrigger("after", "shutdown", auth_pool.stop)
    reactor.run()
    log.info("stopped")
    return 0
