"""Command line: ``sftpd user ...``, the users of the ``[users_db]`` database."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sftpd.auth.stores.records import UserDb, UserRecord
from sftpd.cli_db import EXIT_OK, common_options, open_db, wrap
from sftpd.cli_user_values import (
    UsageError,
    checked,
    count,
    given_options,
    name_list,
    parse_permissions,
    read_keys,
    read_password,
    settings_of,
    size,
    tristate,
)
from sftpd.config.loader import load_config, make_root
from sftpd.config.values import Values
from sftpd.errors import ConfigError, JailError
from sftpd.storage.permissions import PROTOCOLS


def _user_options(p: argparse.ArgumentParser, *, adding: bool) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--root", metavar="DIR", required=adding, help="the directory the user sees as /"
    )
    p.add_argument("--home", metavar="PATH", help='start directory inside the root (default "/")')
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password", action="store_true", help="ask for a password (twice)")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    if not adding:
        pw.add_argument("--no-password", action="store_true", help="remove the password")
    p.add_argument(
        "--key",
        metavar="FILE|LINE",
        action="append",
        default=[],
        help="a public key line or a file of them; repeatable"
        + ("" if adding else " (replaces the user's keys)"),
    )
    ro = p.add_mutually_exclusive_group()
    ro.add_argument("--read-only", action="store_true", default=None, help="list and download only")
    if not adding:
        ro.add_argument("--read-write", action="store_true", help="undo --read-only")
    p.add_argument(
        "--permissions",
        metavar="LIST|DIR=LIST|JSON",
        action="append",
        help="list,download,upload for the whole root; or DIR=LIST per directory, repeatable "
        '(/=list,download --permissions /in=list,upload); or a JSON table {"/": [...]}',
    )
    p.add_argument("--quota-size", metavar="BYTES", type=size, help="e.g. 10GiB; 0: unlimited")
    p.add_argument("--quota-files", metavar="N", type=count, help="0: unlimited")
    p.add_argument("--max-upload-size", metavar="BYTES", type=size, help="per file; 0: unlimited")
    p.add_argument("--upload-mode", metavar="atomic|direct", help="how uploads land")
    p.add_argument(
        "--max-sessions",
        metavar="N",
        type=count,
        help="sessions at once, counted per server process (each worker and node); 0: no limit",
    )
    p.add_argument(
        "--allowed-sources", metavar="NETS", help='10.0.0.0/8,192.0.2.7 ("": any source)'
    )
    for flag in ("deny", "hide"):
        p.add_argument(
            f"--{flag}-files",
            metavar="GLOB",
            action="append",
            help=f'{flag} names matching it; repeatable (replaces the list; "": none)',
        )
    p.add_argument("--principals", metavar="NAMES", help='certificate principals ("": the name)')
    p.add_argument(
        "--require",
        metavar="METHODS",
        action="append",
        help='methods that must all succeed, like publickey,password; repeatable ("": any)',
    )
    p.add_argument("--allow-rsync", metavar="yes|no|default", type=tristate, default=...)
    p.add_argument("--allow-exec", metavar="yes|no|default", type=tristate, default=...)


def add_commands(sub: Any, formatter: Callable[[str], argparse.HelpFormatter]) -> None:
    """Add ``user`` to the top-level subparsers."""
    common = common_options()
    user = sub.add_parser(
        "user",
        help="manage the users in [users_db]",
        formatter_class=formatter,
        description="Add, change and remove the users of the [users_db] database. Changes "
        "reach logins within [users_db] cache_seconds, on every server sharing the "
        "database; a disabled or removed user's sessions are closed within that time.\n"
        "Passwords are asked on the terminal (--password) or read from stdin "
        "(--password-stdin), never given as arguments. Errors exit 2.",
    )
    cmds = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = cmds.add_parser("add", parents=[common], help="add a user (creates its root)")
    _user_options(add, adding=True)
    add.set_defaults(func=wrap(cmd_add))
    lst = cmds.add_parser("list", parents=[common], help="list the users")
    lst.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    lst.set_defaults(func=wrap(cmd_list))
    show = cmds.add_parser("show", parents=[common], help="show one user (JSON)")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=wrap(cmd_show))
    st = cmds.add_parser("set", parents=[common], help="change a user")
    _user_options(st, adding=False)
    st.set_defaults(func=wrap(cmd_set))
    pw = cmds.add_parser("passwd", parents=[common], help="set a user's password")
    pw.add_argument("name", metavar="NAME")
    pw.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    pw.set_defaults(func=wrap(cmd_passwd))
    key = cmds.add_parser("key", help="add or remove one key")
    keys = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    kadd = keys.add_parser("add", parents=[common], help="add a key (with its own profile)")
    kadd.add_argument("name", metavar="NAME")
    kadd.add_argument("key", metavar="FILE|LINE")
    kadd.add_argument(
        "--permissions", metavar="LIST", help="e.g. list,upload: narrows the user's for this key"
    )
    kadd.add_argument("--protocols", metavar="LIST", help=f"of {', '.join(PROTOCOLS)}")
    kadd.add_argument("--home", metavar="PATH", help="start directory for this key")
    kadd.set_defaults(func=wrap(cmd_key_add))
    krm = keys.add_parser("remove", parents=[common], help="remove a key by fingerprint")
    krm.add_argument("name", metavar="NAME")
    krm.add_argument("fingerprint", metavar="FINGERPRINT", help="SHA256:... as ssh-keygen -l")
    krm.set_defaults(func=wrap(cmd_key_remove))
    for action, flag in (("disable", True), ("enable", False)):
        p = cmds.add_parser(action, parents=[common], help=f"{action} logins of a user")
        p.add_argument("name", metavar="NAME")
        p.set_defaults(func=wrap(cmd_disable), disabled=flag)
    rm = cmds.add_parser("del", parents=[common], help="delete a user and its root's files")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--keep-files", action="store_true", help="leave the root directory alone")
    rm.set_defaults(func=wrap(cmd_del))
    rs = cmds.add_parser(
        "rescan",
        parents=[common],
        help="count a user's root again and store it as its quota usage",
        description="Count the regular files under a user's root (a [[users]] or a "
        "database user) and store the count as its quota usage in [users_db]; running "
        "servers use it within a second. Needed when files changed behind sftpd's back.",
    )
    rs.add_argument("name", metavar="NAME")
    rs.set_defaults(func=wrap(cmd_rescan))


def _existing(db: UserDb, name: str) -> UserRecord:
    rec = db.get(name)
    if rec is None:
        raise UsageError(f"no user {name!r} in the database")
    return rec


def _changes(args: argparse.Namespace, old: UserRecord | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    checker = Values("command line", Path.cwd())
    try:
        if args.root is not None:
            out["root"] = Path(os.path.abspath(args.root))
        if args.home is not None:
            out["home"] = checker.home("--home", args.home)
    except ConfigError as e:
        raise UsageError(e.message) from None
    if args.password or args.password_stdin:
        out["password_hash"] = read_password(args)
    elif getattr(args, "no_password", False):
        out["password_hash"] = None
    if args.key:
        unique = {k.fingerprint: k for v in args.key for k in read_keys(v)}
        out["keys"] = tuple(unique.values())
    if args.read_only:
        out["read_only"] = True
    elif getattr(args, "read_write", False):
        out["read_only"] = False
    if args.permissions is not None:
        out["permissions"] = parse_permissions(args.permissions)
    for field in ("quota_size", "quota_files"):
        if getattr(args, field) is not None:
            out[field] = getattr(args, field)
    for field in ("allow_rsync", "allow_exec"):
        if getattr(args, field) is not ...:
            out[field] = getattr(args, field)
    settings = dict(old.settings) if old is not None else {}
    for field, value in settings_of(args).items():
        if value in (None, 0, [], ""):  # the default: nothing stored
            settings.pop(field, None)
        else:
            settings[field] = value
    if settings != (old.settings if old is not None else {}):
        out["settings"] = settings
    return out


def _check_way_in(rec: UserRecord) -> None:
    if rec.password_hash is None and not rec.keys:
        raise UsageError(f"user {rec.name!r} would have no way to log in; give --password or --key")


def cmd_add(args: argparse.Namespace) -> int:
    try:
        name = Values("command line", Path.cwd()).user_name("NAME", args.name)
    except ConfigError as e:
        raise UsageError(e.message) from None
    config, db = open_db(args)
    if any(u.name == name for u in config.users):
        raise UsageError(
            f"user {name!r} is in [[users]] of {args.config}; a name lives in the file or "
            "the database, not both"
        )
    if db.get(name) is not None:
        raise UsageError(f"user {name!r} exists already; change it with `sftpd user set`")
    rec = replace(UserRecord(name=name, root=Path("/")), **_changes(args, None))
    _check_way_in(rec)
    checked(rec, given_options(args))
    try:
        make_root(rec.root)
    except OSError as e:
        raise UsageError(f"--root: cannot create the directory: {e.strerror}") from None
    db.add(rec)
    print(f"added user {name!r} with {len(rec.keys)} key(s)")
    return EXIT_OK


def cmd_set(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    old = _existing(db, args.name)
    new = replace(old, **_changes(args, old))
    _check_way_in(new)
    checked(new, given_options(args))
    db.put(new)
    print(f"changed user {args.name!r}")
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    _existing(db, args.name)
    args.password = not args.password_stdin
    db.update(args.name, password_hash=read_password(args))
    print(f"changed the password of {args.name!r}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    users = list(db.all())
    if args.json:
        print(json.dumps([u.public() for u in users], indent=2))
        return EXIT_OK
    rows = [("NAME", "ROOT", "KEYS", "PASSWORD", "STATE", "QUOTA")]
    for u in users:
        flags = ",".join(
            f for f, on in (("disabled", u.disabled), ("read-only", u.read_only)) if on
        )
        quota = f"{u.quota_size or '-'} B / {u.quota_files or '-'} files"
        rows.append(
            (
                u.name,
                str(u.root),
                str(len(u.keys)),
                "yes" if u.password_hash else "no",
                flags or "ok",
                quota,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    print(json.dumps(_existing(db, args.name).public(), indent=2))
    return EXIT_OK


def cmd_key_add(args: argparse.Namespace) -> int:
    profile: dict[str, Any] = {}
    if args.permissions is not None:
        profile["permissions"] = name_list(args.permissions)
    if args.protocols is not None:
        profile["protocols"] = name_list(args.protocols)
    if args.home is not None:
        profile["home"] = args.home
    added = read_keys(args.key, profile=profile)
    _, db = open_db(args)
    old = _existing(db, args.name)
    given = {f"--{k}" for k in profile}
    checked(replace(old, keys=tuple(added)), given)  # the new key's profile first
    have = {k.fingerprint for k in old.keys}
    dup = [k.fingerprint for k in added if k.fingerprint in have]
    if dup:
        raise UsageError(f"user {args.name!r} has the key {dup[0]} already")
    db.put(checked(replace(old, keys=old.keys + tuple(added)), given))
    for k in added:
        print(f"added key {k.fingerprint} to {args.name!r}")
    return EXIT_OK


def cmd_key_remove(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    old = _existing(db, args.name)
    wanted = (
        args.fingerprint if args.fingerprint.startswith("SHA256:") else f"SHA256:{args.fingerprint}"
    )
    keep = tuple(k for k in old.keys if k.fingerprint != wanted)
    if len(keep) == len(old.keys):
        listed = ", ".join(k.fingerprint for k in old.keys) or "none"
        raise UsageError(f"user {args.name!r} has no key {wanted} (its keys: {listed})")
    new = replace(old, keys=keep)
    _check_way_in(new)
    db.put(new)
    print(f"removed key {wanted} from {args.name!r}")
    return EXIT_OK


def cmd_disable(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    _existing(db, args.name)
    db.update(args.name, disabled=args.disabled)
    print(f"{'disabled' if args.disabled else 'enabled'} user {args.name!r}")
    return EXIT_OK


def cmd_del(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    rec = _existing(db, args.name)
    db.delete(args.name)
    removed = ""
    if not args.keep_files and rec.root != Path("/") and rec.root.is_dir():
        shutil.rmtree(rec.root, ignore_errors=True)
        removed = " and its files"
    print(f"deleted user {args.name!r}{removed}")
    return EXIT_OK


def cmd_rescan(args: argparse.Namespace) -> int:
    from sftpd.storage.local import LocalStorage
    from sftpd.storage.quota import human_size, scan_usage

    if load_config(args.config).users_db is None:
        raise UsageError(
            f"{args.config} has no [users_db]: without a database each server counts "
            "usage at its start, there is nothing stored to rescan"
        )
    config, db = open_db(args)
    in_file = [u.root for u in config.users if u.name == args.name]
    rec = None if in_file else db.get(args.name)
    if not in_file and rec is None:
        raise UsageError(f"no user {args.name!r} in the config file or the database")
    root = in_file[0] if in_file else rec.root  # type: ignore[union-attr]
    try:
        jail = LocalStorage(root)
        try:
            nbytes, files = scan_usage(jail)
        finally:
            jail.close()
    except JailError as e:  # the root itself: "cannot open the storage root: ..."
        raise UsageError(f"cannot count the files of {args.name!r}: {e}") from None
    except OSError as e:
        raise UsageError(f"cannot count the files of {args.name!r}: {e.strerror or e}") from None
    before = db.usage(args.name)
    db.set_usage(args.name, str(root), nbytes, files)
    was = "never counted" if before is None else f"was {human_size(before[0])} in {before[1]} files"
    print(f"{args.name}: {human_size(nbytes)} in {files} files ({was})")
    return EXIT_OK
