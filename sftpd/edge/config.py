"""The edge's config: [server] limits and PROXY, [defender], per-user keys (no Twisted)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sftpd.config.values import Check, Values, got
from sftpd.edge.limits import LimitsConfig, Startups
from sftpd.edge.networks import Networks, parse_network

BIG = 1 << 31
MODES = ("off", "optional", "required")


@dataclass(frozen=True)
class DefenderConfig:
    """[defender] as configured: times in minutes (fractions allowed), scores in points."""

    enabled: bool = True
    observation_time: float = 30.0
    threshold: int = 15
    ban_time: float = 30.0
    ban_time_max: float = 1440.0
    score_invalid_user: int = 2
    score_auth_failed: int = 1
    score_no_auth: int = 1
    safe_list: Networks = field(default_factory=lambda: Networks(["127.0.0.0/8"]))
    block_list: Networks = field(default_factory=Networks)


@dataclass(frozen=True)
class ProxyConfig:
    """``proxy_protocol`` and ``proxy_allowed`` from [server]."""

    mode: str = "off"
    allowed: Networks = field(default_factory=Networks)


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the edge needs, with the defaults of config.example.toml."""

    limits: LimitsConfig = field(default_factory=LimitsConfig)
    idle_timeout: float = 900.0  # seconds; 0 = never
    client_alive_interval: float = 0.0  # seconds; 0 = off
    shutdown_grace: float = 30.0  # seconds
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    defender: DefenderConfig = field(default_factory=DefenderConfig)


@dataclass(frozen=True)
class UserEdge:
    """Per-user keys: ``max_sessions`` (0 = no limit) and ``allowed_sources`` ([] = any)."""

    max_sessions: int = 0
    allowed_sources: Networks = field(default_factory=Networks)

    def allows(self, host: str) -> bool:
        return not self.allowed_sources or self.allowed_sources.contains(host)


SERVER_KEYS = (
    "max_connections",
    "max_connections_per_source",
    "max_startups",
    "idle_timeout",
    "client_alive_interval",
    "shutdown_grace",
    "proxy_protocol",
    "proxy_allowed",
)
USER_KEYS = ("max_sessions", "allowed_sources")


def _seconds(v: Values, hi: float) -> Check:
    def check(where: str, value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not 0 <= value <= hi:
            raise v.err(where, f"expected a number of seconds from 0 (off) to {hi:g}, {got(value)}")
        return float(value)

    return check


def _minutes(v: Values) -> Check:
    def check(where: str, value: Any) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not 0 < value <= 525600:
            raise v.err(
                where,
                "expected a number of minutes above 0, up to 525600 (a year); fractions are "
                f"allowed (0.05 = 3 s), {got(value)}",
            )
        return float(value)

    return check


def _count(v: Values, what: str) -> Check:
    def check(where: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1_000_000:
            raise v.err(where, f"expected an integer from 0 to 1000000 ({what}), {got(value)}")
        return value

    return check


def _networks(v: Values) -> Check:
    def check(where: str, value: Any) -> Networks:
        what = 'addresses or networks like "10.0.0.0/8"'
        return Networks(v.each(where, value, what, parse_network))

    return check


def _startups(v: Values) -> Check:
    expected = (
        'expected "START:RATE:FULL" like "10:30:100" (0 < START <= FULL, RATE a percentage '
        'from 1 to 100) or one number FULL like "100"'
    )

    def check(where: str, value: Any) -> Startups:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str):
            raise v.err(where, f"{expected}, {got(value)}")
        m = re.fullmatch(r"(\d{1,7}):(\d{1,3}):(\d{1,7})|(\d{1,7})", text.strip())
        if m is None:
            raise v.err(where, f"{expected}, {got(value)}")
        if m[4] is not None:
            start, rate, full = int(m[4]), 100, int(m[4])
        else:
            start, rate, full = int(m[1]), int(m[2]), int(m[3])
        if not (0 < start <= full and 1 <= rate <= 100):
            raise v.err(where, f"{expected}, {got(value)}")
        return Startups(start, rate, full)

    return check


def server_checks(v: Values) -> dict[str, Check]:
    """The checks of the edge's keys in [server] (merge into the [server] checks)."""
    return {
        "max_connections": _count(v, "0 = no limit"),
        "max_connections_per_source": _count(v, "0 = no limit"),
        "max_startups": _startups(v),
        "idle_timeout": _seconds(v, BIG),
        "client_alive_interval": _seconds(v, BIG),
        "shutdown_grace": _seconds(v, 86400),
        "proxy_protocol": v.choice(MODES),
        "proxy_allowed": _networks(v),
    }


def defender_checks(v: Values) -> dict[str, Check]:
    """The checks of [defender]."""
    score = _count(v, "points; 0 = not scored")
    return {
        "enabled": v.boolean,
        "observation_time": _minutes(v),
        "threshold": v.integer(1, 1_000_000),
        "ban_time": _minutes(v),
        "ban_time_max": _minutes(v),
        "score_invalid_user": score,
        "score_auth_failed": score,
        "score_no_auth": score,
        "safe_list": _networks(v),
        "block_list": _networks(v),
    }


def user_checks(v: Values) -> dict[str, Check]:
    """The checks of the per-user keys (merge into a [[users]] entry's checks)."""
    return {"max_sessions": _count(v, "0 = no limit"), "allowed_sources": _networks(v)}


def build_edge(
    server: Mapping[str, Any], defender: Mapping[str, Any], v: Values, prefix: str = "server"
) -> EdgeConfig:
    """EdgeConfig from checked values (missing keys: defaults); cross-key problems to v."""
    names = {f.name for f in fields(DefenderConfig)}
    d = DefenderConfig(**{k: val for k, val in defender.items() if k in names})
    if d.ban_time_max < d.ban_time:
        v.errors.append(
            v.err(
                "defender.ban_time_max",
                f"{d.ban_time_max:g} is less than ban_time ({d.ban_time:g}); expected at least "
                "ban_time (minutes)",
            )
        )
    mode = str(server.get("proxy_protocol", "off"))
    allowed = server.get("proxy_allowed", Networks())
    if mode != "off" and not allowed:
        v.errors.append(
            v.err(
                f"{prefix}.proxy_allowed",
                f'empty while proxy_protocol = "{mode}"; expected the addresses of the load '
                'balancers that send PROXY headers, like ["10.0.0.5"]',
            )
        )
    limits = LimitsConfig(
        max_connections=server.get("max_connections", 2000),
        max_connections_per_source=server.get("max_connections_per_source", 20),
        max_startups=server.get("max_startups", Startups()),
    )
    return EdgeConfig(
        limits=limits,
        idle_timeout=server.get("idle_timeout", 900.0),
        client_alive_interval=server.get("client_alive_interval", 0.0),
        shutdown_grace=server.get("shutdown_grace", 30.0),
        proxy=ProxyConfig(mode=mode, allowed=allowed),
        defender=d,
    )


def parse_edge(
    raw_server: Mapping[str, Any], raw_defender: Any, v: Values, prefix: str = "server"
) -> EdgeConfig:
    """Check the edge keys of a raw [server] table (others are left to the caller) and a
    raw [defender] table (unknown keys reported); every problem is appended to
    ``v.errors`` (file, key and expectation), and the defaults stand in for bad values."""
    mine = {k: val for k, val in raw_server.items() if k in SERVER_KEYS}
    server = v.table(mine, prefix, server_checks(v))
    defender: dict[str, Any] = {}
    if isinstance(raw_defender, dict):
        defender = v.table(raw_defender, "defender", defender_checks(v))
    else:
        v.errors.append(v.err("defender", f"expected a table ([defender]), {got(raw_defender)}"))
    return build_edge(server, defender, v, prefix)


def parse_user_edge(raw_user: Mapping[str, Any], prefix: str, v: Values) -> UserEdge:
    """The per-user edge keys of one raw [[users]] entry (others left to the caller)."""
    mine = {k: val for k, val in raw_user.items() if k in USER_KEYS}
    return UserEdge(**v.table(mine, prefix, user_checks(v)))


def check_edge(raw_server: Mapping[str, Any], raw_defender: Any, source: str) -> EdgeConfig:
    """parse_edge on its own: raise the first problem as ConfigError (for tools and tests)."""
    from pathlib import Path

    v = Values(source, Path("."))
    edge = parse_edge(raw_server, raw_defender, v)
    if v.errors:
        raise v.errors[0]
    return edge
