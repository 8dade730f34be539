"""The realm: turns the user a checker found into an Avatar; decides ``require`` chains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.conch.error import NotEnoughAuthentication
from twisted.conch.interfaces import IConchUser
from twisted.cred.portal import IRealm
from zope.interface import implementer

from sftpd.apps.contract import SessionContext
from sftpd.auth.avatar import Avatar, ChannelFactory
from sftpd.auth.chains import Chains
from sftpd.auth.checkers import LoggedIn, LoginRefused
from sftpd.auth.forced import with_key_options
from sftpd.auth.users import AuthorizedKey, User
from sftpd.config.authcfg import DEFAULT_METHODS


class PartialSuccess(NotEnoughAuthentication):  # type: ignore[misc]
    """A method succeeded but the user's ``require`` chain wants more: ``remaining`` are
    the methods that may come next (the userauth service answers partial success)."""

    def __init__(self, remaining: tuple[str, ...]) -> None:
        super().__init__("partial success")
        self.remaining = remaining


@implementer(IRealm)
class Realm:
    """Builds one Avatar per login; ``make_context`` opens the user's jail.

    The realm never asks the user store: the checker's avatarId (a LoggedIn) carries the
    record it found, so a login costs one lookup, made by the checker."""

    def __init__(
        self,
        make_context: Callable[[User, AuthorizedKey | None], SessionContext],
        *,
        clock: Any,
        max_sessions: int,
        make_channel: ChannelFactory,
        methods: tuple[str, ...] = DEFAULT_METHODS,
    ) -> None:
        self._methods = methods
        self._make_context = make_context
        self._clock = clock
        self._max_sessions = max_sessions
        self._make_channel = make_channel

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, Avatar, Callable[[], None]]:
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH users")
        if not isinstance(avatarId, LoggedIn):
            raise TypeError("the checkers must answer with a LoggedIn carrying the user")
        user = avatarId.user
        if user.require:
            # ``mind`` (from the userauth service) says which methods succeeded before
            done = (*getattr(mind, "done", ()), str(getattr(mind, "method", "")))
            try:
                chains = Chains.build(self._methods, user.require)
            except ValueError as e:  # a store's require naming a method not offered
                raise LoginRefused(f"require: {e}", user_known=True) from None
            if not chains.satisfied(done):
                remaining = chains.next_methods(done)
                if not remaining:
                    raise LoginRefused(
                        f"{' then '.join(done)} is not in the user's require chains",
                        user_known=True,
                    )
                raise PartialSuccess(remaining)
        ctx = self._make_context(*with_key_options(user, avatarId.key))
        avatar = Avatar(
            ctx,
            clock=self._clock,
            max_sessions=self._max_sessions,
            make_channel=self._make_channel,
        )
        avatar.user = avatarId.user  # the edge checks max_sessions, allowed_sources
        return IConchUser, avatar, avatar.logout
