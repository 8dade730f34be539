"""systemd's sd_notify protocol (READY=1, STOPPING=1) without libsystemd: one datagram."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

NOTIFY_ENV = "NOTIFY_SOCKET"


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. "READY=1") to the socket systemd names in $NOTIFY_SOCKET.

    False when not run by systemd with Type=notify (no variable) or the send fails: a
    notification is never a reason to stop serving. A leading "@" is Linux's abstract
    socket namespace."""
    path = (os.environ if environ is None else environ).get(NOTIFY_ENV, "")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
    except OSError:
        return False
    return True
