"""SocketWriter: direct sends keep byte order with Twisted's buffer, also after a partial send."""

from __future__ import annotations

import os
import socket

from twisted.internet import tcp
from twisted.internet.testing import MemoryReactorClock

from sftpd.ssh.sockwrite import SocketWriter, _after


def _pair() -> tuple[tcp.Connection, socket.socket]:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    b.setblocking(False)
    conn = tcp.Connection(a, None, MemoryReactorClock())  # type: ignore[arg-type,no-untyped-call]
    conn.connected = 1
    return conn, b


def _drain(conn: tcp.Connection, peer: socket.socket) -> bytes:
    got = bytearray()
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            chunk = b""
        got += chunk
        pending = conn._tempDataLen or conn.offset < len(conn.dataBuffer)
        if not chunk and not pending:
            return bytes(got)
        if pending:
            conn.doWrite()  # type: ignore[no-untyped-call]


def test_idle_connection_sends_at_once() -> None:
    conn, peer = _pair()
    SocketWriter(conn).write([b"ab", b"cd"], 4)
    assert peer.recv(10) == b"abcd"
    assert not conn._tempDataLen  # nothing was queued in Twisted


def test_partial_send_queues_the_rest_in_order() -> None:
    conn, peer = _pair()
    writer = SocketWriter(conn)
    big = [os.urandom(300_000), os.urandom(5), os.urandom(200_000)]
    writer.write(big, sum(map(len, big)))
    assert conn._tempDataLen  # the kernel took only part of it
    head = peer.recv(1 << 20)  # room in the kernel buffer again, Twisted's queue still full
    writer.write([b"tail"], 4)  # must queue behind the rest, not jump ahead
    assert head + _drain(conn, peer) == b"".join(big) + b"tail"


def test_small_packets_after_a_backlog_keep_order() -> None:
    conn, peer = _pair()
    writer = SocketWriter(conn)
    expected = bytearray()
    for i in range(2000):
        chunks = [bytes([i % 251]) * 97, b"|"]
        writer.write(chunks, 98)
        expected += b"".join(chunks)
    assert _drain(conn, peer) == bytes(expected)


def test_after_skips_bytes_across_chunks() -> None:
    chunks = [b"abc", b"de", b"fgh"]
    assert _after(chunks, 0) == [b"abc", b"de", b"fgh"]
    assert _after(chunks, 4) == [b"e", b"fgh"]
    assert _after(chunks, 5) == [b"fgh"]
    assert _after(chunks, 7) == [b"h"]
    assert _after(chunks, 8) == []


def test_closing_connection_goes_through_twisted() -> None:
    conn, peer = _pair()
    conn.disconnecting = True
    SocketWriter(conn).write([b"xyz"], 3)
    assert conn._tempDataLen == 3  # queued, so Twisted flushes it before closing
    peer.close()


def test_aborted_connection_sends_nothing_more() -> None:
    conn, peer = _pair()
    conn.abortConnection()  # Twisted drops buffered data; nothing may go out directly
    SocketWriter(conn).write([b"late"], 4)
    try:
        assert peer.recv(10) == b""
    except BlockingIOError:
        pass  # nothing arrived: as it should be
    peer.close()


def test_behind_the_proxy_wrapper_the_tcp_socket_is_written() -> None:
    from twisted.internet import task

    from sftpd.edge.proxy import ProxyProtocol

    conn, peer = _pair()
    wrapper = ProxyProtocol("optional", lambda addr: None, clock=task.Clock())
    wrapper.transport = conn
    SocketWriter(wrapper).write([b"ab", b"cd"], 4)
    assert peer.recv(10) == b"abcd"
    assert not conn._tempDataLen  # sent at once, not through the wrapper's write
