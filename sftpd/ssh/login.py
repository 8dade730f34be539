"""The login phase of a server connection: its grace time and its one ssh-userauth service."""

# The mixin calls into Conch's untyped transport.
# mypy: disable-error-code="misc,no-untyped-call"

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.transport import (
    DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
    DISCONNECT_PROTOCOL_ERROR,
    MSG_SERVICE_ACCEPT,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger(namespace="sftpd.ssh.transport")

ABORT_AFTER = 5.0  # seconds a peer has to read our DISCONNECT after the login grace time


class LoginPhase:
    """Mixin for the server transport (before Conch's in the bases).

    ``login_grace_time`` seconds from the TCP connect to a successful login, then the
    connection is dropped (<= 0: no limit). The grace time and the failed attempts
    (``auth_failures``, counted by sftpd's userauth) are the whole connection's: a client
    may request ssh-userauth more than once (paramiko does before each method), and that
    keeps the one running service, as OpenSSH keeps one authentication context.
    """

    login_grace_time = 0.0
    auth_failures = 0
    _login_call: IDelayedCall | None = None

    if TYPE_CHECKING:  # provided by the transport
        _tcp: Any
        service: Any

        def _clock(self) -> IReactorTime: ...
        def sendDisconnect(self, reason: int, desc: bytes) -> None: ...
        def sendPacket(self, messageType: int, payload: bytes) -> None: ...

    def start_login_timer(self) -> None:
        """Called at the TCP connect."""
        if self.login_grace_time > 0:
            self._login_call = self._clock().callLater(self.login_grace_time, self._login_timeout)

    def cancel_login_timer(self) -> None:
        call = self._login_call
        self._login_call = None
        if call is not None and call.active():
            call.cancel()

    def _login_timeout(self) -> None:
        self._login_call = None
        peer = getattr(self._tcp, "getPeer", lambda: None)()
        where = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        log.info("login grace time exceeded: peer={peer}", peer=where, event="login_timeout")
        self.sendDisconnect(DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"login grace time exceeded")
        # A peer that does not read cannot hold it open either (connectionLost cancels it).
        self._login_call = self._clock().callLater(ABORT_AFTER, self._tcp.abortConnection)

    def setService(self, service: Any) -> None:
        if hasattr(self, "avatar"):  # set by userauth on success, before the next service
            self.cancel_login_timer()
        super().setService(service)  # type: ignore[misc]

    def ssh_SERVICE_REQUEST(self, packet: bytes) -> None:
        name, _ = getNS(packet)
        current = self.service
        if current is not None and current.name == name:
            self.sendPacket(MSG_SERVICE_ACCEPT, NS(name))  # keep it, and its state
        elif hasattr(self, "avatar"):
            # Authenticated: nothing may replace the connection service (and its channels).
            self.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"service request after login")
        else:
            super().ssh_SERVICE_REQUEST(packet)  # type: ignore[misc]
