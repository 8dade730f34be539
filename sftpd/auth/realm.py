"""The realm: turns an authenticated user name into an Avatar with its jailed storage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.conch.interfaces import IConchUser
from twisted.cred.portal import IRealm
from zope.interface import implementer

from sftpd.apps.contract import SessionContext
from sftpd.auth.avatar import Avatar, ChannelFactory
from sftpd.auth.users import UserDB
from sftpd.config.model import UserConfig


@implementer(IRealm)
class Realm:
    """Builds one Avatar per login; ``make_context`` opens the user's jail."""

    def __init__(
        self,
        users: UserDB,
        make_context: Callable[[UserConfig], SessionContext],
        *,
        clock: Any,
        max_sessions: int,
        make_channel: ChannelFactory,
    ) -> None:
        self._users = users
        self._make_context = make_context
        self._clock = clock
        self._max_sessions = max_sessions
        self._make_channel = make_channel

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a configured user (logged: "invalid user" otherwise)."""
        return self._users.get(name) is not None

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, Avatar, Callable[[], None]]:
        if IConchUser not in interfaces or not isinstance(avatarId, bytes):
            raise NotImplementedError("only SSH users")
        user = self._users.get(avatarId.decode("utf-8"))
        if user is None:
            raise KeyError("user vanished")
        ctx = self._make_context(user)
        avatar = Avatar(
            ctx,
            clock=self._clock,
            max_sessions=self._max_sessions,
            make_channel=self._make_channel,
        )
        return IConchUser, avatar, avatar.logout
