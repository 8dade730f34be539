"""The emitting API: the hub fans out, sessions record, per-user temp state is shared."""

from __future__ import annotations

import hashlib

from twisted.internet.task import Clock

from sftpd.events.model import Event, Identity
from sftpd.events.recorder import Events
from sftpd.events.uploads import PENDING_TTL


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


class Broken:
    def emit(self, event: Event) -> None:
        raise RuntimeError("disk on fire")


def who(protocol: str = "sftp", session: str = "c1") -> Identity:
    return Identity.of("alice", "SHA256:k", protocol, "127.0.0.1", 4000, session)


def test_every_sink_gets_every_event_even_if_one_fails() -> None:
    a, b = Sink(), Sink()
    hub = Events([a, Broken(), b], Clock())
    hub.login(who("ssh"))
    hub.login_failed(who("ssh"), "wrong password")
    assert [e.op for e in a.events] == ["login", "login_failed"] == [e.op for e in b.events]
    assert a.events[1].outcome == "denied" and a.events[1].reason == "wrong password"


def test_session_upload_with_temp_name_and_rename() -> None:
    sink, clock = Sink(), Clock()
    hub = Events([sink], clock)
    rec = hub.session(who())
    rec.opened("h1", "/in/a.txt.filepart", write=True, truncate=True, size=0)
    rec.wrote("h1", 0, b"data")
    clock.advance(2)
    rec.closed("h1")
    assert sink.events == []
    rec.renamed("/in/a.txt.filepart", "/in/a.txt")
    (e,) = sink.events
    assert (e.op, e.path, e.size, e.duration, e.who.protocol) == (
        "upload",
        "/in/a.txt",
        4,
        2,
        "sftp",
    )
    assert e.sha256 == hashlib.sha256(b"data").hexdigest()


def test_own_temporaries_predicate() -> None:
    sink = Sink()
    hub = Events([sink], Clock(), temp=lambda p: ".sftpd-upload-" in p)
    rec = hub.session(who())
    rec.opened(1, "/in/.sftpd-upload-1", write=True, truncate=True, size=0)
    rec.closed(1)
    rec.renamed("/in/.sftpd-upload-1", "/in/a")
    assert [(e.op, e.path) for e in sink.events] == [("upload", "/in/a")]


def test_other_operations() -> None:
    sink = Sink()
    rec = Events([sink], Clock()).session(who("scp"))
    rec.mkdir("/d")
    rec.rmdir("/d", error="Directory not empty")
    rec.removed("/f")
    rec.denied("upload", "/ro/f", "read_only")
    rec.denied("rename", "/a", "read_only", target="/b")
    got = [(e.op, e.path, e.target, e.outcome, e.reason) for e in sink.events]
    assert got == [
        ("mkdir", "/d", "", "ok", ""),
        ("rmdir", "/d", "", "error", "Directory not empty"),
        ("delete", "/f", "", "ok", ""),
        ("upload", "/ro/f", "", "denied", "read_only"),
        ("rename", "/a", "/b", "denied", "read_only"),
    ]


def test_connection_lost_once_and_user_state_released() -> None:
    sink = Sink()
    hub = Events([sink], Clock())
    rec = hub.session(who())
    rec.opened(1, "/a", write=True, truncate=True, size=0)
    rec.wrote(1, 0, b"x")
    rec.connection_lost()
    rec.connection_lost()
    assert [(e.op, e.outcome) for e in sink.events] == [("upload", "incomplete")]
    assert hub._users == {}


def test_temp_survives_to_the_users_next_session() -> None:
    sink = Sink()
    hub = Events([sink], Clock())
    first = hub.session(who(session="c1"))
    first.opened(1, "/a.part", write=True, truncate=True, size=0)
    first.closed(1)
    first.connection_lost()
    second = hub.session(who(session="c2"))
    second.renamed("/a.part", "/a")
    (e,) = sink.events
    assert e.op == "upload" and e.who.session == "c1"  # who wrote it


def test_hashing_can_be_switched_off() -> None:
    sink = Sink()
    rec = Events([sink], Clock(), hash_uploads=False).session(who())
    rec.opened(1, "/a", write=True, truncate=True, size=0)
    rec.wrote(1, 0, b"x")
    rec.closed(1)
    assert sink.events[0].sha256 is None and sink.events[0].size == 1


def test_expired_temps_release_the_user() -> None:
    clock = Clock()
    hub = Events([Sink()], clock)
    rec = hub.session(who())
    rec.opened(1, "/a.part", write=True, truncate=True, size=0)
    rec.closed(1)
    clock.advance(PENDING_TTL + 1)
    rec.connection_lost()
    assert hub._users == {}
