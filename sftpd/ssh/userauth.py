"""The ssh-userauth service: strict parsing, one request at a time, per-connection limits."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.conch import interfaces
from twisted.conch.error import IgnoreAuthentication, NotEnoughAuthentication, ValidPublicKey
from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.transport import (
    DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
    DISCONNECT_PROTOCOL_ERROR,
    DISCONNECT_SERVICE_NOT_AVAILABLE,
)
from twisted.cred import credentials
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
MSG_USERAUTH_INFO_REQUEST = 60
CERT_SUFFIX = b"-cert-v01@openssh.com"


@dataclass(frozen=True)
class AuthSettings:
    """Limits for one connection's authentication phase."""

    login_grace_time: float = 120.0
    max_auth_tries: int = 6
    failure_delay: float = 1.0


@dataclass(frozen=True)
class Progress:
    """The ``mind`` passed to the realm: the methods that succeeded so far (partial
    successes, in order) and the one being tried, for ``require`` chains."""

    done: tuple[str, ...]
    method: str


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


def _is_certificate(blob: bytes) -> bool:
    try:
        (kind,), _ = take_strings(blob, 1)
    except MalformedRequest:
        return False
    return kind.endswith(CERT_SUFFIX)


def _why(reason: Failure) -> str:
    """A refusal's reason for the login_failed event: the server's own words (the checkers'
    and the edge's messages name the rule, never a secret), at most 200 characters."""
    value = reason.value
    if isinstance(value, UnauthorizedLogin) and value.args:
        return str(value.args[0])[:200] or "refused"
    return "refused"


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
        # the methods the portal has checkers for, in [server] authentication_methods order
        methods = {**self.interfaceToMethod, **getattr(factory, "extra_auth_methods", {})}
        have = {methods[i] for i in self.portal.listCredentialsInterfaces() if i in methods}
        order = [m.encode() for m in getattr(factory, "auth_methods", ())] or sorted(have)
        self._offered = [m for m in order if m in have]
        if not t.isEncrypted("in") and b"password" in self._offered:
            self._offered.remove(b"password")
        self.supportedAuthentications = list(self._offered)
        self._cancelLoginTimeout = None  # type: ignore[assignment]
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._conversation: Any = None  # the keyboard-interactive one in progress
        self._kbd: defer.Deferred[Any] | None = None

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
        if self._kbd is not None:
            self._drop_conversation()
            t: Any = self.transport
            if t.closed:
                return  # that was the last attempt allowed
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
                self.authenticatedWith = []  # clear auth state (partial successes too)
                self.supportedAuthentications = list(self._offered)
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

    def _mind(self) -> Progress:
        done = tuple(m.decode("ascii", "replace") for m in self.authenticatedWith)
        return Progress(done, self.method.decode("ascii", "replace"))

    def _peer_host(self) -> str:
        tcp = getattr(self.transport, "transport", None)
        peer = getattr(tcp, "getPeer", lambda: None)()
        return str(getattr(peer, "host", ""))

    def auth_publickey(self, packet: bytes) -> defer.Deferred[Any]:
        # Conch's, but certificates reach the checker (Conch's keys.Key refuses them) and
        # the credentials carry the client address (from=, source-address) and log fields.
        if not packet:
            raise MalformedRequest("publickey request without its flag")
        (alg, blob), rest = take_strings(packet[1:], 2)
        signature = None
        if packet[0]:
            (signature,), rest = take_strings(rest, 1)
        if rest:
            return defer.fail(UnauthorizedLogin("trailing bytes after the publickey request"))
        if not _is_certificate(blob):
            try:
                keys.Key.fromString(blob, type="blob")
            except Exception:
                # Not only BadKeyError: an RSA key with e > n or n = 0, a short ed25519
                # key ... raise ValueError and the like from the key libraries.
                return defer.fail(UnauthorizedLogin("malformed public key"))
        t: Any = self.transport
        signed = None
        if signature is not None:
            signed = (
                NS(t.sessionID)
                + bytes((userauth.MSG_USERAUTH_REQUEST,))
                + NS(self.user or b"")
                + NS(self.nextService or b"")
                + NS(b"publickey")
                + b"\x01"
                + NS(alg)
                + NS(blob)
            )
        c: Any = credentials.SSHPrivateKey(self.user, alg, blob, signed, signature)
        c.peer = self._peer_host()
        c.log_fields = conn_fields(t)
        d: defer.Deferred[Any] = self.portal.login(c, self._mind(), interfaces.IConchUser)
        if signature is None:
            d.addErrback(self._ebCheckKey, packet[1:])
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
            c = credentials.UsernamePassword(self.user or b"", _password[0])
            d: defer.Deferred[Any] = self.portal.login(c, self._mind(), interfaces.IConchUser)
            return d.addErrback(self._ebPassword)
        # A FAILURE, after the same delay as a wrong password (RFC 4252 section 8: SUCCESS
        # would mean "password changed").
        log.debug("password request refused: {reason}", reason=reason)
        refused: defer.Deferred[Any] = self._ebPassword(Failure(UnauthorizedLogin(reason)))
        return refused

    def _ebPassword(self, reason: Failure) -> Any:
        # Conch's delay, but a partial success (a correct password) is answered at once
        if reason.check(NotEnoughAuthentication, IgnoreAuthentication):
            return reason
        d: defer.Deferred[Any] = defer.Deferred()
        self.clock.callLater(self.passwordDelay, d.callback, reason)
        return d

    def _ebMaybeBadAuth(self, reason: Failure) -> None:
        # Conch's, plus what a partial success means for require chains: the method is
        # done, and only the methods that may come next are listed (and accepted).
        reason.trap(NotEnoughAuthentication)
        remaining = getattr(reason.value, "remaining", None)
        if remaining is not None:
            self.authenticatedWith.append(self.method)
            self.supportedAuthentications = [m.encode() for m in remaining]
        t: Any = self.transport
        t.sendPacket(
            userauth.MSG_USERAUTH_FAILURE, NS(b",".join(self.supportedAuthentications)) + b"\xff"
        )

    # -- keyboard-interactive (RFC 4256) ---------------------------------------------------

    def auth_keyboard_interactive(self, packet: bytes) -> defer.Deferred[Any]:
        """Start a conversation (the factory's ``kbdint``: name -> Deferred[Conversation])."""
        (_language, _submethods), rest = take_strings(packet, 2)
        if rest:
            refused: defer.Deferred[Any] = self._ebPassword(
                Failure(UnauthorizedLogin("trailing bytes after the keyboard-interactive request"))
            )
            return refused
        t: Any = self.transport
        done: defer.Deferred[Any] = defer.Deferred()
        self._kbd = done
        started: defer.Deferred[Any] = t.factory.kbdint(self.user)

        def begin(conversation: Any) -> None:
            if self._kbd is not done:
                return  # dropped meanwhile
            self._conversation = conversation
            t.sendPacket(MSG_USERAUTH_INFO_REQUEST, conversation.start())

        def failed(reason: Failure) -> None:
            if self._kbd is done:
                self._kbd = None
                done.errback(reason)

        started.addCallbacks(begin, failed)
        return done.addErrback(self._ebPassword)

    def ssh_USERAUTH_INFO_RESPONSE(self, packet: bytes) -> None:
        done, conversation = self._kbd, self._conversation
        if done is None or conversation is None:
            self._refuse("info response without a pending info request")
            return
        try:
            out = conversation.receive(packet)
        except Exception as e:  # KbdIntError: a malformed response fails the attempt
            self._kbd = self._conversation = None
            done.errback(UnauthorizedLogin(str(e)))
            return
        if isinstance(out, bytes):
            t: Any = self.transport
            t.sendPacket(MSG_USERAUTH_INFO_REQUEST, out)
            return
        self._kbd = self._conversation = None
        d: defer.Deferred[Any] = self.portal.login(out, self._mind(), interfaces.IConchUser)
        d.chainDeferred(done)

    def _drop_conversation(self) -> None:
        """A new USERAUTH_REQUEST ends the conversation (RFC 4256 section 3.4): no
        FAILURE is owed for it, but it counts as an attempt."""
        done = self._kbd
        self._kbd = self._conversation = None
        if done is None:
            return
        self.loginAttempts += 1
        done.errback(IgnoreAuthentication())
        if self.loginAttempts > self.attemptsBeforeDisconnect:
            t: Any = self.transport
            t.sendDisconnect(DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"too many bad auths")

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
        edge = getattr(self.transport, "edge", None)  # the network edge (sftpd.edge.gate)
        if edge is not None:
            d.addCallback(self._edge_login, edge, head, fields)

        # The assembly's events service, if any (duck-typed: the SSH layer imports no events)
        events = getattr(getattr(self.transport, "factory", None), "login_events", None)

        def success(result: Any) -> Any:
            if _gone(self.transport, edge):
                # The checker accepted after the connection went (the client hung up, or
                # the edge evicted it, during the hash). Conch would give the avatar to the
                # dead transport, whose logout already ran: the login (and its place in
                # max_sessions) would never be given back. Give it back; answer nothing.
                result[2]()
                log.info(
                    "auth ok after the connection closed: " + head, event="auth_late", **fields
                )
                raise IgnoreAuthentication()
            log.info("auth ok: " + head, event="auth_success", invalid_user=False, **fields)
            if edge is not None:
                edge.auth_succeeded(kind.decode("ascii", "replace"))
            if events is not None:
                events.login_succeeded(fields, result)
            return result

        def failure(reason: Failure) -> Failure:
            if reason.check(NotEnoughAuthentication):
                remaining = getattr(reason.value, "remaining", ())
                log.info(
                    "auth partial: " + head + " remaining={remaining}",
                    event="auth_partial",
                    remaining=",".join(remaining),
                    **fields,
                )
                return reason
            if reason.check(IgnoreAuthentication) and _gone(self.transport, edge):
                return reason  # logged by ``success`` ("auth ok after the connection closed")
            if reason.check(IgnoreAuthentication) and kind == b"keyboard-interactive":
                log.info("auth abandoned: " + head, event="auth_failure", **fields)
                return reason
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
                if edge is not None:
                    edge.auth_failed(invalid_user=invalid)  # the defender's score
                if events is not None:
                    events.login_failed(fields, "unknown user" if invalid else _why(reason))
            return reason

        d.addCallbacks(success, failure)
        return d

    def _edge_login(self, result: Any, edge: Any, head: str, fields: dict[str, Any]) -> Any:
        """The edge's per-user checks (allowed_sources against the client's real address,
        max_sessions), after the checker accepted: a refusal is a failed attempt."""
        _iface, avatar, logout = result
        if _gone(self.transport, edge):
            return result  # ``success`` gives the login back: no session is taken for it
        record = getattr(avatar, "user", None)
        rules = getattr(record, "edge", None)
        if record is None or rules is None:
            return result
        why = edge.login(record.name, rules)
        if why is None:
            return result
        logout()
        log.info(
            "login refused: " + head + " reason={reason}",
            reason=why,
            event="auth_refused",
            **fields,
        )
        refused = UnauthorizedLogin(why)
        refused.user_known = True  # type: ignore[attr-defined]
        raise refused


def _gone(transport: Any, edge: Any) -> bool:
    """Whether the connection is closed, or the edge evicted it (its abort is on its way)."""
    return bool(getattr(transport, "_closed", False) or getattr(edge, "evicted", False))
