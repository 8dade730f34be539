"""Legacy scp through make_exec_app over a real jailed temp directory (sink and source)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sftpd.apps.scp.proto import (
    DirEnd,
    DirStart,
    FileData,
    FileEnd,
    FileStart,
    RemoteError,
    Times,
)
from tests.exec_fs import ScpSender, make_ctx, run_exec, scp_download


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    r = tmp_path / "root"
    r.mkdir()
    old = os.umask(0o022)  # modes below are the ones a umask of 022 gives
    yield r
    os.umask(old)


def sender(root: Path, command: bytes, **kw: object) -> ScpSender:
    app, io = run_exec(command, make_ctx(root, **kw))  # type: ignore[arg-type]
    assert io.stderr == b""
    s = ScpSender(app, io)
    return s


# ---- sink (upload) ------------------------------------------------------------------------


def test_upload_into_directory(root: Path) -> None:
    (root / "in").mkdir()
    s = sender(root, b"scp -t in")
    assert s.response() is True  # ready
    assert s.file(b"a.txt", b"hello") is True
    assert s.file(b"empty", b"") is True
    assert s.io.status is None
    s.finish()
    assert s.io.status == 0
    assert (root / "in/a.txt").read_bytes() == b"hello"
    assert (root / "in/empty").read_bytes() == b""


def test_upload_to_home_relative_dot(root: Path) -> None:
    (root / "home/al").mkdir(parents=True)
    s = sender(root, b"scp -d -t .", home="/home/al")
    assert s.response() is True
    assert s.file(b"x", b"1") is True
    s.finish()
    assert s.io.status == 0
    assert (root / "home/al/x").read_bytes() == b"1"


def test_upload_rename_single_file(root: Path) -> None:
    (root / "old").write_bytes(b"a much longer previous content")
    s = sender(root, b"scp -t /old")
    assert s.response() is True
    assert s.file(b"whatever.bin", b"new") is True
    s.finish()
    assert s.io.status == 0
    assert (root / "old").read_bytes() == b"new"  # truncated, renamed on copy
    assert not (root / "whatever.bin").exists()


def test_upload_several_files_byte_by_byte(root: Path) -> None:
    data = {b"one": b"1" * 70000, b"two": os.urandom(3000), b"sp ace": b"s"}
    stream = b"".join(b"C0644 %d %s\n" % (len(v), k) + v + b"\x00" for k, v in data.items())
    app, io = run_exec(b"scp -t /", make_ctx(root))
    for i in range(len(stream)):
        app.data_received(stream[i : i + 1])
    app.eof_received()
    assert io.stdout == b"\x00" * (1 + 2 * len(data))
    assert io.status == 0
    for name, content in data.items():
        assert (root / os.fsdecode(name)).read_bytes() == content


def test_upload_recursive_tree_with_times_and_modes(root: Path) -> None:
    s = sender(root, b"scp -r -p -t /")
    assert s.response() is True
    assert s.dir_start(b"top", mode=0o750, times=(1_500_000_000, 1_400_000_000)) is True
    assert s.file(b"f", b"data", mode=0o640, times=(1_600_000_000, 1_300_000_000)) is True
    assert s.dir_start(b"sub", mode=0o700) is True
    assert s.file(b"g", b"", mode=0o4755) is True
    assert s.dir_end() is True
    assert s.dir_end() is True
    s.finish()
    assert s.io.status == 0
    top = root / "top"
    assert int((top / "f").stat().st_atime) == 1_300_000_000  # before reading it
    assert int((top / "f").stat().st_mtime) == 1_600_000_000
    assert (top / "f").stat().st_mode & 0o7777 == 0o640
    assert (top / "f").read_bytes() == b"data"
    assert top.stat().st_mode & 0o7777 == 0o750
    assert int(top.stat().st_mtime) == 1_500_000_000  # set after its contents were written
    assert (top / "sub").stat().st_mode & 0o7777 == 0o700
    assert (top / "sub/g").stat().st_mode & 0o7777 == 0o755  # never setuid


def test_upload_recursive_renames_top_directory(root: Path) -> None:
    s = sender(root, b"scp -r -t /newname")
    assert s.response() is True
    assert s.dir_start(b"orig") is True
    assert s.file(b"f", b"x") is True
    assert s.dir_end() is True
    s.finish()
    assert s.io.status == 0
    assert (root / "newname/f").read_bytes() == b"x"


def test_modes_without_preserve(root: Path) -> None:
    (root / "exists").write_bytes(b"")
    os.chmod(root / "exists", 0o600)
    s = sender(root, b"scp -t /", umask=0o027)
    assert s.response() is True
    assert s.file(b"new", b"n", mode=0o777) is True
    assert s.file(b"exists", b"e", mode=0o777) is True
    s.finish()
    assert (root / "new").stat().st_mode & 0o7777 == 0o750  # umask applied
    assert (root / "exists").stat().st_mode & 0o7777 == 0o600  # kept


def test_existing_directory_is_reused(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d/keep").write_bytes(b"k")
    s = sender(root, b"scp -r -t /")
    assert s.response() is True
    assert s.dir_start(b"d") is True
    assert s.file(b"new", b"n") is True
    assert s.dir_end() is True
    s.finish()
    assert s.io.status == 0
    assert sorted(p.name for p in (root / "d").iterdir()) == ["keep", "new"]


def test_upload_into_missing_directory(root: Path) -> None:
    s = sender(root, b"scp -t /x/y/file")
    assert s.response() is True
    answer = s.file(b"file", b"data")
    assert answer == RemoteError(b"scp: /x/y/file: No such file or directory", fatal=False)
    assert s.file(b"other", b"more") == answer  # the session goes on, like OpenSSH
    s.finish()
    assert s.io.status == 1
    assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (b"/missing/", b"scp: /missing/: Is a directory"),
        (b"/no/such/", b"scp: /no/such/: No such file or directory"),
        (b"/file/", b"scp: /file/: Not a directory"),
    ],
)
def test_upload_to_slash_target_that_is_no_directory(
    root: Path, target: bytes, message: bytes
) -> None:
    (root / "file").write_bytes(b"")
    s = sender(root, b"scp -t " + target)
    assert s.response() is True
    assert s.file(b"f", b"x") == RemoteError(message, fatal=False)
    s.finish()
    assert s.io.status == 1
    assert (root / "file").read_bytes() == b""


def test_target_must_be_directory_with_d(root: Path) -> None:
    app, io = run_exec(b"scp -d -t /nodir", make_ctx(root))
    assert io.stdout == b"\x02scp: /nodir: No such file or directory\n"
    assert io.status == 1


def test_file_onto_directory_and_dir_onto_file(root: Path) -> None:
    (root / "d").mkdir()
    (root / "f").write_bytes(b"keep")
    s = sender(root, b"scp -r -t /")
    assert s.response() is True
    assert s.file(b"d", b"x") == RemoteError(b"scp: /d: Is a directory", fatal=False)
    assert s.dir_start(b"f") == RemoteError(b"scp: /f: Not a directory", fatal=False)
    assert s.file(b"ok", b"fine") is True  # the sender skipped the refused directory
    s.finish()
    assert s.io.status == 1
    assert (root / "f").read_bytes() == b"keep"
    assert (root / "ok").read_bytes() == b"fine"


@pytest.mark.parametrize(
    "name", [b"../escape", b"..", b".", b"a/b", b"/abs", b"bad\x1bname", b"cr\r", b""]
)
def test_unsafe_names_are_fatal(root: Path, name: bytes) -> None:
    s = sender(root, b"scp -r -t /")
    assert s.response() is True
    answer = s.file(name, b"evil")
    assert isinstance(answer, RemoteError) and answer.fatal
    assert answer.message.startswith(b"scp: error: unexpected filename: ")
    assert s.io.status == 1
    assert list(root.iterdir()) == []
    assert not (root.parent / "escape").exists()


def test_directory_without_r_is_a_protocol_error(root: Path) -> None:
    s = sender(root, b"scp -t /")
    assert s.response() is True
    assert s.dir_start(b"d") == RemoteError(
        b"scp: protocol error: received directory without -r", fatal=True
    )
    assert s.io.status == 1


@pytest.mark.parametrize("size", [b"9223372036854775808", b"9999999999999999999"])
def test_size_beyond_off_t_is_refused_before_the_file_is_touched(root: Path, size: bytes) -> None:
    (root / "f").write_bytes(b"keep me")
    s = sender(root, b"scp -t /")
    assert s.response() is True
    s.send(b"C0644 " + size + b" f\n")
    assert s.response() == RemoteError(b"scp: protocol error: size out of range", True)
    assert s.io.status == 1
    assert (root / "f").read_bytes() == b"keep me"
    assert sorted(p.name for p in root.iterdir()) == ["f"]


def test_garbage_mid_transfer_ends_the_session(root: Path) -> None:
    s = sender(root, b"scp -t /")
    assert s.response() is True
    s.send(b"C0644 3 f\n")
    assert s.response() is True
    s.send(b"abcZ")  # not \0 after the data
    assert s.response() == RemoteError(b"scp: protocol error: expected end of file data", True)
    assert s.io.status == 1


def test_eof_mid_file_ends_with_failure(root: Path) -> None:
    s = sender(root, b"scp -t /")
    assert s.response() is True
    s.send(b"C0644 10 f\n")
    assert s.response() is True
    s.send(b"abc")
    s.finish()
    assert s.response() == RemoteError(b"scp: protocol error: lost connection", True)
    assert s.io.status == 1


def test_read_only_user_gets_permission_denied(root: Path) -> None:
    s = sender(root, b"scp -r -t /", read_only=True)
    assert s.response() is True
    # the message names the rule (the rules layer's RuleDenied.reason)
    denied_f = b'scp: /f: permission denied: "upload" is not allowed in /f (read_only)'
    denied_d = b'scp: /d: permission denied: "create_dirs" is not allowed in /d (read_only)'
    assert s.file(b"f", b"x") == RemoteError(denied_f, fatal=False)
    assert s.dir_start(b"d") == RemoteError(denied_d, fatal=False)
    s.finish()
    assert s.io.status == 1
    assert list(root.iterdir()) == []


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """A real write error: past RLIMIT_FSIZE, write(2) fails with EFBIG (SIGXFSZ ignored)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_write_error_mid_stream_is_reported_and_session_continues(root: Path) -> None:
    s = sender(root, b"scp -t /")
    assert s.response() is True
    with file_size_limit(100_000):
        answer = s.file(b"big", os.urandom(300_000))
    assert answer == RemoteError(b"scp: /big: File too large", fatal=False)
    assert s.file(b"small", b"fits") is True  # still in step with the sender
    s.finish()
    assert s.io.status == 1
    assert (root / "small").read_bytes() == b"fits"


def test_sender_side_error_after_data_counts(root: Path) -> None:
    s = sender(root, b"scp -t /")
    assert s.response() is True
    s.send(b"C0644 2 f\n")
    assert s.response() is True
    s.send(b"\x00\x00\x01scp: f: read error\n")
    assert s.response() is True  # OpenSSH still acknowledges the file
    s.send(b"\x01scp: g: No such file or directory\n")  # a warning where a record goes
    s.finish()
    assert s.io.status == 1


def test_top_level_end_finishes(root: Path) -> None:
    s = sender(root, b"scp -t /")
    assert s.response() is True
    assert s.dir_end() is True
    assert s.io.status == 0


def test_connection_lost_mid_upload_sends_no_exit(root: Path) -> None:
    s = sender(root, b"scp -t /")
    assert s.response() is True
    s.send(b"C0644 10 f\nabc")
    s.app.connection_lost()
    s.send(b"more")
    assert s.io.exits == []


# ---- source (download) ----------------------------------------------------------------------


def test_download_file(root: Path) -> None:
    data = os.urandom(200_000)
    (root / "f.bin").write_bytes(data)
    os.chmod(root / "f.bin", 0o640)
    app, io = run_exec(b"scp -f /f.bin", make_ctx(root))
    assert io.stdout == b""  # waits for the receiver to be ready
    events = scp_download(app, io)
    assert events == [FileStart(0o640, len(data), b"f.bin"), FileData(data), FileEnd()]
    assert io.status == 0
    assert max(io.write_sizes) <= 64 * 1024


def test_download_preserve_sends_times(root: Path) -> None:
    (root / "f").write_bytes(b"abc")
    os.utime(root / "f", (1_111_111_111, 1_222_222_222))
    app, io = run_exec(b"scp -p -f f", make_ctx(root))
    events = scp_download(app, io)
    assert events == [
        Times(mtime=1_222_222_222, atime=1_111_111_111),
        FileStart((root / "f").stat().st_mode & 0o7777, 3, b"f"),
        FileData(b"abc"),
        FileEnd(),
    ]
    assert io.status == 0


def test_download_tree(root: Path) -> None:
    (root / "t/sub").mkdir(parents=True)
    (root / "t/a").write_bytes(b"A")
    (root / "t/sub/b").write_bytes(b"BB")
    (root / "t/sub/empty").write_bytes(b"")
    os.chmod(root / "t/sub", 0o700)
    app, io = run_exec(b"scp -r -f /t/", make_ctx(root))
    events = scp_download(app, io)
    assert [type(e).__name__ for e in events] == [
        "DirStart",
        "FileStart",
        "FileData",
        "FileEnd",
        "DirStart",
        "FileStart",
        "FileData",
        "FileEnd",
        "FileStart",
        "FileEnd",
        "DirEnd",
        "DirEnd",
    ]
    assert events[0] == DirStart(0o755, b"t")
    assert events[4] == DirStart(0o700, b"sub")
    assert events[5] == FileStart(0o644, 2, b"b")
    assert events[-1] == DirEnd()
    assert io.status == 0


def test_download_directory_without_r(root: Path) -> None:
    (root / "d").mkdir()
    app, io = run_exec(b"scp -f d", make_ctx(root))
    events = scp_download(app, io)
    assert events == [RemoteError(b"scp: d: not a regular file", fatal=False)]
    assert io.status == 1


def test_download_missing_source_continues(root: Path) -> None:
    (root / "there").write_bytes(b"yes")
    app, io = run_exec(b"scp -f nope there 'sp ace'", make_ctx(root))
    events = scp_download(app, io)
    assert events == [
        RemoteError(b"scp: nope: No such file or directory", fatal=False),
        FileStart(0o644, 3, b"there"),
        FileData(b"yes"),
        FileEnd(),
        RemoteError(b"scp: sp ace: No such file or directory", fatal=False),
    ]
    assert io.status == 1


def test_download_refused_by_receiver_skips(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d/skip").write_bytes(b"s")
    (root / "d/take").write_bytes(b"t")
    app, io = run_exec(b"scp -r -f d", make_ctx(root))
    events = scp_download(app, io, refuse=b"skip")
    assert events == [
        DirStart(0o755, b"d"),
        FileStart(0o644, 1, b"skip"),
        FileStart(0o644, 1, b"take"),
        FileData(b"t"),
        FileEnd(),
        DirEnd(),
    ]
    assert io.status == 1  # the receiver reported an error


def test_download_home_dot_uses_the_directory_name(root: Path) -> None:
    (root / "home/al").mkdir(parents=True)
    (root / "home/al/x").write_bytes(b"x")
    app, io = run_exec(b"scp -r -f .", make_ctx(root, home="/home/al"))
    events = scp_download(app, io)
    assert events[0] == DirStart(0o755, b"al")
    assert io.status == 0


def test_download_respects_backpressure(root: Path) -> None:
    data = os.urandom(1_000_000)
    (root / "big").write_bytes(data)
    app, io = run_exec(b"scp -f big", make_ctx(root))
    io.pending = 10**9  # the peer's window is full
    app.data_received(b"\x00")  # ready
    app.data_received(b"\x00")  # C record acknowledged
    header = b"C0644 1000000 big\n"
    assert io.stdout[: len(header)] == header
    assert len(io.stdout) == len(header) + 64 * 1024  # one chunk, then it waits
    app.output_drained()  # still full: keeps waiting
    assert len(io.stdout) == len(header) + 64 * 1024
    io.pending = 0
    app.output_drained()
    assert bytes(io.stdout) == header + data + b"\x00"
    app.data_received(b"\x00")
    assert io.status == 0


def test_download_file_shrinking_mid_transfer_stays_in_step(root: Path) -> None:
    (root / "f").write_bytes(b"x" * 200_000)
    app, io = run_exec(b"scp -f f", make_ctx(root))
    io.pending = 10**9
    app.data_received(b"\x00\x00")
    os.truncate(root / "f", 70_000)
    io.pending = 0
    app.output_drained()
    header = b"C0644 200000 f\n"
    body = bytes(io.stdout[len(header) :])
    assert body[:70_000] == b"x" * 70_000
    assert body[70_000:200_000] == bytes(130_000)
    assert body[200_000:] == b"\x01scp: f: file shrank while being sent\n"
    app.data_received(b"\x00")
    assert io.status == 1


def test_download_lost_connection(root: Path) -> None:
    (root / "f").write_bytes(b"x" * 200_000)
    app, io = run_exec(b"scp -f f", make_ctx(root))
    io.pending = 10**9
    app.data_received(b"\x00\x00")
    app.connection_lost()
    assert io.exits == []


def test_download_receiver_fatal_error(root: Path) -> None:
    (root / "a").write_bytes(b"a")
    (root / "b").write_bytes(b"b")
    app, io = run_exec(b"scp -f a b", make_ctx(root))
    app.data_received(b"\x00\x02scp: disk on fire\n")
    assert io.stdout == b"C0644 1 a\n"
    assert io.status == 1


def test_download_receiver_hangs_up(root: Path) -> None:
    (root / "a").write_bytes(b"a")
    app, io = run_exec(b"scp -f a", make_ctx(root))
    app.eof_received()
    assert io.status == 1
