"""Command line: ``sftpd ban list|add|remove`` on the bans the servers share in ``[users_db]``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from sftpd.auth.stores.bans import BanDb
from sftpd.cli_db import EXIT_OK, common_options, open_db, wrap
from sftpd.cli_user_values import UsageError
from sftpd.config.model import Config
from sftpd.edge.bans import MINUTE, Ban, ban_key, check_minutes, remembered

TICK_SECONDS = 5  # sftpd.edge.defender.TICK (not imported: it would pull in Twisted)


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    try:
        return check_minutes(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_commands(sub: Any, formatter: Callable[[str], argparse.HelpFormatter]) -> None:
    """Add ``ban`` to the top-level subparsers."""
    common = common_options(rounds=False)
    ban = sub.add_parser(
        "ban",
        help="list, add and remove the defender's bans in [users_db]",
        formatter_class=formatter,
        description="List, add and remove the bans of [defender], kept in the [users_db] "
        "database that every\nserver (every node and worker process) sharing it reads every "
        f"{TICK_SECONDS} s: a ban added here is refused\neverywhere within that time, a "
        "removed one lets the source in again. SOURCE is an IP address\n(IPv6 counts per "
        '/64: 2001:db8::1 bans 2001:db8::/64) or such a /64 ("2001:db8::/64", or\n'
        '"192.0.2.7/32"); whole networks belong in [defender] block_list.\n'
        "Without [users_db] the bans live in each running server's memory only and cannot\n"
        "be reached from here (exit 2). Errors exit 2; an unreachable database 1.",
    )
    cmds = ban.add_subparsers(dest="ban_command", metavar="ACTION", required=True)
    lst = cmds.add_parser("list", parents=[common], help="the bans in force, soonest end first")
    lst.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    lst.set_defaults(func=wrap(cmd_list))
    add = cmds.add_parser("add", parents=[common], help="ban a source")
    add.add_argument("source", metavar="SOURCE", help="an IP address (IPv6: its /64)")
    add.add_argument(
        "--minutes", metavar="N", type=_minutes,
        help="how long (fractions allowed; default: [defender] ban_time)",
    )  # fmt: skip
    add.set_defaults(func=wrap(cmd_add))
    rm = cmds.add_parser("remove", parents=[common], help="lift a ban and forget its history")
    rm.add_argument("source", metavar="SOURCE", help="as given to add, or as list shows it")
    rm.set_defaults(func=wrap(cmd_remove))


def open_bans(args: argparse.Namespace) -> tuple[Config, BanDb]:
    """The configuration and the bans table of its (migrated) database."""
    config, db = open_db(
        args,
        without=": the bans live in the running server's memory only (each worker process "
        'its own), which this command cannot reach; add [users_db] (url = "sqlite:..." or '
        '"postgresql://...") to keep them in the database, shared by every node and worker',
    )
    return config, BanDb(db.db)


def _source(text: str) -> str:
    try:
        return ban_key(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _left(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _public(ban: Ban, now: float) -> dict[str, Any]:
    return {
        "source": ban.source,
        "until": _when(ban.until),
        "seconds_left": round(ban.until - now, 1),
        "count": ban.count,
        "reason": ban.reason,
    }


def cmd_list(args: argparse.Namespace) -> int:
    _, bans = open_bans(args)
    now = time.time()
    active = sorted((b for b in bans.all() if b.until > now), key=lambda b: b.until)
    if args.json:
        print(json.dumps([_public(b, now) for b in active], indent=2))
        return EXIT_OK
    if not active:
        print("no bans in force")
        return EXIT_OK
    rows = [("SOURCE", "UNTIL", "LEFT", "BANS", "REASON")]
    for b in active:
        rows.append((b.source, _when(b.until), _left(b.until - now), str(b.count), b.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_add(args: argparse.Namespace) -> int:
    key = _source(args.source)
    config, bans = open_bans(args)
    d = config.edge.defender
    if not d.enabled:
        raise UsageError(
            f"[defender] enabled = false in {args.config}: the servers refuse no banned "
            "source; remove that line first"
        )
    minutes = d.ban_time if args.minutes is None else args.minutes
    now = time.time()
    before = bans.get(key)
    again = before is not None and remembered(before, now, d.ban_time_max)
    count = before.count + 1 if again and before is not None else 1
    ban = Ban(source=key, until=now + minutes * MINUTE, count=count, reason="manual")
    bans.put(ban)
    print(
        f"banned {key} until {_when(ban.until)} ({minutes:g} min); every server on this "
        f"database refuses it within {TICK_SECONDS} s"
    )
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    key = _source(args.source)
    _, bans = open_bans(args)
    before = bans.get(key)
    if before is None:
        raise UsageError(f"no ban on {key} (see `sftpd ban list`)")
    bans.remove(key)
    if before.until > time.time():
        print(f"lifted the ban on {key}; every server lets it in within {TICK_SECONDS} s")
    else:
        print(f"{key} had no ban in force; its history (for doubling) is forgotten")
    return EXIT_OK
