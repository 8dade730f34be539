"""Builds the event sinks from an :class:`EventsConfig` and runs them: one object to wire.

Assembly (one per server process)::

    service = EventsService(reactor, config.events, temp=None)
    service.start()                      # audit writer thread, metrics port, loop-lag tick
    hub = service.events                 # Events: .login(), .login_failed(), .session()
    service.metrics                      # Metrics or None: connection_opened(), ...
    reactor.addSystemEventTrigger("before", "shutdown", service.stop)
    signal.signal(SIGHUP, lambda *_: reactor.callFromThread(service.reopen))
    service.set_draining()               # on SIGTERM, before closing the listeners

With ``workers > 1``: each worker gets ``snapshot_dir`` and ``serve_metrics=False``; the
supervisor serves ``[metrics] listen`` with :func:`summed_metrics` (the workers' sum).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from sftpd.events.audit import AuditFile, AuditToLog
from sftpd.events.config import EventsConfig
from sftpd.events.hooks import Hooks
from sftpd.events.metrics import LoopLag, Metrics, MetricsServer, SnapshotWriter, SummedMetrics
from sftpd.events.model import Event, Identity
from sftpd.events.recorder import Events, EventSink
from sftpd.events.storage import EventsStorage
from sftpd.log import hostport
from sftpd.storage.base import Storage

_log = Logger(namespace="sftpd.events")


class EventsService:
    """The audit sink, the hooks, the metrics and their endpoint, as configured."""

    def __init__(
        self,
        reactor: Any,
        config: EventsConfig,
        *,
        temp: Callable[[str], bool] | None = None,
        snapshot_dir: Path | None = None,
        serve_metrics: bool = True,
        hash_uploads: bool = True,
    ) -> None:
        self._reactor = reactor
        self.config = config
        sinks: list[EventSink] = []
        self.audit: AuditFile | None = None
        if config.audit is not None:
            if config.audit.file is not None:
                self.audit = AuditFile(config.audit.file)
                sinks.append(self.audit)
            else:
                sinks.append(AuditToLog())
        wants_metrics = config.metrics_listen is not None or snapshot_dir is not None
        self.metrics: Metrics | None = Metrics() if wants_metrics else None
        if self.metrics is not None:
            sinks.append(self.metrics)
        self.hooks: Hooks | None = None
        if config.hooks:
            self.hooks = Hooks(reactor, config.hooks, config.hook_limits, stats=self.metrics)
            sinks.append(_OnReactor(reactor, self.hooks))
        self.events = Events(sinks, reactor, temp, hash_uploads=hash_uploads)
        self._lock = threading.Lock()  # the recorders of every login (storage threads)
        self._lag = LoopLag(reactor, self.metrics.loop_lag) if self.metrics else None
        self._snapshots = (
            SnapshotWriter(reactor, self.metrics.registry, snapshot_dir, os.getpid())
            if self.metrics is not None and snapshot_dir is not None
            else None
        )
        self.web: MetricsServer | None = None
        if config.metrics_listen is not None and serve_metrics:
            assert self.metrics is not None
            self.web = MetricsServer(reactor, self.metrics.registry)

    def wrap_storage(self, storage: Storage) -> EventsStorage:
        """One login's storage, recording its operations (see :mod:`sftpd.events.storage`)."""
        return EventsStorage(storage, self.events, self._lock, metrics=self.metrics)

    def login_succeeded(self, fields: dict[str, Any], result: Any) -> None:
        """The ssh-userauth success path: a login event, and the login's storage learns
        who it serves. ``fields``: the auth log line's (user, method, conn, peer, key)."""
        who = _login_identity(fields)
        with self._lock:
            self.events.login(who)
        avatar = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        storage = getattr(getattr(avatar, "ctx", None), "storage", None)
        identify = getattr(storage, "identify", None)
        if identify is not None:
            identify(who.user, who.auth, who.client, who.session)

    def login_failed(self, fields: dict[str, Any], reason: str) -> None:
        with self._lock:
            self.events.login_failed(_login_identity(fields), reason)

    def edge_event(self, name: str, fields: Mapping[str, Any]) -> None:
        """The network edge's ``on_event`` (the defender's bans, the gate's refusals): bans,
        their ends and each ban's first refused connection become events for the sinks;
        every refused connection is counted (a flood is a number, not a flood of lines).
        The edge calls this; nothing here calls back into the edge."""
        now = self._reactor.seconds()
        source = str(fields.get("source", ""))
        event: Event | None = None
        if name == "connection_refused":
            if self.metrics is not None:
                self.metrics.connection_refused(str(fields.get("reason", "")))
        elif name == "source_banned":
            length = max(0.0, float(fields.get("until", now)) - now)
            who = Identity("", "", "ssh", source, "")
            reason = str(fields.get("reason", "")) or "score"
            event = Event("ban", who, now, duration=length, outcome="denied", reason=reason)
        elif name == "source_refused":
            who = Identity("", "", "ssh", str(fields.get("peer", source)), "")
            event = Event("refused", who, now, outcome="denied", reason="banned")
        elif name == "source_unbanned":
            event = Event("unban", Identity("", "", "ssh", source, ""), now)
        if event is not None:
            with self._lock:
                self.events.emit(event)

    def start(self) -> None:
        if self.audit is not None:
            self.audit.start()
        if self._lag is not None:
            self._lag.start()
        if self._snapshots is not None:
            self._snapshots.start()
        if self.web is not None and self.config.metrics_listen is not None:
            host, port = self.config.metrics_listen
            listening = self.web.listen(host, port)
            shown = hostport(host, listening.getHost().port)
            _log.info("metrics on http://{address}/metrics", address=shown)

    def reopen(self) -> None:
        """SIGHUP: reopen the audit file (after log rotation)."""
        if self.audit is not None:
            self.audit.reopen()

    def set_draining(self) -> None:
        if self.web is not None:
            self.web.set_draining()

    def stop(self) -> None:
        """Shutdown: last snapshot, drop waiting hooks, write the queued audit lines."""
        if self._lag is not None:
            self._lag.stop()
        if self._snapshots is not None:
            self._snapshots.stop()
        if self.hooks is not None:
            self.hooks.stop()
        if self.web is not None:
            self.web.stop()
        if self.audit is not None:
            self.audit.stop()


def summed_metrics(config: EventsConfig) -> Callable[[Any, Path], SummedMetrics] | None:
    """For the supervisor of ``workers > 1``: what builds its ``[metrics] listen`` endpoint
    from (reactor, the workers' snapshot directory); None without ``[metrics] listen``."""
    listen = config.metrics_listen
    if listen is None:
        return None
    return lambda reactor, directory: SummedMetrics(reactor, listen, directory)


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _login_identity(fields: dict[str, Any]) -> Identity:
    method = _text(fields.get("method", ""))
    auth = str(fields.get("key_fingerprint") or "")
    if not auth and method in ("password", "keyboard-interactive"):
        auth = "password"
    return Identity(
        _text(fields.get("user", "")),
        auth,
        "ssh",
        str(fields.get("peer", "")),
        str(fields.get("conn", "")),
    )


class _OnReactor:
    """A sink that must run on the reactor thread (the hooks spawn processes, set timers),
    fed from the storage threads too. Built on the reactor thread."""

    def __init__(self, reactor: Any, sink: EventSink) -> None:
        self._reactor = reactor
        self._sink = sink
        self._thread = threading.get_ident()  # built on the reactor thread

    def emit(self, event: Event) -> None:
        if threading.get_ident() == self._thread:
            self._sink.emit(event)
        else:
            self._reactor.callFromThread(self._sink.emit, event)
