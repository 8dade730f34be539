"""Send packets straight to the socket when nothing is queued, else through Twisted's buffer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import tcp

# Above this many bytes a packet's chunks go out as one scatter/gather sendmsg; below it
# one small join and a plain send is cheaper.
_GATHER_ABOVE = 4096
Chunk = bytes | bytearray | memoryview


class SocketWriter:
    """Writes to one TCP connection.

    Twisted's ``write`` only queues: the bytes leave on the next reactor turn, after an
    ``epoll_ctl`` to watch for writability, an ``epoll_wait`` that reports it, and another
    ``epoll_ctl`` to stop watching. For a request-reply protocol that is three extra system
    calls and one more reactor turn per reply. Here, while Twisted's buffer is empty, the
    packet is sent at once; whatever the kernel does not take (or everything, if the buffer
    is not empty, the connection is closing, or the transport is not a TCP socket) is
    handed to Twisted, which keeps the order and reports errors as it always does.
    """

    __slots__ = ("_sock", "_tcp")

    def __init__(self, transport: Any) -> None:
        # Behind a PROXY-protocol wrapper (sftpd.edge.proxy) write to the TCP connection.
        transport = getattr(transport, "raw_transport", transport)
        self._tcp = transport
        self._sock = transport.socket if isinstance(transport, tcp.Connection) else None

    # Twisted has no public "nothing is queued": read tcp.Connection's private buffer
    # state (checked against Twisted by tests/test_conch_contract.py).
    def _idle(self) -> bool:
        t = self._tcp
        return (
            not t._tempDataLen
            and t.offset == len(t.dataBuffer)
            and t.connected
            and not t.disconnecting
            and not t._writeDisconnected
            and not t._aborting
        )

    def write(self, chunks: Sequence[Chunk], size: int) -> None:
        """Send ``chunks`` (``size`` bytes in all), in order after anything written before."""
        sock = self._sock
        if sock is None or not self._idle():
            self._tcp.writeSequence(chunks)
            return
        try:
            if size > _GATHER_ABOVE:
                sent = sock.sendmsg(chunks)
            else:
                data = b"".join(chunks)
                chunks = (data,)
                sent = sock.send(data)
        except OSError:
            # EAGAIN: the kernel buffer is full; anything else: Twisted's own send fails
            # the same way and closes the connection as usual.
            sent = 0
        if sent < size:
            self._tcp.writeSequence(_after(chunks, sent))


def _after(chunks: Sequence[Chunk], skip: int) -> list[bytes]:
    """``chunks`` without their first ``skip`` bytes (only after a partial send)."""
    rest: list[bytes] = []
    for chunk in chunks:
        n = len(chunk)
        if skip >= n:
            skip -= n
            continue
        rest.append(bytes(chunk[skip:]) if skip else bytes(chunk))  # Twisted takes only bytes
        skip = 0
    return rest
