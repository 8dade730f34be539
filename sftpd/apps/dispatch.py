"""Routes an exec request to the app serving it (scp, hashes, rsync, sftp) or refuses it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.logger import Logger

from sftpd.apps.cmdline import CommandRefused, display, split_command
from sftpd.apps.contract import ChannelApp, ChannelIO, SessionContext
from sftpd.apps.hashes import ALGORITHMS, HashUsageError, make_hash_app
from sftpd.apps.scp.sink import ScpNotServed, ScpSink, ScpUsageError, parse_scp_args
from sftpd.apps.scp.source import ScpSource

__all__ = ["RCLONE_SHELL_PROBE", "SFTP_SERVER_NAMES", "FinishedApp", "make_exec_app"]

log = Logger(namespace="sftpd.exec")

# rclone's shell detection: a POSIX shell expands the unset variable to nothing.
RCLONE_SHELL_PROBE = b"echo ${ShellId}%ComSpec%"
RCLONE_SHELL_ANSWER = b"%ComSpec%\n"
SFTP_SERVER_NAMES = frozenset(
    {
        b"sftp-server",
        b"internal-sftp",
        b"/usr/lib/openssh/sftp-server",
        b"/usr/libexec/sftp-server",
        b"/usr/lib/sftp-server",
    }
)
NOT_FOUND = 127


class FinishedApp:
    """The app of a command already answered (exit sent): ignores whatever still arrives."""

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:
        pass

    def output_drained(self) -> None:
        pass

    def connection_lost(self) -> None:
        pass


def _finish(io: ChannelIO, status: int, stderr: bytes = b"", stdout: bytes = b"") -> ChannelApp:
    if stdout:
        io.write(stdout)
    if stderr:
        io.write_stderr(stderr)
    io.exit(status)
    return FinishedApp()


def _not_allowed(io: ChannelIO, what: str) -> ChannelApp:
    return _finish(io, NOT_FOUND, f"sftpd: command not allowed: {what}\n".encode())


def _lazy(module: str, name: str) -> Callable[..., Any] | None:
    """``module.name`` imported now (the module may not exist in this build)."""
    try:
        found: Callable[..., Any] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        log.warn("{module}.{name} is not available: {why}", module=module, name=name, why=exc)
        return None
    return found


def make_exec_app(
    command: bytes, ctx: SessionContext, io: ChannelIO, *, rsync_runtimes: Any = None
) -> ChannelApp:
    """Start the app for an exec ``command``; every path ends in exactly one ``io.exit``.

    ``rsync_runtimes``: the server's ``rsync_sandbox.RuntimeCache`` (None: rsync sessions
    probe for themselves).

    Nothing is ever run through a shell: the words are split as a POSIX shell would, and
    any shell feature (expansion, pipes, lists, redirections, globs) is refused with 127.
    """
    if command == RCLONE_SHELL_PROBE:
        return _finish(io, 0, stdout=RCLONE_SHELL_ANSWER)
    try:
        argv = split_command(command)
    except CommandRefused as exc:
        log.info("refused exec {command}: {why}", command=command, why=str(exc))
        return _not_allowed(io, str(exc))
    if not argv:
        return _not_allowed(io, "(empty command)")
    name = argv[0]
    ctx = _as_protocol(ctx, name)
    if name == b"scp" and ctx.exec.allow_scp:
        return _scp(argv, ctx, io)
    if name in ALGORITHMS and ctx.exec.allow_hashes:
        try:
            return make_hash_app(argv, ctx, io)
        except HashUsageError as exc:
            return _finish(io, 1, str(exc).encode())
    if name == b"rsync" and argv[1:2] == [b"--server"]:
        return _rsync(argv, ctx, io, rsync_runtimes)
    if name in SFTP_SERVER_NAMES and ctx.allow_sftp:
        make_sftp_app = _lazy("sftpd.apps.sftp.protocol", "make_sftp_app")
        if make_sftp_app is None:
            return _finish(io, 1, b"sftpd: sftp is not available on this server\n")
        app: ChannelApp = make_sftp_app(ctx, io)
        return app
    log.info("refused exec {command}: not allowed", command=command)
    return _not_allowed(io, display(name))


def _as_protocol(ctx: SessionContext, name: bytes) -> SessionContext:
    """The context whose storage records events under this command's protocol (when the
    assembly wrapped it in a recorder: ``for_protocol``); sftp is the recorder's default."""
    view = getattr(ctx.storage, "for_protocol", None)
    if view is None:
        return ctx
    if name == b"scp":
        return replace(ctx, storage=view("scp"))
    if name in ALGORITHMS:
        return replace(ctx, storage=view("hashes"))
    if name == b"rsync":
        return replace(ctx, storage=view("rsync"))
    return ctx


def _scp(argv: list[bytes], ctx: SessionContext, io: ChannelIO) -> ChannelApp:
    try:
        opts = parse_scp_args(argv[1:])
    except ScpNotServed:
        return _not_allowed(io, "scp (only as the remote end: -t or -f)")
    except ScpUsageError as exc:
        return _finish(io, 1, f"scp: {exc}\n".encode())
    driver = ScpSink(ctx, io, opts) if opts.sink else ScpSource(ctx, io, opts)
    driver.start()
    return driver


def _rsync(argv: list[bytes], ctx: SessionContext, io: ChannelIO, runtimes: Any) -> ChannelApp:
    unavailable = b"sftpd: rsync is not available on this server\n"
    if not ctx.exec.allow_rsync:
        return _finish(io, 1, unavailable)
    make_rsync_app = _lazy("sftpd.apps.rsync.bridge", "make_rsync_app")
    if make_rsync_app is None:
        return _finish(io, 1, unavailable)
    app: ChannelApp = make_rsync_app(argv, ctx, io, runtimes=runtimes)
    return app
