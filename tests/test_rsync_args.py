"""The rsync allow-list, path mapping and the client/daemon opening bridge (no processes)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from sftpd.apps.contract import SessionContext
from sftpd.apps.rsync.args import (
    RsyncArgError,
    RsyncReadOnlyError,
    ServerArgs,
    map_path,
    parse_command,
    read_protected_args,
    restrict,
    validate,
)
from sftpd.apps.rsync.bridge import (
    UNAVAILABLE,
    daemon_arguments,
    daemon_config,
    make_rsync_app,
    parse_ldd,
)
from sftpd.apps.rsync.sandbox import Runtime, RuntimeCache, runs_as_root, sandbox_argv
from sftpd.apps.rsync.stop import KILL_AFTER, TERM_AFTER
from sftpd.config.model import ExecConfig
from sftpd.runtime.threads import InlineBlocking
from sftpd.storage.rules import Rules


def words(line: str) -> list[bytes]:
    return [w.encode() for w in line.split()]


def check(line: str, *, home: str = "/", read_only: bool = False) -> ServerArgs:
    argv = words(line)
    command = parse_command(argv)
    assert not command.protect_args
    return validate(command.words, home=home, read_only=read_only)


def refused(line: str, *, read_only: bool = False) -> str:
    with pytest.raises(RsyncArgError) as info:
        check(line, read_only=read_only)
    return info.value.option


# Command lines printed by rsync 3.2.x-3.5 clients (see the -e 'sh -c echo' trick).
CLIENT_LINES = [
    ("rsync --server -logDtpre.iLsfxCIvu . dst/", False, (b"-logDtpre.iLsfxCIvu",)),
    ("rsync --server --sender -vlogDtpre.iLsfxCIvu . dst/", True, (b"-vlogDtpre.iLsfxCIvu",)),
    (
        "rsync --server -vlogDtpre.iLsfxCIvu --delete . dst/",
        False,
        (b"-vlogDtpre.iLsfxCIvu", b"--delete"),
    ),
    (
        "rsync --server -logDtpre.iLsfxCIvu --partial . dst/",
        False,
        (b"-logDtpre.iLsfxCIvu", b"--partial"),
    ),
    ("rsync --server -logDtprce.iLsfxCIvu . dst/", False, (b"-logDtprce.iLsfxCIvu",)),
    ("rsync --server --sender -logDtprze.iLsfxCIvu . dst/", True, (b"-logDtprze.iLsfxCIvu",)),
    (
        "rsync --server -vlogDtprze.iLsfxCIvu --delete-during --inplace . dst/",
        False,
        (b"-vlogDtprze.iLsfxCIvu", b"--delete-during", b"--inplace"),
    ),
    ("rsync --server -lHogDtpAXre.iLsfxCIvu --stats . d", False, None),
    ("rsync --server --sender -lLogDtpre.iLsfxCIvu --safe-links . d", True, None),
    ("rsync --server -unlKmOJyWHogDtUpXrcIxSe.iLsfxCIvu . d", False, None),
    ("rsync --server -logDtpre.iLsfxCIvu --log-format=X --partial . d", False, None),
    ("rsync --server -logDtpre.iLsfxCIvu --delay-updates . d", False, None),
    (
        "rsync --server -logDtpre.iLsfxCIvu --timeout=10 --bwlimit=1024 --max-delete=5 "
        "--min-size=1 . d",
        False,
        None,
    ),
    (
        "rsync --server -logDtpre.iLsfxCIvu --delete-delay --size-only --delete-missing-args "
        "--copy-unsafe-links --safe-links --ignore-existing --existing . d",
        False,
        None,
    ),
    (
        "rsync --server -blogDtpre.iLsfxCIvu --suffix=.bak --max-size=1048576 "
        "--delete-excluded --remove-source-files . d",
        False,
        None,
    ),
    (
        "rsync --server -logDtpAre.iLsfxCIvu --log-format=X --super --append --append . d",
        False,
        None,
    ),
    (
        "rsync --server -logDtpre.iLsfxCIvu --numeric-ids --fsync --preallocate --open-noatime "
        "--mkpath . d",
        False,
        None,
    ),
    (
        "rsync --server -logDtpre.iLsfxCIvu --compress-level=3 --checksum-choice=xxh128 "
        "--compress-choice=zstd . d",
        False,
        None,
    ),
    ("rsync --server -vvlogDtpre.iLsfxCIvu --info=NAME2 --debug=DEL2 . d", False, None),
    ("rsync --server -logDtpre.iLsfxCIvu -B8192 --modify-window=2 . d", False, None),
    ("rsync --server -logDtpre.iLsfxCIvu --usermap=*:a --groupmap=*:b . d", False, None),
    ("rsync --server -logDtprRe.LsfxCIvu --no-implied-dirs . d", False, None),
    ("rsync --server --sender -logDtpRe.LsfxCIvu --files-from=- --from0 . .", True, None),
    ("rsync --server --sender -logDtpre.iLsfxCIvu --list-only . d", True, None),
    ("rsync --server -logDtpre.iLsfxCIvu --ignore-times --no-W --no-r . d", False, None),
    ("rsync --server -logDtpre.iLsfxCIvu --munge-links --no-munge-links . d", False, None),
]


@pytest.mark.parametrize(("line", "sender", "options"), CLIENT_LINES)
def test_real_client_lines_are_accepted(
    line: str, sender: bool, options: tuple[bytes, ...] | None
) -> None:
    args = check(line)
    assert args.sender is sender
    if options is not None:
        assert args.options == options


def test_separate_values_are_joined() -> None:
    args = check(
        "rsync --server -blogDtpre.iLsfxCIvu --backup-dir bk --partial-dir .p "
        "--link-dest ../prev . d"
    )
    assert args.options == (
        b"-blogDtpre.iLsfxCIvu",
        b"--backup-dir=bk",
        b"--partial-dir=.p",
        b"--link-dest=../prev",
    )


def test_restrict_maps_each_missing_permission_onto_the_receiver() -> None:
    receiver = check("rsync --server -logDtpre.iLsfxCIvu . d")
    full = restrict(receiver, delete=True, overwrite=True, symlinks=True)
    assert full == receiver
    narrowed = restrict(
        receiver, delete=True, overwrite=False, symlinks=False, chmod=False, chtimes=False
    )
    assert narrowed.options == (
        b"-logDtpre.iLsfxCIvu",
        b"--ignore-existing",
        b"--no-links",
        b"--no-perms",
        b"--no-times",
    )  # after the client's: rsync's last word wins
    sender = check("rsync --server --sender -logDtpre.iLsfxCIvu . d")
    assert restrict(sender, delete=True, overwrite=False, symlinks=False, chmod=False) == sender


def test_absolute_path_values_are_normalised_inside_the_root() -> None:
    args = check("rsync --server -r --copy-dest /../../y --backup-dir=/z/../../bk . d")
    assert args.options == (b"-r", b"--copy-dest=/y", b"--backup-dir=/bk")


@pytest.mark.parametrize(
    ("line", "option"),
    [
        ("rsync --server -e ssh . d", "-e"),
        ("rsync --server -vle ssh . d", "-e"),
        ("rsync --server -essh . d", "-essh"),
        ("rsync --server --rsh=ssh . d", "--rsh"),
        ("rsync --server --rsync-path=/bin/sh . d", "--rsync-path"),
        ("rsync --server --daemon . d", "--daemon"),
        ("rsync --daemon --server .", "--daemon"),
        ("rsync --server --config=/etc/x . d", "--config"),
        ("rsync --server --dparam=x=y . d", "--dparam"),
        ("rsync --server --log-file=/tmp/x . d", "--log-file"),
        ("rsync --server --log-file /tmp/x . d", "--log-file"),
        ("rsync --server -T /tmp . d", "-T"),
        ("rsync --server -vT/tmp . d", "-T"),
        ("rsync --server --temp-dir=/tmp . d", "--temp-dir"),
        ("rsync --server --write-batch=x . d", "--write-batch"),
        ("rsync --server --read-batch=x . d", "--read-batch"),
        ("rsync --server --only-write-batch=x . d", "--only-write-batch"),
        ("rsync --server --sender --files-from=/etc/passwd . d", "--files-from=/etc/passwd"),
        ("rsync --server --sender --files-from list . d", "--files-from=list"),
        ("rsync --server --exclude-from=/etc/shadow . d", "--exclude-from=/etc/shadow"),
        ("rsync --server --include-from=x . d", "--include-from=x"),
        ("rsync --server --iconv=utf8 . d", "--iconv"),
        ("rsync --server --copy-devices . d", "--copy-devices"),
        ("rsync --server --write-devices . d", "--write-devices"),
        ("rsync --server -M--log-file=/x . d", "-M"),
        ("rsync --server --remote-option=--x . d", "--remote-option"),
        ("rsync --server --copy-as=root . d", "--copy-as"),
        ("rsync --server -f+_x . d", "-f"),
        ("rsync --server --filter=+x . d", "--filter"),
        ("rsync --server --no-such-option . d", "--no-such-option"),
        ("rsync --server --delete=yes . d", "--delete=yes"),
        ("rsync --server -B12x . d", "-B12x"),
        ("rsync --server stray . d", "stray"),
        ("rsync --server -- . d", "--"),
        ("rsync --server -r", "(missing '.' argument)"),
        ("/tmp/evil --server -r . d", "--rsync-path"),
        ("rsync -r --server . d", "-r"),
        ("rsync", "(server mode required)"),
    ],
)
def test_refused(line: str, option: str) -> None:
    assert refused(line) == option


def test_nul_and_newline_are_refused_anywhere() -> None:
    for bad in (b"d\x00--daemon", b"d\n--daemon"):
        with pytest.raises(RsyncArgError):
            validate([b"--server", b"-r", b".", bad], home="/", read_only=False)
        with pytest.raises(RsyncArgError):
            validate([b"--server", b"--suffix=" + bad, b".", b"d"], home="/", read_only=False)


def test_read_only_accounts_may_only_send() -> None:
    with pytest.raises(RsyncReadOnlyError):
        check("rsync --server -logDtpre.iLsfxCIvu . d", read_only=True)
    assert check("rsync --server --sender -logDtpre.iLsfxCIvu . d", read_only=True).sender
    assert refused("rsync --server --sender -r --remove-source-files . d", read_only=True) == (
        "--remove-source-files"
    )


def test_paths_are_mapped_into_the_root() -> None:
    args = check(
        "rsync --server --sender -r . /../../etc/passwd ../../x sub/ sub/. . ~ ~/a /",
        home="/home/u",
    )
    assert args.paths == (
        b"/etc/passwd",
        b"/x",
        b"/home/u/sub/",
        b"/home/u/sub/.",
        b"/home/u/.",
        b"/home/u",
        b"/home/u/a",
        b"/",
    )
    assert check("rsync --server -r .").paths == (b"/.",)
    assert map_path(b"/..", "/") == b"/"
    assert map_path(b"/../.", "/") == b"/."
    assert map_path(b"-rf", "/") == b"/-rf"
    assert map_path(b"\xff name", "/") == b"/\xff name"


def test_protect_args_are_read_from_stdin() -> None:
    command = parse_command(words("rsync --server -sblogDtpre.iLsfxCIvu"))
    assert command.protect_args
    stream = b"rsync\x00--backup-dir\x00bk\x00--delete\x00.\x00dst dir/x\x00\x00 \x00\x00\x00"
    for cut in range(len(stream) - 4):
        assert read_protected_args(stream[:cut]) is None
    parsed = read_protected_args(stream)
    assert parsed is not None
    extra, used = parsed
    assert stream[used:] == b" \x00\x00\x00"
    args = validate((*command.words, *extra[1:]), home="/", read_only=False)
    assert args.options == (b"-blogDtpre.iLsfxCIvu", b"--backup-dir=bk", b"--delete")
    assert args.paths == (b"/dst dir/x",)
    assert parse_command(words("rsync --server --protect-args -r")).protect_args
    assert not parse_command(words("rsync --server -r . s")).protect_args


def test_protected_args_are_validated_like_the_rest() -> None:
    command = parse_command(words("rsync --server -slogDtpre.iLsfxCIvu"))
    with pytest.raises(RsyncArgError) as info:
        validate((*command.words, b"--log-file=/x", b".", b"d"), home="/", read_only=False)
    assert info.value.option == "--log-file"


def test_daemon_arguments_carry_only_validated_words() -> None:
    args = check("rsync --server --sender -vlogDtpre.iLsfxCIvu --partial . a /b/ -x")
    block = daemon_arguments(args, 32)
    assert block.split(b"\x00") == [
        b"--server",
        b"--sender",
        b"-vlogDtpre.iLsfxCIvu",
        b"--partial",
        b".",
        b"sftpd/a",
        b"sftpd/b/",
        b"sftpd/-x",
        b"",
        b"",
    ]
    assert daemon_arguments(check("rsync --server -r ."), 29) == b"--server\n-r\n.\nsftpd/.\n\n"


def test_daemon_config_chroots_and_is_read_only_when_asked() -> None:
    conf = daemon_config(True).decode()
    assert "use chroot = yes\n" in conf
    assert "numeric ids = yes\n" in conf
    assert "read only = yes\n" in conf
    assert "read only = no\n" in daemon_config(False).decode()


def test_daemon_config_as_root_stays_root() -> None:
    assert daemon_config(True, as_root=True).decode().startswith("uid = 0\ngid = 0\n")
    assert "uid =" not in daemon_config(True).decode()


def test_sandbox_argv_user_namespace_unless_a_root_sender() -> None:
    runtime = Runtime(files=("/lib/x.so",), disable_userns=True)
    ns = sandbox_argv("bwrap", "/usr/bin/rsync", runtime, b"/srv/u", False)
    assert b"--unshare-user" in ns and b"--disable-userns" in ns
    assert ns.count(b"--cap-add") == 1 and b"CAP_SYS_CHROOT" in ns
    root = sandbox_argv("bwrap", "/usr/bin/rsync", runtime, b"/srv/u", True, as_root=True)
    assert b"--unshare-user" not in root and b"--unshare-all" not in root
    assert b"--uid" not in root
    assert {b"--unshare-pid", b"--unshare-net", b"--unshare-ipc", b"--unshare-uts"} <= set(root)
    caps = {root[i + 1] for i, word in enumerate(root) if word == b"--cap-add"}
    assert caps == {b"CAP_SYS_CHROOT", b"CAP_SETGID", b"CAP_DAC_OVERRIDE"}
    assert root[root.index(b"--cap-drop") + 1] == b"ALL"
    assert root[root.index(b"/srv/u") - 1] == b"--ro-bind"


def test_only_a_sender_under_root_runs_as_root() -> None:
    assert not runs_as_root(False)
    assert runs_as_root(True) == (os.getuid() == 0)


def test_runtime_cache_probes_once_per_rsync_binary(tmp_path: Path) -> None:
    probed: list[tuple[str, str]] = []

    def probe(bwrap: str, rsync: str) -> Runtime:
        probed.append((bwrap, rsync))
        return Runtime(files=(f"/lib/{len(probed)}.so",), disable_userns=True)

    binary = tmp_path / "rsync"
    binary.write_bytes(b"v1")
    cache, other = RuntimeCache(probe), RuntimeCache(probe)
    first = cache.probe("bwrap", str(binary))
    assert cache.probe("bwrap", str(binary)) is first
    assert len(probed) == 1
    assert other.probe("bwrap", str(binary)) is not first  # state is per cache, not global
    os.utime(binary, ns=(0, binary.stat().st_mtime_ns + 1))  # rsync was upgraded
    assert cache.probe("bwrap", str(binary)).files != first.files
    assert len(probed) == 3


def test_parse_ldd() -> None:
    text = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibpopt.so.0 => /lib/x86_64-linux-gnu/libpopt.so.0 (0x00007f)\n"
        "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
    )
    assert parse_ldd(text) == (
        "/lib/x86_64-linux-gnu/libpopt.so.0",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    )
    assert parse_ldd("\tnot a dynamic executable\n") == ()
    with pytest.raises(RuntimeError):
        parse_ldd("\tlibx.so.1 => not found\n")


# -- the bridge, in memory (no processes) ----------------------------------------------


class FakeProcess:
    pid = None  # no process: nothing to look for in /proc

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.stdin = bytearray()
        self.child: dict[int, bytes] = {}
        self.calls: list[str] = []

    def write(self, data: bytes) -> None:
        self.stdin += data

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.child[fd] = self.child.get(fd, b"") + data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def closeChildFD(self, fd: int) -> None:
        self.calls.append(f"close {fd}")

    def closeStdin(self) -> None:
        self.calls.append("close stdin")

    def closeStdout(self) -> None:
        self.calls.append("close stdout")

    def closeStderr(self) -> None:
        self.calls.append("close stderr")

    def signalProcess(self, sig: str) -> None:
        self.calls.append(f"signal {sig}")

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[FakeProcess, list[bytes]]] = []

    def spawnProcess(self, proto: Any, executable: bytes, args: list[bytes], **kw: Any) -> Any:
        process = FakeProcess(proto)
        proto.makeConnection(process)
        self.spawned.append((process, args))
        return process


@dataclass
class FakeIO:
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    status: list[int] = field(default_factory=list)
    pending: int = 0

    def write(self, data: bytes) -> None:
        self.out += data

    def write_stderr(self, data: bytes) -> None:
        self.err += data

    def exit(self, status: int) -> None:
        self.status.append(status)

    def pending_output(self) -> int:
        return self.pending

    reading_paused = False

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False


def bridge(
    tmp_path: Path, command: str, read_only: bool = False
) -> tuple[Any, FakeIO, Callable[[], tuple[FakeProcess, list[bytes]]]]:
    app, io, spawned, _ = bridge_with_clock(tmp_path, command, read_only)
    return app, io, spawned


def bridge_with_clock(
    tmp_path: Path, command: str, read_only: bool = False
) -> tuple[Any, FakeIO, Callable[[], tuple[FakeProcess, list[bytes]]], FakeReactor]:
    reactor = FakeReactor()
    io = FakeIO()
    # Any two binaries that exist stand in: nothing is executed but ldd and "--help".
    ctx = SessionContext(
        username="u",
        home="/",
        storage=None,  # type: ignore[arg-type]
        blocking=InlineBlocking(),
        rsync=Rules(read_only=read_only).rsync(tmp_path),
        exec=ExecConfig(rsync_path="sh", bwrap_path="true"),
        reactor=reactor,
        session_id="mem",
    )
    app = make_rsync_app([w.encode() for w in command.split()], ctx, io)
    return app, io, lambda: reactor.spawned[0], reactor


def test_bridge_opening_and_backpressure(tmp_path: Path) -> None:
    app, io, spawned, clock = bridge_with_clock(
        tmp_path, "rsync --server --sender -vlogDtpre.iLsfxCIvu . d"
    )
    process, argv = spawned()
    assert b"\nuse chroot = yes\n" in b"\n" + process.child[3]
    assert "close 3" in process.calls
    assert str(tmp_path).encode() in argv
    # byte by byte: the client's version, then the daemon's greeting and OK
    for byte in struct.pack("<i", 31):
        app.data_received(bytes([byte]))
    for byte in b"@RSYNCD: 32.0 sha512 md5\n":
        process.proto.outReceived(bytes([byte]))
    assert bytes(process.stdin) == b"@RSYNCD: 31.0 sha512 md5\nsftpd\n"
    assert io.out == b""
    process.proto.outReceived(b"@RSYNCD: OK\nPROTOCOL")
    assert bytes(io.out) == struct.pack("<i", 32) + b"PROTOCOL"
    args = bytes(process.stdin).split(b"sftpd\n", 1)[1]
    assert args == b"--server\x00--sender\x00-vlogDtpre.iLsfxCIvu\x00.\x00sftpd/d\x00\x00"
    app.data_received(b"client bytes")
    assert process.stdin.endswith(b"client bytes")
    io.pending = 10 << 20
    process.proto.outReceived(b"more")
    assert process.calls[-1] == "pause"
    io.pending = 0
    app.output_drained()
    assert process.calls[-1] == "resume"
    process.proto.errReceived(b"rsync: warning\n")
    assert io.err == b"rsync: warning\n"
    app.eof_received()
    assert process.calls[-1] == "close stdin"
    # the client is gone: rsync's pipes are closed, then TERM (inside), then KILL
    app.connection_lost()
    assert process.calls[-3:] == ["close stdin", "close stdout", "close stderr"]
    clock.advance(TERM_AFTER)  # (SIGTERM goes to the processes inside: none here)
    clock.advance(KILL_AFTER - 0.1)
    assert "signal KILL" not in process.calls
    clock.advance(0.1)
    assert process.calls[-1] == "signal KILL"
    process.proto.processEnded(Failure(ProcessTerminated(signal=9)))
    assert clock.getDelayedCalls() == []
    assert io.status == []  # the channel is gone: nothing more is sent


def test_bridge_connection_lost_rsync_that_exits_is_not_signalled(tmp_path: Path) -> None:
    app, io, spawned, clock = bridge_with_clock(tmp_path, "rsync --server -vlogDtpre.iLsfxCIvu . d")
    process, _ = spawned()
    app.data_received(struct.pack("<i", 31))
    process.proto.outReceived(b"@RSYNCD: 32.0 md5\n@RSYNCD: OK\n")
    app.connection_lost()
    process.proto.processEnded(Failure(ProcessTerminated(exitCode=20)))
    assert clock.getDelayedCalls() == []
    clock.advance(TERM_AFTER)
    clock.advance(KILL_AFTER)
    assert [c for c in process.calls if c.startswith("signal")] == []


def test_bridge_connection_lost_before_the_transfer_kills_at_once(tmp_path: Path) -> None:
    app, io, spawned, clock = bridge_with_clock(tmp_path, "rsync --server -vlogDtpre.iLsfxCIvu . d")
    process, _ = spawned()
    app.connection_lost()
    assert process.calls[-1] == "signal KILL"
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("sent", [b"", b"\x1f", b"\x1f\x00\x00"])
@pytest.mark.parametrize("greeted", [False, True])
def test_bridge_eof_before_the_protocol_version_exits_12(
    tmp_path: Path, sent: bytes, greeted: bool
) -> None:
    app, io, spawned = bridge(tmp_path, "rsync --server -vlogDtpre.iLsfxCIvu . /x")
    process, _ = spawned()
    if greeted:
        process.proto.outReceived(b"@RSYNCD: 32.0 md5\n")
    app.data_received(sent)
    app.eof_received()
    assert io.status == [12]
    assert b"error in rsync protocol data stream (code 12)" in io.err
    assert process.calls[-1] == "signal KILL"
    assert bytes(process.stdin) == b""  # the daemon never heard from the client


def test_bridge_eof_after_the_protocol_version_is_rsyncs_to_handle(tmp_path: Path) -> None:
    app, io, spawned = bridge(tmp_path, "rsync --server -vlogDtpre.iLsfxCIvu . /x")
    process, _ = spawned()
    app.data_received(struct.pack("<i", 31))
    app.eof_received()
    assert io.status == []
    process.proto.outReceived(b"@RSYNCD: 32.0 md5\n@RSYNCD: OK\n")
    assert process.calls[-1] == "close stdin"  # rsync sees the EOF after its arguments


def test_bridge_protect_args_and_refusal(tmp_path: Path) -> None:
    app, io, spawned = bridge(tmp_path, "rsync --server -slogDtpre.iLsfxCIvu")
    app.data_received(b"rsync\x00--log-file=/x\x00.\x00d\x00\x00" + struct.pack("<i", 32))
    assert io.err == b"sftpd: rsync option not allowed: --log-file\n"
    assert io.status == [1]
    app, io, spawned = bridge(tmp_path, "rsync --server -slogDtpre.iLsfxCIvu")
    app.data_received(b"rsync\x00--delete\x00.\x00a b\x00\x00" + struct.pack("<i", 32))
    process, _ = spawned()
    process.proto.outReceived(b"@RSYNCD: 32.0 md5\n@RSYNCD: OK\n")
    assert bytes(process.stdin).endswith(
        b"-logDtpre.iLsfxCIvu\x00--delete\x00.\x00sftpd/a b\x00\x00"
    )


def test_bridge_failure_before_the_transfer_is_unavailable(tmp_path: Path) -> None:
    app, io, spawned = bridge(tmp_path, "rsync --server -r . d")
    process, _ = spawned()
    process.proto.errReceived(b"bwrap: setting up uid map: Permission denied\n")
    process.proto.processEnded(Failure(ProcessTerminated(exitCode=1)))
    assert bytes(io.err) == UNAVAILABLE
    assert io.status == [1]
    app, io, spawned = bridge(tmp_path, "rsync --server -r . d")
    process, _ = spawned()
    app.data_received(struct.pack("<i", 32))
    process.proto.outReceived(b"@RSYNCD: 32.0 md5\n@RSYNCD: OK\n")
    process.proto.processEnded(Failure(ProcessTerminated(exitCode=None, signal=9)))
    assert io.status == [137]
    assert io.err == b""


def test_bridge_registers_client_input_as_producer_on_rsync_stdin(tmp_path: Path) -> None:
    """rsync's stdin pipe pauses the client's window when rsync reads slower than it sends."""
    app, io, spawned = bridge(tmp_path, "rsync --server -r . d")
    process, _ = spawned()
    producer = process.producer  # registered by the bridge when rsync was spawned
    producer.pauseProducing()
    assert io.reading_paused
    producer.resumeProducing()
    assert not io.reading_paused


def test_bridge_unregisters_the_producer_before_closing_stdin(tmp_path: Path) -> None:
    """Twisted never finishes closing a pipe with a registered (paused) producer."""
    app, io, spawned = bridge(tmp_path, "rsync --server -slogDtpre.iLsfxCIvu")
    app.data_received(b"rsync\x00--delete\x00.\x00d\x00\x00" + struct.pack("<i", 32))
    process, _ = spawned()
    process.proto.outReceived(b"@RSYNCD: 32.0 md5\n@RSYNCD: OK\n")
    process.producer.pauseProducing()  # rsync's stdin pipe is full
    app.eof_received()
    assert process.producer is None
    assert "close stdin" in process.calls
