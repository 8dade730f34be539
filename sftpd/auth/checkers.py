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
from zope.interface import implementer

from sftpd.auth.users import UserDB
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


def make_dummy_hash(rounds: int = 12) -> bytes:
    """A bcrypt hash of a random secret: checked for unknown users so they cost the same."""
    return bcrypt.hashpw(os.urandom(16).hex().encode("ascii"), bcrypt.gensalt(rounds))


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Checks bcrypt password hashes in a thread; unknown users hash against a dummy."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(
        self, users: UserDB, blocking: Blocking, dummy_hash: bytes | None = None, rounds: int = 12
    ) -> None:
        self._users = users
        self._blocking = blocking
        self._dummy = dummy_hash
        self._rounds = rounds

    def _dummy_hash(self) -> bytes:
        # Made on first use, in the bcrypt thread: at cost 12 it takes ~0.3 s or more.
        if self._dummy is None:
            self._dummy = make_dummy_hash(self._rounds)
        return self._dummy

    def requestAvatarId(self, creds: Any) -> defer.Deferred[bytes | tuple[()]]:
        name = creds.username.decode("utf-8", "replace")
        user = self._users.get(name)
        stored = user.password_hash if user is not None and user.password_hash else None
        password: bytes = creds.password

        def check() -> bool:
            # bcrypt reads at most 72 bytes (and bcrypt 5 raises ValueError beyond), and
            # `sftpd hash-password` refuses longer ones: a longer password is wrong, at the
            # cost of a check all the same.
            fits = len(password) <= _BCRYPT_MAX
            ok = bcrypt.checkpw(password[:_BCRYPT_MAX], stored or self._dummy_hash())
            return ok and fits and stored is not None

        d = self._blocking.run(check)

        def decide(ok: bool) -> bytes | tuple[()]:
            if not ok:
                raise UnauthorizedLogin("wrong password or unknown user")
            return creds.username  # type: ignore[no-any-return]

        return d.addCallback(decide)


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

    def __init__(self, users: UserDB) -> None:
        self._users = users

    def requestAvatarId(self, creds: Any) -> defer.Deferred[bytes | tuple[()]]:
        try:
            return defer.succeed(self._check(creds))
        except Exception:
            return defer.fail()

    def _check(self, creds: Any) -> bytes | tuple[()]:
        name = creds.username.decode("utf-8", "replace")
        user = self._users.get(name)
        blob: bytes = creds.blob
        if creds.algName not in ACCEPTED_SIGNATURES:
            raise UnauthorizedLogin(f"signature algorithm {creds.algName!r} refused")
        if user is None or blob not in user.authorized_keys:
            raise UnauthorizedLogin("key not authorized")
        if creds.signature is None:
            raise ValidPublicKey()
        if _signature_algorithm(creds.signature) != creds.algName:
            raise UnauthorizedLogin("signature algorithm mismatch")
        try:
            key = keys.Key.fromString(blob)
            good = key.verify(creds.signature, creds.sigData)
        except Exception as exc:
            raise UnauthorizedLogin("bad signature") from exc
        if not good:
            raise UnauthorizedLogin("bad signature")
        return creds.username  # type: ignore[no-any-return]
