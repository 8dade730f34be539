"""keyboard-interactive login: the conversation's start (one lookup) and its checker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sftpd.auth import totp
from sftpd.auth.checkers import LoggedIn, LoginRefused, PasswordChecker, _unavailable
from sftpd.auth.kbdint import (
    Conversation,
    IKeyboardInteractiveCredentials,
    KeyboardInteractiveCredentials,
)
from sftpd.auth.totpstate import SharedTotpState
from sftpd.auth.users import StoreUnavailable, User, UserStore

log = Logger(namespace="sftpd.auth")


def _state_unavailable(reason: Failure) -> bool:
    reason.trap(StoreUnavailable)
    log.error("TOTP state unavailable: {error}", error=str(reason.value), event="totp_state_down")
    raise LoginRefused("verification code store unavailable", user_known=True)


class ConversationStarter:
    """Looks the user up once and starts the conversation: a password prompt, then a code
    prompt when the user has a TOTP secret. An unknown name gets the code prompt whenever
    any user has TOTP (``any_totp``), so the prompts do not tell names apart."""

    def __init__(self, store: UserStore, *, any_totp: bool) -> None:
        self._store = store
        self._any_totp = any_totp

    def __call__(self, username: bytes) -> defer.Deferred[Conversation]:
        d = self._store.lookup(username.decode("utf-8", "replace"))
        d.addErrback(_unavailable)

        def start(user: User | None) -> Conversation:
            wants_code = bool(user.totp_secret) if user is not None else self._any_totp
            return Conversation(username, wants_code, (user,))

        started: defer.Deferred[Any] = d.addCallback(start)
        return started


@implementer(ICredentialsChecker)
class KeyboardInteractiveChecker:
    """The password as the password method checks it (bcrypt in a thread, the dummy hash
    for unknown users), then the TOTP code for a user with a secret (RFC 6238, one step
    of skew, each code once: ``state`` remembers the last step accepted per user, shared
    by the server's processes)."""

    credentialInterfaces = (IKeyboardInteractiveCredentials,)

    def __init__(
        self,
        store: UserStore,
        passwords: PasswordChecker,
        state: SharedTotpState,
        now: Callable[[], float],
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._state = state
        self._now = now

    def requestAvatarId(self, creds: KeyboardInteractiveCredentials) -> defer.Deferred[Any]:
        if creds.found:
            d: defer.Deferred[Any] = defer.succeed(creds.found[0])
        else:
            d = self._store.lookup(creds.username.decode("utf-8", "replace"))
            d.addErrback(_unavailable)
        return d.addCallback(self._check, creds)

    def _check(self, user: User | None, creds: KeyboardInteractiveCredentials) -> Any:
        def decide(ok: bool) -> Any:
            if not ok or user is None:
                raise LoginRefused("wrong password or unknown user", user_known=user is not None)
            if not user.totp_secret:
                return LoggedIn(creds.username, user)
            code = (creds.code or b"").decode("ascii", "replace")
            key = totp.decode_secret(user.totp_secret)
            steps = totp.candidate_steps(key, code, self._now())
            return self._claim(user.name, steps).addCallback(coded)

        def coded(accepted: bool) -> LoggedIn:
            if not accepted or user is None:
                raise LoginRefused("wrong or reused verification code", user_known=True)
            return LoggedIn(creds.username, user)

        return self._passwords.verify(user, creds.password).addCallback(decide)

    def _claim(self, name: str, steps: list[int]) -> defer.Deferred[bool]:
        """Claim the earliest matching step not yet used (shared by the server's processes)."""
        if not steps:
            return defer.succeed(False)
        d = self._state.claim(name, steps[0])
        d.addErrback(_state_unavailable)
        return d.addCallback(lambda won: True if won else self._claim(name, steps[1:]))
