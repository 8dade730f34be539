"""The audit file: JSON lines, written off the reactor, reopened on request and after rotation."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.logger import LogEvent, globalLogPublisher

from sftpd.events.audit import AuditFile, AuditToLog
from sftpd.events.model import Event, Identity

WHO = Identity.of("alice", "password", "sftp", "127.0.0.1", 4000, "c7")


def event(n: int) -> Event:
    return Event("upload", WHO, 1.0, f"/in/f{n}", bytes=n, size=n)


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def paths_in(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["path"] for line in path.read_text().splitlines()]


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditFile]:
    sink = AuditFile(tmp_path / "audit.jsonl")
    sink.start()
    yield sink
    sink.stop()


def test_lines_are_json_and_reach_the_file_without_stop(audit: AuditFile) -> None:
    for n in range(3):
        audit.emit(event(n))
    wait_for(lambda: len(paths_in(audit.path)) == 3, "three lines flushed")
    lines = audit.path.read_text().splitlines()
    assert json.loads(lines[0])["op"] == "upload" and json.loads(lines[2])["size"] == 2
    assert os.stat(audit.path).st_mode & 0o777 == 0o640


def test_rename_and_reopen_continues_in_a_new_file(audit: AuditFile, tmp_path: Path) -> None:
    audit.emit(event(1))
    wait_for(lambda: paths_in(audit.path) == ["/in/f1"], "first line")
    rotated = tmp_path / "audit.jsonl.1"
    os.rename(audit.path, rotated)
    audit.reopen()
    wait_for(lambda: audit.reopened == 1, "reopen")
    audit.emit(event(2))
    wait_for(lambda: paths_in(audit.path) == ["/in/f2"], "line in the new file")
    assert paths_in(rotated) == ["/in/f1"]


def test_rename_without_signal_is_noticed(audit: AuditFile, tmp_path: Path) -> None:
    audit.emit(event(1))
    wait_for(lambda: paths_in(audit.path) == ["/in/f1"], "first line")
    os.rename(audit.path, tmp_path / "old")
    wait_for(lambda: audit.path.exists(), "the file recreated at its name")


def test_logrotate_create_is_followed(audit: AuditFile, tmp_path: Path) -> None:
    audit.emit(event(1))
    wait_for(lambda: paths_in(audit.path) == ["/in/f1"], "first line")
    os.rename(audit.path, tmp_path / "old")
    audit.path.touch()  # logrotate's "create": a new empty file under the name at once
    wait_for(lambda: audit.reopened == 1, "the new file noticed")
    audit.emit(event(2))
    wait_for(lambda: paths_in(audit.path) == ["/in/f2"], "line in the new file")
    assert paths_in(tmp_path / "old") == ["/in/f1"]


def test_copytruncate_continues_at_the_start(audit: AuditFile, tmp_path: Path) -> None:
    for n in range(5):
        audit.emit(event(n))
    wait_for(lambda: len(paths_in(audit.path)) == 5, "five lines")
    (tmp_path / "copy").write_bytes(audit.path.read_bytes())
    os.truncate(audit.path, 0)
    audit.emit(event(9))
    wait_for(lambda: paths_in(audit.path) == ["/in/f9"], "line at the start")
    assert audit.path.read_bytes().startswith(b"{")  # no hole of NUL bytes


def test_stop_writes_everything_queued(tmp_path: Path) -> None:
    sink = AuditFile(tmp_path / "a.jsonl", flush_interval=60)
    sink.start()
    for n in range(1000):
        sink.emit(event(n))
    sink.stop()
    assert len(paths_in(sink.path)) == 1000


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    sink = AuditFile(tmp_path / "a.jsonl", queue_size=2)  # not started: nothing drains
    for n in range(5):
        sink.emit(event(n))
    assert sink.dropped == 3 and sink.queued() == 2


def test_unwritable_directory_keeps_serving(tmp_path: Path) -> None:
    sink = AuditFile(tmp_path / "missing" / "a.jsonl", flush_interval=0.05)
    sink.start()
    sink.emit(event(1))
    wait_for(lambda: sink.dropped == 1, "the line counted as dropped")
    (tmp_path / "missing").mkdir()
    wait_for(lambda: sink.reopened == 1, "the file opened once the directory exists")
    sink.emit(event(2))
    sink.stop()
    assert paths_in(sink.path) == ["/in/f2"]


def test_dash_writes_to_the_server_log() -> None:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        AuditToLog().emit(Event("rename", WHO, 1.0, "/a b", "/c"))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    (line,) = [e for e in seen if e.get("log_namespace") == "sftpd.audit"]
    assert line["op"] == "rename" and line["target"] == "/c" and line["path"] == "'/a b'"
