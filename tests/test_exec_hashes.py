"""Hash commands through make_exec_app, against hashlib and the real coreutils binaries."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from sftpd.apps.hashes import ALGORITHMS, escape_name, hash_line, quote_name
from tests.exec_fs import make_ctx, run_exec

COMMANDS = sorted(ALGORITHMS)
NAMES = [b"plain.txt", b"sp ace", b"back\\slash", b"new\nline", b"car\rriage", "é".encode()]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def real(
    command: bytes, args: list[bytes], cwd: Path, stdin: bytes = b""
) -> tuple[bytes, bytes, int]:
    binary = shutil.which(command.decode())
    if binary is None:
        pytest.skip(f"{command.decode()} is not installed")
    proc = subprocess.run(
        [command.decode(), *args],
        executable=binary,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env={"LC_ALL": "C.UTF-8", "PATH": os.environ.get("PATH", "")},
        check=False,
    )
    return proc.stdout, proc.stderr, proc.returncode


def quote(word: bytes) -> bytes:
    return shlex.quote(word.decode("latin-1")).encode("latin-1")


def ours(
    command: bytes, args: list[bytes], root: Path, home: str = "/"
) -> tuple[bytes, bytes, int | None]:
    line = b" ".join([command, *(quote(a) for a in args)])
    app, io = run_exec(line, make_ctx(root, home=home))
    if io.status is None:
        app.eof_received()
    return bytes(io.stdout), bytes(io.stderr), io.status


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_matches_hashlib_and_coreutils(root: Path, command: bytes) -> None:
    data = os.urandom(700_000)  # more than one read chunk
    for name in NAMES:
        (root / os.fsdecode(name)).write_bytes(data)
    out, err, status = ours(command, NAMES, root)
    assert (err, status) == (b"", 0)
    algorithm = ALGORITHMS[command][0]
    digest = hashlib.new(algorithm, data).hexdigest()
    assert out.startswith(digest.encode() + b"  plain.txt\n")
    assert out == real(command, NAMES, root)[0]


@pytest.mark.parametrize("command", [b"md5sum", b"sha256sum", b"b2sum"])
@pytest.mark.parametrize("options", [[b"--tag"], [b"-b"], [b"--binary", b"--text"], [b"-bt"]])
def test_options_match_coreutils(root: Path, command: bytes, options: list[bytes]) -> None:
    for name in NAMES:
        (root / os.fsdecode(name)).write_bytes(name * 3)
    args = [*options, *NAMES]
    assert ours(command, args, root) == real(command, args, root)


def test_options_after_names_and_double_dash(root: Path) -> None:
    (root / "-b").write_bytes(b"dash b")
    (root / "f").write_bytes(b"f")
    args = [b"f", b"--tag", b"--", b"-b"]
    assert ours(b"sha1sum", args, root) == real(b"sha1sum", args, root)


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_stdin_probe(root: Path, command: bytes) -> None:
    out, err, status = ours(command, [], root)
    algorithm = ALGORITHMS[command][0]
    assert out == hashlib.new(algorithm).hexdigest().encode() + b"  -\n"
    assert (err, status) == (b"", 0)
    assert out == real(command, [], root)[0]


def test_rclone_md5_probe_exact(root: Path) -> None:
    assert ours(b"md5sum", [], root) == (b"d41d8cd98f00b204e9800998ecf8427e  -\n", b"", 0)


def test_stdin_read_until_eof(root: Path) -> None:
    app, io = run_exec(b"sha256sum", make_ctx(root))
    for piece in (b"hello ", b"wor", b"ld"):
        app.data_received(piece)
    assert io.status is None  # waits for EOF
    app.eof_received()
    assert io.stdout == hashlib.sha256(b"hello world").hexdigest().encode() + b"  -\n"
    assert io.status == 0


def test_stdin_between_files(root: Path) -> None:
    (root / "a").write_bytes(b"A")
    app, io = run_exec(b"md5sum a - a -", make_ctx(root))
    assert io.stdout == hash_line(hashlib.md5(b"A").hexdigest(), b"a")
    app.data_received(b"in")
    app.eof_received()
    expected, _, _ = real(b"md5sum", [b"a", b"-", b"a", b"-"], root, stdin=b"in")
    assert io.stdout == expected
    assert io.status == 0


def test_missing_file_and_directory(root: Path) -> None:
    (root / "a").write_bytes(b"A")
    (root / "d").mkdir()
    args = [b"a", b"missing", b"d", b"no such", b"bad\nname", b"", b"a"]
    out, err, status = ours(b"md5sum", args, root)
    assert status == 1
    assert out == hash_line(hashlib.md5(b"A").hexdigest(), b"a") * 2
    assert err.startswith(
        b"md5sum: missing: No such file or directory\nmd5sum: d: Is a directory\n"
    )
    assert (out, err, status) == real(b"md5sum", args, root)


def test_relative_paths_resolve_against_home(root: Path) -> None:
    (root / "home/al").mkdir(parents=True)
    (root / "home/al/f").write_bytes(b"home")
    (root / "top").write_bytes(b"top")
    out, _, status = ours(b"sha1sum", [b"f", b"/top", b"../../top"], root, home="/home/al")
    h = hashlib.sha1
    assert out == (
        hash_line(h(b"home").hexdigest(), b"f")
        + hash_line(h(b"top").hexdigest(), b"/top")
        + hash_line(h(b"top").hexdigest(), b"../../top")
    )
    assert status == 0


def test_jail_holds(root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s")
    os.symlink(tmp_path / "secret", root / "link")
    out, err, status = ours(b"md5sum", [b"../secret", b"link"], root)
    assert out == b""
    assert err == (
        b"md5sum: ../secret: No such file or directory\nmd5sum: link: No such file or directory\n"
    )
    assert status == 1


@pytest.mark.parametrize("args", [[b"-x"], [b"--foo"], [b"-bq", b"f"], [b"--tags"]])
def test_usage_errors_match_coreutils(root: Path, args: list[bytes]) -> None:
    out, err, status = ours(b"md5sum", args, root)
    assert (out, err, status) == real(b"md5sum", args, root)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        ([b"-c", b"f"], b"-c"),
        ([b"--check"], b"--check"),
        ([b"-bz"], b"-z"),
        ([b"--length=8"], b"--length"),
    ],
)
def test_unsupported_coreutils_options(root: Path, args: list[bytes], option: bytes) -> None:
    out, err, status = ours(b"b2sum", args, root)
    assert (out, status) == (b"", 1)
    assert err == b"b2sum: option '" + option + b"' is not supported by this server\n"


def test_connection_lost_while_waiting_for_stdin(root: Path) -> None:
    app, io = run_exec(b"md5sum", make_ctx(root))
    app.data_received(b"x")
    app.connection_lost()
    assert io.exits == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"plain", (False, b"plain")),
        (b"a\\b", (True, b"a\\\\b")),
        (b"a\nb\r", (True, b"a\\nb\\r")),
    ],
)
def test_escape_name(name: bytes, expected: tuple[bool, bytes]) -> None:
    assert escape_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        b"it's",
        b'a"b',
        b"a$b",
        b"a~",
        b"~a",
        b"-x",
        b"#a",
        b"a#",
        b"a=b",
        b"a:b",
        b"a,b@c%d+e{f]g",
        b"tab\there",
        b"\x01x",
        "é".encode(),
        b"\xff",
        b"",
        b"a\tb'",
        b"\x7f",
        b"no\nsuch",
        b"a b'c",
        b"q\\b",
    ],
)
def test_quote_name_matches_coreutils(root: Path, name: bytes) -> None:
    err = real(b"md5sum", [b"--", name], root)[1]
    assert err == b"md5sum: " + quote_name(name) + b": No such file or directory\n"
