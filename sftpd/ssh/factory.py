"""The SSH factory and its per-connection transport: limits, timers, logs, the edge's hooks."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from twisted.conch.ssh import factory as ssh_factory
from twisted.conch.ssh import keys
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION
from twisted.cred.portal import Portal
from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.edge.alive import KEEPALIVE_REQUEST, IdleTimer, KeepAlive
from sftpd.edge.config import EdgeConfig
from sftpd.log import conn_fields
from sftpd.ssh.connection import Connection
from sftpd.ssh.policy import TransportPolicy
from sftpd.ssh.transport import ServerTransport
from sftpd.ssh.userauth import AuthSettings, UserAuthServer

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
            (name, b",".join(self.factory.server_sig_algs) if name == b"server-sig-algs" else value)
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
        # the signature algorithms the checkers accept for user keys (set by the assembly)
        self.server_sig_algs: tuple[bytes, ...] = ()
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
