"""rsync over ssh: the bridge between a session channel and the sandboxed rsync daemon.

The sandbox (sandbox.py) runs rsync's single-use daemon chrooted into the user's root.
The client speaks the remote-shell flavour of the protocol, which differs from the daemon
flavour only in its opening: this module answers the client's 4-byte protocol version
itself, performs the daemon's text greeting on the client's behalf, and hands over the
client's arguments -- re-serialised from the validated allow-list (see args.py), never
the client's raw words. After ``@RSYNCD: OK`` bytes pass through untouched. When the client
goes away, stop.py ends the sandbox as OpenSSH's server would. The pipes are routed by
pipes.py; the daemon's transfer log is read by daemonlog.py.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.python.failure import Failure

from sftpd.apps.contract import ChannelApp, ChannelIO, SessionContext
from sftpd.apps.rsync.args import (
    RsyncArgError,
    RsyncReadOnlyError,
    RsyncRuleError,
    ServerArgs,
    parse_command,
    read_protected_args,
    restrict,
    validate,
)
from sftpd.apps.rsync.daemonlog import DaemonLog
from sftpd.apps.rsync.opening import (
    MAX_PREAMBLE,
    ClientError,
    DaemonSays,
    Event,
    Opening,
    Running,
    ToClient,
    ToDaemon,
)
from sftpd.apps.rsync.opening import daemon_arguments as opening_arguments
from sftpd.apps.rsync.pipes import ClientInput, ProcessHandle, RsyncProcess
from sftpd.apps.rsync.rooted import (
    Prepared,
    RootMissing,
    in_directory,
    prepare,
    temporaries_in_directory,
)
from sftpd.apps.rsync.sandbox import (
    CONFIG_FD,
    JAIL,
    LOG_FD,
    MODULE,
    ROOT_FD,
    Runtime,
    RuntimeCache,
    daemon_config,
    parse_ldd,
    runs_as_root,
    sandbox_argv,
)
from sftpd.apps.rsync.stop import (
    KILL_AFTER,
    TERM_AFTER,
    GracefulStop,
    ProcessTree,
    Temporary,
    removal_logger,
    remove_temporaries,
)
from sftpd.log import clip
from sftpd.storage.base import Storage
from sftpd.storage.enforce import RulesStorage
from sftpd.storage.rules import RsyncGrant, RsyncRefusal

__all__ = ["UNAVAILABLE", "daemon_arguments", "daemon_config", "make_rsync_app", "parse_ldd"]

log = Logger()

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_MAX_LOGGED = 4096
UNAVAILABLE = b"sftpd: rsync is not available on this server\n"
RERR_STREAMIO = 12  # rsync's "error in rsync protocol data stream"
EARLY_EOF = (
    b"rsync: connection unexpectedly closed (0 bytes received so far) [server]\n"
    b"rsync error: error in rsync protocol data stream (code 12) [server]\n"
)


def make_rsync_app(
    argv: list[bytes],
    ctx: SessionContext,
    io: ChannelIO,
    *,
    runtimes: RuntimeCache | None = None,
    stop_after: tuple[float, float] = (TERM_AFTER, KILL_AFTER),
) -> ChannelApp:
    """Serve ``rsync --server ...`` (argv already shell-split) on a session channel.

    ``runtimes``: the server's cache of what the sandbox needs (without one, this session
    probes for itself). ``stop_after``: once the client is gone, seconds until SIGTERM,
    then until SIGKILL.
    """
    return RsyncApp(argv, ctx, io, runtimes=runtimes or RuntimeCache(), stop_after=stop_after)


def daemon_arguments(args: ServerArgs, protocol: int) -> bytes:
    """The argument block a daemon client sends after ``@RSYNCD: OK`` (for our module)."""
    return opening_arguments(args, protocol, MODULE)


class RsyncApp:
    """ChannelApp: validates, starts the sandbox, bridges the opening, then relays bytes."""

    def __init__(
        self,
        argv: list[bytes],
        ctx: SessionContext,
        io: ChannelIO,
        *,
        runtimes: RuntimeCache,
        stop_after: tuple[float, float] = (TERM_AFTER, KILL_AFTER),
    ) -> None:
        self._ctx = ctx
        self._runtimes = runtimes
        self._stop_after = stop_after
        self._io = io
        self._state = "args"  # args -> starting -> handshake -> running -> done
        self._inbuf = bytearray()  # client bytes before the protected arguments are complete
        self._opening: Opening | None = None  # from validation to the handoff
        self._errlog = bytearray()  # stderr before the handoff (logged, never shown)
        self._eof = False
        self._paused = False
        self._words: tuple[bytes, ...] = ()
        self._grant: RsyncGrant | None = None  # the rules' grant, once the arguments are in
        self._args: ServerArgs | None = None
        self._process: ProcessHandle | None = None
        self._pending: Deferred[Prepared] | None = None
        self._stop: GracefulStop | None = None
        # The recorder (the events storage's rsync view), if the assembly wired one: it
        # gets the daemon's per-file transfer log lines.
        self._transfer = getattr(ctx.storage, "rsync_transferred", None)
        self._log = DaemonLog(self._transferred) if self._transfer is not None else None
        if not ctx.exec.allow_rsync:
            self._finish(127, b"sftpd: command not allowed: rsync\n")
            return
        try:
            command = parse_command(argv)
        except RsyncArgError as e:
            self._refuse(e)
            return
        self._words = command.words
        if not command.protect_args:
            self._arguments_complete()

    # -- ChannelApp ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._state == "done":
            return
        if self._state == "running":
            self._to_rsync(data)
            return
        if self._state != "args":
            if self._opening is not None:
                self._apply(self._opening.feed_client(data))
            return
        self._inbuf += data
        if len(self._inbuf) > MAX_PREAMBLE:
            self._protocol_error("client preamble too long")
        else:
            self._read_protected_args()

    def eof_received(self) -> None:
        self._eof = True
        if self._state == "running" and self._process is not None:
            self._close_stdin(self._process)
        elif self._state == "args":
            self._protocol_error("end of input before the protected arguments")
        elif self._opening is not None and self._opening.awaiting_version:
            # The daemon waits for a greeting only we can send, and we need the
            # client's version for it: end as a real ``rsync --server`` does here.
            self._early_eof()

    def output_drained(self) -> None:
        if self._paused and self._process is not None and self._io.pending_output() <= _LOW_WATER:
            self._paused = False
            self._process.resumeProducing()

    def connection_lost(self) -> None:
        process, running = self._process, self._state == "running"
        self._state = "done"
        if self._pending is not None:
            self._pending.cancel()
        if not running or process is None:
            self._kill()  # nothing transferred yet: nothing of rsync's to keep or clean
            return
        # As OpenSSH: close rsync's pipes and let it clean up (keep --partial data), then
        # TERM, then KILL; temporaries a killed rsync leaves are removed when it has gone.
        in_place = any(
            o in (b"--inplace", b"--append", b"--append-verify") for o in self._options()
        )
        inside = None
        if process.pid is not None:
            writes = self._args is not None and not self._args.sender and not in_place
            inside = ProcessTree(process.pid, JAIL, temporaries=writes)
        term_after, kill_after = self._stop_after
        self._stop = GracefulStop(
            self._ctx.reactor, process, inside, term_after=term_after, kill_after=kill_after
        )

    def _options(self) -> tuple[bytes, ...]:
        return self._args.options if self._args is not None else ()

    # -- validation and start-up -----------------------------------------------------
    def _read_protected_args(self) -> None:
        parsed = read_protected_args(self._inbuf)
        if parsed is None:
            return
        words, used = parsed
        del self._inbuf[:used]
        self._words = (*self._words, *words[1:])
        self._arguments_complete()

    def _arguments_complete(self) -> None:
        grant = self._ctx.rsync
        if isinstance(grant, RsyncRefusal):
            log.info(
                "rsync session {session_id} user {username} key {key}: refused: {reason}",
                session_id=self._ctx.session_id,
                username=self._ctx.username,
                key=self._ctx.key_fingerprint or "password",
                reason=grant.reason,
            )
            self._finish(1, b"sftpd: rsync refused: " + grant.reason.encode() + b"\n")
            return
        self._grant = grant
        try:
            self._args = restrict(
                validate(self._words, home=self._ctx.home, read_only=grant.sender_only),
                delete=grant.delete,
                overwrite=grant.overwrite,
                symlinks=grant.symlinks,
                chmod=grant.chmod,
                chtimes=grant.chtimes,
            )
            if self._args.sender and not grant.send:
                reason = 'rsync downloads need "download", which is not allowed'
                raise RsyncRuleError("--sender", reason)
            if grant.max_size and not self._args.sender:  # last wins: after the client's
                limit = b"--max-size=%d" % grant.max_size
                self._args = replace(self._args, options=(*self._args.options, limit))
        except RsyncReadOnlyError:
            self._finish(1, b"sftpd: read-only account: rsync may only download\n")
            return
        except RsyncArgError as e:
            self._refuse(e)
            return
        rsync = shutil.which(self._ctx.exec.rsync_path)
        bwrap = shutil.which(self._ctx.exec.bwrap_path)
        if rsync is None or bwrap is None or self._ctx.reactor is None:
            missing = self._ctx.exec.rsync_path if rsync is None else self._ctx.exec.bwrap_path
            self._unavailable(f"{missing!r} not found" if self._ctx.reactor else "no reactor")
            return
        self._state = "starting"
        self._opening = Opening(self._args, MODULE)
        leftover, self._inbuf = bytes(self._inbuf), bytearray()
        self._apply(self._opening.feed_client(leftover))
        if self._state != "starting":
            return
        pending = self._ctx.blocking.run(prepare, self._runtimes, self._grant, bwrap, rsync)
        self._pending = pending  # may already have fired (and been cleared) just below
        pending.addCallback(self._spawn, bwrap, rsync)
        pending.addErrback(self._start_failed)

    def _start_failed(self, failure: Failure) -> None:
        self._pending = None
        if isinstance(failure.value, RootMissing) and self._state in ("starting", "handshake"):
            self._finish(1, f"sftpd: rsync refused: {failure.value}\n".encode())
            return
        if self._state in ("starting", "handshake"):
            self._unavailable(f"starting the sandbox failed: {failure.getErrorMessage()}")

    def _spawn(self, prepared: Prepared, bwrap: str, rsync: str) -> None:
        self._pending = None
        try:
            self._spawn_with(prepared.runtime, prepared.root_fd, bwrap, rsync)
        finally:
            prepared.close()

    def _spawn_with(self, runtime: Runtime, root_fd: int | None, bwrap: str, rsync: str) -> None:
        grant = self._grant
        if self._state != "starting" or grant is None:
            return
        as_root = runs_as_root(self._args is not None and self._args.sender)
        argv = sandbox_argv(
            bwrap,
            rsync,
            runtime,
            os.fsencode(grant.host_root),
            grant.sender_only,
            as_root=as_root,
            proc=self._transfer is not None,
            root_fd=None if root_fd is None else ROOT_FD,
        )
        log.info(
            "rsync conn={session_id} user={username} {mode} {paths}",
            session_id=self._ctx.session_id,
            username=self._ctx.username,
            mode="send" if self._args is not None and self._args.sender else "receive",
            paths=clip(b" ".join(self._args.paths) if self._args is not None else b""),
        )
        self._state = "handshake"
        try:
            process = self._ctx.reactor.spawnProcess(
                RsyncProcess(self, LOG_FD),
                os.fsencode(bwrap),
                argv,
                env={},
                path="/",
                childFDs={0: "w", 1: "r", 2: "r", CONFIG_FD: "w"}
                | ({LOG_FD: "r"} if self._transfer is not None else {})
                | ({ROOT_FD: root_fd} if root_fd is not None else {}),
            )
        except OSError as e:
            self._unavailable(f"spawning bwrap failed: {e}")
            return
        self._process = process
        process.registerProducer(ClientInput(self._io), True)
        process.writeToChild(
            CONFIG_FD,
            daemon_config(
                grant.sender_only,
                as_root=as_root,
                incoming_chmod=grant.incoming_chmod,
                transfer_log=self._transfer is not None,
            ),
        )
        process.closeChildFD(CONFIG_FD)

    # -- the opening: client (remote-shell flavour) <-> daemon (daemon flavour) -------
    def daemon_stdout(self, data: bytes) -> None:
        if self._state == "running":
            self._io.write(data)
            if not self._paused and self._io.pending_output() > _HIGH_WATER:
                self._paused = True
                if self._process is not None:
                    self._process.pauseProducing()
        elif self._state == "handshake" and self._opening is not None:
            self._apply(self._opening.feed_daemon(data))

    def daemon_log(self, data: bytes) -> None:
        """The daemon's log pipe: each transfer line goes to the recorder."""
        if self._log is not None:
            self._log.feed(data)

    def daemon_log_closed(self) -> None:
        if self._log is not None:
            self._log.close()

    def _transferred(self, op: str, name: bytes, size: int, count: int) -> None:
        # rsync names files from its own root: for a key rooted at DIR, below DIR.
        if self._transfer is not None:
            self._transfer(op, in_directory(self._grant, name) if name else name, size, count)

    def daemon_stderr(self, data: bytes) -> None:
        if self._state == "running":
            self._io.write_stderr(data)
        elif len(self._errlog) < _MAX_LOGGED:
            self._errlog += data[: _MAX_LOGGED - len(self._errlog)]

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            if self._state == "done":
                return
            if isinstance(event, ToDaemon):
                self._to_rsync(event.data)
            elif isinstance(event, ToClient):
                self._io.write(event.data)
            elif isinstance(event, DaemonSays):
                log.debug("rsync daemon says {line}", line=bytes(event.line))
            elif isinstance(event, Running):
                self._handoff(event)
            elif isinstance(event, ClientError):
                self._protocol_error(event.reason)
            else:
                self._unavailable(event.reason)

    def _handoff(self, running: Running) -> None:
        self._state = "running"
        self._opening = None
        if running.daemon_rest:
            self.daemon_stdout(running.daemon_rest)
        if running.client_rest:
            self._to_rsync(running.client_rest)
        if self._eof and self._process is not None:
            self._close_stdin(self._process)

    def _close_stdin(self, process: ProcessHandle) -> None:
        # Twisted does not finish closing a pipe that has a producer registered (a paused
        # one is resumed instead), so rsync would never see EOF: unregister it first.
        process.unregisterProducer()
        process.closeStdin()

    def _to_rsync(self, data: bytes) -> None:
        if self._process is not None:
            self._process.write(data)

    # -- endings ---------------------------------------------------------------------
    def process_ended(self, status: int) -> None:
        self._process = None
        stop, self._stop = self._stop, None
        if stop is not None:
            self._remove(stop.ended(status))
            return
        if self._state == "running":
            log.info(
                "rsync conn={session_id} exit status {status}",
                session_id=self._ctx.session_id,
                status=status,
            )
            self._finish(status)
        elif self._state != "done":
            self._unavailable(f"sandbox exited with status {status} before the transfer began")

    def _remove(self, temporaries: set[Temporary]) -> None:
        if not temporaries:
            return
        storage: Storage | None = self._ctx.storage
        if isinstance(storage, RulesStorage):
            # rsync's own temporaries, made under its grant: removing them is no "delete"
            storage = storage.inner
        if storage is None:
            log.warn("rsync conn={session_id} temporaries left", session_id=self._ctx.session_id)
            return
        temporaries = temporaries_in_directory(self._grant, temporaries)
        done = self._ctx.blocking.run(remove_temporaries, storage, temporaries)
        done.addCallback(removal_logger(self._ctx.session_id))
        done.addErrback(lambda f: log.failure("removing rsync temporaries", f))

    def _refuse(self, error: RsyncArgError) -> None:
        log.info(
            "rsync conn={session_id} user={user} key={key} refused option {option}: {reason}",
            session_id=self._ctx.session_id,
            user=self._ctx.username,
            key=self._ctx.key_fingerprint or "password",
            option=error.option,
            reason=getattr(error, "reason", "not allowed"),
        )
        message = f"sftpd: rsync option not allowed: {error.option}\n"
        if isinstance(error, RsyncRuleError):
            message = f"sftpd: rsync refused: {error.reason}\n"
        self._finish(1, message.encode("utf-8", "backslashreplace"))

    def _unavailable(self, reason: str) -> None:
        log.warn(
            "rsync is not available: conn={session_id} reason={reason}; stderr: {stderr}",
            session_id=self._ctx.session_id,
            reason=reason,
            stderr=bytes(self._errlog),
        )
        self._finish(1, UNAVAILABLE)

    def _early_eof(self) -> None:
        log.info(
            "rsync conn={session_id} end of input before the protocol version",
            session_id=self._ctx.session_id,
        )
        self._finish(RERR_STREAMIO, EARLY_EOF)

    def _protocol_error(self, reason: str) -> None:
        log.info("rsync conn={session_id} {reason}", session_id=self._ctx.session_id, reason=reason)
        self._finish(1, b"sftpd: rsync protocol error\n")

    def _finish(self, status: int, message: bytes = b"") -> None:
        if self._state == "done":
            return
        self._state = "done"
        if self._pending is not None:
            self._pending.cancel()
        self._kill()
        if message:
            self._io.write_stderr(message)
        self._io.exit(status)

    def _kill(self) -> None:
        # bwrap's PID namespace and --die-with-parent take everything inside down with it.
        if self._process is not None:
            try:
                self._process.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            self._process = None
