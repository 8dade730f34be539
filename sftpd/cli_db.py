"""Command line: the [users_db] database for ``sftpd user``, ``sftpd db upgrade``, check-config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftpd.auth.stores.records import InvalidRecord, UserDb
from sftpd.auth.users import DEFAULT_PASSWORD_COST, StoreUnavailable
from sftpd.cli_user_values import UsageError
from sftpd.config.loader import load_config
from sftpd.config.model import Config
from sftpd.errors import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def common_options(*, rounds: bool = True) -> argparse.ArgumentParser:
    """The options every user, db and ban command takes (a parent parser); ``rounds``: the
    hidden bcrypt cost, for the commands that may hash a password."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", metavar="FILE", type=Path, required=True,
        help="the configuration file with [users_db]",
    )  # fmt: skip
    if rounds:
        common.add_argument(
            "--rounds", type=int, default=DEFAULT_PASSWORD_COST, help=argparse.SUPPRESS
        )
    return common


def add_commands(sub: Any, formatter: Callable[[str], argparse.HelpFormatter]) -> None:
    """Add ``db`` to the top-level subparsers."""
    common = common_options()
    db = sub.add_parser("db", help="maintain the [users_db] database")
    dbs = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = dbs.add_parser(
        "upgrade", parents=[common], help="create or migrate the schema (serve does it too)"
    )
    up.set_defaults(func=wrap(cmd_db_upgrade))


Command = Callable[[argparse.Namespace], int]


def wrap(command: Command) -> Command:
    """``command`` run by :func:`run_command` (what a subparser's ``func`` is)."""

    def run(args: argparse.Namespace) -> int:
        return run_command(args, command)

    return run


def run_command(args: argparse.Namespace, command: Command) -> int:
    """Run a user/db/ban command: usage problems exit 2, an unreachable database 1."""
    prog = " ".join(["sftpd", *_command_words(args)])
    try:
        return command(args)
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailable as e:
        print(f"{prog}: the user database is unavailable: {e}", file=sys.stderr)
        return EXIT_FAILURE


def _command_words(args: argparse.Namespace) -> list[str]:
    words = [args.command]
    for attr in ("user_command", "key_command", "db_command", "ban_command"):
        value = getattr(args, attr, None)
        if value:
            words.append(value)
    return words


def open_db(args: argparse.Namespace, without: str = "") -> tuple[Config, UserDb]:
    """The configuration and its migrated database; UsageError without [users_db] (its
    message: what ``without`` says follows the config file's name)."""
    from sftpd.auth.stores.store import open_user_db

    config = load_config(args.config)
    if config.users_db is None:
        why = without or '; expected a url = "sqlite:..."'
        raise UsageError(f"{args.config} has no [users_db]{why}")
    try:
        db = open_user_db(config.users_db.resolved_url(), config.users_db.base)
        db.upgrade()
    except ValueError as e:
        raise UsageError(f"[users_db]: {e}") from None
    return config, db


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from sftpd.auth.stores.store import open_user_db

    config = load_config(args.config)
    if config.users_db is None:
        raise UsageError(f"{args.config} has no [users_db]")
    try:
        db = open_user_db(config.users_db.resolved_url(), config.users_db.base)
        before, after = db.upgrade()
    except ValueError as e:
        raise UsageError(f"[users_db]: {e}") from None
    print(
        f"schema version {before} -> {after}"
        if before != after
        else f"schema version {after}, up to date"
    )
    return EXIT_OK


def users_db_problems(config: Config) -> tuple[list[ConfigError], list[ConfigError]]:
    """check-config on [users_db], read only (nothing created): errors for names in both
    [[users]] and the database and for a URL that cannot work; warnings for what serve
    starts with anyway (a database it cannot reach yet, rows whose logins it refuses)."""
    from sftpd.auth.stores.store import open_user_db

    assert config.users_db is not None
    source = str(config.source)
    try:
        url = config.users_db.resolved_url()
        db = open_user_db(url, config.users_db.base)
        if url.startswith("sqlite:") and not db.db.path.exists():  # type: ignore[attr-defined]
            return [], []  # created at the first start; no users yet
        records = list(db.all()) if db.version() > 0 else []
        db.close()
    except ValueError as e:
        return [ConfigError(source, "users_db", str(e))], []
    except StoreUnavailable as e:
        return [], [
            ConfigError(
                source,
                "users_db",
                f"cannot reach the database ({e}); serve starts anyway and refuses its "
                "users' logins until it answers; its rows and the names in both it and "
                "[[users]] were not checked",
            )
        ]
    names = {r.name for r in records}
    warnings = []
    for rec in records:
        try:
            rec.check()
        except InvalidRecord as e:
            warnings.append(
                ConfigError(source, "users_db", f"user {rec.name!r}: {e}; its logins are refused")
            )
    errors = [
        ConfigError(
            source,
            f"users[{i}].name",
            f"user {u.name!r} is also in [users_db]; expected each name in one place "
            "(remove it from the file or `sftpd user del --keep-files` it)",
        )
        for i, u in enumerate(config.users)
        if u.name in names
    ]
    return errors, warnings
