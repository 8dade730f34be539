"""Logging: twisted.logger observers for human text or JSON lines on stderr, no per-packet noise."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

_SKIP = {"format", "isError", "message", "time", "system", "failure", "why"}


def _fields(event: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIP:
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, bytes):
            out[key] = value.decode("utf-8", "backslashreplace")
    return out


@implementer(ILogObserver)
class LineObserver:
    """Writes one line per event, as text or JSON."""

    def __init__(self, stream: IO[str], fmt: str = "text") -> None:
        self._stream = stream
        self._json = fmt == "json"

    def __call__(self, event: dict[str, Any]) -> None:
        when = event.get("log_time") or time.time()
        level = event.get("log_level", LogLevel.info)
        namespace = event.get("log_namespace", "")
        message = formatEvent(event)
        failure = event.get("log_failure")
        if self._json:
            record = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
                + f".{int(when * 1000) % 1000:03d}Z",
                "level": level.name,
                "namespace": namespace,
                "message": message,
            }
            record.update(_fields(event))
            if failure is not None:
                record["error"] = failure.getErrorMessage()
            line = json.dumps(record, sort_keys=False)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
            line = f"{stamp} [{namespace}] {level.name}: {message}"
            if failure is not None:
                line += "\n" + failure.getTraceback()
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass


def make_observer(fmt: str, level: str, stream: IO[str] | None = None) -> ILogObserver:
    """An observer that shows sftpd's own events at ``level`` and others' from warn up."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    predicate.setLogLevelForNamespace("sftpd", LogLevel.levelWithName(level))
    observer: ILogObserver = FilteringLogObserver(
        LineObserver(stream or sys.stderr, fmt), [predicate]
    )
    return observer


def start_logging(fmt: str, level: str, stream: IO[str] | None = None) -> None:
    """Route all of twisted.logger (and legacy twisted.python.log) to one observer."""
    globalLogBeginner.beginLoggingTo(
        [make_observer(fmt, level, stream)], discardBuffer=True, redirectStandardIO=False
    )
