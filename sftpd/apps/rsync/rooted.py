"""rsync rooted at a directory (an rrsync key's DIR): the sandbox's root fd and path mapping."""

from __future__ import annotations

import errno
import os
import posixpath
from dataclasses import dataclass, replace

from sftpd.apps.rsync.sandbox import Runtime, RuntimeCache
from sftpd.apps.rsync.stop import Temporary
from sftpd.storage.rules import RsyncGrant


class RootMissing(Exception):
    """The key's rrsync directory cannot be opened; the message names it as the user sees it."""


@dataclass
class Prepared:
    """What the sandbox needs, made in the worker pool: the runtime, and for a rooted grant
    the directory fd the jail resolved (closed once bwrap has its copy)."""

    runtime: Runtime
    root_fd: int | None = None

    def close(self) -> None:
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None


def prepare(runtimes: RuntimeCache, grant: RsyncGrant | None, bwrap: str, rsync: str) -> Prepared:
    """Probe the runtime and open the grant's directory through the jail. Blocking."""
    runtime = runtimes.probe(bwrap, rsync)
    if grant is None or grant.directory is None:
        return Prepared(runtime)
    try:
        fd = grant.open_root()
    except OSError as e:
        why = {errno.ENOENT: "does not exist", errno.ENOTDIR: "is not a directory"}.get(
            e.errno or 0, os.strerror(e.errno or errno.EIO)
        )
        raise RootMissing(f"the key's rrsync directory {grant.directory} {why}") from None
    return Prepared(runtime, fd)


def in_directory(grant: RsyncGrant | None, name: bytes) -> bytes:
    """A name rsync reports (relative to its root) as a path below the user's root."""
    if grant is None or grant.directory is None:
        return name
    inside = posixpath.normpath("/" + os.fsdecode(name).lstrip("/"))
    joined = (
        posixpath.join(grant.directory, inside.lstrip("/")) if inside != "/" else grant.directory
    )
    return os.fsencode(joined + ("/" if name.endswith(b"/") else ""))


def temporaries_in_directory(grant: RsyncGrant | None, temps: set[Temporary]) -> set[Temporary]:
    """rsync's temporaries (paths inside its root) as paths below the user's root."""
    if grant is None or grant.directory is None:
        return temps
    return {replace(t, path=os.fsdecode(in_directory(grant, os.fsencode(t.path)))) for t in temps}
