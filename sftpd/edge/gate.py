"""The gate in front of the SSH factory: block list, bans, limits, PROXY header, at accept."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IAddress, IProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.edge.config import EdgeConfig, ProxyConfig, UserEdge
from sftpd.edge.defender import BanStore, Defender, EventSink
from sftpd.edge.limits import Limits, Slot, UserSessions
from sftpd.edge.proxy import HEADER_TIMEOUT, ProxyProtocol

log = Logger(namespace="sftpd.edge")

REFUSAL_LOG_EVERY = 10.0  # seconds: one "connections refused" line per reason at most


class EdgeConnection:
    """One admitted connection, as the SSH layer reports on it.

    The userauth service calls ``auth_failed``/``auth_succeeded``; the gate calls
    ``attach`` with the transport and ``closed`` (idempotent). A connection that closes
    without success and without a single failed attempt scores ``score_no_auth``. When
    the limits evict it (a newcomer needs its max_startups place) its transport is
    aborted and ``on_evicted`` told.
    """

    __slots__ = (
        "_closed",
        "_defender",
        "_on_evicted",
        "_sessions",
        "_slot",
        "_transport",
        "evicted",
        "failures",
        "host",
        "method",
        "user",
    )

    def __init__(
        self,
        host: str,
        slot: Slot,
        defender: Defender | None,
        sessions: UserSessions | None = None,
        on_evicted: Callable[[EdgeConnection], None] | None = None,
    ) -> None:
        self.host = host
        self._slot = slot
        self._defender = defender
        self._sessions = sessions if sessions is not None else UserSessions()
        self._on_evicted = on_evicted
        self._transport: Any = None
        self._closed = False
        self.evicted = False
        self.failures = 0
        self.method: str | None = None
        self.user: str | None = None
        slot.on_evict = self._evict

    def attach(self, transport: Any) -> None:
        """The connection's transport, to abort it if it is evicted."""
        self._transport = transport
        if self.evicted:
            transport.abortConnection()

    def _evict(self, slot: Slot) -> None:
        self.evicted = True
        if self._transport is not None:  # first: the slot is given back already
            self._transport.abortConnection()
        if self._on_evicted is not None:
            try:
                self._on_evicted(self)
            except Exception:
                log.failure("reporting an evicted connection")

    def login(self, user: str, rules: UserEdge) -> str | None:
        """Before a login succeeds: None if ``user`` may log in from this connection's
        (real) address and has a session left (then one is taken until ``closed``),
        else why not."""
        if not rules.allows(self.host):
            return "source not in allowed_sources"
        if self._closed or self.evicted:
            # A check that finished after the connection went (evicted, or the client hung
            # up during the hash): a session taken now would never be given back.
            return "connection closed"
        if self.user is not None:
            return None  # this connection holds its session already
        if not self._sessions.open(user, rules.max_sessions):
            return f"max_sessions ({rules.max_sessions}) reached"
        self.user = user
        return None

    @property
    def authenticated(self) -> bool:
        return self.method is not None

    def auth_failed(self, invalid_user: bool = False) -> None:
        self.failures += 1
        if self._defender is not None:
            self._defender.auth_failed(self.host, invalid_user=invalid_user)

    def auth_succeeded(self, method: str) -> None:
        if self.method is None:
            self.method = method
            self._slot.authenticate()
            if self._defender is not None:
                self._defender.auth_succeeded(self.host)

    def cancel(self) -> None:
        """Give the slot back without scoring (the connection never really started)."""
        self._slot.release()

    def closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._slot.release()
        if self.user is not None:
            self._sessions.close(self.user)
        if self._defender is not None and self.method is None and not self.failures:
            self._defender.no_auth(self.host)


class Edge:
    """Decides, per new connection, whether it is served; one per server process."""

    def __init__(
        self,
        *,
        limits: Limits,
        defender: Defender | None,
        proxy: ProxyConfig,
        clock: IReactorTime,
        on_event: EventSink | None = None,
        header_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.limits = limits
        self.defender = defender
        self.proxy = proxy
        self.clock = clock
        self.header_timeout = header_timeout
        self._on_event = on_event
        self.sessions = UserSessions()  # per-user max_sessions, over this process
        self._quiet_until: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, host: str) -> EdgeConnection | None:
        """An EdgeConnection for a connection from ``host``, or None: close it unanswered."""
        reason = self.defender.refusal(host) if self.defender is not None else None
        if reason is None:
            got = self.limits.admit(host)
            if isinstance(got, Slot):
                return EdgeConnection(
                    host, got, self.defender, self.sessions, on_evicted=self._evicted
                )
            reason = got
        self.refused(host, reason)
        return None

    def refused(self, host: str, reason: str, detail: str = "") -> None:
        """Count a refused connection (event) and log it, one line per reason per period."""
        if self._on_event is not None:
            self._on_event("connection_refused", {"source": host, "reason": reason})
        if self._quiet(reason):
            return
        log.info(
            "connection refused: peer={peer} reason={reason}{detail} "
            "(and {more} more since the last line)",
            peer=host,
            reason=reason,
            detail=f" ({detail})" if detail else "",
            more=self._suppressed.pop(reason, 0),
            event="connection_refused",
        )

    def _evicted(self, conn: EdgeConnection) -> None:
        """The limits closed ``conn`` (unauthenticated) for a newcomer at max_startups full:
        counted as a refusal with reason "evicted", logged one line per period."""
        if self._on_event is not None:
            self._on_event("connection_refused", {"source": conn.host, "reason": "evicted"})
        if self._quiet("evicted"):
            return
        log.info(
            "connection evicted: peer={peer} reason=max_startups full ({full}), its source "
            "held the most unauthenticated connections ({held}); a newcomer takes its place "
            "(and {more} more since the last line)",
            peer=conn.host,
            full=self.limits.config.max_startups.full,
            held=self.limits.startup_count(conn.host) + 1,
            more=self._suppressed.pop("evicted", 0),
            event="connection_evicted",
        )

    def _quiet(self, reason: str) -> bool:
        """True (and counted) if a line for ``reason`` was logged less than a period ago:
        a flood must not become a log flood."""
        now = self.clock.seconds()
        if now < self._quiet_until.get(reason, 0.0):
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return True
        self._quiet_until[reason] = now + REFUSAL_LOG_EVERY
        return False


class Tracked(Protocol):
    """The protocol the reactor sees: hands everything to ``inner``, and reports the close.

    ``inner`` gets the real transport (so a socket fast path still works), and reads go
    straight to it (``dataReceived`` is rebound); only ``connectionLost`` passes here.
    """

    def __init__(self, inner: Any, conn: EdgeConnection) -> None:
        self.inner = inner
        self.conn = conn

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = True
        self.dataReceived = self.inner.dataReceived  # type: ignore[method-assign]
        self.inner.makeConnection(transport)
        self.conn.attach(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            self.inner.connectionLost(reason)
        finally:
            self.conn.closed()


class EdgeFactory(ServerFactory):
    """Wraps the SSH factory: ``reactor.listenTCP(port, EdgeFactory(ssh_factory, edge))``.

    A refused connection never reaches the SSH factory: ``buildProtocol`` returns None and
    the reactor closes the socket before a byte is sent (or, behind a proxy, once the
    header names the client). The SSH protocol built gets ``.edge``, its EdgeConnection.
    """

    def __init__(self, wrapped: Factory, edge: Edge) -> None:
        self.wrapped: Any = wrapped
        self.edge = edge

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        return str(self.wrapped.logPrefix())

    def _start(self, addr: IAddress) -> IProtocol | None:
        host = str(getattr(addr, "host", ""))
        conn = self.edge.admit(host)
        if conn is None:
            return None
        inner: Any = self.wrapped.buildProtocol(addr)
        if inner is None:
            conn.cancel()
            return None
        inner.edge = conn
        return Tracked(inner, conn)

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        proxy = self.edge.proxy
        if proxy.mode == "off":
            return self._start(addr)  # type: ignore[return-value]
        allowed = proxy.allowed.contains(str(getattr(addr, "host", "")))
        if not allowed and proxy.mode == "required":
            self.edge.refused(str(getattr(addr, "host", "")), "proxy_header_required")
            return None
        role = proxy.mode if allowed else "forbidden"
        return ProxyProtocol(
            role,
            self._start,
            clock=self.edge.clock,
            timeout=self.edge.header_timeout,
            refused=self.edge.refused,
        )


def make_edge(
    config: EdgeConfig,
    *,
    clock: IReactorTime,
    store: BanStore | None = None,
    on_event: EventSink | None = None,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> Edge:
    """The Edge for a config: the defender (unless disabled) never scores the PROXY senders."""
    defender = None
    if config.defender.enabled:
        defender = Defender(
            config.defender,
            clock=clock,
            store=store,
            on_event=on_event,
            exempt=config.proxy.allowed,
        )
    return Edge(
        limits=Limits(config.limits, randbelow=randbelow),
        defender=defender,
        proxy=config.proxy,
        clock=clock,
        on_event=on_event,
    )
