"""The ssh-userauth service: strict parsing, one request at a time, per-connection limits."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.transport import DISCONNECT_PROTOCOL_ERROR, DISCONNECT_SERVICE_NOT_AVAILABLE
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.log import conn_fields
from sftpd.ssh.hostkeys import fingerprint

log = Logger(namespace="sftpd.auth")

# Requests a client may send ahead of the answers (RFC 4252 section 5 allows it; the server
# must finish each before it starts the next), and the bytes they may hold.
MAX_PENDING = 8
MAX_PENDING_BYTES = 256 * 1024


@dataclass(frozen=True)
class AuthSettings:
    """Limits for one connection's authentication phase."""

    login_grace_time: float = 120.0
    max_auth_tries: int = 6
    failure_delay: float = 1.0


class MalformedRequest(Exception):
    """A USERAUTH_REQUEST whose fields do not parse: a protocol error, not a failed login."""


def take_strings(data: bytes, count: int) -> tuple[list[bytes], bytes]:
    """``count`` SSH strings from the start of ``data`` and the rest; MalformedRequest if short.

    (Conch's getNS returns a short string when the declared length runs past the data.)
    """
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        if len(data) - pos < 4:
            raise MalformedRequest("truncated request")
        size = int.from_bytes(data[pos : pos + 4], "big")
        pos += 4
        if len(data) - pos < size:
            raise MalformedRequest("truncated request")
        out.append(data[pos : pos + size])
        pos += size
    return out, data[pos:]


class UserAuthServer(userauth.SSHUserAuthServer):  # type: ignore[misc]
    """Conch's userauth with sftpd's limits and one log line per decided attempt.

    The failed-attempt count and the login grace timer belong to the connection (see
    ``ServerTransport.auth_failures`` and ``login_grace_time``), so they hold however often
    the client requests ssh-userauth. Requests are decided one at a time, in order.
    """

    _busy = False

    def serviceStarted(self) -> None:
        # Conch's serviceStarted, minus its own login timer (the connection's runs from the
        # TCP connect) and minus resetting the attempt count (the connection's too).
        t: Any = self.transport
        factory = t.factory
        settings: AuthSettings = factory.auth_settings
        self.clock = factory.clock
        # Conch disconnects once failures exceed this; OpenSSH's MaxAuthTries counts to N.
        self.attemptsBeforeDisconnect = max(0, settings.max_auth_tries - 1)
        self.passwordDelay = settings.failure_delay  # type: ignore[assignment]
        self.authenticatedWith: list[bytes] = []
        self.user: bytes | None = None
        self.nextService: bytes | None = None
        self.method = b""
        self.portal = factory.portal
        methods = self.interfaceToMethod
        self.supportedAuthentications = [
            methods[i] for i in self.portal.listCredentialsInterfaces() if i in methods
        ]
        if not t.isEncrypted("in") and b"password" in self.supportedAuthentications:
            self.supportedAuthentications.remove(b"password")
        self._cancelLoginTimeout = None  # type: ignore[assignment]
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0

    def serviceStopped(self) -> None:
        self._pending.clear()
        super().serviceStopped()

    @property
    def loginAttempts(self) -> int:  # Conch's name
        t: Any = self.transport
        return int(t.auth_failures)

    @loginAttempts.setter
    def loginAttempts(self, value: int) -> None:
        t: Any = self.transport
        t.auth_failures = value

    # -- one request at a time -----------------------------------------------------------

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> None:
        if not self._busy:
            self._start(packet)
            return
        self._pending_bytes += len(packet)
        self._pending.append(packet)
        if len(self._pending) > MAX_PENDING or self._pending_bytes > MAX_PENDING_BYTES:
            self._pending.clear()
            self._refuse("too many requests ahead of the answers", b"too many auth requests")

    def _start(self, packet: bytes) -> None:
        t: Any = self.transport
        try:
            (user, next_service, method), rest = take_strings(packet, 3)
            services = getattr(t.factory, "services", {})
            if next_service == self.name or next_service not in services:
                log.info(
                    "auth refused: unknown service conn={conn} peer={peer}",
                    event="auth_bad",
                    **conn_fields(t),
                )
                t.sendDisconnect(DISCONNECT_SERVICE_NOT_AVAILABLE, b"no such service")
                return
            if user != self.user or next_service != self.nextService:
                self.authenticatedWith = []  # clear auth state
            self.user, self.nextService, self.method = user, next_service, method
            d = self.tryAuth(method, user, rest)
        except MalformedRequest as e:
            self._refuse(str(e))
            return
        self._busy = True
        d.addCallback(self._cbFinishedAuth)
        d.addErrback(self._ebMaybeBadAuth)
        d.addErrback(self._ebBadAuth)
        d.addBoth(self._decided)

    def _decided(self, result: object) -> None:
        self._busy = False
        if isinstance(result, Failure):
            log.failure("deciding an authentication request", failure=result)
        t: Any = self.transport
        if t.closed or t.service is not self:
            self._pending.clear()  # disconnected, or logged in: later requests are moot
        elif self._pending:
            packet = self._pending.popleft()
            self._pending_bytes -= len(packet)
            self._start(packet)

    def _refuse(self, reason: str, wire: bytes = b"malformed authentication request") -> None:
        """A protocol error: one log line and a DISCONNECT (no traceback, no FAILURE)."""
        log.info(
            "auth request refused: conn={conn} peer={peer} reason={reason}",
            reason=reason,
            event="auth_bad",
            **conn_fields(self.transport),
        )
        t: Any = self.transport
        t.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, wire)

    # -- methods -------------------------------------------------------------------------

    def auth_publickey(self, packet: bytes) -> defer.Deferred[Any]:
        if not packet:
            raise MalformedRequest("publickey request without its flag")
        (_alg, blob), rest = take_strings(packet[1:], 2)
        if packet[0]:
            _signature, rest = take_strings(rest, 1)
        if rest:
            return defer.fail(UnauthorizedLogin("trailing bytes after the publickey request"))
        try:
            keys.Key.fromString(blob, type="blob")
        except Exception:
            # Not only BadKeyError: an RSA key with e > n or n = 0, a short ed25519 key ...
            # raise ValueError and the like from the key libraries.
            return defer.fail(UnauthorizedLogin("malformed public key"))
        d: defer.Deferred[Any] = super().auth_publickey(packet)
        return d

    def auth_password(self, packet: bytes) -> defer.Deferred[Any]:
        if not packet:
            raise MalformedRequest("password request without its flag")
        _password, rest = take_strings(packet[1:], 1)
        if packet[0]:
            take_strings(rest, 1)  # the new password, well formed or a protocol error
            reason = "password change requested (not supported)"
        elif rest:
            reason = "trailing bytes after the password"
        else:
            d: defer.Deferred[Any] = super().auth_password(packet)
            return d
        # A FAILURE, after the same delay as a wrong password (RFC 4252 section 8: SUCCESS
        # would mean "password changed").
        log.debug("password request refused: {reason}", reason=reason)
        refused: defer.Deferred[Any] = self._ebPassword(Failure(UnauthorizedLogin(reason)))
        return refused

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> defer.Deferred[Any]:
        # bytes from the client: the log observer decodes, escapes and caps them
        fields: dict[str, Any] = {"user": user, "method": kind, **conn_fields(self.transport)}
        head = "conn={conn} peer={peer} user={user} method={method}"
        query = False
        if kind == b"publickey":
            if not data:
                raise MalformedRequest("publickey request without its flag")
            (_alg, blob), _rest = take_strings(data[1:], 2)
            fields["key_fingerprint"] = fingerprint(bytes(blob))
            head += " key={key_fingerprint}"
            query = data[0] == 0  # a key query, not an attempt
        d: defer.Deferred[Any] = super().tryAuth(kind, user, data)
        if kind == b"none":
            return d

        # The assembly's events service, if any (duck-typed: the SSH layer imports no events)
        events = getattr(getattr(self.transport, "factory", None), "login_events", None)

        def success(result: Any) -> Any:
            log.info("auth ok: " + head, event="auth_success", invalid_user=False, **fields)
            if events is not None:
                events.login_succeeded(fields, result)
            return result

        def failure(reason: Failure) -> Failure:
            # The checker that looked the name up says whether it is a user (its
            # UnauthorizedLogin's ``user_known``), so logging costs no lookup of its own.
            # Refusals decided here before any checker ran (a malformed key, a password
            # change) do not know, and are logged without "(invalid user)".
            invalid = getattr(reason.value, "user_known", None) is False
            fields["invalid_user"] = invalid
            tail = " (invalid user)" if invalid else ""
            if query:
                if reason.check(UnauthorizedLogin) and not reason.check(ValidPublicKey):
                    # a client asking whether a key would do: not an attempt
                    log.info("key refused: " + head + tail, event="auth_key_refused", **fields)
            elif reason.check(UnauthorizedLogin) or reason.check(Exception):
                log.info("auth failed: " + head + tail, event="auth_failure", **fields)
                if events is not None:
                    events.login_failed(fields, "unknown user" if invalid else "refused")
            return reason

        d.addCallbacks(success, failure)
        return d
