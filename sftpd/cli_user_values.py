"""Values of the ``sftpd user`` options: permission and protocol names, keys, passwords."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

import bcrypt

from sftpd.auth.stores.records import KeyRecord
from sftpd.config.values import parse_authorized_key, read_authorized_keys_lines

# As SFTPGo's (issue 13 gives them meaning); refused here when misspelt.
PERMISSIONS = (
    "*",
    "list",
    "download",
    "upload",
    "overwrite",
    "delete",
    "delete_files",
    "delete_dirs",
    "rename",
    "rename_files",
    "rename_dirs",
    "create_dirs",
    "create_symlinks",
    "chmod",
    "chtimes",
)
PROTOCOLS = ("sftp", "scp", "rsync", "hashes")


class UsageError(Exception):
    """A precise message for stderr; the command exits 2."""


def name_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if not names or bad:
        shown = ", ".join(repr(n) for n in bad) if bad else "nothing"
        raise UsageError(f"--{what}: {shown} is not one of: {', '.join(allowed)}")
    return names


def parse_permissions(text: str) -> Any:
    """``list,upload`` (the whole root) or a JSON table ``{"/": [...], "/in": [...]}``."""
    if not text.lstrip().startswith("{"):
        return name_list(text, PERMISSIONS, "permissions")
    try:
        table = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--permissions: not a JSON table ({e})") from None
    out: dict[str, list[str]] = {}
    for directory, names in table.items():
        if not isinstance(directory, str) or not directory.startswith("/"):
            raise UsageError(f"--permissions: {directory!r} is not an absolute directory")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UsageError(f"--permissions: {directory!r} needs a list of permission names")
        out[directory] = name_list(",".join(names), PERMISSIONS, "permissions")
    return out


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 0 (0: unlimited), got {text!r}"
        )
    return value


def tristate(text: str) -> bool | None:
    values = {"yes": True, "no": False, "default": None}
    if text not in values:
        raise argparse.ArgumentTypeError(f"expected yes, no or default, got {text!r}")
    return values[text]


def read_keys(value: str, *, profile: dict[str, Any] | None = None) -> list[KeyRecord]:
    """The keys of ``--key``: an authorized_keys/.pub file, or one key line."""
    path = Path(value)
    lines: list[tuple[str, str]]
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise UsageError(f"--key {value}: cannot read: {e.strerror}") from None
        lines = [(f"{value} line {n}", line) for n, line in read_authorized_keys_lines(text)]
        if not lines:
            raise UsageError(f"--key {value}: the file has no key lines")
    else:
        lines = [("--key", value)]
    out = []
    for where, line in lines:
        try:
            parse_authorized_key(line)
        except ValueError as e:
            hint = "" if path.is_file() or " " in value else " (and no such file)"
            raise UsageError(f"{where}: {e}{hint}") from None
        fields = line.split()
        out.append(KeyRecord(f"{fields[0]} {fields[1]}", " ".join(fields[2:]), (), profile or {}))
    return out


def read_password(args: argparse.Namespace) -> bytes:
    """The bcrypt hash of a password from the terminal (asked twice) or one stdin line."""
    if args.password_stdin:
        secret = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        if not sys.stdin.isatty():
            raise UsageError("--password asks on a terminal; pipe it with --password-stdin")
        secret = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != secret:
            raise UsageError("the passwords do not match")
    raw = secret.encode("utf-8")
    if not raw:
        raise UsageError("empty password; expected at least one character")
    if len(raw) > 72:
        raise UsageError("bcrypt uses at most 72 bytes; expected a shorter password")
    return bcrypt.hashpw(raw, bcrypt.gensalt(args.rounds))
