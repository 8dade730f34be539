"""Config checks for what a user may do: permissions, deny/hide patterns, per-key profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sftpd.config.keyopts import (
    KeyLineError,
    KeyOptions,
    OptionError,
    parse_key_line,
    parse_options,
    split_options,
)
from sftpd.config.values import Check, Values, got
from sftpd.storage.permissions import PROTOCOLS, expand, pattern_problem

# (absolute virtual directory, permission names as written), one entry per directory.
PermissionTable = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class KeyProfileConfig:
    """One ``[[users.keys]]`` entry: a key with its own profile.

    ``permissions`` None: the user's; ``protocols`` None: all; ``home`` None: the user's.
    ``options``: the key's OpenSSH options (``options = "..."``, or written before the key
    type in ``key`` as in an authorized_keys line)."""

    blob: bytes
    comment: str = ""
    permissions: tuple[str, ...] | None = None
    protocols: tuple[str, ...] | None = None
    home: str | None = None
    options: KeyOptions = field(default_factory=KeyOptions)


class AccessValues(Values):
    """The checks of ``permissions``, ``deny_files``, ``hide_files`` and ``keys``."""

    def access_checks(self) -> dict[str, Check]:
        return {
            "permissions": self.permissions,
            "deny_files": self.patterns,
            "hide_files": self.patterns,
            "keys": self.key_profiles,
        }

    def permission_names(self, where: str, value: Any) -> tuple[str, ...]:
        return tuple(self.each(where, value, "permission names", _permission_name))

    def permissions(self, where: str, value: Any) -> PermissionTable:
        if isinstance(value, list):
            return (("/", self.permission_names(where, value)),)
        if not isinstance(value, dict) or not value:
            raise self.err(
                where,
                "expected a list of permission names or a table of absolute directory -> list, "
                f"{got(value)}",
            )
        out: dict[str, tuple[str, ...]] = {}
        for directory, names in value.items():
            key = f'{where}."{directory}"'
            canonical = self.home(key, directory)  # absolute, normalised
            if canonical in out:
                raise self.err(key, f"overlaps another key naming {canonical}; list it once")
            out[canonical] = self.permission_names(key, names)
        return tuple(out.items())

    def patterns(self, where: str, value: Any) -> tuple[str, ...]:
        patterns = self.strings(where, value, "glob patterns")
        for i, pattern in enumerate(patterns):
            problem = pattern_problem(pattern)
            if problem is not None:
                raise self.err(f"{where}[{i}]", f"pattern {pattern!r} cannot match: {problem}")
        return tuple(patterns)

    def protocols(self, where: str, value: Any) -> tuple[str, ...]:
        names = self.strings(where, value, "protocol names")
        for i, name in enumerate(names):
            if name not in PROTOCOLS:
                raise self.err(
                    f"{where}[{i}]",
                    f"unknown protocol {name!r}; expected some of: " + ", ".join(PROTOCOLS),
                )
        return tuple(names)

    def key_profiles(self, where: str, value: Any) -> tuple[KeyProfileConfig, ...]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.err(where, f"expected an array of tables ([[users.keys]]), {got(value)}")
        out: list[KeyProfileConfig] = []
        for i, data in enumerate(value):
            prefix = f"{where}[{i}]"
            before = len(self.errors)
            checks: dict[str, Check] = {
                "key": self.key_line,
                "options": self.key_options,
                "permissions": self.permission_names,
                "protocols": self.protocols,
                "home": self.home,
            }
            got_ = self.table(data, prefix, checks)
            if "key" not in data:
                self.errors.append(self.err(f"{prefix}.key", "missing; expected a public key line"))
            if len(self.errors) == before:
                blob, comment, in_line = got_.pop("key")
                options = got_.pop("options", None)
                if options is not None and in_line is not None:
                    self.errors.append(
                        self.err(
                            f"{prefix}.options",
                            "the key line has options of its own; give them in one place",
                        )
                    )
                    continue
                options = options or in_line or KeyOptions()
                at = f"{prefix}.options" if "options" in data else f"{prefix}.key"
                if options.cert_authority:
                    self.errors.append(
                        self.err(
                            at,
                            "option 'cert-authority': a CA's certificates do not get a "
                            "[[users.keys]] profile; list the CA in authorized_keys",
                        )
                    )
                    continue
                out.append(KeyProfileConfig(blob, comment, options=options, **got_))
        return tuple(out)

    def key_line(self, where: str, value: Any) -> tuple[bytes, str, KeyOptions | None]:
        """A key line, OpenSSH options allowed before the key type (None: it has none)."""
        line = self.string(where, value)
        try:
            parsed = parse_key_line(line, where)
        except KeyLineError as e:
            what = f"option {e.option!r}: " if e.option else ""
            raise self.err(where, what + e.reason) from None
        opts_text, key_text = split_options(line)
        fields = key_text.split(None, 2)
        comment = fields[2] if len(fields) > 2 else ""
        return parsed.blob, comment, parsed.options if opts_text else None

    def key_options(self, where: str, value: Any) -> KeyOptions:
        """``options``: one OpenSSH option list, as written before a key in authorized_keys."""
        text = self.string(where, value).strip(" \t")
        head, rest = split_options(text)
        if rest:
            raise self.err(
                where,
                "unexpected text after the options (a space ends them, as in authorized_keys; "
                "put the key in key)",
            )
        try:
            return parse_options(head)
        except OptionError as e:
            raise self.err(where, f"option {e.option!r}: {e.reason}") from None


def _permission_name(name: str) -> str:
    expand([name])  # ValueError for a name that is not one
    return name
