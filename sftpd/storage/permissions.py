"""Permission names, the per-directory table, key narrowing and deny/hide patterns (sans-IO)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Every single permission (the rules layer's Op values), in SFTPGo's names.
SINGLE = (
    "list",
    "download",
    "upload",
    "overwrite",
    "delete_files",
    "delete_dirs",
    "rename_files",
    "rename_dirs",
    "create_dirs",
    "create_symlinks",
    "chmod",
    "chtimes",
)
# The names an admin may write: the single ones, and those standing for several.
GROUPS: Mapping[str, tuple[str, ...]] = {
    "*": SINGLE,
    "delete": ("delete_files", "delete_dirs"),
    "rename": ("rename_files", "rename_dirs"),
}
NAMES = ("*", *SINGLE, "delete", "rename")
READ_ONLY = frozenset({"list", "download"})
PROTOCOLS = ("sftp", "scp", "rsync", "hashes")


def expand(names: Iterable[str]) -> frozenset[str]:
    """The single permissions ``names`` stand for; ValueError naming an unknown one."""
    out: set[str] = set()
    for name in names:
        if name in GROUPS:
            out.update(GROUPS[name])
        elif name in SINGLE:
            out.add(name)
        else:
            raise ValueError(f"unknown permission {name!r}; expected some of: {', '.join(NAMES)}")
    return frozenset(out)


def under(path: str, directory: str) -> bool:
    """Whether the virtual ``path`` is ``directory`` or inside it."""
    return directory == "/" or path == directory or path.startswith(directory + "/")


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` can never match a virtual path, or None."""
    if not pattern or "\x00" in pattern:
        return "empty; expected a glob such as '*.exe' or '/public/*.php'"
    if "/" in pattern and not pattern.startswith("/"):
        return (
            "a pattern with '/' matches the whole virtual path, which starts with '/';"
            " write it as '/" + pattern + "'"
        )
    if pattern.endswith("/") and pattern != "/":
        return "ends with '/', and no virtual path does; drop the trailing '/'"
    if "//" in pattern:
        return "holds '//', and no virtual path does"
    return None


def matching(patterns: tuple[str, ...], path: str) -> str | None:
    """The first of ``patterns`` matching ``path`` or a directory above it, or None.

    A pattern with a '/' matches the full virtual path (of the path or of a directory
    above it); one without matches a base name (of the path or of a directory above it),
    so a hidden directory hides everything in it."""
    if not patterns or path == "/":
        return None
    parts = path.strip("/").split("/")
    prefixes = ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if "/" in pattern:
            if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
                return pattern
        elif any(fnmatch.fnmatchcase(name, pattern) for name in parts):
            return pattern
    return None


@dataclass(frozen=True)
class Table:
    """Permissions by directory: the deepest listed directory at or above a path decides.

    ``entries`` are (absolute virtual directory, single permission names), deepest first.
    No entries means every permission everywhere."""

    entries: tuple[tuple[str, frozenset[str]], ...] = ()

    @classmethod
    def build(cls, table: Iterable[tuple[str, Iterable[str]]]) -> Table:
        items = [(d, expand(names)) for d, names in table]
        items.sort(key=lambda item: (-len(item[0]), item[0]))
        return cls(tuple(items))

    def lookup(self, path: str) -> tuple[str, frozenset[str]] | None:
        """(directory, permissions) deciding at ``path``; None when everything is allowed."""
        for directory, names in self.entries:
            if under(path, directory):
                return directory, names
        if not self.entries:
            return None
        return "/", frozenset()  # a table without "/": nothing outside its directories

    @property
    def per_directory(self) -> bool:
        return len(self.entries) > 1 or any(d != "/" for d, _ in self.entries)

    @property
    def everywhere(self) -> frozenset[str]:
        """What is allowed in every directory (the intersection)."""
        if not self.entries:
            return frozenset(SINGLE)
        out = frozenset(SINGLE)
        for _, names in self.entries:
            out &= names
        if not any(d == "/" for d, _ in self.entries):
            return frozenset()
        return out
