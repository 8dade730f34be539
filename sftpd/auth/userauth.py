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

    def _peer(self) -> str:
        try:
            t: Any = self.transport
            peer = t.transport.getPeer()
            return f"{peer.host}:{peer.port}"
        except Exception:
            return "?"

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = super().tryAuth(kind, user, data)
        if kind == b"none":
            return d
        fields: dict[str, Any] = {
            "user": user.decode("utf-8", "replace"),
            "method": kind.decode("ascii", "replace"),
            "peer": self._peer(),
        }
        if kind == b"publickey":
            try:
                has_sig = data[0:1] != b"\x00"
                _alg, blob, _rest = getNS(data[1:], 2)
                fields["key"] = fingerprint(bytes(blob))
            except Exception:
                has_sig = True
            if not has_sig:
                return d  # a key query, not an attempt

        def success(result: Any) -> Any:
            log.info(
                "auth ok: user={user} method={method} peer={peer}{keyinfo}",
                keyinfo=f" key={fields['key']}" if "key" in fields else "",
                event="auth_success",
                **fields,
            )
            return result

        def failure(reason: Failure) -> Failure:
            if reason.check(UnauthorizedLogin) or reason.check(Exception):
                log.info(
                    "auth failed: user={user} method={method} peer={peer}{keyinfo}",
                    keyinfo=f" key={fields['key']}" if "key" in fields else "",
                    event="auth_failure",
                    **fields,
                )
            return reason

        d.addCallbacks(success, failure)
        return d
