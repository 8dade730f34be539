"""The user record and the user-store seam: who may log in, with which keys, into which root."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from twisted.internet import defer

from sftpd.config.model import UserConfig

DEFAULT_PASSWORD_COST = 12  # bcrypt cost when a store has no hash to take it from


@dataclass(frozen=True)
class AuthorizedKey:
    """One key a user may log in with.

    ``blob`` is the public key in SSH wire format. ``options`` holds the key's parsed
    OpenSSH options (``from``, ``expiry-time``, ``restrict``...) as (name, value or None)
    pairs: none today, as the config refuses key lines with options. A per-key profile
    (``[[users.keys]]``: permissions, protocols, home) becomes further fields here, each
    with a default meaning "as the user".
    """

    blob: bytes
    comment: str = ""
    options: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class User:
    """One account as the checkers, the realm and the rules see it, whatever store it came from.

    ``root`` is the host directory the user sees as ``/``; ``home`` the virtual start
    directory. ``read_only``, ``allow_rsync`` and ``allow_exec`` are the inputs of the
    user's rules (``None``: the server-wide ``[exec]`` setting)."""

    name: str
    root: Path
    home: str = "/"
    password_hash: bytes | None = None
    keys: tuple[AuthorizedKey, ...] = ()
    read_only: bool = False
    allow_rsync: bool | None = None
    allow_exec: bool | None = None
    quota_size: int = 0  # bytes; 0 = unlimited
    quota_files: int = 0  # files; 0 = unlimited
    max_upload_size: int = 0  # bytes per file; 0 = unlimited
    upload_mode: str = "atomic"  # or "direct"

    def key(self, blob: bytes) -> AuthorizedKey | None:
        """The entry for the public key ``blob``, or None if it is not the user's."""
        for entry in self.keys:
            if entry.blob == blob:
                return entry
        return None


class StoreUnavailable(Exception):
    """A store could not answer (database down, timeout): the login fails, the server stays up.

    The message is for the log; it must not hold a password or a host path."""


@runtime_checkable
class UserStore(Protocol):
    """Where users come from. Every lookup answers through a Deferred, so a store may query
    a database off the reactor thread; none may block the reactor thread.

    ``lookup`` fires (on the reactor thread, as ``deferToThreadPool`` does) with the User,
    with None for an unknown (or disabled) name, or fails with StoreUnavailable, within a
    bounded time: a store that cannot answer must time out, not hang the login. It is
    called exactly once per authentication attempt (a key query counts as one attempt).
    ``password_cost`` is the bcrypt cost an unknown user's dummy check is made with, so
    refusing an unknown name costs what a known one does: a store knows it without reading
    every user (the TOML store from its hashes, once at start; a database store from its
    setting, the cost it hashes new passwords with).
    ``close`` releases what the store holds (connections, threads) at shutdown."""

    @property
    def password_cost(self) -> int: ...

    def lookup(self, name: str) -> defer.Deferred[User | None]: ...

    def close(self) -> defer.Deferred[None]: ...


class MemoryUserStore:
    """Users held in a dict; lookups answer at once. For tests, and the base of TomlUserStore."""

    def __init__(self, users: Iterable[User] = (), *, password_cost: int | None = None) -> None:
        self._users = {u.name: u for u in users}
        self._cost = _common_cost(self._users.values()) if password_cost is None else password_cost

    @property
    def password_cost(self) -> int:
        return self._cost

    def lookup(self, name: str) -> defer.Deferred[User | None]:
        return defer.succeed(self._users.get(name))

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def __len__(self) -> int:
        return len(self._users)


class TomlUserStore(MemoryUserStore):
    """The ``[[users]]`` of the configuration file, converted once when the server starts."""

    @classmethod
    def from_config(cls, users: Iterable[UserConfig]) -> TomlUserStore:
        return cls(user_from_config(u) for u in users)


def user_from_config(cfg: UserConfig) -> User:
    """The User for one ``[[users]]`` table (the only place a UserConfig becomes a User)."""
    return User(
        name=cfg.name,
        root=cfg.root,
        home=cfg.home,
        password_hash=cfg.password_hash,
        keys=tuple(AuthorizedKey(blob) for blob in cfg.authorized_keys),
        read_only=cfg.read_only,
        allow_rsync=cfg.allow_rsync,
        allow_exec=cfg.allow_exec,
        quota_size=cfg.quota_size,
        quota_files=cfg.quota_files,
        max_upload_size=cfg.max_upload_size,
        upload_mode=cfg.upload_mode,
    )


def bcrypt_cost(password_hash: bytes | None) -> int | None:
    """The cost of a ``$2b$NN$...`` hash, or None if it is not one."""
    h = password_hash
    if h and len(h) > 6 and h[:1] == b"$" and h[3:4] == b"$" and h[4:6].isdigit():
        return int(h[4:6])
    return None


def _common_cost(users: Iterable[User]) -> int:
    # The most common cost among the hashes (the first seen on a tie), read once at start.
    costs = Counter(c for u in users if (c := bcrypt_cost(u.password_hash)) is not None)
    return costs.most_common(1)[0][0] if costs else DEFAULT_PASSWORD_COST
