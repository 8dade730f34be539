"""The ``[audit]``, ``[metrics]``, ``[hook_limits]`` and ``[[hooks]]`` config sections.

Call :func:`parse_events` with the whole parsed TOML document and the loader's
:class:`~sftpd.config.values.Values` (its ``source``, ``base`` and ``errors`` are used):
problems are appended to ``values.errors``, each naming file, key and expectation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sftpd.config.values import Check, Values, got
from sftpd.events.names import OPERATIONS, OUTCOMES

SECTIONS = ("audit", "metrics", "hook_limits", "hooks")
HOOK_OPERATIONS = tuple(op for op in OPERATIONS if op != "session")


@dataclass(frozen=True)
class AuditConfig:
    """``file``: where the JSON lines go; None when ``to_log`` (``file = "-"``)."""

    file: Path | None = None
    to_log: bool = False


@dataclass(frozen=True)
class HookConfig:
    on: tuple[str, ...]
    command: tuple[str, ...] = ()
    url: str = ""
    timeout: float = 30.0
    paths: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ("ok",)


@dataclass(frozen=True)
class HookLimits:
    max_parallel: int = 4
    queue_size: int = 1000


@dataclass(frozen=True)
class EventsConfig:
    audit: AuditConfig | None = None  # None: no audit log
    metrics_listen: tuple[str, int] | None = None  # None: no metrics endpoint
    hooks: tuple[HookConfig, ...] = ()
    hook_limits: HookLimits = HookLimits()

    @property
    def enabled(self) -> bool:
        return bool(self.audit or self.metrics_listen or self.hooks)


def parse_events(raw: dict[str, Any], where: Values) -> EventsConfig:
    """The events configuration of the document ``raw``; problems go to ``where.errors``.

    Keys of ``raw`` other than :data:`SECTIONS` are ignored (the main loader checks them).
    """
    p = _Parser(where)
    audit = p.section(raw, "audit", {"file": p.audit_file})
    metrics = p.section(raw, "metrics", {"listen": p.v.listen_one_checked})
    limits = p.section(
        raw,
        "hook_limits",
        {"max_parallel": p.v.integer(1, 256), "queue_size": p.v.integer(1, 1_000_000)},
    )
    hooks = p.hooks(raw["hooks"]) if "hooks" in raw else ()
    audit_config = None
    if audit is not None and "file" in audit:
        audit_config = audit["file"]
    return EventsConfig(
        audit=audit_config,
        metrics_listen=(metrics or {}).get("listen"),
        hooks=hooks,
        hook_limits=HookLimits(**(limits or {})),
    )


class _Checks(Values):
    """Value checks these sections add to :class:`Values` (same error style)."""

    def listen_one_checked(self, where: str, value: Any) -> tuple[str, int]:
        return self.listen_one(where, self.string(where, value))


class _Parser:
    def __init__(self, values: Values) -> None:
        self.errors = values.errors
        self.v = _Checks(values.source, values.base)
        self.v.errors = values.errors

    def section(self, raw: dict[str, Any], name: str, checks: dict[str, Check]) -> Any:
        if name not in raw:
            return None
        value = raw[name]
        if not isinstance(value, dict):
            self.errors.append(self.v.err(name, f"expected a table ([{name}]), {got(value)}"))
            return None
        return self.v.table(value, name, checks)

    def audit_file(self, where: str, value: Any) -> AuditConfig:
        text = self.v.string(where, value)
        if text == "-":
            return AuditConfig(to_log=True)
        path = self.v.path(where, text)
        if not path.parent.is_dir():
            raise self.v.err(
                where,
                f"directory {path.parent} does not exist; expected a file in an existing "
                'directory, or "-" for the server log',
            )
        return AuditConfig(file=path)

    def hooks(self, value: Any) -> tuple[HookConfig, ...]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.errors.append(
                self.v.err("hooks", f"expected an array of tables ([[hooks]]), {got(value)}")
            )
            return ()
        out = []
        for i, data in enumerate(value):
            hook = self.hook(f"hooks[{i}]", data)
            if hook is not None:
                out.append(hook)
        return tuple(out)

    def hook(self, prefix: str, data: dict[str, Any]) -> HookConfig | None:
        before = len(self.errors)
        checks: dict[str, Check] = {
            "on": self.names("on", HOOK_OPERATIONS),
            "command": self.command,
            "url": self.url,
            "timeout": self.v.number(0.1, 86400),
            "paths": self.paths,
            "outcomes": self.names("outcomes", OUTCOMES),
        }
        got_ = self.v.table(data, prefix, checks)
        if "on" not in data:
            self.errors.append(
                self.v.err(
                    f"{prefix}.on", 'missing; expected a list of operations such as ["upload"]'
                )
            )
        if ("command" in data) == ("url" in data):
            self.errors.append(
                self.v.err(prefix, "expected exactly one of command (an argv array) or url")
            )
        if len(self.errors) > before:
            return None
        return HookConfig(**got_)

    def names(self, key: str, known: tuple[str, ...]) -> Check:
        def check(where: str, value: Any) -> tuple[str, ...]:
            items = self.v.strings(where, value, f"{key} names")
            if not items:
                raise self.v.err(where, f"empty list; expected some of: {', '.join(known)}")
            for i, item in enumerate(items):
                if item not in known:
                    raise self.v.err(
                        f"{where}[{i}]", f"unknown {item!r}; expected one of: {', '.join(known)}"
                    )
            return tuple(dict.fromkeys(items))

        return check

    def command(self, where: str, value: Any) -> tuple[str, ...]:
        argv = self.v.strings(where, value, "the program and its arguments")
        if not argv or not argv[0].startswith("/") or any("\x00" in a for a in argv):
            raise self.v.err(
                where,
                f"expected an argv array starting with an absolute program path, like "
                f'["/usr/local/bin/ingest"], {got(value)}',
            )
        return tuple(argv)

    def url(self, where: str, value: Any) -> str:
        text = self.v.string(where, value)
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.v.err(
                where,
                'expected an http:// or https:// URL like "http://127.0.0.1:8080/hook", '
                + got(value),
            )
        return text

    def paths(self, where: str, value: Any) -> tuple[str, ...]:
        globs = self.v.strings(where, value, 'globs like "/incoming/*"')
        for i, glob in enumerate(globs):
            if not glob.startswith("/"):
                raise self.v.err(
                    f"{where}[{i}]",
                    f"{glob!r} is not absolute; expected a glob on the path the user sees, "
                    'like "/incoming/*"',
                )
        return tuple(globs)
