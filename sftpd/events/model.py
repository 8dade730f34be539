"""The one event model for every protocol, and its JSON and environment encodings.

JSON keys (stable; a consumer may rely on them, new keys may be added):

``time``      ISO-8601 UTC start of the operation, milliseconds (``2026-12-03T17:16:10.123Z``)
``op``        upload, download, delete, rename, mkdir, rmdir, login, login_failed, session;
              ban, refused, unban (the network edge: ``client`` is the source, an address or
              an IPv6 /64, ``duration`` of a ban its length in seconds)
``user``      the login name (for login_failed: the name the client tried)
``auth``      ``SHA256:...`` fingerprint of the key used, ``password``, or ``""`` (not known)
``protocol``  ssh (logins), sftp, scp, rsync or hashes
``client``    the client's address as ``HOST:PORT`` (``[::1]:40000`` for IPv6)
``session``   the session id (the ``conn`` field of the server log lines)
``path``      the path as the user sees it (inside their root), the final name for uploads
``target``    the new name of a rename, else ``""``
``bytes``     bytes transferred by this operation (uploaded or downloaded)
``size``      the file's size after the operation, or null when not known
``duration``  seconds from open (or request) to close (or reply), 3 decimals
``outcome``   ok, denied (``reason`` names the rule), error (``reason`` is the errno text),
              incomplete (the connection was lost during the transfer)
``reason``    see ``outcome``; ``""`` when ok
``sha256``    hex SHA-256 of the content when it was written sequentially in one session,
              else null

A host path or a secret never enters an event: paths are virtual (they start with ``/``
and are the names the client used), and ``auth`` is a public key fingerprint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from json.encoder import encode_basestring_ascii
from typing import Any

from sftpd.events.names import OPERATIONS, OUTCOMES, PROTOCOLS
from sftpd.log import hostport

_str = encode_basestring_ascii  # a JSON string, ASCII only, quoted


def _float(value: float) -> str:
    # json.dumps writes a finite float as its repr (and NaN/Infinity by name)
    return repr(value) if math.isfinite(value) else json.dumps(value)


def iso_time(when: float) -> str:
    """``when`` (epoch seconds) as ISO-8601 UTC with milliseconds."""
    millis = round(when * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + (
        f".{millis % 1000:03d}Z"
    )


@dataclass(frozen=True)
class Identity:
    """Who and where an event comes from: the same for every event of a session."""

    user: str
    auth: str  # "SHA256:..." key fingerprint, "password", or ""
    protocol: str
    client: str  # hostport() text
    session: str

    @classmethod
    def of(
        cls, user: str, auth: str, protocol: str, host: str, port: int, session: str
    ) -> Identity:
        """An identity with the client address formatted as the server log shows it."""
        return cls(user, auth, protocol, hostport(host, port), session)


@dataclass(frozen=True)
class Event:
    """One completed operation. See the module docstring for the meaning of each field."""

    op: str
    who: Identity
    time: float
    path: str = ""
    target: str = ""
    bytes: int = 0
    size: int | None = None
    duration: float = 0.0
    outcome: str = "ok"
    reason: str = ""
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPERATIONS:
            raise ValueError(f"unknown operation {self.op!r}; expected one of {OPERATIONS}")
        if self.who.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.who.protocol!r}; expected one of {PROTOCOLS}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; expected one of {OUTCOMES}")
        for name, value in (("path", self.path), ("target", self.target)):
            if value and not value.startswith("/"):
                raise ValueError(f"{name} {value!r} is not a virtual path (starting with '/')")
        if self.outcome == "ok" and self.reason:
            raise ValueError("an ok event has no reason")
        if self.outcome in ("denied", "error") and not self.reason:
            raise ValueError(f"a {self.outcome} event needs a reason (the rule or errno text)")

    def final_path(self) -> str:
        """The path the operation leaves behind: the target of a rename, else the path."""
        return self.target or self.path

    def with_outcome(self, outcome: str, reason: str = "") -> Event:
        return replace(self, outcome=outcome, reason=reason)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in :data:`KEYS` order."""
        return {
            "time": iso_time(self.time),
            "op": self.op,
            "user": self.who.user,
            "auth": self.who.auth,
            "protocol": self.who.protocol,
            "client": self.who.client,
            "session": self.who.session,
            "path": self.path,
            "target": self.target,
            "bytes": self.bytes,
            "size": self.size,
            "duration": round(self.duration, 3),
            "outcome": self.outcome,
            "reason": self.reason,
            "sha256": self.sha256,
        }

    def to_json(self) -> str:
        """One line of JSON, ASCII only (no line separator of any kind inside): what
        ``json.dumps(self.to_dict(), separators=(",", ":"))`` gives, built directly (the
        audit writer encodes one per file of a ``put -r``)."""
        w = self.who
        size = "null" if self.size is None else str(int(self.size))
        sha = "null" if self.sha256 is None else _str(self.sha256)
        return (
            f'{{"time":"{iso_time(self.time)}","op":{_str(self.op)},"user":{_str(w.user)},'
            f'"auth":{_str(w.auth)},"protocol":{_str(w.protocol)},"client":{_str(w.client)},'
            f'"session":{_str(w.session)},"path":{_str(self.path)},'
            f'"target":{_str(self.target)},"bytes":{int(self.bytes)},"size":{size},'
            f'"duration":{_float(round(self.duration, 3))},"outcome":{_str(self.outcome)},'
            f'"reason":{_str(self.reason)},"sha256":{sha}}}'
        )

    def environment(self) -> dict[str, str]:
        """``SFTPD_OP``, ``SFTPD_USER``, ... as a hook's environment; null is ``""``."""
        out: dict[str, str] = {}
        for key, value in self.to_dict().items():
            out["SFTPD_" + key.upper()] = "" if value is None else str(value).replace("\x00", "")
        return out
