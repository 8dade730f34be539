"""The rsync daemon's log pipe, byte by byte: transfer lines, the summary, split reads."""

from __future__ import annotations

from sftpd.apps.rsync.daemonlog import MAX_LINE, DaemonLog


def _log() -> tuple[DaemonLog, list[tuple[str, bytes, int, int]]]:
    got: list[tuple[str, bytes, int, int]] = []
    return DaemonLog(lambda op, name, size, count: got.append((op, name, size, count))), got


def test_a_transfer_line_split_over_reads() -> None:
    log, got = _log()
    for byte in b"2026/12/03 [7] SFTPD|recv|100000|100000|up/a b|c.bin\n":
        log.feed(bytes([byte]))
    assert got == [("recv", b"up/a b|c.bin", 100000, 100000)]


def test_the_summary_line_counts_sent_plus_received() -> None:
    log, got = _log()
    log.feed(b"sent 1,234 bytes  received 56 bytes  total size 7,890\n")
    assert got == [("summary", b"", 7890, 1290)]


def test_other_lines_and_malformed_marks_are_ignored() -> None:
    log, got = _log()
    log.feed(b"rsync: something\nSFTPD|recv|x|1|name\nSFTPD|recv|1\n")
    assert got == []


def test_a_last_line_without_newline_is_read_at_close() -> None:
    log, got = _log()
    log.feed(b"SFTPD|send|5|5|f")
    assert got == []
    log.close()
    assert got == [("send", b"f", 5, 5)]


def test_an_endless_line_is_bounded() -> None:
    log, got = _log()
    log.feed(b"x" * (MAX_LINE * 4))
    assert len(log._buf) == MAX_LINE
    log.feed(b"\nSFTPD|del.|0|0|gone\n")
    assert got == [("del.", b"gone", 0, 0)]
