"""PROXY protocol v1/v2 at the byte level, and the wrapper's modes with StringTransport."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from twisted.internet import address, task
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport

from sftpd.edge.networks import Networks
from sftpd.edge.proxy import V2_MAX, BadHeader, Header, HeaderReader, NoHeader, ProxyProtocol

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"
V1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 22\r\n"


def v2(cmd: int = 1, fam: int = 0x11, body: bytes | None = None, version: int = 2) -> bytes:
    if body is None:
        if fam in (0x21, 0x22):
            body = bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 40000, 22)
        else:
            body = bytes([203, 0, 113, 9, 10, 0, 0, 1]) + struct.pack("!HH", 40000, 22)
    return SIG + bytes([(version << 4) | cmd, fam]) + struct.pack("!H", len(body)) + body


def feed_all(data: bytes) -> Header | NoHeader | None:
    return HeaderReader().feed(data)


# The reader, byte by byte.


def test_v1_tcp4_with_the_client_banner_behind() -> None:
    got = feed_all(V1 + BANNER)
    assert isinstance(got, Header)
    assert got.source == address.IPv4Address("TCP", "203.0.113.9", 51234)
    assert got.destination == address.IPv4Address("TCP", "10.0.0.1", 22)
    assert got.rest == BANNER


def test_v1_tcp6() -> None:
    got = feed_all(b"PROXY TCP6 2001:db8::9 2001:db8::1 40000 22\r\n")
    assert isinstance(got, Header)
    assert got.source == address.IPv6Address("TCP", "2001:db8::9", 40000)


@pytest.mark.parametrize("header", [V1, v2(), v2(fam=0x21), b"PROXY UNKNOWN\r\n"])
def test_headers_fed_one_byte_at_a_time(header: bytes) -> None:
    r = HeaderReader()
    for i in range(len(header) - 1):
        assert r.feed(header[i : i + 1]) is None, i
    got = r.feed(header[-1:])
    assert isinstance(got, Header) and got.rest == b""


def test_split_header_delivers_exactly_the_rest() -> None:
    for header in (V1, v2(), v2(fam=0x21)):
        r = HeaderReader()
        data = header + BANNER
        got = None
        fed = 0
        while got is None:
            got = r.feed(data[fed : fed + 3])
            fed += 3
        assert isinstance(got, Header)
        assert got.rest + data[fed:] == BANNER
        assert got.source is not None and got.source.port == (51234 if header == V1 else 40000)


def test_v2_tcp4_and_tcp6() -> None:
    got = feed_all(v2() + BANNER)
    assert isinstance(got, Header)
    assert got.source == address.IPv4Address("TCP", "203.0.113.9", 40000)
    assert got.rest == BANNER
    got6 = feed_all(v2(fam=0x21))
    assert isinstance(got6, Header)
    assert got6.source == address.IPv6Address("TCP", "0:0:0:0:0:0:0:1", 40000)


def test_v2_with_tlvs_after_the_addresses() -> None:
    body = bytes([203, 0, 113, 9, 10, 0, 0, 1]) + struct.pack("!HH", 1, 22)
    body += b"\x05" + struct.pack("!H", 8) + b"uniqueid"  # PP2_TYPE_UNIQUE_ID
    got = feed_all(v2(body=body) + BANNER)
    assert isinstance(got, Header) and got.rest == BANNER
    assert got.source is not None and got.source.port == 1


@pytest.mark.parametrize(
    "header", [v2(cmd=0, fam=0x00, body=b""), v2(cmd=0), b"PROXY UNKNOWN\r\n", v2(fam=0x00)]
)
def test_local_and_unknown_use_the_connection_peer(header: bytes) -> None:
    got = feed_all(header + BANNER)
    assert isinstance(got, Header) and got.source is None and got.rest == BANNER


def test_plain_ssh_banner_is_no_header() -> None:
    assert feed_all(BANNER) == NoHeader(BANNER)
    assert HeaderReader().feed(b"S") == NoHeader(b"S")
    r = HeaderReader()
    assert r.feed(b"") is None
    assert r.feed(b"PRO") is None
    assert r.feed(b"XZ") == NoHeader(b"PROXZ")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"PROXY TCP4 203.0.113.9 10.0.0.1 51234\r\n", "malformed v1"),
        (b"PROXY TCP4 203.0.113.9 10.0.0.1 port 22\r\n", "malformed v1"),
        (b"PROXY TCP4 not-an-ip 10.0.0.1 1 22\r\n", "not an IP"),
        (b"PROXY TCP4 2001:db8::1 10.0.0.1 1 22\r\n", "out of range"),
        (b"PROXY TCP4 203.0.113.9 10.0.0.1 99999 22\r\n", "out of range"),
        (b"PROXY HTTP/1.1 a b 1 2\r\n", "malformed v1"),
        (b"PROXY " + b"9" * 200, "longer than 107"),
        (b"PROXY TCP4 203.0.113.9 10.0.0.1 1 22" + b" " * 80 + b"\r\n", "longer than 107"),
        (v2(version=1), "unknown version"),
        (v2(cmd=7), "malformed v2"),
        (v2(fam=0x11, body=b"\x01\x02"), "malformed v2"),
        (v2(fam=0x12), "not a TCP"),  # UDP
        (v2(fam=0x31, body=bytes(216)), "not a TCP"),  # UNIX
        (v2(fam=0x41), "malformed v2"),
        (SIG + b"\x21\x11" + struct.pack("!H", V2_MAX), "at most"),
    ],
)
def test_bad_headers_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(BadHeader, match=why):
        feed_all(data)


def test_oversize_v2_is_refused_before_it_is_read() -> None:
    r = HeaderReader()
    with pytest.raises(BadHeader):
        r.feed(SIG + b"\x21\x11\xff\xff")  # 65 KiB announced, nothing else sent


def test_garbage_is_not_a_header() -> None:
    assert isinstance(feed_all(b"\x00\xff garbage"), NoHeader)
    assert isinstance(feed_all(b"GET / HTTP/1.1\r\n"), NoHeader)


# The wrapper.


class Inner(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.transport.write(b"SSH-2.0-sftpd\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class Run:
    def __init__(self, role: str, *, admit: bool = True, peer: str = "10.0.0.5") -> None:
        self.clock = task.Clock()
        self.started: list[Any] = []
        self.inner = Inner()

        def start(addr: Any) -> Any:
            self.started.append(addr)
            return self.inner if admit else None

        self.proto = ProxyProtocol(role, start, clock=self.clock, timeout=5)
        self.tcp = StringTransport(peerAddress=address.IPv4Address("TCP", peer, 40001))
        self.proto.makeConnection(self.tcp)

    @property
    def closed(self) -> bool:
        return bool(self.tcp.disconnecting)


def test_required_header_then_banner_and_the_real_peer() -> None:
    r = Run("required")
    assert r.tcp.value() == b"" and r.started == []  # nothing sent before the header
    r.proto.dataReceived(V1[:10])
    r.proto.dataReceived(V1[10:] + BANNER[:4])
    assert r.started == [address.IPv4Address("TCP", "203.0.113.9", 51234)]
    assert r.tcp.value() == b"SSH-2.0-sftpd\r\n"
    r.proto.dataReceived(BANNER[4:])
    assert r.inner.data == BANNER
    assert r.inner.transport is r.proto
    assert r.proto.getPeer() == address.IPv4Address("TCP", "203.0.113.9", 51234)
    assert r.proto.getHost() == address.IPv4Address("TCP", "10.0.0.1", 22)
    r.proto.write(b"more")
    assert r.tcp.value().endswith(b"more")
    assert not r.closed
    r.proto.connectionLost(None)  # type: ignore[arg-type]
    assert r.inner.lost


def test_required_without_header_is_closed_unanswered() -> None:
    r = Run("required")
    r.proto.dataReceived(BANNER)
    assert r.closed and r.tcp.value() == b"" and r.started == []


def test_required_silent_proxy_is_closed_after_the_timeout() -> None:
    r = Run("required")
    r.clock.advance(4.9)
    assert not r.closed
    r.clock.advance(0.2)
    assert r.closed and r.started == []


def test_garbage_header_closes() -> None:
    r = Run("required")
    r.proto.dataReceived(b"PROXY TCP4 nonsense\r\n")
    assert r.closed and r.started == [] and r.tcp.value() == b""
    assert r.clock.getDelayedCalls() == []


def test_oversize_header_closes() -> None:
    r = Run("optional")
    r.proto.dataReceived(SIG + b"\x21\x11\xff\xff")
    assert r.closed and r.started == []


def test_local_health_check_is_served_with_the_proxys_own_address() -> None:
    r = Run("required")
    r.proto.dataReceived(v2(cmd=0, fam=0, body=b""))
    assert r.started == [address.IPv4Address("TCP", "10.0.0.5", 40001)]
    assert r.tcp.value() == b"SSH-2.0-sftpd\r\n"


def test_optional_with_a_plain_ssh_banner() -> None:
    r = Run("optional")
    r.proto.dataReceived(BANNER)
    assert r.started == [address.IPv4Address("TCP", "10.0.0.5", 40001)]
    assert r.inner.data == BANNER and not r.closed
    assert r.clock.getDelayedCalls() == []


def test_optional_client_that_waits_for_the_server_gets_it_after_the_timeout() -> None:
    r = Run("optional")
    r.clock.advance(5)
    assert r.tcp.value() == b"SSH-2.0-sftpd\r\n"
    r.proto.dataReceived(v2())  # too late to be a header: it is SSH data now
    assert r.inner.data == v2()


def test_optional_with_a_header() -> None:
    r = Run("optional")
    r.proto.dataReceived(v2() + BANNER)
    assert r.started == [address.IPv4Address("TCP", "203.0.113.9", 40000)]
    assert r.inner.data == BANNER


def test_forbidden_peer_is_served_at_once_but_a_header_closes_it() -> None:
    r = Run("forbidden", peer="198.51.100.1")
    assert r.tcp.value() == b"SSH-2.0-sftpd\r\n"  # a direct client: served at once
    assert r.started == [address.IPv4Address("TCP", "198.51.100.1", 40001)]
    r.proto.dataReceived(V1 + BANNER)
    assert r.closed and r.inner.data == b""


def test_forbidden_peer_plain_client_is_passed_through() -> None:
    r = Run("forbidden", peer="198.51.100.1")
    r.proto.dataReceived(BANNER[:1])
    r.proto.dataReceived(BANNER[1:])
    assert r.inner.data == BANNER and not r.closed


def test_refused_by_admission_after_the_header() -> None:
    r = Run("required", admit=False)
    r.proto.dataReceived(V1 + BANNER)
    assert r.closed and r.tcp.value() == b""
    assert r.started == [address.IPv4Address("TCP", "203.0.113.9", 51234)]


def test_networks_contains() -> None:
    n = Networks(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"])
    assert n.contains("10.1.2.3") and n.contains("2001:db8:5::1") and n.contains("192.0.2.7")
    assert n.contains("::ffff:10.0.0.1")
    assert not n.contains("192.0.2.8") and not n.contains("/tmp/sock") and not n.contains("")


def test_twisted_private_names_we_rely_on_exist() -> None:
    """Twisted keeps the PROXY parsers in private modules: fail clearly when they move."""
    import importlib

    wanted = {
        "twisted.protocols.haproxy._v1parser": ["V1Parser"],
        "twisted.protocols.haproxy._v2parser": ["V2Parser"],
        "twisted.protocols.haproxy._exceptions": ["InvalidProxyHeader"],
    }
    for module, names in wanted.items():
        mod = importlib.import_module(module)
        for name in names:
            assert hasattr(mod, name), f"Twisted moved {module}.{name}; see sftpd/edge/proxy.py"
    from twisted.protocols.haproxy._v1parser import V1Parser
    from twisted.protocols.haproxy._v2parser import V2Parser

    assert callable(V1Parser.parse) and callable(V2Parser.parse)
    assert V2Parser.PREFIX == SIG
    info = V1Parser.parse(V1[:-2])
    assert (info.source, info.destination) == (
        address.IPv4Address("TCP", "203.0.113.9", 51234),
        address.IPv4Address("TCP", "10.0.0.1", 22),
    )


def test_after_a_refusal_no_byte_reaches_the_running_protocol() -> None:
    r = Run("forbidden", peer="198.51.100.1")
    r.proto.dataReceived(V1)
    r.proto.dataReceived(BANNER)  # a read already under way when the close was asked
    assert r.closed and r.inner.data == b""
