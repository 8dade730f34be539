"""The realm: turns the user a checker found into an Avatar with its jailed storage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.conch.interfaces import IConchUser
from twisted.cred.portal import IRealm
from zope.interface import implementer

from sftpd.apps.contract import SessionContext
from sftpd.auth.avatar import Avatar, ChannelFactory
from sftpd.auth.checkers import LoggedIn
from sftpd.auth.users import AuthorizedKey, User


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
    ) -> None:
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
        ctx = self._make_context(avatarId.user, avatarId.key)
        avatar = Avatar(
            ctx,
            clock=self._clock,
            max_sessions=self._max_sessions,
            make_channel=self._make_channel,
        )
        return IConchUser, avatar, avatar.logout
