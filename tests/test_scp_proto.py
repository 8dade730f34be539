"""Tests for the sans-IO scp record parser, ack reader and encoders."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sftpd.apps.scp.proto import (
    AckReader,
    DirEnd,
    DirStart,
    EndOfInput,
    FileData,
    FileEnd,
    FileStart,
    ProtocolError,
    RemoteError,
    SinkEvent,
    SinkParser,
    Times,
    encode_dir_start,
    encode_error,
    encode_file_start,
    encode_times,
    safe_name,
)

TERMINAL = (ProtocolError, EndOfInput)


def coalesce(events: Iterable[SinkEvent]) -> list[SinkEvent]:
    """Merge adjacent FileData events so results do not depend on how input was split."""
    out: list[SinkEvent] = []
    for ev in events:
        if isinstance(ev, FileData) and out and isinstance(out[-1], FileData):
            out[-1] = FileData(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def run(
    chunks: Iterable[bytes],
    *,
    recursive: bool = True,
    reject: frozenset[bytes] = frozenset(),
    eof: bool = True,
    max_chunk: int = 64 * 1024,
) -> list[SinkEvent]:
    parser = SinkParser(recursive=recursive, max_chunk=max_chunk)
    events: list[SinkEvent] = []

    def drain() -> bool:
        while True:
            ev = parser.next_event()
            if ev is None:
                return True
            events.append(ev)
            if isinstance(ev, TERMINAL) or (isinstance(ev, RemoteError) and ev.fatal):
                return False
            if isinstance(ev, FileStart | DirStart):
                assert parser.awaiting_decision
                assert parser.next_event() is None
                if ev.name in reject:
                    parser.reject()
                else:
                    parser.accept()

    for chunk in chunks:
        parser.feed(chunk)
        if not drain():
            return coalesce(events)
    if eof:
        parser.feed_eof()
        drain()
    return coalesce(events)


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


Splitter = Callable[[bytes], list[bytes]]
SPLITS: list[Splitter] = [whole, bytewise]

TREE = (
    b"T1700000000 0 1600000000 0\n"
    b"D0755 0 top\n"
    b"C0644 5 a.txt\nhello\x00"
    b"D0700 0 sub\n"
    b"T12 0 34 0\n"
    b"C0600 0 empty\n\x00"
    b"E\n"
    b"C4755 3 b\xc3\xa9\nxyz\x00"
    b"E\n"
)
TREE_EVENTS: list[SinkEvent] = [
    Times(mtime=1700000000, atime=1600000000),
    DirStart(mode=0o755, name=b"top"),
    FileStart(mode=0o644, size=5, name=b"a.txt"),
    FileData(b"hello"),
    FileEnd(),
    DirStart(mode=0o700, name=b"sub"),
    Times(mtime=12, atime=34),
    FileStart(mode=0o600, size=0, name=b"empty"),
    FileEnd(),
    DirEnd(),
    FileStart(mode=0o4755, size=3, name="bé".encode()),
    FileData(b"xyz"),
    FileEnd(),
    DirEnd(),
    EndOfInput(),
]


@pytest.mark.parametrize("split", SPLITS)
def test_every_record_type(split: Splitter) -> None:
    assert run(split(TREE)) == TREE_EVENTS


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    chunks, rest = [], TREE
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    assert run(chunks) == TREE_EVENTS


def test_data_is_chunked_and_never_swallows_the_next_record() -> None:
    data = b"C0644 10 f\n0123456789\x00C0644 1 g\nZ\x00"
    parser = SinkParser(recursive=False, max_chunk=4)
    parser.feed(data)
    assert parser.next_event() == FileStart(0o644, 10, b"f")
    assert parser.next_event() is None  # waits for the receiver's decision
    parser.accept()
    assert [parser.next_event() for _ in range(4)] == [
        FileData(b"0123"),
        FileData(b"4567"),
        FileData(b"89"),
        FileEnd(),
    ]
    assert parser.next_event() == FileStart(0o644, 1, b"g")
    parser.accept()
    assert parser.next_event() == FileData(b"Z")
    assert parser.next_event() == FileEnd()
    assert parser.next_event() is None
    parser.feed_eof()
    assert parser.next_event() == EndOfInput()


@pytest.mark.parametrize("split", SPLITS)
def test_rejected_file_expects_no_data(split: Splitter) -> None:
    data = b"C0644 5 bad\nC0644 2 ok\nhi\x00"
    assert run(split(data), reject=frozenset({b"bad"})) == [
        FileStart(0o644, 5, b"bad"),
        FileStart(0o644, 2, b"ok"),
        FileData(b"hi"),
        FileEnd(),
        EndOfInput(),
    ]


@pytest.mark.parametrize("split", SPLITS)
def test_rejected_directory_is_skipped_by_the_sender(split: Splitter) -> None:
    data = b"D0755 0 bad\nC0644 1 x\n!\x00"
    events = run(split(data), reject=frozenset({b"bad"}))
    assert events == [
        DirStart(0o755, b"bad"),
        FileStart(0o644, 1, b"x"),
        FileData(b"!"),
        FileEnd(),
        EndOfInput(),
    ]


def test_depth_tracks_directories() -> None:
    parser = SinkParser(recursive=True)
    parser.feed(b"D0755 0 a\nD0755 0 b\nE\nE\n")
    assert isinstance(parser.next_event(), DirStart)
    parser.accept()
    assert parser.depth == 1
    assert isinstance(parser.next_event(), DirStart)
    parser.accept()
    assert parser.depth == 2
    assert parser.next_event() == DirEnd()
    assert parser.next_event() == DirEnd()
    assert parser.depth == 0


@pytest.mark.parametrize("split", SPLITS)
def test_sender_errors(split: Splitter) -> None:
    data = b"\x01scp: a: Permission denied\nC0644 1 f\nx\x01scp: f: read error\n\x02fatal\n"
    assert run(split(data)) == [
        RemoteError(b"scp: a: Permission denied", fatal=False),
        FileStart(0o644, 1, b"f"),
        FileData(b"x"),
        FileEnd(error=b"scp: f: read error"),
        RemoteError(b"fatal", fatal=True),
    ]


@pytest.mark.parametrize("split", SPLITS)
def test_fatal_error_after_data(split: Splitter) -> None:
    data = b"C0644 1 f\nx\x02scp: gone\nC0644 1 g\n"
    assert run(split(data)) == [
        FileStart(0o644, 1, b"f"),
        FileData(b"x"),
        RemoteError(b"scp: gone", fatal=True),
    ]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"C0644 1 a/b\n", "error: unexpected filename: a/b"),
        (b"C0644 1 /etc\n", "error: unexpected filename: /etc"),
        (b"C0644 1 .\n", "error: unexpected filename: ."),
        (b"C0644 1 ..\n", "error: unexpected filename: .."),
        (b"D0755 0 ..\n", "error: unexpected filename: .."),
        (b"D0755 0 x/..\n", "error: unexpected filename: x/.."),
        (b"C0644 1 \n", "error: unexpected filename: "),
        (b"C0644 1 a\rb\n", "error: unexpected filename: a\\rb"),
        (b"C0644 1 a\x1b[2Jb\n", "error: unexpected filename: a\\x1b[2Jb"),
        (b"C0644 1 a\x7f\n", "error: unexpected filename: a\\x7f"),
        (b"C0644 1 a\tb\n", "error: unexpected filename: a\\tb"),
        (b"C0648 1 a\n", "protocol error: bad mode"),
        (b"C644 1 a\n", "protocol error: bad mode"),
        (b"Cabcd 1 a\n", "protocol error: bad mode"),
        (b"C06440 1 a\n", "protocol error: mode not delimited"),
        (b"C0644 x a\n", "protocol error: size not present"),
        (b"C0644 -1 a\n", "protocol error: size not present"),
        (b"C0644 1x a\n", "protocol error: size not present"),
        (b"C0644 1\n", "protocol error: size not delimited"),
        (b"C0644 99999999999999999999 a\n", "protocol error: size out of range"),
        (b"C0644 9223372036854775808 a\n", "protocol error: size out of range"),
        (b"C0644 9999999999999999999 a\n", "protocol error: size out of range"),
        (b"T9223372036854775808 0 2 0\n", "protocol error: mtime.sec out of range"),
        (b"D0755 5 a\n", "protocol error: directory size not zero"),
        (b"T1 0 2\n", "protocol error: times not delimited"),
        (b"T1 0 2 0 \n", "protocol error: times not delimited"),
        (b"Tx 0 2 0\n", "protocol error: mtime.sec not present"),
        (b"T1 1000000 2 0\n", "protocol error: times out of range"),
        (b"Ex\n", "protocol error: bad end of directory record"),
        (b"\n", "protocol error: unexpected <newline>"),
        (b"No match.\n", "protocol error: expected control record"),
        (b"C0644 1 abc", "protocol error: lost connection"),
        (b"C0644 3 f\nab", "protocol error: lost connection"),
        (b"C0644 3 f\nabc", "protocol error: lost connection"),
        (b"C0644 3 f\nabcX", "protocol error: expected end of file data"),
        (b"C0644 1 f\nx\x01half", "protocol error: lost connection"),
        (b"C" + b"a" * 9000, "protocol error: record too long"),
    ],
)
def test_refusals(split: Splitter, data: bytes, message: str) -> None:
    events = run(split(data))
    assert events[-1] == ProtocolError(message)
    if "filename" in message or "mode" in message or "size" in message:
        assert len(events) == 1


@pytest.mark.parametrize("split", SPLITS)
def test_directory_without_recursive(split: Splitter) -> None:
    events = run(split(b"D0755 0 d\n"), recursive=False)
    assert events == [ProtocolError("protocol error: received directory without -r")]


def test_the_largest_size_an_off_t_holds_is_accepted() -> None:
    # 2**63 - 1 is the last size announced as a file; one more is refused (above).
    events = run([b"C0644 9223372036854775807 big\n"], eof=False)
    assert events == [FileStart(0o644, (1 << 63) - 1, b"big")]


def test_nothing_after_a_protocol_error() -> None:
    parser = SinkParser(recursive=True)
    parser.feed(b"C0644 1 ../x\nC0644 1 ok\n")
    assert isinstance(parser.next_event(), ProtocolError)
    parser.feed(b"C0644 1 ok\n")
    parser.feed_eof()
    assert parser.next_event() is None


def test_without_eof_waits() -> None:
    assert run([b"C0644 3 f\nab"], eof=False) == [FileStart(0o644, 3, b"f"), FileData(b"ab")]


def test_decision_misuse_is_a_programming_error() -> None:
    parser = SinkParser(recursive=True)
    with pytest.raises(RuntimeError):
        parser.accept()
    with pytest.raises(RuntimeError):
        parser.reject()


@given(st.binary(max_size=200))
def test_fuzz_never_crashes(data: bytes) -> None:
    for split in SPLITS:
        events = run(split(data))
        if events:
            last = events[-1]
            assert isinstance(last, TERMINAL) or (isinstance(last, RemoteError) and last.fatal)


@pytest.mark.parametrize("split", SPLITS)
def test_ack_reader(split: Splitter) -> None:
    reader = AckReader()
    got: list[object] = []
    for chunk in split(b"\x00\x01scp: warn\n\x00\x02scp: bye\nXoops\n\x00"):
        reader.feed(chunk)
        while (r := reader.next_response()) is not None:
            got.append(r)
    reader.feed_eof()
    got.append(reader.next_response())
    assert got == [
        True,
        RemoteError(b"scp: warn", fatal=False),
        True,
        RemoteError(b"scp: bye", fatal=True),
        RemoteError(b"Xoops", fatal=True),
        True,
        EndOfInput(),
    ]


def test_ack_reader_truncated_message_at_eof() -> None:
    reader = AckReader()
    reader.feed(b"\x01half")
    assert reader.next_response() is None
    reader.feed_eof()
    assert reader.next_response() == RemoteError(b"half", fatal=False)
    assert reader.next_response() == EndOfInput()


def test_encoders_round_trip_through_the_parser() -> None:
    stream = (
        encode_times(5, 6)
        + encode_dir_start(0o40755, b"d")
        + encode_file_start(0o100644, 2, b"f")
        + b"ab\x00E\n"
    )
    assert stream.startswith(b"T5 0 6 0\nD0755 0 d\nC0644 2 f\n")
    expected = [Times(5, 6), DirStart(0o755, b"d"), FileStart(0o644, 2, b"f"), FileData(b"ab")]
    assert run([stream])[:4] == expected
    assert encode_error(b"x: No such file\nor directory", fatal=False) == (
        b"\x01scp: x: No such file or directory\n"
    )
    assert encode_error(b"bad", fatal=True) == b"\x02scp: bad\n"


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        (b"a", True),
        (b"a b.txt", True),
        (b"\xff\xfe", True),
        (b"...", True),
        (b"", False),
        (b".", False),
        (b"..", False),
        (b"a/b", False),
        (b"a\n", False),
        (b"\x00", False),
    ],
)
def test_safe_name(name: bytes, ok: bool) -> None:
    assert safe_name(name) is ok
