"""A key's forced command (``command=`` or a certificate's force-command) as its profile."""

from __future__ import annotations

from dataclasses import replace

from sftpd.auth.users import AuthorizedKey, User
from sftpd.config.keyopts import ForcedCommand
from sftpd.storage.permissions import SINGLE, expand

_READ = frozenset({"list", "download"})


def rrsync_permissions(key: AuthorizedKey, command: ForcedCommand) -> tuple[str, ...]:
    """The key's permissions narrowed by rrsync's flags (they never widen the key's):

    ``-ro``: list and download; ``-wo``: everything but download, and so, as an upload
    never reads a file it may not download (rsync's delta reads the old file), no
    overwrite either: existing files are left as they are (``--ignore-existing``);
    ``-no-del``: no delete; ``-no-overwrite``: no overwrite."""
    names = set(expand(key.permissions) if key.permissions is not None else SINGLE)
    if command.read_only:
        names &= _READ
    if command.write_only:
        names -= {"download", "overwrite"}
    if command.no_delete:
        names -= {"delete_files", "delete_dirs"}
    if command.no_overwrite:
        names -= {"overwrite"}
    return tuple(n for n in SINGLE if n in names)


def with_key_options(user: User, key: AuthorizedKey | None) -> tuple[User, AuthorizedKey | None]:
    """The user and key as the key's forced command allows.

    ``internal-sftp`` serves SFTP only (no exec commands), ``internal-sftp -R`` read-only
    too. ``rrsync [-ro|-wo] [-no-del] [-no-overwrite] DIR`` serves rsync only (no SFTP,
    scp or hash commands), with the permissions :func:`rrsync_permissions` gives, rooted
    at DIR: the context roots rsync's sandbox at the directory the jail resolves DIR to,
    and rsync's paths are relative to it, as under OpenSSH's rrsync."""
    command = key.options.command if key is not None else None
    if key is None or command is None:
        return user, key
    if command.directory is None:
        narrowed = replace(
            user, allow_exec=False, allow_rsync=False, read_only=user.read_only or command.read_only
        )
        return narrowed, key
    protocols = tuple(p for p in (key.protocols or ("rsync",)) if p in command.protocols)
    return user, replace(
        key, protocols=protocols, permissions=rrsync_permissions(key, command), home="/"
    )


def forced_directory(key: AuthorizedKey | None) -> str | None:
    """The directory (as the user sees it) a key's rrsync command roots rsync at, or None."""
    command = key.options.command if key is not None else None
    return command.directory if command is not None else None
