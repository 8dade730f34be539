"""The user database: who may log in, with which credentials, into which root."""

from __future__ import annotations

from collections.abc import Iterable

from sftpd.config.model import UserConfig


class UserDB:
    """An immutable name -> UserConfig lookup, built once from the configuration."""

    def __init__(self, users: Iterable[UserConfig]) -> None:
        self._users = {u.name: u for u in users}

    def get(self, name: str) -> UserConfig | None:
        """The user called ``name``, or None."""
        return self._users.get(name)

    def __len__(self) -> int:
        return len(self._users)
