"""Clients from a chosen loopback source address: the edge's e2e tests (bans, limits, HAProxy)."""

from __future__ import annotations

import socket
from typing import Any


def connect_from(port: int, source: str, timeout: float = 30) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from ``source`` (127.0.0.N)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def refused_at_accept(port: int, source: str = "127.0.0.1") -> bool:
    """True if the server closes the connection without sending a byte (no SSH banner)."""
    s = connect_from(port, source)
    try:
        return s.recv(64) == b""
    except ConnectionResetError:
        return True
    finally:
        s.close()


def wrong_passwords_until_refused(port: int, source: str = "127.0.0.1", limit: int = 50) -> int:
    """Fresh connections from ``source``, one wrong password each, until one is refused
    at accept (banned) or ``limit`` were made; how many got to try a password."""
    import paramiko
    import pytest

    tries = 0
    while tries < limit:
        try:
            t: Any = paramiko.Transport(connect_from(port, source))
            t.start_client(timeout=30)
        except (paramiko.SSHException, EOFError, OSError):
            break  # refused at accept: banned
        tries += 1
        try:
            with pytest.raises(paramiko.AuthenticationException):
                t.auth_password("alice", f"wrong-{tries}", fallback=False)
        finally:
            t.close()
    return tries
