"""The walk of a tree through a Storage, shared by the temporaries sweep and the quota scan."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from sftpd.storage import vpath
from sftpd.storage.base import Storage


def non_directories(storage: Storage, path: str = "/") -> Iterator[tuple[str, str, os.stat_result]]:
    """(directory, name, stat) of every entry beneath ``path`` that is not a directory,
    descending into every directory; one that cannot be listed is passed over. The listing
    stays open while the caller handles an entry, which it may remove."""
    pending = [path]
    while pending:
        directory = pending.pop()
        try:
            listing = storage.opendir(directory)
        except OSError:
            continue
        try:
            while batch := listing.read(256):
                for name, st in batch:
                    if name in (".", ".."):
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(vpath.normalize(name, directory))
                    else:
                        yield directory, name, st
        finally:
            listing.close()
