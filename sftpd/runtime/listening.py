"""Listening sockets, bound before anything is printed: IPv6 ones are IPv6-only, as OpenSSH's."""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from sftpd.errors import SftpdError
from sftpd.log import hostport


class ListenError(SftpdError):
    """An address could not be bound; the message says which and what to do."""


def open_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` (non-blocking).

    IPv6 sockets get IPV6_V6ONLY, so "[::]:P" and "0.0.0.0:P" can both be listened on
    (Linux would otherwise let "::" take the IPv4 port too). ``reuse_port`` (SO_REUSEPORT)
    is only for the worker processes sharing one port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(512)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def bind_all(
    listen: Sequence[tuple[str, int]], copies: int = 1, *, hint: str = ""
) -> list[list[socket.socket]]:
    """``copies`` sockets per address (more than one: SO_REUSEPORT, same port for all; port
    0 is resolved by the first copy). Raises ListenError, closing what was bound; ``hint``
    is added to an "Address already in use" message."""
    per_copy: list[list[socket.socket]] = [[] for _ in range(copies)]
    try:
        for host, port in listen:
            for i in range(copies):
                try:
                    s = open_listener(host, port, reuse_port=copies > 1)
                except OSError as e:
                    extra = f"; {hint}" if hint and e.errno == errno.EADDRINUSE else ""
                    raise ListenError(
                        f"cannot listen on {hostport(host, port)}: {e.strerror}{extra}"
                    ) from None
                port = s.getsockname()[1]
                per_copy[i].append(s)
    except ListenError:
        for socks in per_copy:
            for s in socks:
                s.close()
        raise
    return per_copy
