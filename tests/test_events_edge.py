"""The edge's bans and refusals as events: audit lines, hooks, metrics (in memory)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.testing import MemoryReactorClock

from sftpd.config.values import Values
from sftpd.edge.config import DefenderConfig, EdgeConfig, LimitsConfig
from sftpd.edge.gate import make_edge
from sftpd.edge.networks import Networks
from sftpd.events.config import HookConfig, parse_events
from sftpd.events.hooks import matches
from sftpd.events.service import EventsService

A = "192.0.2.7"


def service(tmp_path: Path) -> tuple[EventsService, MemoryReactorClock]:
    text = '[audit]\nfile = "audit.jsonl"\n[metrics]\nlisten = "127.0.0.1:0"\n'
    values = Values(str(tmp_path / "sftpd.toml"), tmp_path)
    cfg = parse_events(tomllib.loads(text), values)
    assert values.errors == []
    reactor = MemoryReactorClock()
    reactor.advance(1_800_000_000)
    svc = EventsService(reactor, cfg)
    svc.start()
    return svc, reactor


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_a_ban_its_refusals_and_its_end_reach_the_audit_and_the_metrics(tmp_path: Path) -> None:
    svc, reactor = service(tmp_path)
    cfg = EdgeConfig(
        defender=DefenderConfig(safe_list=Networks(), threshold=2, ban_time=1),
        limits=LimitsConfig(max_connections_per_source=1),
    )
    edge = make_edge(cfg, clock=reactor, on_event=svc.edge_event)
    assert edge.defender is not None
    edge.defender.start()
    for _ in range(2):
        conn = edge.admit(A)
        assert conn is not None
        conn.auth_failed()
        conn.closed()
    for _ in range(3):
        assert edge.admit(A) is None  # banned: three refusals, one event
    held = edge.admit("192.0.2.8")
    assert held is not None and edge.admit("192.0.2.8") is None  # a limit, not a ban
    reactor.advance(61)  # the ban (1 minute) ends at the next tick
    svc.stop()
    got = lines(tmp_path)
    assert [(e["op"], e["client"], e["outcome"], e["reason"]) for e in got] == [
        ("ban", A, "denied", "score"),
        ("refused", A, "denied", "banned"),
        ("unban", A, "ok", ""),
    ]
    assert got[0]["duration"] == 60.0 and got[0]["user"] == "" and got[0]["path"] == ""
    assert svc.metrics is not None
    text = generate_latest(svc.metrics.registry).decode()
    assert 'sftpd_bans_total{reason="score"} 1.0' in text
    assert 'sftpd_connections_refused_total{reason="banned"} 3.0' in text
    assert 'sftpd_connections_refused_total{reason="max_connections_per_source"} 1.0' in text


def test_an_admin_ban_is_a_manual_ban_event(tmp_path: Path) -> None:
    svc, reactor = service(tmp_path)
    edge = make_edge(
        EdgeConfig(defender=DefenderConfig(safe_list=Networks())),
        clock=reactor,
        on_event=svc.edge_event,
    )
    assert edge.defender is not None
    edge.defender.add("2001:db8::1", minutes=5)
    edge.defender.remove("2001:db8::/64")
    svc.stop()
    got = lines(tmp_path)
    assert [(e["op"], e["client"], e["reason"]) for e in got] == [
        ("ban", "2001:db8::/64", "manual"),
        ("unban", "2001:db8::/64", ""),
    ]
    assert svc.metrics is not None
    assert 'sftpd_bans_total{reason="manual"} 1.0' in generate_latest(svc.metrics.registry).decode()


def test_hooks_on_ban_fire_with_the_default_outcomes(tmp_path: Path) -> None:
    svc, reactor = service(tmp_path)
    seen: list[Any] = []
    svc.events._sinks = (*svc.events._sinks, type("S", (), {"emit": lambda _, e: seen.append(e)})())
    until = reactor.seconds() + 60
    svc.edge_event("source_banned", {"source": A, "until": until, "reason": "score"})
    svc.edge_event("source_refused", {"source": A, "peer": A})
    svc.stop()
    hook = HookConfig(on=("ban", "refused", "unban"))  # outcomes = ("ok",) by default
    assert [matches(hook, e) for e in seen] == [True, True]


def test_hook_config_accepts_the_edge_operations(tmp_path: Path) -> None:
    text = '[[hooks]]\non = ["ban", "refused", "unban"]\ncommand = ["/bin/true"]\n'
    values = Values(str(tmp_path / "sftpd.toml"), tmp_path)
    cfg = parse_events(tomllib.loads(text), values)
    assert values.errors == [] and cfg.hooks[0].on == ("ban", "refused", "unban")
