"""The checkers and the keyboard-interactive starter for a configuration (used by assembly)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.cred.checkers import ICredentialsChecker

from sftpd.auth.checkers import PasswordChecker, PublicKeyChecker
from sftpd.auth.kbdcheck import ConversationStarter, KeyboardInteractiveChecker
from sftpd.auth.kbdint import METHOD, IKeyboardInteractiveCredentials
from sftpd.auth.krl import RevocationFile
from sftpd.auth.totpstate import ProcessTotpState, SharedTotpState
from sftpd.auth.users import UserStore
from sftpd.runtime.threads import Blocking


@dataclass(frozen=True)
class AuthParts:
    """What the assembly registers with the portal and hands to the userauth service."""

    checkers: tuple[ICredentialsChecker, ...]
    kbdint: ConversationStarter  # name -> Deferred[Conversation]
    extra_auth_methods: dict[Any, bytes]  # credential interface -> method name (Conch's map)
    methods: tuple[str, ...]  # offered, in order


def auth_parts(
    users: UserStore,
    blocking: Blocking,
    *,
    methods: tuple[str, ...],
    trusted_cas: tuple[bytes, ...],
    revoked_keys_file: Path | None,
    any_totp: bool,
    dummy_hash: bytes | None,
    now: Callable[[], float],
    totp_state: SharedTotpState | None = None,
) -> AuthParts:
    """Checkers for the methods offered ([server] authentication_methods, in order), user
    CAs and revocations ([server]); ``any_totp``: some user has a TOTP secret.
    ``totp_state``: where accepted TOTP steps are kept (``totpstate.shared_totp_state``;
    None: this process's memory). Raises KrlError for a revoked_keys_file that cannot be
    used."""
    # The unknown-user dummy hash costs what the store's hashes cost: the TOML store reads
    # that from its hashes once, here; a database store from its setting.
    passwords = PasswordChecker(users, blocking, dummy_hash, rounds=users.password_cost)
    revoked = RevocationFile(revoked_keys_file) if revoked_keys_file is not None else None
    keys = PublicKeyChecker(users, trusted_cas=trusted_cas, revocations=revoked, now=now)
    kbd = KeyboardInteractiveChecker(
        users, passwords, totp_state if totp_state is not None else ProcessTotpState(), now
    )
    chosen: list[ICredentialsChecker] = []
    for method, checker in (
        ("publickey", keys),
        ("password", passwords),
        ("keyboard-interactive", kbd),
    ):
        if method in methods:
            chosen.append(checker)
    starter = ConversationStarter(users, any_totp=any_totp)
    return AuthParts(
        checkers=tuple(chosen),
        kbdint=starter,
        extra_auth_methods={IKeyboardInteractiveCredentials: METHOD},
        methods=methods,
    )
