"""The SSH session channel: routes sftp/exec requests to apps, refuses shells, buffers output."""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.conch.ssh import channel, connection
from twisted.conch.ssh.common import getNS
from twisted.logger import Logger

from sftpd.apps.contract import ChannelApp, SessionContext
from sftpd.apps.dispatch import make_exec_app
from sftpd.apps.sftp.protocol import CHANNEL_MAX_PACKET, SftpApp, input_guard
from sftpd.log import conn_fields
from sftpd.ssh.window import ReceiveWindow, WindowBudget, WindowPolicy

SFTP_ONLY = b"This service allows SFTP connections only.\r\n"
# The client may have this much in flight towards us at first; sized so 64 outstanding
# 32 KiB writes (OpenSSH's default) never wait for a window adjust. It grows from there
# on long round trips (ssh/window.py), up to the configured max_window.
LOCAL_WINDOW = 4 * 1024 * 1024
LOCAL_MAX_PACKET = CHANNEL_MAX_PACKET  # 256 KiB; the sftp app's input guard counts it

log = Logger(namespace="sftpd.ssh.channel")

AppFactory = Callable[[SessionContext, "SessionChannel"], ChannelApp]


def _sftp_app(ctx: SessionContext, io: SessionChannel) -> ChannelApp:
    # The input guard scales with this channel's window (the same for exec sftp-server).
    app: ChannelApp = SftpApp(ctx, io, max_buffered_input=input_guard(io))
    return app


def _exec_app(command: bytes, rsync_runtimes: Any) -> AppFactory:
    def make(ctx: SessionContext, io: SessionChannel) -> ChannelApp:
        app: ChannelApp = make_exec_app(command, ctx, io, rsync_runtimes=rsync_runtimes)
        return app

    return make


class SessionChannel(channel.SSHChannel):  # type: ignore[misc]
    """One 'session' channel. Implements ChannelIO for the app it runs (one app at most)."""

    name = b"session"

    def __init__(
        self,
        ctx: SessionContext,
        *,
        clock: Any,
        on_closed: Callable[[SessionChannel], None],
        rsync_runtimes: Any = None,
        window: WindowPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        """``rsync_runtimes``: the server's rsync_sandbox.RuntimeCache, shared by sessions;
        ``window``: how far the receive window may grow (None: it stays at LOCAL_WINDOW)."""
        policy = window or WindowPolicy(LOCAL_WINDOW, WindowBudget(0))
        initial = min(LOCAL_WINDOW, policy.maximum)
        super().__init__(localWindow=initial, localMaxPacket=LOCAL_MAX_PACKET, **kwargs)
        self._rwin = ReceiveWindow(policy, clock, initial)
        self.window_maximum = max(initial, policy.maximum)
        self._ctx = ctx
        self._clock = clock
        self._on_closed = on_closed
        self._rsync_runtimes = rsync_runtimes
        self._app: ChannelApp | None = None
        self._out: deque[tuple[int, bytes | memoryview]] = deque()
        self._pending = 0
        self._holding = False  # output held until the request's reply is sent
        self._exit_status: int | None = None
        self._finished = False
        self._started = time.monotonic()
        self.kind = "session"
        self.bytes_in = 0
        self.bytes_out = 0
        self.reading_paused = False  # read by Connection.adjustWindow

    # ---- requests ---------------------------------------------------------------------
    def request_subsystem(self, data: bytes) -> int:
        name = bytes(getNS(data)[0])
        if self._app is not None or name != b"sftp" or not self._ctx.allow_sftp:
            log.info(
                "refused subsystem: conn={conn} peer={peer} user={user} name={name}",
                name=name,
                user=self._ctx.username,
                **self._conn_fields(),
            )
            return 0
        self.kind = "sftp"
        return self._start(_sftp_app)

    def request_exec(self, data: bytes) -> int:
        if self._app is not None:
            return 0
        command = bytes(getNS(data)[0])
        self.kind = "exec"
        log.info(
            "exec: conn={conn} peer={peer} user={user} command={command}",
            command=command,
            user=self._ctx.username,
            event="exec",
            **self._conn_fields(),
        )
        return self._start(_exec_app(command, self._rsync_runtimes))

    def request_shell(self, data: bytes) -> int:
        if self._app is not None:
            return 0
        self.kind = "shell"
        self._holding = True
        self.write_stderr(SFTP_ONLY)
        self.exit(1)
        self._release_soon()
        return 1

    # pty, x11, agent forwarding, env, signals: refused (Conch answers 0 for unknown names).
    def request_pty_req(self, data: bytes) -> int:
        return 0

    def request_x11_req(self, data: bytes) -> int:
        return 0

    def request_env(self, data: bytes) -> int:
        return 0

    def _start(self, factory: AppFactory) -> int:
        ctx = replace(
            self._ctx,
            client_version=self._client_version(),
            session_id=self._conn_fields()["conn"],  # the id in the connection's log lines
        )
        self._holding = True
        try:
            self._app = factory(ctx, self)
        except Exception:
            log.failure("could not start {kind}", kind=self.kind)
            self._holding = False
            self._out.clear()
            self._pending = 0
            return 0
        self._release_soon()
        return 1

    def _conn_fields(self) -> dict[str, str]:
        return conn_fields(getattr(self.conn, "transport", None))

    def _client_version(self) -> bytes:
        transport = getattr(self.conn, "transport", None)
        return bytes(getattr(transport, "otherVersionString", b"") or b"")

    def _release_soon(self) -> None:
        # Conch sends CHANNEL_SUCCESS right after the request handler returns; anything the
        # app wrote (or an exit) while starting goes out after it, on the next turn.
        self._clock.callLater(0, self._release)

    def _release(self) -> None:
        self._holding = False
        self._flush()

    # ---- ChannelIO --------------------------------------------------------------------
    # Replaces Conch's SSHChannel.write and addWindowBytes (no super()): Conch buffers
    # stdout and stderr apart (self.buf, self.extBuf) and copies; ours is one ordered queue,
    # held until the request's reply, sent without copies. Conch's buffers stay empty.
    def write(self, data: bytes | memoryview) -> None:
        self._queue(0, data)

    def write_parts(self, head: bytes, body: bytes | memoryview) -> None:
        step = self.remoteMaxPacket
        cut = step - len(head)
        if len(body) <= cut or cut <= 0:
            self._queue(0, head + body)
            return
        view = memoryview(body)
        # the first packet carries the head and the start of the body, so every later
        # packet is a full-size slice of the body, sent without being copied first
        self._queue(0, head + view[:cut])
        self._queue(0, view[cut:])

    def write_stderr(self, data: bytes) -> None:
        self._queue(connection.EXTENDED_DATA_STDERR, data)

    def pending_output(self) -> int:
        # What waits for the peer's window, plus what the socket has not taken: a client
        # with a huge window that stops reading must stop the app as well.
        conn: Any = self.conn
        backlog = getattr(conn, "output_backlog", None)
        return self._pending + (backlog() if backlog is not None else 0)

    def transport_drained(self) -> None:
        """The connection's socket took everything buffered (called by Connection)."""
        if self._app is not None and not self._finished:
            self._app.output_drained()

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self._rwin.paused()
        self.reading_paused = True

    def resume_reading(self) -> None:
        if not self.reading_paused:
            return
        self.reading_paused = False
        self._rwin.resumed(self.localWindowLeft)
        if self._rwin.size != self.localWindowSize:
            self.localWindowSize = self._rwin.size
            self._log_window()
        gap = self.localWindowSize - self.localWindowLeft
        if gap > 0 and not self.localClosed:
            conn: Any = self.conn
            conn.adjustWindow(self, gap)

    def exit(self, status: int) -> None:
        if self._exit_status is not None or self._finished:
            return
        self._exit_status = status
        if not self._out and not self._holding:
            self._finish()

    # ---- output path ------------------------------------------------------------------
    def _queue(self, ext: int, data: bytes | memoryview) -> None:
        size = len(data)
        if self._finished or self.localClosed or not size:
            return
        self.bytes_out += size
        if self._out or self._holding or self.remoteWindowLeft <= 0:
            self._out.append((ext, data))
            self._pending += size
            return
        if not ext and size <= self.remoteWindowLeft and size <= self.remoteMaxPacket:
            self.remoteWindowLeft -= size  # the usual case: one packet, sent now
            conn: Any = self.conn
            conn.sendData(self, data)
            return
        rest = self._send(ext, data)
        if rest is not None:
            self._out.append((ext, rest))
            self._pending += len(rest)

    def _send(self, ext: int, data: bytes | memoryview) -> bytes | memoryview | None:
        """Send what the peer's window allows; return the unsent tail (or None)."""
        size = len(data)
        n = min(size, self.remoteWindowLeft)
        step = max(1, self.remoteMaxPacket)
        view = memoryview(data) if n < size or n > step else data
        conn: Any = self.conn
        for off in range(0, n, step):
            chunk = view[off : min(off + step, n)] if view is not data else data
            if ext:
                conn.sendExtendedData(self, ext, bytes(chunk))
            else:
                conn.sendData(self, chunk)
        self.remoteWindowLeft -= n
        return view[n:] if n < size else None

    def _flush(self) -> None:
        if self._holding:
            return
        had = bool(self._out)
        while self._out and self.remoteWindowLeft > 0:
            ext, data = self._out.popleft()
            self._pending -= len(data)
            rest = self._send(ext, data)
            if rest is not None:
                self._out.appendleft((ext, rest))
                self._pending += len(rest)
                break
        if self._out:
            return
        if had and self._app is not None:
            self._app.output_drained()
        if self._exit_status is not None and not self._finished:
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        if self.localClosed:
            return
        status = self._exit_status if self._exit_status is not None else 0
        conn: Any = self.conn
        conn.sendRequest(self, b"exit-status", struct.pack(">L", status & 0xFFFFFFFF))
        conn.sendEOF(self)
        conn.sendClose(self)

    # Called by Conch's ssh_CHANNEL_WINDOW_ADJUST; see write() for why not Conch's.
    def addWindowBytes(self, data: int) -> None:
        self.remoteWindowLeft += data
        self._flush()

    # ---- input and lifecycle ----------------------------------------------------------
    def window_used(self, size: int) -> None:
        """Connection took ``size`` bytes of CHANNEL_DATA off the window: top it up (each
        eighth, unless reading is paused), growing it when the round trip calls for it."""
        rwin = self._rwin
        before = rwin.size
        add = rwin.used(size, self.localWindowLeft, self.reading_paused)
        conn: Any = self.conn
        if rwin.size != before:
            self.localWindowSize = rwin.size
            self._log_window()
            if rwin.size > before:
                grow = getattr(conn.transport, "size_receive_buffer", None)
                if grow is not None:
                    grow(rwin.size)
        if add:
            conn.adjustWindow(self, add)

    def _log_window(self) -> None:
        size, rtt = self.window_state()
        log.debug(
            "window: conn={conn} size={size} rtt_ms={rtt_ms:.1f} received={received}",
            size=size,
            rtt_ms=rtt * 1000,
            received=self._rwin.received,
            **self._conn_fields(),
        )

    def window_state(self) -> tuple[int, float]:
        """The window the client is topped up to and the round trip measured (seconds)."""
        return self._rwin.size, self._rwin.rtt

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self._app is not None:
            self._app.data_received(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        pass  # a client's stderr means nothing to us

    def eofReceived(self) -> None:
        if self._app is not None:
            self._app.eof_received()

    def closeReceived(self) -> None:
        self._out.clear()
        self._pending = 0
        self._finished = True
        conn: Any = self.conn
        conn.sendClose(self)

    def closed(self) -> None:
        self._rwin.close()
        app, self._app = self._app, None
        self._out.clear()
        self._pending = 0
        if app is not None:
            try:
                app.connection_lost()
            except Exception:
                log.failure("error while closing {kind}", kind=self.kind)
            # An app whose files are still being closed (SFTP's handles go to a worker)
            # says so: the avatar's logout waits for it before it closes the storage, or an
            # atomic upload's temporary could not be removed through a closed jail.
            closing = getattr(app, "closing", None)
            pending = getattr(self.avatar, "pending", None)
            if closing is not None and pending is not None:
                pending.append(closing)
        log.info(
            "session closed: conn={conn} peer={peer} user={user} kind={kind} "
            "bytes_in={bytes_in} bytes_out={bytes_out} duration={duration:.3f} "
            "window={window} rtt_ms={rtt_ms:.1f}",
            user=self._ctx.username,
            kind=self.kind,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=time.monotonic() - self._started,
            window=self._rwin.size,
            rtt_ms=self._rwin.rtt * 1000 if self._rwin.rtt != float("inf") else -1.0,
            event="session_close",
            **self._conn_fields(),
        )
        self._on_closed(self)
