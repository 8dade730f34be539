"""The exec dispatcher: routing, refusals (127), rclone's probe, exactly one exit per path."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftpd.apps.dispatch import FinishedApp, make_exec_app
from sftpd.config.model import ExecConfig
from tests.exec_fs import RecordingIO, make_ctx, run_exec


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (r / "victim").write_bytes(b"still here")
    return r


def assert_untouched(root: Path) -> None:
    assert sorted(p.name for p in root.iterdir()) == ["victim"]
    assert (root / "victim").read_bytes() == b"still here"


@pytest.mark.parametrize(
    "command",
    [
        b"ls; rm -rf /",
        b"md5sum $(id)",
        b"md5sum `id`",
        b"a | b",
        b"md5sum victim | rm victim",
        b"md5sum victim && rm victim",
        b"md5sum victim; rm victim",
        b"md5sum victim\nrm victim",
        b"md5sum victim > out",
        b"md5sum < victim",
        b"scp -t /; rm victim",
        b"md5sum *",
        b"md5sum ~/victim",
        b'md5sum "$HOME"',
        b"md5sum 'unterminated",
        b"(md5sum victim)",
        b"md5sum victim &",
    ],
)
def test_shell_features_are_refused(root: Path, command: bytes) -> None:
    app, io = run_exec(command, make_ctx(root))
    assert io.status == 127
    assert io.stdout == b""
    assert io.stderr.startswith(b"sftpd: command not allowed: ")
    assert b"shell" in io.stderr or b"quote" in io.stderr
    assert isinstance(app, FinishedApp)
    app.data_received(b"ignored")
    app.eof_received()
    assert io.status == 127
    assert_untouched(root)


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (b"ls -la", b"ls"),
        (b"rm victim", b"rm"),
        (b"bash -c 'rm victim'", b"bash"),
        (b"/bin/sh", b"/bin/sh"),
        (b"echo hello", b"echo"),
        (b"echo ${ShellId}%ComSpec% ", b""),  # not the exact probe: refused as a shell feature
        (b"rsync -av . /x", b"rsync"),
        (b"scp -S evil host:x .", b"scp (only as the remote end: -t or -f)"),
        (b"md5 -r", b"md5"),
        (b"'bad\x1bname'", b"bad\\x1bname"),
    ],
)
def test_other_commands_are_not_allowed(root: Path, command: bytes, name: bytes) -> None:
    _, io = run_exec(command, make_ctx(root))
    assert io.status == 127
    assert io.stderr.startswith(b"sftpd: command not allowed: " + name)
    assert io.stdout == b""
    assert_untouched(root)


@pytest.mark.parametrize("command", [b"", b"   ", b"''"])
def test_empty_command(root: Path, command: bytes) -> None:
    _, io = run_exec(command, make_ctx(root))
    assert io.status == 127
    assert io.stderr.startswith(b"sftpd: command not allowed: ")


def test_rclone_shell_probe(root: Path) -> None:
    _, io = run_exec(b"echo ${ShellId}%ComSpec%", make_ctx(root))
    assert (bytes(io.stdout), bytes(io.stderr), io.status) == (b"%ComSpec%\n", b"", 0)


@pytest.mark.parametrize(
    ("config", "command", "name"),
    [
        (ExecConfig(allow_scp=False), b"scp -t /", b"scp"),
        (ExecConfig(allow_hashes=False), b"md5sum", b"md5sum"),
        (ExecConfig(allow_hashes=False), b"b2sum victim", b"b2sum"),
    ],
)
def test_disabled_commands(root: Path, config: ExecConfig, command: bytes, name: bytes) -> None:
    _, io = run_exec(command, make_ctx(root, exec_config=config))
    assert io.status == 127
    assert io.stderr == b"sftpd: command not allowed: " + name + b"\n"
    assert io.stdout == b""


def test_rsync_disabled(root: Path) -> None:
    ctx = make_ctx(root, exec_config=ExecConfig(allow_rsync=False))
    _, io = run_exec(b"rsync --server -logDtpre.iLsfxCIvu . /", ctx)
    assert io.stderr == b"sftpd: rsync is not available on this server\n"
    assert io.stdout == b""
    assert io.status == 1


def test_scp_usage_error(root: Path) -> None:
    _, io = run_exec(b"scp -x -t /", make_ctx(root))
    assert io.stderr == b"scp: unsupported option -- 'x'\n"
    assert io.stdout == b""
    assert io.status == 1


def test_scp_ambiguous_target(root: Path) -> None:
    _, io = run_exec(b"scp -t a b", make_ctx(root))
    assert io.stdout == b"\x02scp: ambiguous target\n"
    assert io.status == 1


def test_hash_usage_error(root: Path) -> None:
    _, io = run_exec(b"md5sum --nope", make_ctx(root))
    assert io.stderr.startswith(b"md5sum: unrecognized option '--nope'\n")
    assert io.status == 1


def test_hash_command_runs_with_quoted_names(root: Path) -> None:
    (root / "a b").write_bytes(b"")
    _, io = run_exec(b"md5sum a\\ b 'a b' \"a b\"", make_ctx(root))
    assert io.stdout == b"d41d8cd98f00b204e9800998ecf8427e  a b\n" * 3
    assert io.status == 0


def test_scp_is_routed(root: Path) -> None:
    app, io = run_exec(b"scp -v -r -p -d -t -- /", make_ctx(root))
    assert io.stdout == b"\x00"  # the sink says it is ready
    assert io.status is None
    app.eof_received()
    assert io.status == 0


@pytest.mark.parametrize(
    "command",
    [
        b"sftp-server",
        b"internal-sftp",
        b"/usr/lib/openssh/sftp-server",
        b"/usr/libexec/sftp-server",
        b"/usr/lib/sftp-server",
        b"/usr/lib/openssh/sftp-server -e -l INFO",
    ],
)
def test_sftp_server_as_exec(root: Path, command: bytes) -> None:
    io = RecordingIO()
    app = make_exec_app(command, make_ctx(root), io)
    assert not isinstance(app, FinishedApp)
    assert io.exits == []  # the SFTP app waits for the client's INIT
    # SSH_FXP_INIT version 3 -> SSH_FXP_VERSION
    app.data_received(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03")
    assert io.stdout[4:5] == b"\x02"
    app.connection_lost()
