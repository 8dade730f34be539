"""Command line: sftpd serve | check-config | hash-password | keygen | user | db | ban."""

from __future__ import annotations

import argparse
import getpass
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import bcrypt

from sftpd import __version__
from sftpd.config.loader import embedded_default, load_config
from sftpd.config.model import Config
from sftpd.config.values import Values
from sftpd.errors import ConfigError
from sftpd.log import hostport
from sftpd.preflight import check, prepare
from sftpd.runtime.listening import ListenError, bind_all
from sftpd.ssh.hostkeys import HostKeyInfo, ensure_host_keys

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

DESCRIPTION = """\
sftpd: an SFTP server that confines each user to a directory.

Without a config file, `sftpd serve` shares ./data with you (the current OS user) on
127.0.0.1:2222: log in with any key from ~/.ssh/authorized_keys or ~/.ssh/id_*.pub, or with
the random password printed at start. See config.example.toml for a multi-user setup.
"""

EPILOG = """\
exit status: 0 success, 1 failure (e.g. address in use, passwords do not match),
2 invalid configuration.

examples:
  sftpd serve                          share ./data on 127.0.0.1:2222 with yourself
  sftpd serve --listen 127.0.0.1:2223  ... on another port
  sftpd serve --config /etc/sftpd/sftpd.toml
  sftpd check-config /etc/sftpd/sftpd.toml
  sftpd hash-password                  prints a bcrypt hash for a [[users]] password_hash
  sftpd keygen /etc/sftpd/keys         creates missing host keys, prints fingerprints
  sftpd totp-secret alice              prints a new totp_secret and its otpauth:// URL
  sftpd user add bob --root /srv/bob --key bob.pub --config sftpd.toml
                                       adds a user to [users_db], live (see sftpd user -h)
  sftpd ban add 192.0.2.7 --minutes 60 --config sftpd.toml
                                       bans a source on every server sharing [users_db]
"""


def _rounds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 4 <= value <= 31:
        raise argparse.ArgumentTypeError(f"expected an integer from 4 to 31, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand (also the source of ``--help``)."""

    def raw(prog: str) -> argparse.HelpFormatter:
        return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)

    parser = argparse.ArgumentParser(
        prog="sftpd", description=DESCRIPTION, epilog=EPILOG, formatter_class=raw
    )
    parser.add_argument("--version", action="version", version=f"sftpd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the server in the foreground",
        formatter_class=raw,
        description="Run the server in the foreground, logging to stderr, until SIGINT or "
        "SIGTERM\n(then it stops listening, closes sessions and exits 0; SIGHUP re-reads the "
        "file for new logins).\nMissing user roots and host keys are created first; once "
        "every address is bound it\nprints how to connect and the host key fingerprints "
        "(exit 1 if an address is busy).\n\n"
        "Without --config it runs the embedded default: 127.0.0.1:2222 (--listen to change it),\n"
        "host keys in ./keys, ./data served to the current OS user, who logs in with a key from\n"
        "~/.ssh/authorized_keys or ~/.ssh/id_*.pub, or with a random password printed once.",
    )
    serve.add_argument("-c", "--config", metavar="FILE", type=Path, help="TOML configuration file")
    serve.add_argument(
        "-l",
        "--listen",
        metavar="ADDR",
        action="append",
        help='address to listen on, "IPV4:PORT" or "[IPV6]:PORT"; repeat it or give a '
        "comma list; replaces [server] listen (also with the embedded default)",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text or JSON objects (default: [server] log_format, else text)",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Validate FILE with the checks `serve` runs before it starts: user roots "
        "(and homes inside them) exist and are usable, or can be created; the host key "
        "directory is usable or can be created. Nothing on disk is created or changed. "
        "Prints 'FILE: OK' and exits 0, or prints one 'FILE: key: problem' line per problem "
        'on stderr and exits 2; warnings (such as root = "/") are printed without failing. '
        "Array indexes in key paths are 0-based: users[0] is the first [[users]] entry.",
    )
    check.add_argument("file", metavar="FILE", type=Path, help="TOML configuration file")
    check.set_defaults(func=cmd_check_config)

    hashpw = sub.add_parser(
        "hash-password",
        help="print a bcrypt hash for password_hash",
        description="Print a bcrypt hash of a password, for password_hash in [[users]]. On a "
        "terminal it asks twice (without echo); otherwise it reads one line from stdin.",
    )
    hashpw.add_argument(
        "--rounds",
        type=_rounds,
        default=12,
        metavar="N",
        help="bcrypt cost factor, 4 to 31; each step doubles the work (default: 12)",
    )
    hashpw.set_defaults(func=cmd_hash_password)

    keygen = sub.add_parser(
        "keygen",
        help="create missing host keys and print fingerprints",
        description="Create the missing host keys in DIR (ssh_host_ed25519_key, "
        "ssh_host_ecdsa_key (nistp256), ssh_host_rsa_key (3072 bits); private files mode "
        "0600, DIR mode 0700 if created) and print the fingerprints of all of them. "
        "Existing keys are never replaced.",
    )
    keygen.add_argument(
        "dir", metavar="DIR", nargs="?", type=Path, default=Path("keys"), help="default: ./keys"
    )
    keygen.set_defaults(func=cmd_keygen)

    totp_cmd = sub.add_parser(
        "totp-secret",
        help="print a new totp_secret and its otpauth:// URL",
        description="Print a new random TOTP secret for totp_secret in a [[users]] table, "
        "and the otpauth:// URL an authenticator app imports (as text or a QR code). "
        "Codes are RFC 6238: SHA-1, 30-second steps, 6 digits.",
    )
    totp_cmd.add_argument("name", metavar="NAME", help="the user name (shown in the app)")
    totp_cmd.add_argument(
        "--issuer", default="sftpd", help="the service name shown in the app (default: sftpd)"
    )
    totp_cmd.set_defaults(func=cmd_totp_secret)
    from sftpd.cli_db import add_commands as add_db_commands
    from sftpd.cli_user import add_commands

    add_commands(sub, raw)
    add_db_commands(sub, raw)
    from sftpd.cli_ban import add_commands as add_ban_commands

    add_ban_commands(sub, raw)
    from sftpd.explain import add_parser as add_explain

    add_explain(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sftpd command; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return e.code if isinstance(e.code, int) else EXIT_CONFIG
    try:
        status: int = args.func(args)
    except ConfigError as e:
        _error(str(e))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return status


def _error(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _connect_command(user: str, host: str, port: int) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    option = "" if port == 22 else f"-P {port} "
    return f"sftp {option}{user}@{host}"


def offered(key_type: str, algorithms: Sequence[str]) -> bool:
    """Whether a host key of ``key_type`` signs with one of ``algorithms``."""
    if key_type == "ssh-rsa":
        return any(a in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512") for a in algorithms)
    return key_type in algorithms


def print_banner(
    config: Config,
    infos: Sequence[HostKeyInfo],
    password: str | None,
    out: TextIO,
    bound: Sequence[tuple[str, int]] | None = None,
) -> None:
    """Tell the operator how to connect (to ``bound``, the addresses really listened on,
    else the configured ones), and which host key fingerprints clients will see."""
    users = config.users
    user = users[0].name if len(users) == 1 else "USER"
    source = config.source if config.source is not None else "embedded default"
    db = " + the users in [users_db]" if config.users_db is not None else ""
    print(f"sftpd {__version__} ({source}): {len(users)} user(s){db}", file=out)
    print("Connect with:", file=out)
    for host, port in bound if bound is not None else config.server.listen:
        print(f"  {_connect_command(user, host, port)}", file=out)
    if password is not None:
        only = users[0]
        print(f"User {only.name!r} serves {only.root}", file=out)
        print(f"  public keys from ~/.ssh accepted: {len(only.authorized_keys)}", file=out)
        print(f"  password (shown only now): {password}", file=out)
    print("Host key fingerprints:", file=out)
    for info in infos:
        if not offered(info.key_type, config.server.host_key_algorithms):
            continue  # e.g. ECDSA with algorithms = "modern": clients never see it
        print(f"  {info.bits} {info.fingerprint} ({info.label})", file=out)
    out.flush()


def parse_listen(values: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """The addresses of ``--listen`` options (each one address or a comma list)."""
    checker = Values("--listen", Path.cwd())
    out: list[tuple[str, int]] = []
    for value in values:
        for item in value.split(","):
            addr = checker.listen_one("", item.strip())
            if addr not in out:
                out.append(addr)
    return tuple(out)


def _listen_hint(config: Config, listen: Sequence[tuple[str, int]]) -> str:
    host, port = listen[0]
    other = hostport(host, port + 1 if 0 < port < 65535 else 2223)
    where = f"listen in [server] of {config.source}" if config.source else "a config file"
    return f"choose another address with `sftpd serve --listen {other}` or {where}"


def cmd_serve(args: argparse.Namespace) -> int:
    """``sftpd serve``: load the config (or embedded default), check and prepare the disk,
    bind the listening sockets, then print how to connect and run the server."""
    password: str | None = None
    listen = parse_listen(args.listen) if args.listen else None
    if args.config is not None:
        config = load_config(args.config)
    else:
        try:
            username = getpass.getuser()
        except OSError as e:
            _error(f"sftpd serve: cannot tell the current user name ({e}); use --config")
            return EXIT_CONFIG
        config, password = embedded_default(Path.cwd(), Path.home(), username)
    if listen is not None:
        config = replace(config, server=replace(config.server, listen=listen))
    from sftpd.log import announce

    log_format = args.log_format or config.server.log_format
    sockets = None
    if os.environ.get("SFTPD_WORKER_FDS") is None:  # workers: the supervisor did all this
        for warning in prepare(config):
            _error(f"warning: {warning}")
        infos = ensure_host_keys(config.server.host_keys_dir)
        try:
            sockets = bind_all(
                config.server.listen,
                config.server.workers,
                hint=_listen_hint(config, config.server.listen),
            )
        except ListenError as e:
            _error(f"sftpd: {e}")
            return EXIT_FAILURE
        bound = [s.getsockname()[:2] for s in sockets[0]] if sockets and sockets[0] else None
        banner = io.StringIO()
        print_banner(config, infos, password, banner, bound)
        for line in banner.getvalue().splitlines():
            announce(line, log_format, sys.stdout, event="banner")

    # Before sftpd.assembly: Conch's modules import (and so install) the default reactor.
    from sftpd.runtime.reactor import default_reactor

    default_reactor()
    from sftpd.assembly import serve  # lazy: keeps the Twisted reactor out of other commands

    return serve(config, log_format=log_format, sockets=sockets)


def cmd_check_config(args: argparse.Namespace) -> int:
    """``sftpd check-config FILE``: 0 and "FILE: OK", or 2 and one line per problem.

    Runs the checks ``serve`` runs before starting (``sftpd.preflight``), and changes
    nothing on disk: missing user roots and host keys are only checked to be creatable."""
    config = load_config(args.file)
    found = check(config)
    if config.users_db is not None:
        from sftpd.cli_db import users_db_problems

        errors, warnings = users_db_problems(config)
        found.errors.extend(errors)
        found.warnings.extend(warnings)
    for warning in found.warnings:
        _error(f"warning: {warning}")
    for problem in found.errors:
        _error(str(problem))
    if found.errors:
        return EXIT_CONFIG
    print(f"{args.file}: OK")
    return EXIT_OK


def _read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            _error("sftpd hash-password: the passwords do not match")
            return None
        return first
    return sys.stdin.readline().removesuffix("\n").removesuffix("\r")


def cmd_hash_password(args: argparse.Namespace) -> int:
    """``sftpd hash-password``: print a bcrypt hash of a password read from tty or stdin."""
    try:
        password = _read_password()
    except EOFError:
        password = ""
    if password is None:
        return EXIT_FAILURE
    secret = password.encode("utf-8")
    if not secret:
        _error("sftpd hash-password: empty password; expected at least one character")
        return EXIT_FAILURE
    if len(secret) > 72:
        _error("sftpd hash-password: bcrypt uses at most 72 bytes; expected a shorter password")
        return EXIT_FAILURE
    print(bcrypt.hashpw(secret, bcrypt.gensalt(args.rounds)).decode("ascii"))
    return EXIT_OK


def cmd_totp_secret(args: argparse.Namespace) -> int:
    """``sftpd totp-secret NAME``: print a new secret and its otpauth:// URL."""
    from sftpd.auth.totp import new_secret, otpauth_url

    secret = new_secret()
    print(f'totp_secret = "{secret}"')
    print(otpauth_url(args.name, secret, args.issuer))
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    """``sftpd keygen [DIR]``: create missing host keys and print all fingerprints."""
    for info in ensure_host_keys(args.dir):
        state = "created" if info.created else "exists "
        print(f"{state} {info.describe()}")
    return EXIT_OK
