"""Values of the ``sftpd user`` options: names, sizes, keys, passwords, and their checks."""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from pathlib import Path
from typing import Any

import bcrypt

from sftpd.auth.stores.records import SETTINGS, InvalidRecord, KeyRecord, UserRecord
from sftpd.config.values import parse_authorized_key, parse_size, read_authorized_keys_lines


class UsageError(Exception):
    """A precise message for stderr; the command exits 2."""


def name_list(text: str) -> list[str]:
    """``a,b,c`` as a list (the names are checked with the record, as the config checks them)."""
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_permissions(values: list[str]) -> Any:
    """``--permissions``: one list ``list,download`` for the whole root; or, repeatable,
    ``DIR=LIST`` per directory (``/=list --permissions /in=list,upload``); or a JSON table
    ``{"/": [...], "/in": [...]}``. The names and directories are checked with the record."""
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            table = json.loads(values[0])
        except ValueError as e:
            raise UsageError(f"--permissions: not a JSON table ({e})") from None
        if not isinstance(table, dict):
            raise UsageError("--permissions: expected a JSON table of directory -> list")
        return table
    if not any("=" in v for v in values):
        if len(values) > 1:
            raise UsageError(
                "--permissions: give one list for the whole root, or DIR=LIST for each directory"
            )
        return name_list(values[0])
    out: dict[str, Any] = {}
    for value in values:
        directory, sep, names = value.partition("=")
        if not sep or value.lstrip().startswith("{"):
            raise UsageError(
                f"--permissions: {value!r} is not DIR=LIST; with one DIR=LIST, every "
                "--permissions must be one (like /=list,download)"
            )
        if directory.strip() in out:
            raise UsageError(f"--permissions: {directory.strip()!r} is given twice")
        out[directory.strip()] = name_list(names)
    return out


def size(text: str) -> int:
    """A byte count: ``1000``, ``512KiB``, ``10MiB``, ``1GiB``; 0 = unlimited."""
    value = parse_size(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a number of bytes >= 0, optionally with KiB, MiB or GiB (0: unlimited), "
            f"got {text!r}"
        )
    return value


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


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    # The options kept in the settings JSON, as the [[users]] keys they stand for.
    out: dict[str, Any] = {}
    for field in ("max_upload_size", "upload_mode", "max_sessions"):
        if getattr(args, field) is not None:
            out[field] = getattr(args, field)
    for field in ("allowed_sources", "principals"):
        if getattr(args, field) is not None:
            out[field] = name_list(getattr(args, field))
    for field in ("deny_files", "hide_files"):
        if getattr(args, field) is not None:
            out[field] = [p for p in getattr(args, field) if p]
    if args.require is not None:
        out["require"] = [name_list(c) for c in args.require if name_list(c)]
    return out


# The option that sets each field of a record (for the messages of `check`).
OPTIONS = {
    "root": "--root",
    "home": "--home",
    "password_hash": "--password",
    "read_only": "--read-only",
    "allow_rsync": "--allow-rsync",
    "allow_exec": "--allow-exec",
    "permissions": "--permissions",
    "protocols": "--protocols",
    **{f: "--" + f.replace("_", "-") for f in (*SETTINGS, "quota_size", "quota_files")},
}


def checked(rec: UserRecord, given: set[str]) -> UserRecord:
    """``rec`` if it checks as a ``[[users]]`` table (what a login will check); otherwise
    UsageError naming the option (or, for a value stored before, the field)."""
    try:
        rec.check()
    except InvalidRecord as e:
        field, message = e.problems[0]
        if field.startswith("key "):  # a key's profile: "permissions[0]: ..."
            head, _, rest = message.partition(": ")
            option = OPTIONS.get(head.split("[")[0].split(".")[0])
            if option in given and rest:
                raise UsageError(f"{option}: {rest}") from None
            raise UsageError(f"{field}: {message}") from None
        root = field.split("[")[0].split(".")[0]
        option = OPTIONS.get(root)
        rest = re.sub(r"\[\d+\]$", "", field[len(root) :].lstrip("."))  # the value says it
        detail = f"{rest}: {message}" if rest else message
        if option is not None and option in given:
            raise UsageError(f"{option}: {detail}") from None
        hint = f"; set it again with {option}" if option else ""
        raise UsageError(f"user {rec.name!r}: the stored {field}: {message}{hint}") from None
    return rec


def given_options(args: argparse.Namespace) -> set[str]:
    out = set()
    for field, option in OPTIONS.items():
        value = getattr(args, field, None)
        if value is not None and value is not ... and value is not False:
            out.add(option)
    if getattr(args, "password", False) or getattr(args, "password_stdin", False):
        out.add("--password")
    return out
