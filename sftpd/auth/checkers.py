"""Credential checkers: bcrypt passwords off the reactor thread, and public keys (no SHA-1)."""

from __future__ import annotations

import os
from typing import Any

import bcrypt
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys
from twisted.conch.ssh.common import getNS
from twisted.cred import credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sftpd.auth.users import DEFAULT_PASSWORD_COST, AuthorizedKey, StoreUnavailable, User, UserStore
from sftpd.runtime.threads import Blocking

# Signature algorithms accepted for user keys, as advertised in server-sig-algs.
# SHA-1 "ssh-rsa" and "ssh-dss" are refused.
SERVER_SIG_ALGS = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)
ACCEPTED_SIGNATURES = frozenset(SERVER_SIG_ALGS)

log = Logger(namespace="sftpd.auth")
_BCRYPT_MAX = 72  # bytes of a password that bcrypt uses


class LoggedIn(bytes):
    """The avatarId a checker returns: the login name as bytes, as Conch and cred expect,
    carrying the User the checker found (and the key it accepted) to the realm.

    Conch's userauth and cred's Portal only pass the avatarId on to the realm
    (``Portal.login``: ``requestAvatarId(...).addCallback(realm.requestAvatar, ...)``),
    so the realm gets the record without looking the user up again."""

    user: User
    key: AuthorizedKey | None

    def __new__(cls, name: bytes, user: User, key: AuthorizedKey | None = None) -> LoggedIn:
        self = super().__new__(cls, name)
        self.user = user
        self.key = key
        return self


class LoginRefused(UnauthorizedLogin):
    """A refused login that says whether the name was a user (``user_known``; None: the store
    could not answer). The userauth service logs "(invalid user)" from it, so the log
    needs no lookup of its own."""

    def __init__(self, message: str, *, user_known: bool | None) -> None:
        super().__init__(message)
        self.user_known = user_known


def _unavailable(reason: Failure) -> None:
    reason.trap(StoreUnavailable)
    log.error("user store unavailable: {error}", error=str(reason.value), event="store_down")
    raise LoginRefused("user store unavailable", user_known=None)


def make_dummy_hash(rounds: int = DEFAULT_PASSWORD_COST) -> bytes:
    """A bcrypt hash of a random secret: checked for unknown users so they cost the same."""
    return bcrypt.hashpw(os.urandom(16).hex().encode("ascii"), bcrypt.gensalt(rounds))


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Checks bcrypt password hashes in a thread; unknown users hash against a dummy."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(
        self,
        store: UserStore,
        blocking: Blocking,
        dummy_hash: bytes | None = None,
        rounds: int = DEFAULT_PASSWORD_COST,
    ) -> None:
        self._store = store
        self._blocking = blocking
        self._dummy = dummy_hash
        self._rounds = rounds

    def _dummy_hash(self) -> bytes:
        # Made on first use, in the bcrypt thread: at cost 12 it takes ~0.3 s or more.
        if self._dummy is None:
            self._dummy = make_dummy_hash(self._rounds)
        return self._dummy

    def requestAvatarId(self, creds: Any) -> defer.Deferred[bytes | tuple[()]]:
        # One store lookup per attempt; the LoggedIn answer takes the user to the realm.
        name: bytes = creds.username
        d = self._store.lookup(name.decode("utf-8", "replace"))
        d.addErrback(_unavailable)
        found: defer.Deferred[Any] = d.addCallback(self._check, name, creds.password)
        return found

    def _check(self, user: User | None, name: bytes, password: bytes) -> defer.Deferred[LoggedIn]:
        stored = user.password_hash if user is not None and user.password_hash else None

        def check() -> bool:
            # bcrypt reads at most 72 bytes (and bcrypt 5 raises ValueError beyond), and
            # `sftpd hash-password` refuses longer ones: a longer password is wrong, at the
            # cost of a check all the same.
            fits = len(password) <= _BCRYPT_MAX
            ok = bcrypt.checkpw(password[:_BCRYPT_MAX], stored or self._dummy_hash())
            return ok and fits and stored is not None

        def decide(ok: bool) -> LoggedIn:
            if not ok or user is None:
                raise LoginRefused("wrong password or unknown user", user_known=user is not None)
            return LoggedIn(name, user)

        return self._blocking.run(check).addCallback(decide)


def _signature_algorithm(signature: bytes) -> bytes:
    try:
        name, _ = getNS(signature)
    except Exception:
        return b""
    return bytes(name)


@implementer(ICredentialsChecker)
class PublicKeyChecker:
    """Accepts a key listed for the user, signed with an accepted (non-SHA-1) algorithm."""

    credentialInterfaces = (credentials.ISSHPrivateKey,)

    def __init__(self, store: UserStore) -> None:
        self._store = store

    def requestAvatarId(self, creds: Any) -> defer.Deferred[bytes | tuple[()]]:
        # One store lookup per attempt; the LoggedIn answer takes the user to the realm.
        name: bytes = creds.username
        d = self._store.lookup(name.decode("utf-8", "replace"))
        d.addErrback(_unavailable)
        found: defer.Deferred[Any] = d.addCallback(self._check, name, creds)
        return found

    def _check(self, user: User | None, name: bytes, creds: Any) -> LoggedIn:
        known = user is not None
        blob: bytes = creds.blob
        if creds.algName not in ACCEPTED_SIGNATURES:
            raise LoginRefused(f"signature algorithm {creds.algName!r} refused", user_known=known)
        entry = user.key(blob) if user is not None else None
        if user is None or entry is None:
            raise LoginRefused("key not authorized", user_known=known)
        if creds.signature is None:
            raise ValidPublicKey()
        if _signature_algorithm(creds.signature) != creds.algName:
            raise LoginRefused("signature algorithm mismatch", user_known=True)
        try:
            key = keys.Key.fromString(blob)
            good = key.verify(creds.signature, creds.sigData)
        except Exception as exc:
            raise LoginRefused("bad signature", user_known=True) from exc
        if not good:
            raise LoginRefused("bad signature", user_known=True)
        return LoggedIn(name, user, entry)
