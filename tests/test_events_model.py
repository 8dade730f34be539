"""The event model: validation, stable JSON keys, environment encoding."""

from __future__ import annotations

import json

import pytest

from sftpd.events.model import Event, Identity, iso_time
from sftpd.events.names import KEYS

WHO = Identity.of("alice", "password", "sftp", "::1", 40000, "c1")


def test_identity_formats_ipv6_client_like_the_log() -> None:
    assert WHO.client == "[::1]:40000"
    assert Identity.of("a", "", "scp", "10.0.0.1", 22, "x").client == "10.0.0.1:22"


def test_json_has_every_key_in_order() -> None:
    event = Event("upload", WHO, 0.25, "/in/a", bytes=3, size=3, duration=1.23456, sha256="ab")
    line = event.to_json()
    data = json.loads(line)
    assert tuple(data) == KEYS
    assert data["time"] == "1970-01-01T00:00:00.250Z"
    assert data["op"] == "upload" and data["client"] == "[::1]:40000"
    assert data["duration"] == 1.235 and data["size"] == 3 and data["sha256"] == "ab"
    assert data["outcome"] == "ok" and data["reason"] == "" and data["target"] == ""


def test_json_is_one_line_even_with_a_newline_in_a_name() -> None:
    line = Event("delete", WHO, 0.0, "/a\nb\u2028c").to_json()
    assert "\n" not in line and "\u2028" not in line.replace("\\u2028", "")
    assert json.loads(line)["path"] == "/a\nb\u2028c"


@pytest.mark.parametrize(
    "event",
    [
        Event("upload", WHO, 1733000000.1234, "/a\u2028b\x00", bytes=5, duration=0.0),
        Event(
            "rename",
            WHO,
            0.0,
            "/a",
            "/b\ud800",
            duration=12.34567,
            outcome="error",
            reason='No "such" file\\',
        ),
        Event(
            "upload",
            Identity("\u00e9\n", "SHA256:x/y+", "scp", "h:1", "c"),
            1e9,
            "/x",
            bytes=10**12,
            size=10**12,
            duration=1e-9,
            sha256="ab" * 32,
        ),
        Event(
            "ban",
            Identity("", "", "ssh", "10.0.0.0/8", ""),
            5.0,
            duration=float("inf"),
            outcome="denied",
            reason="score",
        ),
    ],
)
def test_json_is_what_json_dumps_writes(event: Event) -> None:
    assert event.to_json() == json.dumps(event.to_dict(), separators=(",", ":"))


def test_environment_variables() -> None:
    env = Event("rename", WHO, 0.0, "/a", "/b").environment()
    assert env["SFTPD_OP"] == "rename" and env["SFTPD_TARGET"] == "/b"
    assert env["SFTPD_SHA256"] == "" and env["SFTPD_SIZE"] == ""
    assert set(env) == {"SFTPD_" + k.upper() for k in KEYS}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"op": "chmod"}, "unknown operation"),
        ({"path": "home/alice/a"}, "not a virtual path"),
        ({"outcome": "maybe"}, "unknown outcome"),
        ({"outcome": "denied"}, "needs a reason"),
        ({"outcome": "error"}, "needs a reason"),
        ({"reason": "x"}, "no reason"),
    ],
)
def test_invalid_events_are_refused(kwargs: dict[str, str], message: str) -> None:
    fields = {"op": "upload", "path": "/a", **kwargs}
    with pytest.raises(ValueError, match=message):
        Event(fields.pop("op"), WHO, 0.0, **fields)  # type: ignore[arg-type]


def test_unknown_protocol_refused() -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        Event("login", Identity("a", "", "ftp", "h:1", "s"), 0.0)


def test_iso_time_rounds_milliseconds() -> None:
    assert iso_time(1.9996) == "1970-01-01T00:00:02.000Z"
