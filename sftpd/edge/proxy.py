"""HAProxy PROXY protocol v1/v2 in front of SSH: the real client address, only from proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import address
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger

# Twisted's parsers live in private modules: tests/test_edge_proxy.py checks these names.
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

log = Logger(namespace="sftpd.edge")

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE: bytes = V2Parser.PREFIX
V1_MAX = 107  # the spec's longest v1 line, CRLF included
V2_MAX = 16 + 2048  # fixed part + addresses and TLVs; HAProxy's own TLVs stay far below
HEADER_TIMEOUT = 5.0  # seconds a proxy may take to send its header


class BadHeader(Exception):
    """The bytes are a PROXY header that cannot be accepted; the text says why (for logs)."""


@dataclass(frozen=True)
class Header:
    """A complete header: ``source`` None for LOCAL/UNKNOWN (health checks: use the peer)."""

    source: address.IPv4Address | address.IPv6Address | None
    destination: address.IPv4Address | address.IPv6Address | None
    rest: bytes  # what followed the header: the client's first SSH bytes


@dataclass(frozen=True)
class NoHeader:
    """The stream does not start with a PROXY header; ``rest`` is everything read so far."""

    rest: bytes


def _checked(addr: IAddress | None, version: int) -> address.IPv4Address | address.IPv6Address:
    if not isinstance(addr, address.IPv4Address | address.IPv6Address) or addr.type != "TCP":
        raise BadHeader("not a TCP connection (only TCP4/TCP6 are accepted)")
    try:
        ip = ipaddress.ip_address(addr.host)
    except ValueError:
        raise BadHeader("address is not an IP address") from None
    if ip.version != version or not 0 <= addr.port <= 65535:
        raise BadHeader("address or port out of range for the declared family")
    return addr


def _family(addr: IAddress | None) -> int:
    return 6 if isinstance(addr, address.IPv6Address) else 4


class HeaderReader:
    """Sans-IO: feed the first bytes of a connection; learn whether a PROXY header leads.

    ``feed`` returns None while undecided, then a Header or NoHeader once; BadHeader for
    a header that is malformed, oversize, or of a kind sftpd does not accept.
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> Header | NoHeader | None:
        buf = self._buf = self._buf + data
        if not buf:
            return None
        if buf[:12] == V2_SIGNATURE[: len(buf)]:
            return self._v2(buf) if len(buf) >= 16 else None
        if buf[:6] == V1_SIGNATURE[: len(buf)]:
            return self._v1(buf) if len(buf) >= 6 else None
        return NoHeader(buf)

    def _v1(self, buf: bytes) -> Header | None:
        end = buf.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buf) >= V1_MAX:
                raise BadHeader(f"v1 header longer than {V1_MAX} bytes")
            return None
        line = buf[:end]
        if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
            # the spec's bare "PROXY UNKNOWN"; Twisted's parser wants more fields after it
            return Header(None, None, buf[end + 2 :])
        try:
            info = V1Parser.parse(line)
        except (InvalidProxyHeader, ValueError):
            raise BadHeader("malformed v1 header") from None
        rest = buf[end + 2 :]
        if info.source is None:
            return Header(None, None, rest)  # "PROXY UNKNOWN": use the connection's peer
        version = _family(info.source)
        return Header(_checked(info.source, version), _checked(info.destination, version), rest)

    def _v2(self, buf: bytes) -> Header | None:
        if buf[12] >> 4 != 2:
            raise BadHeader("v2 header with an unknown version")
        size = 16 + int.from_bytes(buf[14:16], "big")
        if size > V2_MAX:
            raise BadHeader(f"v2 header of {size} bytes; at most {V2_MAX} are accepted")
        if len(buf) < size:
            return None
        try:
            info = V2Parser.parse(buf[:size])
        except (InvalidProxyHeader, ValueError, KeyError):
            raise BadHeader("malformed v2 header") from None
        rest = buf[size:]
        if info.source is None:
            return Header(None, None, rest)  # LOCAL (health check) or UNSPEC: the peer
        version = _family(info.source)
        return Header(_checked(info.source, version), _checked(info.destination, version), rest)


Start = Callable[[IAddress], IProtocol | None]
# (peer host, reason token, detail for the log line)
Refused = Callable[[str, str, str], None]


def log_refused(host: str, reason: str, detail: str) -> None:
    log.info(
        "proxy header refused: peer={peer} reason={reason} ({detail})",
        peer=host,
        reason=reason,
        detail=detail,
        event="proxy_refused",
    )


class ProxyProtocol(Protocol):
    """Reads a PROXY header, then runs the protocol ``start`` returns as if directly connected.

    ``role`` is "required" (a header must come), "optional" (a header may come) or
    "forbidden" (this peer is not in proxy_allowed: a header closes the connection). With
    "forbidden" the downstream protocol starts at once; otherwise it starts, with the
    header's client address as ``getPeer()``, when the header has arrived: nothing is sent
    to the client before. ``start`` decides admission: None closes the connection.
    After the header this object is the downstream's transport, out of the data path
    (``dataReceived``/``write`` are rebound to the real ones).
    """

    def __init__(
        self,
        role: str,
        start: Start,
        *,
        clock: IReactorTime,
        timeout: float = HEADER_TIMEOUT,
        refused: Refused = log_refused,
    ) -> None:
        self.role = role
        self._on_refused = refused
        self.refused = False
        self._start = start
        self._clock = clock
        self._timeout = timeout
        self._reader: HeaderReader | None = HeaderReader()
        self._timer: IDelayedCall | None = None
        self._peer: IAddress | None = None
        self._host: IAddress | None = None
        self.header: Header | None = None
        self.inner: IProtocol | None = None

    # Downstream's transport.

    def getPeer(self) -> IAddress:
        return self._peer if self._peer is not None else self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> IAddress:
        return self._host if self._host is not None else self.transport.getHost()  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def writeSequence(self, data: Any) -> None:
        self.transport.writeSequence(data)  # type: ignore[union-attr]

    def loseConnection(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def abortConnection(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "transport":
            raise AttributeError(name)
        return getattr(self.transport, name)

    @property
    def raw_transport(self) -> Any:
        """The TCP connection underneath (for a socket fast path that needs the real one)."""
        return self.transport

    # Upstream's protocol.

    def connectionMade(self) -> None:
        directlyProvides(self, providedBy(self.transport))
        if self.role == "forbidden":
            self._run(None)
        else:
            self._timer = self._clock.callLater(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self.role == "optional":  # a client waiting for the server to speak first
            self._reader = None
            self._run(None)
        else:
            self._refuse("no_proxy_header", "none within the header timeout")

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            if self.inner is not None and not self.refused:
                self.inner.dataReceived(data)
            return
        try:
            got = reader.feed(data)
        except BadHeader as e:
            self._refuse("bad_proxy_header", str(e))
            return
        if got is None:
            return
        self._reader = None
        self._cancel()
        if isinstance(got, Header):
            if self.role == "forbidden":
                self._refuse("proxy_header_not_allowed", "from an address outside proxy_allowed")
                return
            self.header = got
            self._peer, self._host = got.source, got.destination
            self._run(got.rest)
        elif self.role == "required":
            self._refuse("no_proxy_header", "the stream starts without one")
        elif self.inner is not None:
            self._pass(got.rest)
        else:
            self._run(got.rest)

    def _run(self, first: bytes | None) -> None:
        if self.inner is None:
            inner = self._start(self.getPeer())
            if inner is None:  # refused by admission (which says so itself)
                self._cancel()
                self._reader = None
                self.refused = True
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.inner = inner
            inner.makeConnection(self)  # type: ignore[arg-type]
        if self._reader is None:
            self._pass(first)

    def _pass(self, first: bytes | None) -> None:
        """Header settled: step out of the data path, then hand over the first bytes."""
        inner = self.inner
        assert inner is not None
        t: Any = self.transport
        self.dataReceived = inner.dataReceived  # type: ignore[method-assign]
        self.write = t.write  # type: ignore[method-assign]
        self.writeSequence = t.writeSequence  # type: ignore[method-assign]
        if first and t.connected and not t.disconnecting:
            inner.dataReceived(first)

    def _refuse(self, reason: str, detail: str) -> None:
        self._cancel()
        self._reader = None
        self.refused = True
        peer = getattr(self.transport.getPeer(), "host", "?")  # type: ignore[union-attr]
        self._on_refused(str(peer), reason, detail)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel()
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connectionLost(reason)
