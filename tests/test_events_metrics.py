"""Metrics: families fed by events, loop lag, summing across workers, /metrics and /healthz."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from sftpd.events.metrics import LoopLag, Metrics, MetricsServer, SnapshotWriter, SummedCollector
from sftpd.events.model import Event, Identity
from sftpd.runtime.reactor import LeanEPollReactor

SFTP = Identity.of("alice", "password", "sftp", "127.0.0.1", 4000, "c1")
SCP = Identity.of("bob", "SHA256:k", "scp", "127.0.0.1", 4001, "c2")


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def feed(m: Metrics) -> None:
    m.connection_opened()
    m.connection_opened()
    m.connection_closed()
    m.session_started("sftp")
    m.session_started("scp")
    m.session_ended("scp")
    m.emit(Event("login", SFTP, 0.0))
    m.emit(Event("login_failed", SCP, 0.0, outcome="denied", reason="wrong key"))
    m.emit(Event("upload", SFTP, 0.0, "/a", bytes=100, size=100))
    m.emit(Event("upload", SCP, 0.0, "/b", bytes=7, size=7, outcome="incomplete"))
    m.emit(Event("download", SFTP, 0.0, "/a", bytes=40))
    m.emit(Event("upload", SFTP, 0.0, "/c", outcome="denied", reason="quota: 1 GiB"))
    m.hook_run("command")
    m.hook_failed("command", "timeout")
    m.watch_worker_queue(lambda: 3)


EXPECTED = {
    ("sftpd_connections_total", ()): 2,
    ("sftpd_connections_open", ()): 1,
    ("sftpd_sessions_total", (("protocol", "sftp"),)): 1,
    ("sftpd_sessions_total", (("protocol", "scp"),)): 1,
    ("sftpd_sessions_open", (("protocol", "sftp"),)): 1,
    ("sftpd_sessions_open", (("protocol", "scp"),)): 0,
    ("sftpd_authentications_total", (("method", "password"), ("result", "ok"))): 1,
    ("sftpd_authentications_total", (("method", "publickey"), ("result", "failed"))): 1,
    ("sftpd_received_bytes_total", (("protocol", "sftp"),)): 100,
    ("sftpd_received_bytes_total", (("protocol", "scp"),)): 7,
    ("sftpd_sent_bytes_total", (("protocol", "sftp"),)): 40,
    ("sftpd_operations_total", (("operation", "upload"), ("outcome", "ok"))): 1,
    ("sftpd_operations_total", (("operation", "upload"), ("outcome", "incomplete"))): 1,
    ("sftpd_operations_total", (("operation", "upload"), ("outcome", "denied"))): 1,
    ("sftpd_operations_total", (("operation", "download"), ("outcome", "ok"))): 1,
    ("sftpd_operations_total", (("operation", "login"), ("outcome", "ok"))): 1,
    ("sftpd_operations_total", (("operation", "login_failed"), ("outcome", "denied"))): 1,
    ("sftpd_quota_denials_total", ()): 1,
    ("sftpd_hook_runs_total", (("kind", "command"),)): 1,
    ("sftpd_hook_failures_total", (("kind", "command"), ("reason", "timeout"))): 1,
    ("sftpd_worker_queue_length", ()): 3,
    ("sftpd_event_loop_lag_seconds", ()): 0,
}


def test_families_follow_what_happened() -> None:
    m = Metrics()
    feed(m)
    assert samples(m.registry) == EXPECTED


def test_registries_are_separate() -> None:
    a, b = Metrics(), Metrics()
    a.connection_opened()
    assert samples(b.registry)[("sftpd_connections_total", ())] == 0


def test_loop_lag() -> None:
    clock, m = Clock(), Metrics()
    lag = LoopLag(clock, m.loop_lag)
    lag.start()
    clock.advance(1.0)
    assert m.loop_lag._value.get() == 0
    clock.advance(1.25)  # the tick due at 2.0 ran at 2.25
    assert m.loop_lag._value.get() == 0.25
    lag.stop()
    assert not clock.getDelayedCalls()


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_workers_are_summed(tmp_path: Path) -> None:
    clock = Clock()
    w1, w2, gone = Metrics(), Metrics(), Metrics()
    feed(w1)
    feed(w2)
    w2.loop_lag.set(0.5)
    w1.loop_lag.set(0.2)
    gone.connection_opened()  # a worker that died: its counter stays, its gauge goes
    gone_pid = dead_pid()
    writers = [
        SnapshotWriter(clock, w1.registry, tmp_path, 1),
        SnapshotWriter(clock, w2.registry, tmp_path, 2),
        SnapshotWriter(clock, gone.registry, tmp_path, gone_pid),
    ]
    for w in writers:
        w.start()
    w1.connection_opened()
    clock.advance(1)  # the periodic snapshot picks up the change
    total = CollectorRegistry()
    total.register(SummedCollector(tmp_path, alive=lambda pid: pid != gone_pid))
    got = samples(total)
    want = {k: v * 2 for k, v in EXPECTED.items()}
    want[("sftpd_connections_total", ())] = 2 * 2 + 1 + 1
    want[("sftpd_connections_open", ())] = 1 * 2 + 1
    want[("sftpd_event_loop_lag_seconds", ())] = 0.5
    assert got == want
    for w in writers:
        w.stop()
    assert not clock.getDelayedCalls()


def test_unreadable_snapshot_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "worker-1.json").write_text("{not json")
    (tmp_path / "worker-x.json").write_text("[]")
    total = CollectorRegistry()
    total.register(SummedCollector(tmp_path))
    assert samples(total) == {}


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


@pytest.mark.e2e
def test_served_metrics_parse_and_healthz_follows_draining() -> None:
    reactor = LeanEPollReactor()
    m = Metrics()
    feed(m)
    web = MetricsServer(reactor, m.registry)
    port = web.listen("127.0.0.1", 0).getHost().port
    base = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {}

    def client() -> None:
        try:
            results["metrics"] = fetch(base + "/metrics")
            results["healthy"] = fetch(base + "/healthz")
            reactor.callFromThread(web.set_draining)
            results["draining"] = fetch(base + "/healthz")
            results["other"] = fetch(base + "/")
            results["curl"] = subprocess.run(
                ["curl", "-sf", base + "/metrics"], capture_output=True, text=True, timeout=10
            ).stdout
        finally:
            reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(reactor.callInThread, client)
    guard = reactor.callLater(60, reactor.stop)  # deadlock guard, not a timing assertion
    reactor.run(installSignalHandlers=False)
    if guard.active():
        guard.cancel()
    status, ctype, text = results["metrics"]
    assert status == 200 and ctype.startswith("text/plain; version=")
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if not s.name.endswith("_created")
    }
    assert parsed == EXPECTED
    assert results["healthy"][:1] == (200,) and results["healthy"][2] == "ok\n"
    assert results["draining"][0] == 503 and results["draining"][2] == "draining\n"
    assert results["other"][0] == 404
    assert "sftpd_connections_total 2.0" in results["curl"]
