"""The one assembly point: config -> host keys, portal, algorithm policy, listeners, run."""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
import time
from typing import Any

from twisted.conch.ssh import keys
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from sftpd.apps.rsync.sandbox import RuntimeCache
from sftpd.auth.checkers import SERVER_SIG_ALGS
from sftpd.auth.realm import Realm
from sftpd.auth.setup import auth_parts
from sftpd.auth.stores.bans import ban_store_of
from sftpd.auth.totpstate import shared_totp_state
from sftpd.auth.users import StoreUnavailable, TomlUserStore, UserStore
from sftpd.config.model import Config
from sftpd.contexts import LiveConfig, context_maker
from sftpd.edge.gate import Edge, EdgeFactory, make_edge
from sftpd.log import announce_listening
from sftpd.reload import build_store, reload_on_hangup, watch_sessions
from sftpd.runtime.drain import Drain
from sftpd.runtime.listening import ListenError, bind_all
from sftpd.runtime.notify import sd_notify
from sftpd.runtime.processes import RUNTIME_DIR_ENV, snapshot_dir
from sftpd.runtime.threads import Blocking, WorkerPool
from sftpd.ssh.channel import SessionChannel
from sftpd.ssh.factory import Factory
from sftpd.ssh.policy import TransportPolicy
from sftpd.ssh.userauth import AuthSettings
from sftpd.ssh.window import WindowBudget, WindowPolicy
from sftpd.storage.atomic import is_own_temporary

log = Logger(namespace="sftpd.assembly")


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
    shared = getattr(users, "usage_store", None)  # quota usage in the user database
    realm = Realm(
        context_maker(
            live or config,
            reactor=reactor,
            blocking=blocking,
            events=events,
            usage_store=shared() if shared is not None else None,
        ),
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
        # a code once per server: across worker processes, and nodes sharing [users_db]
        totp_state=shared_totp_state(users, blocking, os.environ.get(RUNTIME_DIR_ENV)),
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
    factory.server_sig_algs = SERVER_SIG_ALGS  # what the public-key checker accepts
    return factory


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
        # The supervisor serves [metrics] listen: the workers' snapshots, summed.
        from sftpd.events.service import summed_metrics

        start_logging(log_format or config.server.log_format, config.server.log_level)
        return supervise(
            config,
            log_format=log_format,
            sockets=sockets,
            reactor=reactor,
            metrics=summed_metrics(config.events),
        )
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

        # With workers > 1 the supervisor serves [metrics] listen; each worker writes a
        # snapshot of its figures for it to sum (the audit log and hooks are the worker's).
        runtime_dir = os.environ.get(RUNTIME_DIR_ENV)
        shared = inherited and runtime_dir and config.events.metrics_listen is not None
        events = EventsService(
            reactor,
            config.events,
            serve_metrics=not inherited,
            snapshot_dir=snapshot_dir(runtime_dir) if shared and runtime_dir else None,
            temp=is_own_temporary,
        )
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
    # Bans live in [users_db] when there is one (every node and worker shares them; each
    # defender reloads them every TICK seconds), else in this process. The edge's events
    # flow out to the sinks and metrics; nothing flows back into the edge.
    edge = make_edge(
        config.edge,
        clock=reactor,
        store=ban_store_of(store, pool),
        on_event=events.edge_event if events is not None else None,
    )
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
