"""The exception hierarchy shared by every sftpd module."""

from __future__ import annotations


class SftpdError(Exception):
    """Root of every error sftpd raises on purpose."""


class ConfigError(SftpdError):
    """A configuration problem, phrased as ``FILE: key.path: what was wrong; expected ...``."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class JailError(SftpdError):
    """A user's root could not be opened or a path escaped resolution."""


class PacketDecodeError(SftpdError):
    """A wire packet was malformed (short field, trailing bytes, bad flags)."""


class FramingError(SftpdError):
    """A byte stream cannot be framed (declared length too large): the channel must close."""
