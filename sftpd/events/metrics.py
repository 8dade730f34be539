"""Prometheus metrics (own registry), GET /metrics and /healthz, and summing across workers.

With ``workers > 1`` each worker writes a snapshot of its registry to a per-server
directory once a second (:class:`SnapshotWriter`), and the process serving ``/metrics``
sums them (:class:`SummedCollector`). We sum ourselves instead of using prometheus-client's
multiprocess mode because that mode is switched on by an environment variable read when
``prometheus_client`` is imported and keeps its state in module globals, and it would
mmap-write on every increment; a snapshot a second is cheaper and keeps every registry
ours. Counters of a worker that died are kept (so sums never go backwards); its gauges
are dropped. ``sftpd_event_loop_lag_seconds`` is the maximum over workers, not the sum.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.logger import Logger
from twisted.web import resource, server

from sftpd.events.model import Event
from sftpd.log import hostport

_log = Logger(namespace="sftpd.metrics")
_MAX_GAUGES = ("sftpd_event_loop_lag_seconds",)


class Metrics:
    """The metric families; also an event sink and the hooks' stats."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections_open = Gauge(
            "sftpd_connections_open", "SSH connections open now", registry=r
        )
        self.connections = Counter("sftpd_connections", "SSH connections accepted", registry=r)
        self.authentications = Counter(
            "sftpd_authentications",
            "Logins by method (password, publickey) and result (ok, failed)",
            ["method", "result"],
            registry=r,
        )
        self.sessions = Counter(
            "sftpd_sessions", "App sessions started, by protocol", ["protocol"], registry=r
        )
        self.sessions_open = Gauge(
            "sftpd_sessions_open", "App sessions running now, by protocol", ["protocol"], registry=r
        )
        # Counted once per event (a file of a ``put -r``): plain tallies, exported at scrape
        self.received = _Tally(
            r, "sftpd_received_bytes", "File bytes uploaded, by protocol", ("protocol",)
        )
        self.sent = _Tally(
            r, "sftpd_sent_bytes", "File bytes downloaded, by protocol", ("protocol",)
        )
        self.operations = _Tally(
            r,
            "sftpd_operations",
            "Completed operations by kind (upload, download, delete, ...) and outcome",
            ("operation", "outcome"),
        )
        self.quota_denials = Counter(
            "sftpd_quota_denials", "Operations refused by a quota", registry=r
        )
        self.hook_runs = Counter(
            "sftpd_hook_runs", "Hook runs started, by kind (command, http)", ["kind"], registry=r
        )
        self.hook_failures = Counter(
            "sftpd_hook_failures",
            "Hook failures by kind and reason (exit, timeout, spawn, http, overflow)",
            ["kind", "reason"],
            registry=r,
        )
        self.bans = Counter(
            "sftpd_bans",
            "Sources banned by this process, by reason (score, manual)",
            ["reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "sftpd_connections_refused",
            "Connections closed at accept, by reason (banned, blocked, max_connections, "
            "max_connections_per_source, max_startups, proxy_*); evicted: accepted, then "
            "closed unauthenticated at max_startups full to admit a newcomer (it is in "
            "sftpd_connections_total too)",
            ["reason"],
            registry=r,
        )
        self.worker_queue = Gauge(
            "sftpd_worker_queue_length", "Blocking calls waiting for a worker thread", registry=r
        )
        self.loop_lag = Gauge(
            "sftpd_event_loop_lag_seconds",
            "How late the last 1 s reactor tick ran (event-loop lag)",
            registry=r,
        )

    # -- EventSink

    def emit(self, event: Event) -> None:
        self.operations.add((event.op, event.outcome), 1)
        if event.bytes:
            if event.op == "upload":
                self.received.add((event.who.protocol,), event.bytes)
            elif event.op == "download":
                self.sent.add((event.who.protocol,), event.bytes)
        if event.op in ("login", "login_failed"):
            method = "password" if event.who.auth == "password" else "publickey"
            if not event.who.auth:
                method = "none"
            self.authentications.labels(method, "ok" if event.op == "login" else "failed").inc()
        if event.op == "ban":
            self.bans.labels(event.reason).inc()
        if event.outcome == "denied" and event.reason.startswith("quota"):
            self.quota_denials.inc()

    # -- HookStats

    def hook_run(self, kind: str) -> None:
        self.hook_runs.labels(kind).inc()

    def hook_failed(self, kind: str, reason: str) -> None:
        self.hook_failures.labels(kind, reason).inc()

    # -- called by the connection and session code

    def connection_opened(self) -> None:
        self.connections.inc()
        self.connections_open.inc()

    def connection_closed(self) -> None:
        self.connections_open.dec()

    def connection_refused(self, reason: str) -> None:
        self.connections_refused.labels(reason).inc()

    def session_started(self, protocol: str) -> None:
        self.sessions.labels(protocol).inc()
        self.sessions_open.labels(protocol).inc()

    def session_ended(self, protocol: str) -> None:
        self.sessions_open.labels(protocol).dec()

    def watch_worker_queue(self, length: Callable[[], int]) -> None:
        """Read the worker pool's queue length at each scrape."""
        self.worker_queue.set_function(lambda: float(length()))


class _Tally:
    """A counter family kept as a dict of label values -> total, for the counters every
    event adds to: one small lock and a dict update per event, where a prometheus-client
    child costs a ``labels()`` lookup (validation, a lock) and a lock of its own. Exported
    at each scrape as a counter family (``NAME_total``), like a Counter."""

    def __init__(
        self, registry: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...]
    ) -> None:
        self._name, self._doc, self._labels = name, doc, list(labels)
        self._totals: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()  # events come from the reactor and storage threads
        registry.register(self)

    def add(self, labels: tuple[str, ...], amount: float) -> None:
        with self._lock:
            totals = self._totals
            totals[labels] = totals.get(labels, 0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labels)
        with self._lock:
            items = sorted(self._totals.items())
        for labels, total in items:
            family.add_metric(list(labels), total)
        yield family


class LoopLag:
    """Schedules a call every ``interval`` seconds and records how late it ran."""

    def __init__(self, clock: Any, gauge: Gauge, interval: float = 1.0) -> None:
        self._clock = clock
        self._gauge = gauge
        self._interval = interval
        self._call: Any = None

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        due = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._tick, due)

    def _tick(self, due: float) -> None:
        self._gauge.set(max(0.0, self._clock.seconds() - due))
        self._schedule()


def _snapshot(registry: CollectorRegistry) -> list[dict[str, Any]]:
    out = []
    for family in registry.collect():
        samples = [
            [s.name, s.labels, s.value] for s in family.samples if not s.name.endswith("_created")
        ]
        out.append(
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": samples,
            }
        )
    return out


class SnapshotWriter:
    """A worker's side of summing: its registry to ``directory/worker-PID.json`` every second."""

    def __init__(self, clock: Any, registry: CollectorRegistry, directory: Path, pid: int) -> None:
        self._clock = clock
        self._registry = registry
        self.path = directory / f"worker-{pid}.json"
        self._call: Any = None

    def start(self) -> None:
        self.write()
        self._call = self._clock.callLater(1.0, self._again)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.write()

    def _again(self) -> None:
        self.write()
        self._call = self._clock.callLater(1.0, self._again)

    def write(self) -> None:
        # A few kilobytes to a private temp directory: cheap enough for the reactor thread.
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(_snapshot(self._registry)))
            os.replace(tmp, self.path)
        except OSError as e:
            _log.warn("metrics snapshot not written: {error}", error=e.strerror or "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SummedCollector:
    """The serving side: every worker's snapshot, counters summed, gauges of live workers."""

    def __init__(self, directory: Path, alive: Callable[[int], bool] = _pid_alive) -> None:
        self._directory = directory
        self._alive = alive

    def collect(self) -> Iterator[Metric]:
        families: dict[str, tuple[str, str]] = {}
        sums: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for path in sorted(self._directory.glob("worker-*.json")):
            try:
                pid = int(path.stem.removeprefix("worker-"))
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            live = self._alive(pid)
            for family in data:
                name, kind = family["name"], family["type"]
                if kind == "gauge" and not live:
                    continue
                families.setdefault(name, (kind, family["help"]))
                values = sums.setdefault(name, {})
                for _sample, labels, value in family["samples"]:
                    key = tuple(sorted(labels.items()))
                    if kind == "gauge" and name in _MAX_GAUGES:
                        values[key] = max(values.get(key, value), value)
                    else:
                        values[key] = values.get(key, 0.0) + value
        for name, (kind, doc) in families.items():
            values = sums[name]
            label_names = [k for k, _ in next(iter(values), ())]
            metric: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                metric = CounterMetricFamily(name, doc, labels=label_names)
            else:
                metric = GaugeMetricFamily(name, doc, labels=label_names)
            for key, value in sorted(values.items()):
                metric.add_metric([v for _, v in key], value)
            yield metric


class _Endpoint(resource.Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry, draining: Callable[[], bool]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry
        self._draining = draining

    def render_GET(self, request: Any) -> bytes:
        if request.path == b"/metrics":
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            return generate_latest(self._registry)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        if request.path == b"/healthz":
            if self._draining():
                request.setResponseCode(503)
                return b"draining\n"
            return b"ok\n"
        request.setResponseCode(404)
        return b"not found; try /metrics or /healthz\n"


class MetricsServer:
    """``[metrics] listen``: serves a registry at /metrics and the drain state at /healthz."""

    def __init__(self, reactor: Any, registry: CollectorRegistry) -> None:
        self._reactor = reactor
        self._registry = registry
        self._draining = False
        self.port: Any = None

    def set_draining(self) -> None:
        """From now on /healthz answers 503 (the server no longer accepts connections)."""
        self._draining = True

    def draining(self) -> bool:
        return self._draining

    def listen(self, host: str, port: int) -> Any:
        site = server.Site(_Endpoint(self._registry, self.draining))  # type: ignore[no-untyped-call]
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]  # no access log lines
        self.port = self._reactor.listenTCP(port, site, interface=host)
        return self.port

    def stop(self) -> Any:
        return self.port.stopListening() if self.port is not None else None


class SummedMetrics:
    """With ``workers > 1``, the supervisor's ``[metrics] listen``: /metrics sums the
    workers' snapshots in ``directory``, /healthz answers 503 once draining starts."""

    def __init__(self, reactor: Any, listen: tuple[str, int], directory: Path) -> None:
        registry = CollectorRegistry()
        registry.register(SummedCollector(directory))
        self.web = MetricsServer(reactor, registry)
        self._listen = listen

    def start(self) -> None:
        host, port = self._listen
        listening = self.web.listen(host, port)
        shown = hostport(host, listening.getHost().port)
        _log.info("metrics on http://{address}/metrics", address=shown)

    def set_draining(self) -> None:
        self.web.set_draining()

    def stop(self) -> Any:
        return self.web.stop()
