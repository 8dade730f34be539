"""The gate in front of the SSH factory: refusals before any byte, counts, scores, PROXY."""

from __future__ import annotations

from typing import Any

from twisted.internet import address, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher

from sftpd.edge.config import DefenderConfig, EdgeConfig, ProxyConfig, UserEdge
from sftpd.edge.gate import Edge, EdgeConnection, EdgeFactory, Tracked, make_edge
from sftpd.edge.limits import LimitsConfig, Startups
from sftpd.edge.networks import Networks
from sftpd.edge.proxy import ProxyProtocol

BANNER = b"SSH-2.0-sftpd\r\n"


class FakeSsh(Protocol):
    edge: EdgeConnection | None = None

    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.transport.write(BANNER)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class FakeFactory(Factory):
    def __init__(self) -> None:
        self.built: list[tuple[Any, FakeSsh]] = []
        self.started = 0

    def startFactory(self) -> None:
        self.started += 1

    def buildProtocol(self, addr: Any) -> FakeSsh:
        p = FakeSsh()
        self.built.append((addr, p))
        return p


def setup(**kw: Any) -> tuple[EdgeFactory, Edge, FakeFactory, task.Clock]:
    clock = task.Clock()
    cfg = EdgeConfig(
        limits=kw.pop("limits", LimitsConfig()),
        proxy=kw.pop("proxy", ProxyConfig()),
        defender=kw.pop("defender", DefenderConfig(safe_list=Networks(), threshold=3)),
    )
    edge = make_edge(cfg, clock=clock, randbelow=lambda n: 99)
    wrapped = FakeFactory()
    return EdgeFactory(wrapped, edge), edge, wrapped, clock


def connect(factory: EdgeFactory, host: str, port: int = 40000) -> tuple[Any, StringTransport]:
    peer = (address.IPv6Address if ":" in host else address.IPv4Address)("TCP", host, port)
    proto = factory.buildProtocol(peer)
    tcp = StringTransport(peerAddress=peer)
    if proto is not None:
        proto.makeConnection(tcp)
    return proto, tcp


def test_admitted_connection_reaches_ssh_with_its_edge_and_real_transport() -> None:
    factory, edge, wrapped, _ = setup()
    proto, tcp = connect(factory, "192.0.2.1")
    assert isinstance(proto, Tracked)
    ((_, ssh),) = wrapped.built
    assert tcp.value() == BANNER
    assert ssh.transport is tcp  # the real transport: the socket fast path still applies
    assert isinstance(ssh.edge, EdgeConnection) and ssh.edge.host == "192.0.2.1"
    proto.dataReceived(b"SSH-2.0-x\r\n")
    assert ssh.data == b"SSH-2.0-x\r\n"
    assert edge.limits.connections == 1
    proto.connectionLost(None)
    assert ssh.lost and edge.limits.connections == 0 and edge.limits.startups == 0


def test_a_banned_source_is_refused_before_any_byte() -> None:
    factory, edge, wrapped, _ = setup()
    for _ in range(3):
        proto, _ = connect(factory, "192.0.2.1")
        proto.inner.edge.auth_failed(invalid_user=False)
        proto.connectionLost(None)
    assert edge.defender is not None and edge.defender.is_banned("192.0.2.1")
    built = len(wrapped.built)
    proto, tcp = connect(factory, "192.0.2.1")
    assert proto is None and len(wrapped.built) == built  # the reactor closes the socket
    proto, tcp = connect(factory, "192.0.2.2")
    assert tcp.value() == BANNER


def test_a_silent_connection_scores_no_auth_and_a_tried_one_does_not() -> None:
    factory, edge, _, _ = setup(defender=DefenderConfig(safe_list=Networks(), threshold=2))
    d = edge.defender
    assert d is not None
    proto, _ = connect(factory, "192.0.2.1")
    proto.connectionLost(None)  # silent: 1 point
    proto, _ = connect(factory, "192.0.2.1")
    proto.inner.edge.auth_succeeded("publickey")  # clears the point
    proto.connectionLost(None)
    proto, _ = connect(factory, "192.0.2.1")
    proto.connectionLost(None)  # 1 point again
    assert not d.is_banned("192.0.2.1")
    proto, _ = connect(factory, "192.0.2.1")
    proto.inner.edge.auth_failed(invalid_user=False)  # 2: banned
    proto.connectionLost(None)  # tried: no extra no_auth point, and closed() is idempotent
    proto.inner.edge.closed()
    assert d.is_banned("192.0.2.1")
    assert edge.limits.connections == 0


def test_authentication_frees_a_startup_slot() -> None:
    factory, edge, _, _ = setup(
        limits=LimitsConfig(max_connections_per_source=0, max_startups=Startups(2, 100, 2))
    )
    a, _ = connect(factory, "192.0.2.1")
    _, b = connect(factory, "192.0.2.2")
    assert connect(factory, "192.0.2.1")[0] is None  # full, and its source holds the most
    a.inner.edge.auth_succeeded("password")
    assert connect(factory, "192.0.2.1")[0] is not None
    assert not b.disconnecting  # a free place: nobody evicted


def test_per_source_limit_at_the_gate() -> None:
    factory, _, _, _ = setup(limits=LimitsConfig(max_connections_per_source=2))
    assert connect(factory, "2001:db8::1")[0] is not None
    assert connect(factory, "2001:db8::2")[0] is not None
    assert connect(factory, "2001:db8::3")[0] is None
    assert connect(factory, "192.0.2.1")[0] is not None


def test_refusals_are_logged_at_most_once_per_period() -> None:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        factory, _, _, clock = setup(limits=LimitsConfig(max_connections_per_source=1))
        connect(factory, "192.0.2.1")
        for _ in range(300):
            connect(factory, "192.0.2.1")
        clock.advance(11)
        connect(factory, "192.0.2.1")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    lines = [e for e in seen if e.get("event") == "connection_refused"]
    assert [e["more"] for e in lines] == [0, 299]


def test_disabled_defender_scores_nothing() -> None:
    factory, edge, _, _ = setup(defender=DefenderConfig(enabled=False))
    assert edge.defender is None
    proto, _ = connect(factory, "192.0.2.1")
    proto.inner.edge.auth_failed(invalid_user=True)
    proto.connectionLost(None)


def test_factory_start_and_stop_reach_the_ssh_factory() -> None:
    factory, _, wrapped, _ = setup()
    factory.doStart()
    assert wrapped.started == 1
    factory.doStop()


PROXIED = ProxyConfig(mode="required", allowed=Networks(["10.0.0.5"]))
V1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 22\r\n"


def test_required_proxy_refuses_other_peers_at_accept() -> None:
    factory, _, wrapped, _ = setup(proxy=PROXIED)
    assert connect(factory, "198.51.100.1")[0] is None
    assert wrapped.built == []


def test_behind_the_proxy_everything_sees_the_client() -> None:
    factory, edge, wrapped, _ = setup(proxy=PROXIED)
    proto, tcp = connect(factory, "10.0.0.5")
    assert isinstance(proto, ProxyProtocol) and tcp.value() == b""
    proto.dataReceived(V1 + b"SSH-2.0-x\r\n")
    ((addr, ssh),) = wrapped.built
    client = address.IPv4Address("TCP", "203.0.113.9", 51234)
    assert addr == client and ssh.transport.getPeer() == client
    assert ssh.edge is not None and ssh.edge.host == "203.0.113.9"
    assert ssh.data == b"SSH-2.0-x\r\n" and tcp.value() == BANNER
    assert edge.limits.source_count("203.0.113.9") == 1
    assert edge.limits.source_count("10.0.0.5") == 0
    proto.connectionLost(None)
    assert ssh.lost and edge.limits.connections == 0


def test_behind_the_proxy_a_banned_client_is_refused_and_the_proxy_never_banned() -> None:
    factory, edge, wrapped, _ = setup(proxy=PROXIED)
    for _ in range(3):
        proto, _ = connect(factory, "10.0.0.5")
        proto.dataReceived(V1)
        proto.inner.conn.auth_failed(invalid_user=False)
        proto.connectionLost(None)
    d = edge.defender
    assert d is not None and d.is_banned("203.0.113.9") and not d.is_banned("10.0.0.5")
    built = len(wrapped.built)
    proto, tcp = connect(factory, "10.0.0.5")
    proto.dataReceived(V1 + b"SSH-2.0-x\r\n")
    assert tcp.disconnecting and tcp.value() == b"" and len(wrapped.built) == built
    proto.connectionLost(None)
    # health checks (LOCAL) close silently again and again: the proxy is never scored
    for _ in range(10):
        proto, _ = connect(factory, "10.0.0.5")
        proto.dataReceived(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
        proto.connectionLost(None)
    assert not d.is_banned("10.0.0.5")


def test_optional_proxy_lets_direct_clients_in_but_not_their_headers() -> None:
    factory, _, wrapped, _ = setup(
        proxy=ProxyConfig(mode="optional", allowed=Networks(["10.0.0.5"]))
    )
    proto, tcp = connect(factory, "198.51.100.1")
    assert tcp.value() == BANNER
    proto.dataReceived(V1)
    assert tcp.disconnecting
    ((_, ssh),) = wrapped.built
    proto.connectionLost(None)
    assert ssh.lost and ssh.data == b""


def test_with_the_real_ssh_factory_behind_a_proxy(tmp_path: Any) -> None:
    """The real SSH transport behind the gate: its banner after the header, its connection
    log line with the client's address, its transport the PROXY wrapper."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.conch.ssh import keys

    from sftpd.assembly import build_factory
    from sftpd.config.model import Config, UserConfig

    config = Config(users=(UserConfig(name="alice", root=tmp_path, authorized_keys=()),))
    clock = task.Clock()
    ssh = build_factory(
        config,
        reactor=clock,
        blocking=None,  # type: ignore[arg-type]
        auth_blocking=None,  # type: ignore[arg-type]
        host_keys={b"ssh-ed25519": keys.Key(ed25519.Ed25519PrivateKey.generate())},
        dummy_hash=b"x",
    )
    edge = make_edge(EdgeConfig(proxy=PROXIED), clock=clock)
    factory = EdgeFactory(ssh, edge)
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        proto, tcp = connect(factory, "10.0.0.5")
        assert tcp.value() == b""
        proto.dataReceived(V1)
        assert tcp.value().startswith(b"SSH-2.0-")
        t = proto.inner.inner
        assert t.edge.host == "203.0.113.9" and t.transport is proto
        proto.connectionLost(None)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    opened = [e for e in seen if e.get("event") == "connection_open"]
    assert [e["peer"] for e in opened] == ["203.0.113.9:51234"]
    assert edge.limits.connections == 0


GATE_SCRIPT = """
import sys
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from sftpd.edge.config import DefenderConfig, EdgeConfig
from sftpd.edge.gate import EdgeFactory, make_edge
from sftpd.edge.networks import Networks

class Banner(Protocol):
    def connectionMade(self):
        self.transport.write(b"SSH-2.0-test\\r\\n")

cfg = EdgeConfig(defender=DefenderConfig(block_list=Networks(["127.0.0.1"])))
port = reactor.listenTCP(0, EdgeFactory(Factory.forProtocol(Banner), make_edge(cfg, clock=reactor)),
                         interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.callLater(20, reactor.stop)
reactor.run()
"""


def test_refused_sockets_are_closed_by_the_reactor_before_any_byte() -> None:
    """Real sockets: a refused source reads EOF at once; another source reads the banner."""
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", GATE_SCRIPT], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        refused = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert refused.recv(100) == b""
        ok = socket.socket()
        ok.settimeout(10)
        ok.bind(("127.0.0.2", 0))
        ok.connect(("127.0.0.1", port))
        assert ok.recv(100) == b"SSH-2.0-test\r\n"
        refused.close()
        ok.close()
    finally:
        proc.kill()
        proc.wait()


def test_proxy_refusals_are_counted_and_throttled_by_the_edge() -> None:
    events: list[tuple[str, Any]] = []
    clock = task.Clock()
    cfg = EdgeConfig(proxy=ProxyConfig(mode="optional", allowed=Networks(["10.0.0.5"])))
    edge = make_edge(cfg, clock=clock, on_event=lambda n, f: events.append((n, f)))
    factory = EdgeFactory(FakeFactory(), edge)
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        for _ in range(50):
            proto, _ = connect(factory, "198.51.100.1")
            proto.dataReceived(V1)
            proto.connectionLost(None)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    # each one was admitted as a direct client and left without logging in: after 15
    # (threshold, score_no_auth 1) the defender bans it, and it is refused at accept
    reasons = [f.get("reason") for n, f in events if n == "connection_refused"]
    assert reasons == ["proxy_header_not_allowed"] * 15 + ["banned"] * 35
    assert [n for n, _ in events].count("source_banned") == 1
    lines = [e["reason"] for e in seen if e.get("event") == "connection_refused"]
    assert lines == ["proxy_header_not_allowed", "banned"]
    assert edge.limits.connections == 0


def test_ssh_factory_declining_does_not_score() -> None:
    class Declines(FakeFactory):
        def buildProtocol(self, addr: Any) -> Any:
            return None

    clock = task.Clock()
    edge = make_edge(
        EdgeConfig(defender=DefenderConfig(safe_list=Networks(), threshold=1)), clock=clock
    )
    factory = EdgeFactory(Declines(), edge)
    assert connect(factory, "192.0.2.1")[0] is None
    assert edge.defender is not None and not edge.defender.is_banned("192.0.2.1")
    assert edge.limits.connections == 0


def test_at_full_a_newcomer_evicts_a_flooding_connection_closed_counted_logged() -> None:
    events: list[tuple[str, Any]] = []
    clock = task.Clock()
    cfg = EdgeConfig(
        limits=LimitsConfig(max_connections_per_source=0, max_startups=Startups(10, 100, 10)),
        defender=DefenderConfig(safe_list=Networks(), threshold=1),
    )
    edge = make_edge(cfg, clock=clock, on_event=lambda n, f: events.append((n, f)))
    factory = EdgeFactory(FakeFactory(), edge)
    flood = [connect(factory, "192.0.2.66", 40000 + i) for i in range(10)]
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        legit, legit_tcp = connect(factory, "198.51.100.7")
        assert legit is not None and legit_tcp.value() == BANNER
        oldest, oldest_tcp = flood[0]
        assert oldest_tcp.disconnecting and oldest.conn.evicted  # aborted, not just counted
        assert not any(tcp.disconnecting for _, tcp in flood[1:])
        admitted = 0
        for i in range(30):  # two more flooding sources: they evict, and each other, in turn
            admitted += connect(factory, f"203.0.113.{i % 2}")[0] is not None
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert not legit_tcp.disconnecting  # the flooding sources always held more than it
    assert [edge.limits.startup_count(h) for h in ("192.0.2.66", "203.0.113.0")] == [3, 3]
    assert admitted == 6  # 203.0.113.0 and .1 at 3 each: then they hold the most
    reasons = [f["reason"] for n, f in events if n == "connection_refused"]
    assert reasons.count("evicted") == 1 + admitted
    assert reasons.count("max_startups") == 30 - admitted
    lines = [e for e in seen if e.get("event") == "connection_evicted"]
    assert len(lines) == 1 and lines[0]["peer"] == "192.0.2.66" and lines[0]["held"] == 10
    assert edge.limits.startups == 10 and edge.limits.connections == 10
    oldest.connectionLost(None)  # the reactor's close of the evicted one: no double count
    assert edge.limits.startups == 10 and edge.limits.connections == 10
    assert edge.defender is not None  # it never tried to log in: score_no_auth (threshold 1)
    assert edge.defender.is_banned("192.0.2.66") and not edge.defender.is_banned("198.51.100.7")


def test_an_evicted_connection_gives_back_the_session_it_took() -> None:
    factory, edge, _, _ = setup(
        limits=LimitsConfig(max_connections_per_source=0, max_startups=Startups(1, 100, 1))
    )
    first, tcp = connect(factory, "192.0.2.1")
    rules = UserEdge(max_sessions=1)
    assert first.inner.edge.login("alice", rules) is None  # checked, success not yet logged
    assert connect(factory, "192.0.2.2")[0] is not None  # evicts the first
    assert tcp.disconnecting
    first.connectionLost(None)
    assert edge.sessions.count("alice") == 0


def test_eviction_behind_a_proxy_aborts_the_tcp_connection() -> None:
    clock = task.Clock()
    cfg = EdgeConfig(
        limits=LimitsConfig(max_connections_per_source=0, max_startups=Startups(1, 100, 1)),
        proxy=ProxyConfig(mode="required", allowed=Networks(["10.0.0.5"])),
    )
    factory = EdgeFactory(FakeFactory(), make_edge(cfg, clock=clock))
    first, tcp = connect(factory, "10.0.0.5")
    first.dataReceived(b"PROXY TCP4 192.0.2.1 10.0.0.11 5000 22\r\n")
    assert tcp.value() == BANNER and not tcp.disconnecting
    second, tcp2 = connect(factory, "10.0.0.5")
    second.dataReceived(b"PROXY TCP4 192.0.2.2 10.0.0.11 5001 22\r\n")
    assert tcp.disconnecting and not tcp2.disconnecting


def test_a_login_checked_after_eviction_takes_no_session() -> None:
    """The password check of an evicted connection can finish after its close (bcrypt
    runs in a thread): it must not take a max_sessions place that nothing would give back."""
    factory, edge, _, _ = setup(
        limits=LimitsConfig(max_connections_per_source=0, max_startups=Startups(1, 100, 1))
    )
    first, tcp = connect(factory, "192.0.2.1")
    assert connect(factory, "192.0.2.2")[0] is not None  # evicts the first
    rules = UserEdge(max_sessions=1)
    assert first.inner.edge.login("alice", rules) == "connection closed"  # before the close
    first.connectionLost(None)
    assert first.inner.edge.login("alice", rules) == "connection closed"  # and after it
    assert edge.sessions.count("alice") == 0
    assert edge.sessions.open("alice", 1)  # the user can still log in elsewhere
