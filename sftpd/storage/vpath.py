"""Virtual (user-visible) POSIX paths: lexical normalisation that never climbs above '/'."""

from __future__ import annotations

import errno


def normalize(path: str, base: str = "/") -> str:
    """Return the absolute, normalised virtual path of ``path`` seen from directory ``base``.

    ``.`` and empty components vanish, ``..`` removes one component and stops at ``/``.
    This is presentation only: confinement is the kernel's job (see storage.local).
    A NUL character raises ``OSError(EINVAL)``.
    """
    if "\x00" in path or "\x00" in base:
        raise OSError(errno.EINVAL, "Invalid argument")
    if path.startswith("/") and "//" not in path and "/." not in path and path[-1:] != "/":
        return path  # already normal: every layer normalises, most paths arrive so
    if path.startswith("/"):
        joined = path
    else:
        joined = base.rstrip("/") + "/" + path
    parts: list[str] = []
    for part in joined.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def split(path: str) -> tuple[str, str]:
    """Split a normalised virtual path into (parent, name); the root gives ("/", "")."""
    if path == "/":
        return "/", ""
    parent, _, name = path.rpartition("/")
    return parent or "/", name
