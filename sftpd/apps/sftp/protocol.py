"""Thin glue for the sftp subsystem: channel bytes -> framer -> handler -> channel."""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any

from twisted.logger import Logger

from sftpd.apps.contract import ChannelIO, SessionContext
from sftpd.apps.sftp import messages as m
from sftpd.apps.sftp.codec import (
    Framer,
    Packet,
    decode_request,
    encode_response,
    encode_response_parts,
)
from sftpd.apps.sftp.constants import PacketType
from sftpd.apps.sftp.handler import READ_CLAMP, SftpHandler
from sftpd.errors import FramingError

log = Logger(namespace="sftpd.apps.sftp")

# Stop dispatching while this much of our output waits for the client's window.
MAX_PENDING_OUTPUT = 4 * 1024 * 1024
# At most this many READ/WRITE requests being served at once ...
MAX_IN_FLIGHT = 128
# ... carrying at most this many bytes (WRITE data held, READ data to come): replies wait
# in order, so a slow first READ must not let 128 full-size replies pile up behind it.
MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024
# A reply ready to send: (header, payload); only DATA replies have a payload.
_Reply = tuple[bytes, m.Payload]
# Only these may run concurrently with each other; every other request is a barrier that
# runs alone, after everything before it, as OpenSSH's sequential sftp-server would.
_CONCURRENT = (m.Read, m.Write)
_PACKET_TYPES = frozenset(int(t) for t in PacketType)
# Received but not yet dispatched input beyond this stops granting the client window
# (so it cannot send more than its window); below the low mark, the window reopens.
PAUSE_INPUT_AT = 1024 * 1024
RESUME_INPUT_AT = 256 * 1024
# Beyond this the client is ignoring the window: the session is closed.
MAX_BUFFERED_INPUT = 16 * 1024 * 1024
# One pass over the queue dispatches requests for at most about this many bytes, then
# yields a reactor turn to other sessions. READs answered inline (from the page cache)
# finish at once, so the in-flight limits never stop a pipelining client's burst.
MAX_BYTES_PER_TURN = 2 * 1024 * 1024


class SftpApp:
    """One SFTP session on a channel (implements ChannelApp).

    READ and WRITE on one handle keep their order where it matters: a WRITE waits until
    nothing else is in flight on its handle, and nothing on that handle starts until the
    WRITE is answered (READs on a handle may run together; other handles are independent).
    Requests are dispatched in arrival order and **replies are written in that same
    order** (OpenSSH's client truncates an in-place download at the first reordered READ
    reply; paramiko matches pipelined WRITE acks by position). READ and WRITE requests are
    served concurrently; any other request waits until those before it are answered, and
    nothing after it starts until it is. While the channel holds more than
    ``max_pending_output`` unsent bytes, or ``max_in_flight`` requests (or
    ``max_in_flight_bytes`` of READ/WRITE data) are being served, further packets stay
    queued (undecoded) until ``output_drained`` or a reply frees room; a client that keeps
    sending past ``max_buffered_input`` queued bytes is disconnected.
    """

    def __init__(
        self,
        ctx: SessionContext,
        io: ChannelIO,
        *,
        handler: SftpHandler | None = None,
        max_pending_output: int = MAX_PENDING_OUTPUT,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_in_flight_bytes: int = MAX_IN_FLIGHT_BYTES,
        max_buffered_input: int = MAX_BUFFERED_INPUT,
    ) -> None:
        self._ctx = ctx
        self._io = io
        self._handler = handler if handler is not None else SftpHandler(ctx)
        self._max_pending_output = max_pending_output
        self._max_in_flight = max_in_flight
        self._max_in_flight_bytes = max_in_flight_bytes
        self._max_buffered_input = max_buffered_input
        self._framer = Framer()
        self._queue: deque[Packet] = deque()
        # one slot per dispatched request, in arrival order: None until its reply is ready
        self._slots: deque[list[_Reply | None]] = deque()
        self._barrier = False  # a non-concurrent request is in flight
        # handle -> [READs, WRITEs] in flight on it: overlapping I/O on one handle must not
        # be reordered (a WRITE runs alone on its handle; READs may share it)
        self._on_handle: dict[bytes, list[int]] = {}
        self._held = False  # the head request waits for its handle
        self._input_paused = False
        self._queued_bytes = 0
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._pumping = False
        self._resume: Any = None  # a pump on the next reactor turn, when one is due
        self._closed = False
        self._eof = False
        self._bad_messages = 0
        self._initialized = False  # SSH_FXP_INIT seen

    @property
    def handler(self) -> SftpHandler:
        return self._handler

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def queued(self) -> int:
        """Received bytes not yet dispatched (queued packets plus a partial one)."""
        return self._queued_bytes + self._framer.buffered()

    # ---- ChannelApp ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            packets = self._framer.feed(data)
        except FramingError as exc:
            self._abort("framing error: {error}", error=str(exc))
            return
        if packets:
            self._queue.extend(packets)
            self._queued_bytes += sum(map(len, packets))
        queued = self._queued_bytes + self._framer.buffered()
        if queued > PAUSE_INPUT_AT and not self._input_paused:
            self._input_paused = True
            self._io.pause_reading()
        if queued > self._max_buffered_input:
            self._abort("client sent {size} bytes without reading replies", size=queued)
            return
        self._pump()

    def eof_received(self) -> None:
        self._eof = True
        self._maybe_finish()

    def output_drained(self) -> None:
        self._pump()

    def connection_lost(self) -> None:
        self._closed = True
        self._slots.clear()
        self._queue.clear()
        self._queued_bytes = 0
        abandon = getattr(self._ctx.storage, "abandon", None)  # an events recorder's
        if abandon is not None:
            abandon()  # what the client left open is incomplete, not uploaded
        self.closing = self._handler.close_all()  # the channel hands this to the logout

    # ---- dispatch --------------------------------------------------------------------
    def _pump(self) -> None:
        if self._pumping:
            return  # a reply completed synchronously inside the loop below
        self._pumping = True
        clock = self._ctx.reactor
        served = 0
        try:
            queue = self._queue
            while queue and not self._closed:
                if self._in_flight >= self._max_in_flight or self._barrier or self._held:
                    break
                if self._in_flight and self._in_flight_bytes >= self._max_in_flight_bytes:
                    break
                if self._io.pending_output() > self._max_pending_output:
                    break
                if served >= MAX_BYTES_PER_TURN and clock is not None:
                    if self._resume is None:
                        self._resume = clock.callLater(0, self._resume_pump)
                    break
                packet = queue.popleft()
                self._queued_bytes -= len(packet)
                served += self._dispatch(packet)
        finally:
            self._pumping = False
        if self._input_paused and not self._closed and self.queued() < RESUME_INPUT_AT:
            self._input_paused = False
            self._io.resume_reading()
        if self._eof:
            self._maybe_finish()

    def _resume_pump(self) -> None:
        self._resume = None
        self._pump()

    def _dispatch(self, packet: Packet) -> int:
        """Decode and start one request; returns the bytes it reads or writes."""
        if not self._initialized:
            kind = packet[0] if len(packet) else None
            if kind != PacketType.INIT:
                # OpenSSH's sftp-server treats any request before INIT as fatal: the
                # client has not agreed on a version, so nothing it sends is meaningful.
                self._abort("{request} request before SSH_FXP_INIT", request=_type_name(kind))
                return 0
        try:
            request = decode_request(packet)
        except m.RequestDecodeError as exc:
            if exc.request_id is None:
                self._abort("undecodable packet without a request id: {error}", error=str(exc))
                return 0
            self._log_bad_message(exc)
            self._slots.append(
                [(encode_response(SftpHandler.bad_message(exc.request_id, exc)), b"")]
            )
            self._flush()
            return 0
        if isinstance(request, m.Init):
            self._initialized = True  # a second INIT is answered again, as OpenSSH does
        if not isinstance(request, _CONCURRENT):
            if self._in_flight:
                # put it back; it is dispatched once everything before it is answered
                self._queue.appendleft(packet)
                self._queued_bytes += len(packet)
                self._barrier = True
                return 0
            self._barrier = True
        io_handle: bytes | None = None
        kind = 0
        if isinstance(request, (m.Read, m.Write)):
            io_handle = request.handle
            kind = 1 if isinstance(request, m.Write) else 0
            busy = self._on_handle.get(io_handle)
            if busy is not None and (busy[1] or (kind and busy[0])):
                self._queue.appendleft(packet)
                self._queued_bytes += len(packet)
                self._held = True
                return 0
            if busy is None:
                busy = self._on_handle[io_handle] = [0, 0]
            busy[kind] += 1
        if isinstance(request, m.Read):
            cost = min(request.length, READ_CLAMP)
        elif isinstance(request, m.Write):
            cost = len(request.data)
        else:
            cost = 0
        slot: list[_Reply | None] = [None]
        self._slots.append(slot)
        self._in_flight += 1
        self._in_flight_bytes += cost

        def reply(response: m.Response) -> None:
            self._reply(response, slot, cost, io_handle, kind)

        self._handler.submit(request, reply)
        return cost

    def _reply(
        self,
        response: m.Response,
        slot: list[_Reply | None],
        cost: int,
        io_handle: bytes | None = None,
        kind: int = 0,
    ) -> None:
        self._in_flight -= 1
        self._in_flight_bytes -= cost
        if io_handle is not None:
            busy = self._on_handle[io_handle]
            busy[kind] -= 1
            if not busy[0] and not busy[1]:
                del self._on_handle[io_handle]
            self._held = False
        if self._in_flight == 0:
            self._barrier = False
        if not self._closed:
            slot[0] = encode_response_parts(response)
            self._flush()
            if self._queue or self._eof or self._input_paused:
                self._pump()

    def _flush(self) -> None:
        """Write every reply at the head of the order that is ready."""
        slots, io = self._slots, self._io
        while slots:
            parts = slots[0][0]
            if parts is None:
                return
            slots.popleft()
            head, body = parts
            if len(body):
                io.write_parts(head, body)  # a DATA reply: its payload is not copied here
            else:
                io.write(head)

    def _log_bad_message(self, exc: m.RequestDecodeError) -> None:
        """The first BAD_MESSAGE of a session at warn (a client bug worth seeing), the rest
        at debug: a client cannot flood the log with them. No paths: only the request
        type, id and what was wrong with its encoding."""
        emit = log.debug if self._bad_messages else log.warn
        self._bad_messages += 1
        emit(
            "answered BAD_MESSAGE to {request} request {request_id} of {user} ({session}): "
            "{error}{more}",
            request=_type_name(exc.packet_type),
            request_id=exc.request_id,
            user=self._ctx.username,
            session=self._ctx.session_id,
            error=str(exc),
            more="" if self._bad_messages > 1 else " (further ones this session at debug)",
        )

    def _maybe_finish(self) -> None:
        if self._eof and not self._closed and not self._queue and not self._in_flight:
            self._closed = True
            self._io.exit(0)
            self._handler.close_all()

    def _abort(self, reason: str, **fields: object) -> None:
        log.warn(
            "closing SFTP session of {user} ({session}): " + reason,
            user=self._ctx.username,
            session=self._ctx.session_id,
            **fields,
        )
        self._closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._io.exit(1)
        self._handler.close_all()


def _type_name(kind: int | None) -> str:
    if kind is None:
        return "empty"
    return PacketType(kind).name if kind in _PACKET_TYPES else f"type {kind}"


# The largest CHANNEL_DATA the session channel accepts (ssh/channel.LOCAL_MAX_PACKET).
CHANNEL_MAX_PACKET = 256 * 1024


def input_guard(io: ChannelIO) -> int:
    """The unprocessed input past which the app drops its client: what it holds when it
    pauses, plus all the window the client may still have been granted (the channel's
    ``window_maximum``, which grows with the adaptive window; none on a channel without
    one), plus a packet. An honest client never gets there; the connection closes the
    channel of one that sends past its window before that. The same for the subsystem
    and for ``exec sftp-server``."""
    window = int(getattr(io, "window_maximum", 0))
    return max(MAX_BUFFERED_INPUT, PAUSE_INPUT_AT + window + 2 * CHANNEL_MAX_PACKET)


def make_sftp_app(ctx: SessionContext, io: ChannelIO) -> SftpApp:
    """The app the session channel runs for ``exec sftp-server`` (and internal-sftp)."""
    view = getattr(ctx.storage, "for_protocol", None)  # an events recorder: one per app
    if view is not None:
        ctx = replace(ctx, storage=view("sftp"))
    return SftpApp(ctx, io, max_buffered_input=input_guard(io))
