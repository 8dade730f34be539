"""The user record and the user-store seam: who may log in, with which keys, into which root."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from twisted.internet import defer

from sftpd.config.keyopts import KeyOptions
from sftpd.config.model import UserConfig
from sftpd.edge.config import UserEdge

DEFAULT_PASSWORD_COST = 12  # bcrypt cost when a store has no hash to take it from


@dataclass(frozen=True)
class AuthorizedKey:
    """One key a user may log in with.

    ``blob`` is the public key in SSH wire format. ``options`` holds the key's parsed
    OpenSSH options (``from``, ``expiry-time``, ``restrict``, ``command``,
    ``cert-authority``...); a ``cert-authority`` entry is a CA for the user's
    certificates, never a login key itself. A per-key profile (``[[users.keys]]``) is
    ``permissions`` (narrows the user's), ``protocols`` (of sftp, scp, rsync, hashes) and
    ``home``; None means "as the user".
    """

    blob: bytes
    comment: str = ""
    options: KeyOptions = field(default_factory=KeyOptions)
    permissions: tuple[str, ...] | None = None
    protocols: tuple[str, ...] | None = None
    home: str | None = None


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
    # Authentication (issue 17): certificate principals (None: the name), a base32 TOTP
    # secret (None: no code asked), chains of methods that must all succeed (empty: any
    # one offered method).
    principals: tuple[str, ...] | None = None
    totp_secret: str | None = None
    require: tuple[tuple[str, ...], ...] = ()
    edge: UserEdge = field(default_factory=UserEdge)  # max_sessions, allowed_sources
    # (absolute virtual directory, permission names): () = everything everywhere.
    permissions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    deny_files: tuple[str, ...] = ()
    hide_files: tuple[str, ...] = ()
    quota_size: int = 0  # bytes; 0 = unlimited
    quota_files: int = 0  # files; 0 = unlimited
    max_upload_size: int = 0  # bytes per file; 0 = unlimited
    upload_mode: str = "atomic"  # or "direct"

    def key(self, blob: bytes) -> AuthorizedKey | None:
        """The login entry for the public key ``blob``, or None if it is not the user's."""
        for entry in self.keys:
            if entry.blob == blob and not entry.options.cert_authority:
                return entry
        return None

    def cert_authorities(self) -> tuple[AuthorizedKey, ...]:
        """The user's own ``cert-authority`` key lines."""
        return tuple(k for k in self.keys if k.options.cert_authority)


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

    def names(self) -> frozenset[str]:
        """The names held (the chain of file and database stores asks which are the file's)."""
        return frozenset(self._users)


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
        keys=_keys(cfg),
        read_only=cfg.read_only,
        allow_rsync=cfg.allow_rsync,
        allow_exec=cfg.allow_exec,
        principals=cfg.principals,
        totp_secret=cfg.totp_secret,
        require=cfg.require,
        edge=cfg.edge,
        permissions=cfg.permissions,
        deny_files=cfg.deny_files,
        hide_files=cfg.hide_files,
        quota_size=cfg.quota_size,
        quota_files=cfg.quota_files,
        max_upload_size=cfg.max_upload_size,
        upload_mode=cfg.upload_mode,
    )


def _keys(cfg: UserConfig) -> tuple[AuthorizedKey, ...]:
    # Keys with a profile first: a key also listed in authorized_keys gets its profile and
    # keeps that line's options (from=, expiry-time...: a profile narrows, never widens).
    # key_lines carries the options of authorized_keys lines; a UserConfig built without
    # them (the embedded default, tests) has only blobs.
    line_options = {line.blob: line.options for line in reversed(cfg.key_lines)}
    profiled = tuple(
        AuthorizedKey(
            k.blob,
            k.comment,
            options=line_options.get(k.blob) or getattr(k, "options", None) or KeyOptions(),
            permissions=k.permissions,
            protocols=k.protocols,
            home=k.home,
        )
        for k in cfg.keys
    )
    seen = {k.blob for k in profiled}
    if cfg.key_lines:
        plain = tuple(
            AuthorizedKey(line.blob, options=line.options)
            for line in cfg.key_lines
            if line.blob not in seen
        )
    else:
        plain = tuple(AuthorizedKey(b) for b in cfg.authorized_keys if b not in seen)
    return profiled + plain


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
