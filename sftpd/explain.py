"""``sftpd explain``: what the rules decide for a user, a path and an operation, offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from sftpd.auth.forced import with_key_options
from sftpd.auth.users import AuthorizedKey, user_from_config
from sftpd.config.loader import load_config
from sftpd.config.values import parse_authorized_key
from sftpd.contexts import rules_for
from sftpd.errors import ConfigError
from sftpd.ssh.hostkeys import fingerprint
from sftpd.storage import vpath
from sftpd.storage.permissions import GROUPS, NAMES, SINGLE
from sftpd.storage.rules import Op, RsyncRefusal

EXIT_ALLOWED, EXIT_DENIED = 0, 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    explain = sub.add_parser(
        "explain",
        help="say whether a user may do an operation at a path, and which rule decides",
        description="Print whether USER (logged in with the key in --key FILE, or without a "
        "key profile) may do OP at the virtual PATH, and the rule that decides, from the "
        "configuration alone (nothing is opened: a symlink is judged by its target at run "
        f"time, so give the target). OP is one of: {', '.join(NAMES[1:])}. Also says whether "
        "rsync is served to this login, or the rule that refuses it. Exits 0 when allowed, "
        "1 when denied, 2 on a usage or configuration error.",
    )
    explain.add_argument("user", metavar="USER")
    explain.add_argument("path", metavar="PATH", help="absolute path as the user sees it")
    explain.add_argument("op", metavar="OP", choices=NAMES[1:])
    explain.add_argument("--key", type=Path, metavar="FILE", help="public key file (.pub)")
    explain.add_argument("--config", type=Path, metavar="FILE", required=True)
    explain.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    found = [u for u in config.users if u.name == args.user]
    if not found:
        raise ConfigError(str(args.config), "users", f"no user {args.user!r} in the configuration")
    user = user_from_config(found[0])
    key: AuthorizedKey | None = None
    who = f"{user.name} (without a key profile)"
    if args.key is not None:
        try:
            blob = parse_authorized_key(args.key.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError) as e:
            raise ConfigError(str(args.key), "--key", f"not a public key file: {e}") from None
        key = user.key(blob)
        if key is None:
            raise ConfigError(str(args.key), "--key", f"not one of {user.name}'s keys")
        who = f"{user.name} with key {fingerprint(blob)}"
    if not args.path.startswith("/"):
        raise ConfigError(
            "explain", "PATH", f"{args.path!r} is not absolute; expected e.g. /incoming"
        )
    path = vpath.normalize(args.path)
    user, key = with_key_options(user, key)  # a forced command (rrsync) narrows the key
    rules = rules_for(user, key, umask=config.sftp.umask)
    status = EXIT_ALLOWED
    for name in GROUPS.get(args.op, (args.op,)) if args.op != "*" else SINGLE:
        rule = rules.decide(Op(name), path)
        if rule is None:
            print(f'allowed: "{name}" at {path} for {who}')
        else:
            status = EXIT_DENIED
            print(f'denied: "{name}" at {path} for {who}: {rule}')
    grant = rules.rsync(user.root)
    if isinstance(grant, RsyncRefusal):
        print(f"rsync: refused: {grant.reason}")
    else:
        kinds = ["download" if grant.send else "", "upload" if grant.receive else ""]
        print(f"rsync: served ({', '.join(k for k in kinds if k)})")
    return status
