"""Upload completion: temp names, one upload event under the final name, sha256, incomplete."""

from __future__ import annotations

import hashlib

import pytest
from twisted.internet.task import Clock

from sftpd.events.model import Event, Identity
from sftpd.events.uploads import (
    MAX_HELD,
    MAX_PENDING,
    PENDING_TTL,
    SessionTransfers,
    TempNames,
    UserUploads,
)

WHO = Identity.of("alice", "SHA256:x", "sftp", "127.0.0.1", 5000, "c1")


@pytest.mark.parametrize(
    "name",
    [
        "/in/a.txt.filepart",
        "/in/A.FILEPART",
        "/in/a.txt.partial",
        "/in/a.txt.1f3a2b.partial",
        "/a.part",
        "/a.tmp",
        "/in/.a.txt.Xy12Z9",
        "/in/.a.b.c.abcdef",
    ],
)
def test_temp_names(name: str) -> None:
    assert TempNames()(name)


@pytest.mark.parametrize(
    "name",
    [
        "/in/a.txt",
        "/in/.filepart",
        "/in/.partial",
        "/in/partial",
        "/in/a.txt.parts",
        "/in/.bashrc",
        "/in/.a.txt.abcde",
        "/in/.a.txt.abcdefg",
        "/in/a.txt.Xy12Z9",
        "/",
        "/in/a.tmp/b",
    ],
)
def test_final_names(name: str) -> None:
    assert not TempNames()(name)


def test_extra_predicate_for_own_temporaries() -> None:
    own = TempNames(lambda p: p.rsplit("/", 1)[-1].startswith(".sftpd-"))
    assert own("/in/.sftpd-1234") and not TempNames()("/in/.sftpd-1234")


class Session:
    def __init__(self, user: UserUploads | None = None, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.user = user if user is not None else UserUploads()
        self.t = SessionTransfers(WHO, self.user, self.clock)

    def put(self, h: object, path: str, chunks: list[tuple[int, bytes]], **kw: object) -> None:
        self.t.opened(h, path, write=True, truncate=True, size=0)
        for off, data in chunks:
            self.clock.advance(1)
            self.t.wrote(h, off, data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def only(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


def test_direct_upload_is_one_event_with_sha() -> None:
    s = Session()
    s.put(1, "/in/a", [(0, b"hello "), (6, b"world")])
    e = only(s.t.closed(1))
    assert (e.op, e.path, e.outcome, e.bytes, e.size) == ("upload", "/in/a", "ok", 11, 11)
    assert e.sha256 == sha(b"hello world") and e.duration == 2


@pytest.mark.parametrize("temp", ["/in/a.filepart", "/in/a.3f2e.partial", "/in/.a.AbC123"])
def test_temp_upload_then_rename_is_one_event_under_final_name(temp: str) -> None:
    s = Session()
    s.put(1, temp, [(0, b"abc"), (3, b"def")])
    assert s.t.closed(1) == []
    e = only(s.t.renamed(temp, "/in/a"))
    assert (e.op, e.path, e.target, e.size, e.bytes) == ("upload", "/in/a", "", 6, 6)
    assert e.sha256 == sha(b"abcdef") and e.outcome == "ok"
    # a second rename of the now final file is a plain rename
    e2 = only(s.t.renamed("/in/a", "/in/b"))
    assert (e2.op, e2.path, e2.target) == ("rename", "/in/a", "/in/b")


def test_temp_to_temp_then_final() -> None:
    s = Session()
    s.put(1, "/a.tmp", [(0, b"x")])
    s.t.closed(1)
    assert s.t.renamed("/a.tmp", "/a.part") == []
    assert only(s.t.renamed("/a.part", "/a")).path == "/a"


def test_temp_rename_in_another_session_of_the_same_user() -> None:
    user = UserUploads()
    s1 = Session(user)
    s1.put(1, "/a.filepart", [(0, b"x")])
    s1.t.closed(1)
    assert s1.t.connection_lost() == []
    s2 = Session(user)
    e = only(s2.t.renamed("/a.filepart", "/a"))
    assert e.op == "upload" and e.sha256 == sha(b"x")


def test_temp_deleted_is_not_an_upload() -> None:
    s = Session()
    s.put(1, "/a.filepart", [(0, b"x")])
    s.t.closed(1)
    assert only(s.t.removed("/a.filepart")).op == "delete"
    assert only(s.t.renamed("/a.filepart", "/a")).op == "rename"


def test_writes_finished_out_of_order_still_hash_in_file_order() -> None:
    # several WRITEs in flight complete on different worker threads, in any order
    s = Session()
    s.put(1, "/a", [(3, b"def"), (6, b"g"), (0, b"abc")])
    e = only(s.t.closed(1))
    assert e.sha256 == hashlib.sha256(b"abcdefg").hexdigest() and e.size == 7 and e.bytes == 7


def test_a_gap_never_filled_gives_no_sha() -> None:
    s = Session()
    s.put(1, "/a", [(0, b"abc"), (6, b"g")])
    e = only(s.t.closed(1))
    assert e.sha256 is None and e.size == 7 and e.bytes == 4


def test_more_held_than_the_limit_gives_no_sha() -> None:
    s = Session()
    s.put(1, "/a", [(1, b"x" * (MAX_HELD + 1)), (0, b"a")])
    assert only(s.t.closed(1)).sha256 is None


def test_rewrite_gives_no_sha() -> None:
    s = Session()
    s.put(1, "/a", [(0, b"abc"), (0, b"xyz")])
    assert only(s.t.closed(1)).sha256 is None


def test_reput_into_existing_file_is_one_upload_without_sha() -> None:
    s = Session()
    s.t.opened(1, "/big", write=True, truncate=False, size=100)
    s.t.wrote(1, 100, b"tail")
    e = only(s.t.closed(1))
    assert (e.op, e.path, e.outcome, e.bytes, e.size, e.sha256) == (
        "upload", "/big", "ok", 4, 104, None,
    )  # fmt: skip


def test_overwriting_start_of_longer_file_gives_no_sha() -> None:
    s = Session()
    s.t.opened(1, "/f", write=True, truncate=False, size=10)
    s.t.wrote(1, 0, b"ab")
    e = only(s.t.closed(1))
    assert e.sha256 is None and e.size == 10


def test_size_from_the_caller_that_differs_drops_sha() -> None:
    s = Session()
    s.put(1, "/f", [(0, b"ab")])
    e = only(s.t.closed(1, size=5))
    assert e.size == 5 and e.sha256 is None


def test_two_handles_on_one_file_give_no_sha() -> None:
    user = UserUploads()
    a, b = Session(user), Session(user)
    a.put(1, "/f", [(0, b"ab")])
    b.t.opened(2, "/f", write=True, truncate=False, size=0)
    b.t.wrote(2, 2, b"cd")
    assert only(a.t.closed(1)).sha256 is None
    assert only(b.t.closed(2)).sha256 is None
    assert user.writers == {}
    c = Session(user)
    c.put(3, "/f", [(0, b"x")])
    assert only(c.t.closed(3)).sha256 == sha(b"x")


def test_connection_lost_mid_upload_is_incomplete() -> None:
    s = Session()
    s.put(1, "/a.filepart", [(0, b"abc")])
    s.put(2, "/b", [(0, b"abc")])
    events = s.t.connection_lost()
    assert sorted((e.path, e.outcome, e.bytes, e.sha256) for e in events) == [
        ("/a.filepart", "incomplete", 3, None),
        ("/b", "incomplete", 3, None),
    ]
    assert all(e.op == "upload" for e in events)
    assert s.t.closed(1) == [] and s.user.writers == {}
    assert only(s.t.renamed("/a.filepart", "/a")).op == "rename"


def test_resume_of_a_cut_off_temp_in_a_new_session() -> None:
    user = UserUploads()
    s1 = Session(user)
    s1.put(1, "/a.filepart", [(0, b"abc")])
    assert only(s1.t.connection_lost()).outcome == "incomplete"
    s2 = Session(user)
    s2.t.opened(2, "/a.filepart", write=True, truncate=False, size=3)
    s2.t.wrote(2, 3, b"def")
    assert s2.t.closed(2) == []
    e = only(s2.t.renamed("/a.filepart", "/a"))
    assert (e.op, e.size, e.bytes, e.sha256, e.outcome) == ("upload", 6, 3, None, "ok")


def test_write_error_makes_an_error_upload_even_under_temp_name() -> None:
    s = Session()
    s.put(1, "/a.filepart", [(0, b"abc")])
    s.t.failed(1, "No space left on device")
    e = only(s.t.closed(1))
    assert (e.op, e.outcome, e.reason, e.sha256) == (
        "upload", "error", "No space left on device", None,
    )  # fmt: skip
    assert only(s.t.renamed("/a.filepart", "/a")).op == "rename"


def test_close_error() -> None:
    s = Session()
    s.put(1, "/a", [(0, b"abc")])
    e = only(s.t.closed(1, error="Input/output error"))
    assert e.outcome == "error" and e.reason == "Input/output error"


def test_renamed_while_open_completes_under_new_name() -> None:
    s = Session()
    s.put(1, "/a.part", [(0, b"abc")])
    assert only(s.t.renamed("/a.part", "/a")).op == "rename"
    e = only(s.t.closed(1))
    assert (e.op, e.path, e.sha256) == ("upload", "/a", sha(b"abc"))


def test_failed_rename_keeps_the_temp_pending() -> None:
    s = Session()
    s.put(1, "/a.part", [(0, b"abc")])
    s.t.closed(1)
    e = only(s.t.renamed("/a.part", "/a", error="Permission denied"))
    assert (e.op, e.outcome, e.target) == ("rename", "error", "/a")
    assert only(s.t.renamed("/a.part", "/a")).op == "upload"


def test_download_and_incomplete_download() -> None:
    s = Session()
    s.t.opened(1, "/a", write=False, truncate=False, size=10)
    s.t.read(1, 4)
    s.t.read(1, 6)
    e = only(s.t.closed(1, size=10))
    assert (e.op, e.bytes, e.size, e.outcome) == ("download", 10, 10, "ok")
    s.t.opened(2, "/a", write=False, truncate=False, size=10)
    s.t.read(2, 4)
    e = only(s.t.connection_lost())
    assert (e.op, e.bytes, e.outcome) == ("download", 4, "incomplete")


def test_empty_new_file_is_an_upload() -> None:
    s = Session()
    s.t.opened(1, "/empty", write=True, truncate=True, size=0)
    e = only(s.t.closed(1))
    assert (e.op, e.size, e.sha256) == ("upload", 0, sha(b""))


def test_pending_is_bounded_and_expires() -> None:
    s = Session()
    for i in range(MAX_PENDING + 1):
        s.put(i, f"/f{i}.tmp", [(0, b"x")])
        s.t.closed(i)
    assert len(s.user.pending) == MAX_PENDING
    assert only(s.t.renamed("/f0.tmp", "/f0")).op == "rename"
    assert only(s.t.renamed("/f1.tmp", "/f1")).op == "upload"
    s.clock.advance(PENDING_TTL + 1)
    assert only(s.t.renamed("/f2.tmp", "/f2")).op == "rename"


def test_rename_over_a_pending_temp_forgets_it() -> None:
    s = Session()
    s.put(1, "/a.tmp", [(0, b"x")])
    s.t.closed(1)
    assert only(s.t.renamed("/other", "/a.tmp")).op == "rename"
    assert only(s.t.renamed("/a.tmp", "/a")).op == "rename"
