"""Config checks for authentication: key lines with options, CAs, methods, TOTP, require."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from sftpd.config.keyopts import KeyLine, KeyLineError, parse_key_line
from sftpd.config.values import Values, got, read_authorized_keys_lines
from sftpd.errors import ConfigError

METHODS = ("publickey", "password", "keyboard-interactive")
DEFAULT_METHODS = METHODS


class AuthValues(Values):
    """The authentication part of the loader (a mixin of config.loader's _Loader)."""

    # [[users]] keys

    def key_lines(self, where: str, value: Any) -> tuple[KeyLine, ...]:
        lines = self.strings(where, value, "OpenSSH public key lines, options allowed")
        out: list[KeyLine] = []
        for i, text in enumerate(lines):
            try:
                out.append(parse_key_line(text, f"{where}[{i}]", 1))
            except KeyLineError as e:
                what = f"option {e.option!r}: " if e.option else ""
                raise self.err(f"{where}[{i}]", what + e.reason) from None
        return tuple(out)

    def key_lines_file(self, where: str, value: Any) -> tuple[KeyLine, ...]:
        path = self.path(where, value)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise self.err(
                where, f"cannot read {path}: {e.strerror}; expected a readable authorized_keys file"
            ) from None
        out: list[KeyLine] = []
        for number, line in read_authorized_keys_lines(text):
            try:
                out.append(parse_key_line(line, str(path), number))
            except KeyLineError as e:
                raise self.err(where, str(e)) from None
        return tuple(out)

    def principals(self, where: str, value: Any) -> tuple[str, ...]:
        names = self.strings(where, value, "certificate principal names")
        if not names or any(not n or "," in n for n in names):
            raise self.err(where, "expected a non-empty array of principal names (no commas)")
        return tuple(names)

    def totp_secret(self, where: str, value: Any) -> str:
        text = self.string(where, value)
        clean = text.replace(" ", "").upper().rstrip("=")
        try:
            key = base64.b32decode(clean + "=" * (-len(clean) % 8))
        except ValueError:
            raise self.err(
                where,
                "not base32 (letters A-Z, digits 2-7); make one with `sftpd totp-secret NAME`",
            ) from None
        if len(key) < 10:
            raise self.err(where, f"{len(key)} bytes; expected at least 10 (20 is usual)")
        return clean

    def require(self, where: str, value: Any) -> tuple[tuple[str, ...], ...]:
        if not isinstance(value, list) or not value or not all(isinstance(c, list) for c in value):
            raise self.err(
                where,
                f'expected an array of method lists like [["publickey", "password"]], {got(value)}',
            )
        out = []
        for i, chain in enumerate(value):
            names = self.strings(f"{where}[{i}]", chain, "method names")
            if not names:
                raise self.err(f"{where}[{i}]", "empty chain; expected at least one method")
            for name in names:
                if name not in METHODS:
                    raise self.err(
                        f"{where}[{i}]", f"unknown method {name!r}; expected {', '.join(METHODS)}"
                    )
            if len(set(names)) != len(names):
                raise self.err(f"{where}[{i}]", "a method is listed twice; list it once")
            out.append(tuple(names))
        return tuple(out)

    # [server] keys

    def methods(self, where: str, value: Any) -> tuple[str, ...]:
        names = self.strings(where, value, "authentication method names")
        if not names:
            raise self.err(where, "empty list; expected at least one method")
        for i, name in enumerate(names):
            if name not in METHODS:
                raise self.err(
                    f"{where}[{i}]", f"unknown method {name!r}; expected {', '.join(METHODS)}"
                )
        if len(set(names)) != len(names):
            raise self.err(where, "a method is listed twice; list it once")
        return tuple(names)

    def ca_keys(self, where: str, value: Any) -> tuple[bytes, ...]:
        return self.key_blobs(where, value, "OpenSSH public keys of user CAs")

    def ca_keys_file(self, where: str, value: Any) -> tuple[bytes, ...]:
        return self.key_blobs_file(where, value, "a file of CA public keys")

    def revoked_file(self, where: str, value: Any) -> Path:
        path = self.path(where, value)
        if not path.is_file():
            raise self.err(
                where, f"{path} is not a readable file; expected an OpenSSH KRL or key list"
            )
        return path


def check_require(
    source: str, prefix: str, require: tuple[tuple[str, ...], ...], offered: tuple[str, ...]
) -> list[ConfigError]:
    """``require`` may only name methods that ``authentication_methods`` offers."""
    errors = []
    for i, chain in enumerate(require):
        for name in chain:
            if name not in offered:
                errors.append(
                    ConfigError(
                        source,
                        f"{prefix}.require[{i}]",
                        f"{name!r} is not in [server] authentication_methods; "
                        f"expected one of {', '.join(offered)}",
                    )
                )
    return errors
