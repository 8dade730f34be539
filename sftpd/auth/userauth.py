"""The ssh-userauth service: configured grace time, attempt limit, failure delay, auth logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.conch.ssh import userauth
from twisted.conch.ssh.common import getNS
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.hostkeys import fingerprint
from sftpd.log import conn_fields

log = Logger(namespace="sftpd.auth")


@dataclass(frozen=True)
class AuthSettings:
    """Limits for one connection's authentication phase."""

    login_grace_time: float = 120.0
    max_auth_tries: int = 6
    failure_delay: float = 1.0


class UserAuthServer(userauth.SSHUserAuthServer):  # type: ignore[misc]
    """Conch's userauth with sftpd's limits and one log line per decided attempt."""

    def serviceStarted(self) -> None:
        t: Any = self.transport
        factory = t.factory
        settings: AuthSettings = factory.auth_settings
        self.clock = factory.clock
        self.loginTimeout = settings.login_grace_time  # type: ignore[assignment]
        # Conch disconnects once failures exceed this; OpenSSH's MaxAuthTries counts to N.
        self.attemptsBeforeDisconnect = max(0, settings.max_auth_tries - 1)
        self.passwordDelay = settings.failure_delay  # type: ignore[assignment]
        super().serviceStarted()

    def _known(self, user: bytes) -> bool:
        t: Any = self.transport
        portal = getattr(getattr(t, "factory", None), "portal", None)
        knows = getattr(getattr(portal, "realm", None), "knows", None)
        try:
            return knows is None or bool(knows(user.decode("utf-8")))
        except UnicodeDecodeError:
            return False

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = super().tryAuth(kind, user, data)
        if kind == b"none":
            return d
        # bytes from the client: the log observer decodes, escapes and caps them
        fields: dict[str, Any] = {"user": user, "method": kind, **conn_fields(self.transport)}
        known = self._known(user)
        fields["invalid_user"] = not known
        head = "conn={conn} peer={peer} user={user} method={method}"
        tail = "" if known else " (invalid user)"
        query = False
        if kind == b"publickey":
            try:
                query = data[0:1] == b"\x00"
                _alg, blob, _rest = getNS(data[1:], 2)
                fields["key_fingerprint"] = fingerprint(bytes(blob))
                head += " key={key_fingerprint}"
            except Exception:
                query = False

        def success(result: Any) -> Any:
            log.info("auth ok: " + head, event="auth_success", **fields)
            return result

        def failure(reason: Failure) -> Failure:
            if query:
                if reason.check(UnauthorizedLogin):
                    # a client asking whether a key would do: not an attempt
                    log.info("key refused: " + head + tail, event="auth_key_refused", **fields)
            elif reason.check(UnauthorizedLogin) or reason.check(Exception):
                log.info("auth failed: " + head + tail, event="auth_failure", **fields)
            return reason

        d.addCallbacks(success, failure)
        return d
