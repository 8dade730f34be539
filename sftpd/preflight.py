"""What serving needs of the disk, checked without changing it: shared by serve and check-config."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sftpd.auth.krl import KrlError, RevocationFile
from sftpd.config.loader import ConfigErrors, make_root
from sftpd.config.model import EMBEDDED_SOURCE, Config, UserConfig
from sftpd.errors import ConfigError
from sftpd.ssh.hostkeys import creatable, host_keys_problems


@dataclass
class Findings:
    """Problems that stop ``serve`` (errors) and ones it only reports (warnings)."""

    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)


def _check_user(source: str, index: int, user: UserConfig, found: Findings) -> None:
    where = f"users[{index}]"
    root = user.root
    if root == Path("/"):
        found.warnings.append(
            ConfigError(
                source,
                f"{where}.root",
                f'"/" gives user {user.name!r} the whole file system; expected a directory '
                "of its own",
            )
        )
    if not root.exists():
        reason = creatable(root)
        if reason is not None:
            found.errors.append(
                ConfigError(
                    source,
                    f"{where}.root",
                    f"cannot create {root}: {reason}; expected an existing directory or one "
                    "sftpd may create",
                )
            )
        elif user.home != "/":
            found.errors.append(_no_home(source, where, user))
        return
    if not root.is_dir():
        found.errors.append(
            ConfigError(
                source,
                f"{where}.root",
                f"{root} exists but is not a directory; expected a directory",
            )
        )
        return
    need = os.R_OK | os.X_OK | (0 if user.read_only else os.W_OK)
    if not os.access(root, need):
        what = "read" if user.read_only else "read and write"
        found.errors.append(
            ConfigError(
                source,
                f"{where}.root",
                f"sftpd (uid {os.geteuid()}) cannot {what} {root}; expected a directory the "
                "service user may "
                + ("read" if user.read_only else "write (or set read_only = true)"),
            )
        )
    if user.home != "/" and not (root / user.home.lstrip("/")).is_dir():
        found.errors.append(_no_home(source, where, user))


def _no_home(source: str, where: str, user: UserConfig) -> ConfigError:
    return ConfigError(
        source,
        f"{where}.home",
        f"{user.home!r} is not a directory inside the root; expected an existing directory "
        '(create it in the root, or use the default "/")',
    )


def check(config: Config) -> Findings:
    """Every reason ``serve`` would refuse ``config`` at start, without creating anything."""
    source = str(config.source) if config.source is not None else EMBEDDED_SOURCE
    found = Findings()
    for index, user in enumerate(config.users):
        _check_user(source, index, user, found)
    directory = config.server.host_keys_dir
    for problem in host_keys_problems(directory):
        found.errors.append(ConfigError(source, "server.host_keys_dir", problem))
    revoked = config.server.revoked_keys_file
    if revoked is not None:
        try:
            RevocationFile(revoked)  # a KRL or key list that does not parse stops serve
        except KrlError as e:
            found.errors.append(ConfigError(source, "server.revoked_keys_file", str(e)))
    return found


def prepare(config: Config) -> list[ConfigError]:
    """Check as ``check`` does, then create missing user roots (mode 0o750).

    Raises ConfigError (ConfigErrors for several) when serving cannot start; returns the
    warnings.
    """
    found = check(config)
    if len(found.errors) == 1:
        raise found.errors[0]
    if found.errors:
        raise ConfigErrors(found.errors)
    source = str(config.source) if config.source is not None else EMBEDDED_SOURCE
    for index, user in enumerate(config.users):
        try:
            make_root(user.root)
        except OSError as e:
            raise ConfigError(
                source, f"users[{index}].root", f"cannot create {user.root}: {e.strerror}"
            ) from None
    return found.warnings
