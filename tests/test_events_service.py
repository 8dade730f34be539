"""EventsService: the configured sinks built, started and stopped together."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.testing import MemoryReactorClock

from sftpd.config.values import Values
from sftpd.events.config import parse_events
from sftpd.events.model import Identity
from sftpd.events.service import EventsService, summed_metrics


class Reactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[list[str]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any) -> Any:
        self.spawned.append(args)
        raise OSError(2, "No such file or directory")


def config(tmp_path: Path, text: str) -> Any:
    values = Values(str(tmp_path / "sftpd.toml"), tmp_path)
    parsed = parse_events(tomllib.loads(text), values)
    assert values.errors == []
    return parsed


def test_everything_on(tmp_path: Path) -> None:
    reactor = Reactor()
    cfg = config(
        tmp_path,
        '[audit]\nfile = "audit.jsonl"\n[metrics]\nlisten = "127.0.0.1:0"\n'
        '[[hooks]]\non = ["upload"]\ncommand = ["/nonexistent/ingest"]\n',
    )
    service = EventsService(reactor, cfg)
    service.start()
    assert reactor.tcpServers[0][0] == 0 and reactor.tcpServers[0][3] == "127.0.0.1"
    rec = service.events.session(Identity.of("alice", "password", "sftp", "::1", 5, "c1"))
    rec.opened(1, "/a.filepart", write=True, truncate=True, size=0)
    rec.wrote(1, 0, b"abc")
    rec.closed(1)
    rec.renamed("/a.filepart", "/a")
    reactor.advance(0)
    service.set_draining()
    assert service.web is not None and service.web.draining()
    service.stop()
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["path"] == "/a" and json.loads(line)["client"] == "[::1]:5"
    assert len(reactor.spawned[0]) in (1, 2) and reactor.spawned[0][-1] == "/nonexistent/ingest"
    assert service.metrics is not None
    text = generate_latest(service.metrics.registry).decode()
    assert 'sftpd_operations_total{operation="upload",outcome="ok"} 1.0' in text
    assert 'sftpd_hook_failures_total{kind="command",reason="spawn"} 1.0' in text
    assert not reactor.getDelayedCalls()


def test_nothing_configured_builds_nothing(tmp_path: Path) -> None:
    reactor = Reactor()
    service = EventsService(reactor, config(tmp_path, ""))
    service.start()
    service.events.login(Identity.of("a", "password", "ssh", "127.0.0.1", 1, "c"))
    service.reopen()
    service.set_draining()
    service.stop()
    assert service.metrics is None and service.web is None and reactor.tcpServers == []


def test_workers_snapshot_and_summing(tmp_path: Path) -> None:
    reactor = Reactor()
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    cfg = config(tmp_path, '[metrics]\nlisten = "127.0.0.1:0"\n')
    worker = EventsService(reactor, cfg, snapshot_dir=snaps, serve_metrics=False)
    worker.start()
    assert worker.web is None and worker.metrics is not None
    worker.metrics.connection_opened()
    reactor.advance(1)
    make = summed_metrics(cfg)
    assert make is not None and summed_metrics(config(tmp_path, "")) is None
    supervisor = make(reactor, snaps)
    supervisor.start()
    assert [port for port, *_ in reactor.tcpServers] == [0]
    text = generate_latest(supervisor.web._registry).decode()
    assert "sftpd_connections_total 1.0" in text
    supervisor.set_draining()
    assert supervisor.web.draining()
    worker.stop()
