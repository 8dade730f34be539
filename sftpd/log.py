"""Logging: one line per event (text or JSON), client strings capped, peers and addresses shown."""

from __future__ import annotations

import json
import sys
import time
import unicodedata
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

# Client-supplied strings are cut to this many characters in a log line.
CLIP_CHARS = 256
# Strings from sftpd's own code are only cut when longer than this.
_OWN_TEXT_CHARS = 4 * CLIP_CHARS
_SKIP = {"format", "isError", "message", "time", "system", "failure", "why"}
_ESCAPED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_BARE_PUNCTUATION = set("-_.@+:/,%~#[]()")


class Shown(str):
    """Text already made safe for a log line by :func:`clip` (never escaped twice)."""


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clip(
    value: str | bytes | bytearray | memoryview, limit: int = CLIP_CHARS, *, quote: bool = True
) -> Shown:
    """``value`` (usually from the client) as one safe, short piece of a log line.

    Bytes are decoded as UTF-8 (undecodable bytes become U+FFFD); backslashes, control
    and other invisible characters are escaped (``\\n``, ``\\x1b``, ``\\u202e``); at most
    ``limit`` characters are kept, then ``…`` and the original length, e.g.
    ``'aaaa…' (200000 bytes)``. With ``quote`` the text is put in single quotes (a quote
    inside escaped) unless it is a plain word (letters, digits, ``-_.@+:/,%~#[]()``), so
    a client cannot make its string look like more fields of the line.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        size, unit = len(raw), "bytes"
        text = raw[: 4 * limit + 4].decode("utf-8", "replace")
    else:
        size, unit = len(value), "characters"
        text = value[: limit + 1]
    out: list[str] = []
    used = 0
    cut = False
    for ch in text:
        piece = _escape(ch)
        if quote and ch == "'":
            piece = "\\'"
        if used + len(piece) > limit:
            cut = True
            break
        out.append(piece)
        used += len(piece)
    shown = "".join(out)
    if cut:
        shown += "…"
    bare = bool(shown) and all(c.isalnum() or c in _BARE_PUNCTUATION for c in shown)
    if quote and (cut or not bare):
        shown = f"'{shown}'"
    if cut:
        shown += f" ({size} {unit})"
    return Shown(shown)


def hostport(host: str, port: int) -> str:
    """An address as ``HOST:PORT``, IPv6 in brackets (``[::1]:2222``): peers and listeners."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_text(tcp: Any) -> str:
    """The remote address of a TCP transport as :func:`hostport` shows it, or ``?``."""
    try:
        peer = tcp.getPeer()
        return hostport(str(peer.host), int(peer.port))
    except Exception:
        return "?"


def conn_fields(ssh_transport: Any) -> dict[str, str]:
    """The ``conn`` (connection id) and ``peer`` fields for a line about a connection."""
    conn = getattr(ssh_transport, "conn_id", None) or "-"
    return {"conn": str(conn), "peer": peer_text(getattr(ssh_transport, "transport", None))}


def _shown(value: Any, quote: bool) -> Any:
    if isinstance(value, Shown):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return clip(value, quote=quote)  # bytes in a log event come from the client
    if isinstance(value, str) and (
        len(value) > _OWN_TEXT_CHARS or any(_escape(c) != c and c != "\\" for c in value)
    ):
        return clip(value, _OWN_TEXT_CHARS, quote=False)
    return value


def _fields(event: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIP:
            continue
        value = _shown(value, quote=False)
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
    return out


def _iso(when: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"
    )


def json_line(message: str, *, namespace: str = "sftpd", level: str = "info", **fields: Any) -> str:
    """One JSON log record (as :class:`LineObserver` writes them), for lines printed directly."""
    record = {"time": _iso(time.time()), "level": level, "namespace": namespace, "message": message}
    record.update(fields)
    return json.dumps(record)


def announce(message: str, fmt: str, stream: IO[str] | None = None, **fields: Any) -> None:
    """Print a start-up line (banner, ``sftpd: listening on ...``): as is, or as JSON."""
    out = stream or sys.stderr
    out.write((json_line(message, **fields) if fmt == "json" else message) + "\n")
    out.flush()


def announce_listening(host: str, port: int, fmt: str, stream: IO[str] | None = None) -> None:
    """``sftpd: listening on HOST:PORT`` (tests and scripts parse it, in both formats)."""
    announce(
        f"sftpd: listening on {hostport(host, port)}",
        fmt,
        stream,
        event="listening",
        host=host,
        port=port,
    )


def _is_twisted_chatter(event: dict[str, Any]) -> bool:
    # sftpd's loggers are module-level Logger(namespace=...): no source. Twisted's and
    # Conch's are class attributes (their namespace is our subclass's name, source the
    # instance), or legacy twisted.python.log calls.
    own = event.get("log_source") is None and event.get("log_namespace") != "log_legacy"
    return not own and event.get("log_level") == LogLevel.info


@implementer(ILogObserver)
class _Downgrade:
    """Passes events on, Twisted's and Conch's info-level chatter turned into debug."""

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        if _is_twisted_chatter(event):
            event = dict(event, log_level=LogLevel.debug)
        self._observer(event)


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
        shown = {k: _shown(v, quote=True) for k, v in event.items() if not k.startswith("log_")}
        message = formatEvent({**event, **shown})
        failure = event.get("log_failure")
        if self._json:
            record = {"time": _iso(when), "level": level.name, "namespace": namespace}
            record["message"] = message
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
    observer: ILogObserver = _Downgrade(
        FilteringLogObserver(LineObserver(stream or sys.stderr, fmt), [predicate])
    )
    return observer


def start_logging(fmt: str, level: str, stream: IO[str] | None = None) -> None:
    """Route all of twisted.logger (and legacy twisted.python.log) to one observer."""
    globalLogBeginner.beginLoggingTo(
        [make_observer(fmt, level, stream)], discardBuffer=True, redirectStandardIO=False
    )
