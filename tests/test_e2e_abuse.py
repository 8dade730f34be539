"""End-to-end abuse of the SFTP subsystem with raw bytes over a real SSH channel: huge
declared lengths, huge READs, thousands of OPENs, a client that stops reading, garbage and
unknown packet types. The server must stay alive, bounded in memory, and keep serving a
second client."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Env, wait_for

paramiko = pytest.importorskip("paramiko")
pytestmark = pytest.mark.e2e

INIT, VERSION, OPEN, CLOSE, READ, WRITE, FSTAT = 1, 2, 3, 4, 5, 6, 8
REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME = 13, 14, 15, 16, 17, 18
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED, EXTENDED_REPLY = 101, 102, 103, 104, 105, 200, 201
FX_OK, FX_EOF, FX_FAILURE, FX_BAD_MESSAGE, FX_OP_UNSUPPORTED = 0, 1, 4, 5, 8
FXF_READ, FXF_WRITE, FXF_CREAT, FXF_EXCL = 0x01, 0x02, 0x08, 0x20
READ_MAX = 255 * 1024
MAX_PACKET = 256 * 1024
MIB = 1024 * 1024


def _string(value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(data)) + data


def _packet(ptype: int, rid: int, body: bytes) -> bytes:
    """One framed request: uint32 length, byte type, uint32 id, body."""
    return struct.pack(">IBI", len(body) + 5, ptype, rid) + body


class RawSftp:
    """An SFTP subsystem channel driven byte by byte (no client library in the way)."""

    def __init__(
        self, env: Env, transport: Any | None = None, *, window: int | None = None
    ) -> None:
        if transport is None:
            transport = paramiko.Transport(("127.0.0.1", env.port))
            transport.connect(
                username="alice",
                pkey=paramiko.Ed25519Key.from_private_key_file(str(env.key_path)),
            )
        self.transport = transport
        self.chan = transport.open_session(window_size=window)
        self.chan.settimeout(60)  # deadlock guard, never a timing assertion
        self.chan.invoke_subsystem("sftp")
        self._buf = bytearray()

    def close(self) -> None:
        self.chan.close()
        self.transport.close()

    # ---- bytes ----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.chan.sendall(data)

    def send_packet(self, ptype: int, body: bytes) -> None:
        self.send(struct.pack(">IB", len(body) + 1, ptype) + body)

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = self.chan.recv(1024 * 1024)
            if not chunk:
                return False
            self._buf += chunk
        return True

    def recv_packet(self) -> tuple[int, bytes] | None:
        """(type, body) of the next packet; None when the channel reached EOF."""
        if not self._fill(4):
            return None
        (length,) = struct.unpack(">I", self._buf[:4])
        assert 1 <= length <= MAX_PACKET + 1024, length
        if not self._fill(4 + length):
            return None
        packet = bytes(self._buf[4 : 4 + length])
        del self._buf[: 4 + length]
        return packet[0], packet[1:]

    def expect(self) -> tuple[int, bytes]:
        packet = self.recv_packet()
        assert packet is not None, "the channel closed"
        return packet

    def at_eof(self) -> bool:
        """Whether the server closed the channel (after any bytes still buffered)."""
        while True:
            chunk = self.chan.recv(1024 * 1024)
            if not chunk:
                return True
            self._buf += chunk

    # ---- requests -------------------------------------------------------------------
    def init(self) -> None:
        self.send_packet(INIT, struct.pack(">I", 3))
        ptype, body = self.expect()
        assert ptype == VERSION
        assert struct.unpack(">I", body[:4]) == (3,)

    def request(self, ptype: int, rid: int, body: bytes) -> None:
        self.send(_packet(ptype, rid, body))

    def open_read(self, rid: int, path: str) -> None:
        self.request(OPEN, rid, _string(path) + struct.pack(">II", FXF_READ, 0))

    def read(self, rid: int, handle: bytes, offset: int, length: int) -> None:
        self.request(READ, rid, _string(handle) + struct.pack(">QI", offset, length))

    def call(self, ptype: int, rid: int, body: bytes) -> tuple[int, bytes]:
        """Send one request and return its reply (type, body starting with the id)."""
        self.request(ptype, rid, body)
        reply_type, reply = self.expect()
        assert struct.unpack(">I", reply[:4]) == (rid,)
        return reply_type, reply

    def open_handle(self, rid: int, path: str) -> bytes:
        self.open_read(rid, path)
        ptype, body = self.expect()
        assert ptype == HANDLE, _status(body)
        assert struct.unpack(">I", body[:4]) == (rid,)
        return _unstring(body[4:])[0]


def _unstring(data: bytes) -> tuple[bytes, bytes]:
    (n,) = struct.unpack(">I", data[:4])
    return data[4 : 4 + n], data[4 + n :]


def _status(body: bytes) -> tuple[int, int, str]:
    """(request id, code, message) of a STATUS body."""
    rid, code = struct.unpack(">II", body[:8])
    message, _ = _unstring(body[8:])
    return rid, code, message.decode()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def raw(server: Env) -> Iterator[RawSftp]:
    client = RawSftp(server)
    try:
        client.init()
        yield client
    finally:
        client.close()


def _second_client_is_served(env: Env, name: str) -> None:
    """A fresh connection uploads and downloads exact bytes while/after the abuse."""
    payload = os.urandom(300_000)
    transport = paramiko.Transport(("127.0.0.1", env.port))
    try:
        transport.connect(
            username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(str(env.key_path))
        )
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        sftp.get_channel().settimeout(60)
        with sftp.open(name, "w") as f:
            f.write(payload)
        with sftp.open(name, "r") as f:
            assert f.read() == payload
        sftp.close()
    finally:
        transport.close()
    assert (env.alice.root / name).read_bytes() == payload
    assert env.server.proc.poll() is None


# ---- framing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length", [0xFFFFFFFF, 0x7FFFFFFF, MAX_PACKET + 1024 + 1], ids=["4GiB", "2GiB", "limit+1"]
)
def test_huge_declared_length_closes_the_channel_only(server: Env, length: int) -> None:
    pid = server.server.proc.pid
    rss_before = _rss_kib(pid)
    client = RawSftp(server)
    try:
        client.init()
        client.send(struct.pack(">IB", length, READ) + b"\0" * 4096)
        assert client.at_eof()
        assert client.chan.recv_exit_status() != 0
        # The connection survives: another channel on it is served.
        other = RawSftp(server, transport=client.transport)
        other.init()
        ptype, body = other.call(REALPATH, 7, _string("."))
        assert ptype == NAME
        assert _unstring(body[8:])[0] == b"/"
    finally:
        client.close()
    assert _rss_kib(pid) - rss_before < 100 * 1024
    _second_client_is_served(server, f"abuse-after-{length:x}.bin")


def test_http_garbage_closes_the_channel(server: Env) -> None:
    client = RawSftp(server)
    try:
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "GET " is a 1.2 GB length
        assert client.at_eof()
    finally:
        client.close()
    _second_client_is_served(server, "abuse-after-http.bin")


def test_undecodable_packet_without_an_id_closes_the_channel(server: Env) -> None:
    client = RawSftp(server)
    try:
        client.init()
        client.send(struct.pack(">IB", 1, READ))  # a READ with no room for its id
        assert client.at_eof()
    finally:
        client.close()
    _second_client_is_served(server, "abuse-after-noid.bin")


def test_unknown_types_and_bad_messages_get_exactly_one_reply(server: Env, raw: RawSftp) -> None:
    (server.alice.root / "abuse-one.txt").write_bytes(b"one reply each\n")
    raw.request(0x99, 42, b"whatever follows \xff\x00")
    raw.request(0xFF, 43, b"")
    raw.request(EXTENDED, 44, _string("no-such-extension@example.com") + b"junk")
    raw.request(OPEN, 45, struct.pack(">I", 1000) + b"short")  # string runs past the end
    raw.request(REALPATH, 46, _string(".") + b"trailing garbage")
    raw.request(READ, 47, _string(b"no-such-handle") + struct.pack(">QI", 0, 10))
    raw.request(CLOSE, 48, _string(b"no-such-handle"))
    raw.request(REALPATH, 49, _string("/abuse-one.txt"))
    replies = [raw.expect() for _ in range(8)]
    by_id = {struct.unpack(">I", body[:4])[0]: (ptype, body) for ptype, body in replies}
    assert sorted(by_id) == list(range(42, 50))  # one reply per request, no more
    for rid in (42, 43, 44):
        assert by_id[rid][0] == STATUS
        assert _status(by_id[rid][1])[1] == FX_OP_UNSUPPORTED
    for rid in (45, 46):
        assert by_id[rid][0] == STATUS
        assert _status(by_id[rid][1])[1] == FX_BAD_MESSAGE
    for rid in (47, 48):
        assert by_id[rid][0] == STATUS
        assert _status(by_id[rid][1])[1:] == (FX_FAILURE, "invalid handle")
    assert by_id[49][0] == NAME
    assert _unstring(by_id[49][1][8:])[0] == b"/abuse-one.txt"
    # Nothing else is pending: the next request's reply is the next packet.
    ptype, body = raw.call(REALPATH, 50, _string("."))
    assert ptype == NAME


# ---- READ and handles -------------------------------------------------------------------


def test_read_of_0x7fffffff_bytes_is_clamped(server: Env, raw: RawSftp) -> None:
    payload = os.urandom(MIB)
    (server.alice.root / "abuse-read.bin").write_bytes(payload)
    handle = raw.open_handle(1, "/abuse-read.bin")
    raw.read(2, handle, 0, 0x7FFFFFFF)
    ptype, body = raw.expect()
    assert ptype == DATA
    data, rest = _unstring(body[4:])
    assert rest == b""
    assert 0 < len(data) <= MAX_PACKET
    assert len(data) == READ_MAX  # the advertised limits@openssh.com read length
    assert data == payload[:READ_MAX]
    raw.read(3, handle, MIB - 10, 0xFFFFFFFF)
    ptype, body = raw.expect()
    assert ptype == DATA and _unstring(body[4:])[0] == payload[-10:]
    raw.read(4, handle, MIB, 0x7FFFFFFF)
    ptype, body = raw.expect()
    assert ptype == STATUS and _status(body)[1] == FX_EOF
    raw.read(5, handle, 2**64 - 1, 0x7FFFFFFF)
    ptype, body = raw.expect()
    assert ptype == STATUS and _status(body)[1] in (FX_EOF, FX_FAILURE)
    ptype, body = raw.call(CLOSE, 6, _string(handle))
    assert ptype == STATUS and _status(body)[1] == FX_OK


def _open_many(raw: RawSftp, path: str, count: int, first_id: int) -> dict[int, tuple[int, bytes]]:
    replies: dict[int, tuple[int, bytes]] = {}
    batch = 500
    for start in range(0, count, batch):
        ids = range(first_id + start, first_id + min(start + batch, count))
        open_body = _string(path) + struct.pack(">II", FXF_READ, 0)
        raw.send(b"".join(_packet(OPEN, rid, open_body) for rid in ids))
        for _ in ids:
            ptype, body = raw.expect()
            replies[struct.unpack(">I", body[:4])[0]] = (ptype, body)
    return replies


def test_5000_opens_stop_at_the_handle_limit(server: Env, raw: RawSftp) -> None:
    (server.alice.root / "abuse-open.txt").write_bytes(b"opened\n")
    ptype, body = raw.call(EXTENDED, 1, _string("limits@openssh.com"))
    assert ptype == EXTENDED_REPLY
    limit = struct.unpack(">4Q", body[4:])[3]
    assert limit == 1024  # the default max_handles
    replies = _open_many(raw, "/abuse-open.txt", 5000, 100)
    assert sorted(replies) == list(range(100, 5100))
    handles = [_unstring(body[4:])[0] for ptype, body in replies.values() if ptype == HANDLE]
    refused = [body for ptype, body in replies.values() if ptype != HANDLE]
    assert len(handles) == limit
    assert len(set(handles)) == limit
    assert len(refused) == 5000 - limit
    for body in refused:
        assert _status(body)[1:] == (FX_FAILURE, "too many open handles")
    # Closing frees slots: one close, one more open; then everything closes.
    ptype, body = raw.call(CLOSE, 6000, _string(handles[0]))
    assert ptype == STATUS and _status(body)[1] == FX_OK
    extra = raw.open_handle(6001, "/abuse-open.txt")
    ptype, body = raw.call(READ, 6002, _string(extra) + struct.pack(">QI", 0, 100))
    assert ptype == DATA and _unstring(body[4:])[0] == b"opened\n"
    for i, handle in enumerate([*handles[1:], extra]):
        raw.request(CLOSE, 7000 + i, _string(handle))
    for _ in range(limit):
        ptype, body = raw.expect()
        assert ptype == STATUS and _status(body)[1] == FX_OK
    again = _open_many(raw, "/abuse-open.txt", limit, 9000)
    assert all(ptype == HANDLE for ptype, _ in again.values())
    _second_client_is_served(server, "abuse-after-opens.bin")


def test_configured_handle_limit(make_server: Any) -> None:
    env = make_server(tail="[sftp]\nmax_handles = 50")
    (env.alice.root).mkdir(parents=True, exist_ok=True)
    (env.alice.root / "f.txt").write_bytes(b"f")
    client = RawSftp(env)
    try:
        client.init()
        ptype, body = client.call(EXTENDED, 1, _string("limits@openssh.com"))
        assert struct.unpack(">4Q", body[4:]) == (MAX_PACKET, READ_MAX, READ_MAX, 50)
        replies = _open_many(client, "/f.txt", 60, 10)
        kinds = [replies[rid][0] for rid in range(10, 70)]
        assert kinds == [HANDLE] * 50 + [STATUS] * 10
    finally:
        client.close()


# ---- a client that stops reading ----------------------------------------------------------


def _reads_unread(raw: RawSftp, handle: bytes, count: int, pid: int, peak: int) -> int:
    """Send ``count`` READs of 255 KiB and read nothing for a few seconds; the peak of the
    server's RSS (KiB) meanwhile."""
    raw.send(
        b"".join(
            _packet(READ, 10 + i, _string(handle) + struct.pack(">QI", i * READ_MAX, READ_MAX))
            for i in range(count)
        )
    )
    for _ in range(30):
        time.sleep(0.1)
        peak = max(peak, _rss_kib(pid))
    return peak


def test_slow_reader_keeps_server_memory_bounded(server: Env, raw: RawSftp) -> None:
    """1,000 READs of 255 KiB (about 255 MB of replies) from a client that reads nothing
    for a while: the server buffers a bounded amount and serves a second client meanwhile;
    then every reply arrives, complete and in the right shape."""
    count = 1000
    sparse = server.alice.root / "abuse-sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(count * READ_MAX)  # reads cost no disk
    pid = server.server.proc.pid
    handle = raw.open_handle(1, "/abuse-sparse.bin")
    rss_before = _rss_kib(pid)
    peak = _reads_unread(raw, handle, count, pid, rss_before)
    _second_client_is_served(server, "abuse-during-slow.bin")
    for _ in range(10):
        time.sleep(0.1)
        peak = max(peak, _rss_kib(pid))
    assert peak - rss_before < 100 * 1024, f"server RSS grew by {(peak - rss_before) // 1024} MiB"

    seen = set()
    zeros = bytes(READ_MAX)
    for _ in range(count):
        ptype, reply = raw.expect()
        assert ptype == DATA
        rid = struct.unpack(">I", reply[:4])[0]
        data, rest = _unstring(reply[4:])
        assert data == zeros and rest == b""
        seen.add(rid)
    assert seen == set(range(10, 10 + count))
    ptype, reply = raw.call(CLOSE, 5000, _string(handle))
    assert ptype == STATUS and _status(reply)[1] == FX_OK
    sparse.unlink()


class _StallingRelay:
    """A TCP relay between a client and the server that can stop reading from the server:
    to the server, a client that stopped reading its socket (whatever its SSH window)."""

    def __init__(self, port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._server_port = port
        self.flowing = threading.Event()
        self.flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self._server_port))
        threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
        self._pump(upstream, client, self.flowing)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, gate: threading.Event | None) -> None:
        try:
            while True:
                if gate is not None:
                    gate.wait()
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def close(self) -> None:
        self.flowing.set()
        self._listener.close()


def test_a_client_that_stops_reading_its_socket_with_a_4_gib_window(server: Env) -> None:
    """Issue 11's attack as a real connection: a session window of 2^32-1, 1,000 READs of
    255 KiB, and the socket not read at all (the relay stops): the channel window never
    stops the server, so only the transport's own bound does; memory stays bounded, a
    second client is served, and every reply arrives once the client reads again."""
    count = 1000
    sparse = server.alice.root / "abuse-stalled.bin"
    with open(sparse, "wb") as f:
        f.truncate(count * READ_MAX)
    relay = _StallingRelay(server.port)
    transport = paramiko.Transport(("127.0.0.1", relay.port))
    transport.connect(
        username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(str(server.key_path))
    )
    raw = RawSftp(server, transport, window=2**32 - 1)
    try:
        raw.init()
        handle = raw.open_handle(1, "/abuse-stalled.bin")
        pid = server.server.proc.pid
        rss_before = _rss_kib(pid)
        relay.flowing.clear()
        peak = _reads_unread(raw, handle, count, pid, rss_before)
        _second_client_is_served(server, "abuse-during-stall.bin")
        peak = max(peak, _rss_kib(pid))
        assert peak - rss_before < 100 * 1024, (
            f"server RSS grew by {(peak - rss_before) // 1024} MiB"
        )
        relay.flowing.set()
        seen = set()
        for _ in range(count):
            ptype, reply = raw.expect()
            assert ptype == DATA
            seen.add(struct.unpack(">I", reply[:4])[0])
            data, rest = _unstring(reply[4:])
            assert len(data) == READ_MAX and data.count(0) == READ_MAX and rest == b""
        assert seen == set(range(10, 10 + count))
    finally:
        raw.close()
        relay.close()
        sparse.unlink()


def test_many_channels_on_one_connection_are_independent(server: Env) -> None:
    """A channel that floods and is closed does not disturb its neighbours."""
    first = RawSftp(server)
    try:
        first.init()
        neighbours = [RawSftp(server, transport=first.transport) for _ in range(3)]
        for n in neighbours:
            n.init()
        first.send(struct.pack(">IB", 0xFFFFFFFF, OPEN))
        assert first.at_eof()
        for i, n in enumerate(neighbours):
            ptype, body = n.call(REALPATH, 100 + i, _string("/a/../b"))
            assert ptype == NAME and _unstring(body[8:])[0] == b"/b"
    finally:
        first.close()


# ---- pipelining ---------------------------------------------------------------------------


def test_pipelined_replies_come_in_request_order(server: Env, raw: RawSftp) -> None:
    """OpenSSH's scp (in-place download) and paramiko's pipelined writes depend on replies
    arriving in request order: 300 pipelined READs of mixed sizes and offsets, with STAT and
    FSTAT between them, answer in exactly the order sent, each with the right bytes."""
    payload = os.urandom(3 * MIB)
    (server.alice.root / "abuse-order.bin").write_bytes(payload)
    handle = raw.open_handle(1, "/abuse-order.bin")
    plan = []
    data = []
    for i in range(300):
        rid = 100 + i
        if i % 50 == 25:
            data.append(_packet(STAT, rid, _string("/abuse-order.bin")))
            plan.append((rid, ATTRS, None))
        elif i % 50 == 40:
            data.append(_packet(FSTAT, rid, _string(handle)))
            plan.append((rid, ATTRS, None))
        else:
            offset = (i * 7919 * 131) % len(payload)
            length = [1, 4096, 32768, READ_MAX, 100_000][i % 5]
            data.append(_packet(READ, rid, _string(handle) + struct.pack(">QI", offset, length)))
            plan.append((rid, DATA, payload[offset : offset + length]))
    raw.send(b"".join(data))
    for rid, kind, expected in plan:
        ptype, body = raw.expect()
        assert (struct.unpack(">I", body[:4])[0], ptype) == (rid, kind)
        if expected is not None:
            assert _unstring(body[4:])[0] == expected


def test_pipelined_dependent_requests_keep_their_meaning(server: Env, raw: RawSftp) -> None:
    """Requests sent back to back without waiting act as if each waited for the one before
    (as OpenSSH's sequential sftp-server does)."""
    root = server.alice.root
    (root / "abuse-pipe-x").write_bytes(b"old")
    create = struct.pack(">II", FXF_WRITE | FXF_CREAT | FXF_EXCL, 0)
    raw.send(
        _packet(MKDIR, 1, _string("/abuse-pipe-d") + struct.pack(">I", 0))
        + _packet(OPEN, 2, _string("/abuse-pipe-d/f") + create)
        + _packet(REMOVE, 3, _string("/abuse-pipe-x"))
        + _packet(OPEN, 4, _string("/abuse-pipe-x") + create)
        + _packet(RENAME, 5, _string("/abuse-pipe-x") + _string("/abuse-pipe-d/x"))
        + _packet(RMDIR, 6, _string("/abuse-pipe-d"))
        + _packet(STAT, 7, _string("/abuse-pipe-d/x"))
        + _packet(REMOVE, 8, _string("/abuse-pipe-d/x"))
        + _packet(STAT, 9, _string("/abuse-pipe-d/x"))
    )
    replies = [raw.expect() for _ in range(9)]
    assert [struct.unpack(">I", body[:4])[0] for _, body in replies] == list(range(1, 10))
    kinds = [ptype for ptype, _ in replies]
    assert kinds == [STATUS, HANDLE, STATUS, HANDLE, STATUS, STATUS, ATTRS, STATUS, STATUS]
    codes = {i + 1: _status(body)[1] for i, (ptype, body) in enumerate(replies) if ptype == STATUS}
    assert codes == {1: FX_OK, 3: FX_OK, 5: FX_OK, 6: FX_FAILURE, 8: FX_OK, 9: 2}
    assert _status(replies[5][1])[2] == "Directory not empty"
    # f is still open: in the default atomic upload mode it is sftpd's temporary until CLOSE.
    (name,) = os.listdir(root / "abuse-pipe-d")
    assert name == "f" or name.startswith(".sftpd-upload.")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_handles_are_closed_when_the_client_vanishes(server: Env) -> None:
    """500 open handles and a dropped connection: the server's descriptors come back."""
    (server.alice.root / "abuse-vanish.txt").write_bytes(b"v")
    (server.alice.root / "abuse-vanish-dir").mkdir()
    pid = server.server.proc.pid
    baseline = _open_fds(pid)
    client = RawSftp(server)
    client.init()
    replies = _open_many(client, "/abuse-vanish.txt", 400, 1)
    client.send(
        b"".join(
            _packet(11, 1000 + i, _string("/abuse-vanish-dir"))  # OPENDIR
            for i in range(100)
        )
    )
    dir_replies = [client.expect() for _ in range(100)]
    assert all(ptype == HANDLE for ptype, _ in replies.values())
    assert all(ptype == HANDLE for ptype, _ in dir_replies)
    assert _open_fds(pid) >= 500  # every handle holds a descriptor
    client.transport.sock.close()  # no CLOSE, no channel close: the TCP connection drops
    client.transport.close()
    assert wait_for(lambda: _open_fds(pid) <= baseline + 2, timeout=30), (
        f"{_open_fds(pid)} fds open, {baseline} before"
    )
    _second_client_is_served(server, "abuse-after-vanish.bin")


def test_pipelined_overlapping_writes_and_reads_keep_their_order(server: Env, raw: RawSftp) -> None:
    flags = struct.pack(">II", FXF_READ | FXF_WRITE | FXF_CREAT, 0)
    ptype, body = raw.call(OPEN, 1, _string("/abuse-overlap.bin") + flags)
    assert ptype == HANDLE
    handle = _unstring(body[4:])[0]
    n = 3000
    packets = []
    for i in range(n):
        at = _string(handle) + struct.pack(">Q", i * 8)
        packets.append(_packet(WRITE, 10 + 3 * i, at + _string(b"AAAAAAAA")))
        packets.append(_packet(WRITE, 11 + 3 * i, at + _string(b"BBBBBBBB")))
        packets.append(_packet(READ, 12 + 3 * i, at + struct.pack(">I", 8)))
    raw.send(b"".join(packets))
    stale_reads = 0
    for i in range(3 * n):
        ptype, body = raw.expect()
        assert struct.unpack(">I", body[:4])[0] == 10 + i
        if i % 3 == 2:  # DATA, or EOF when the READ ran before the WRITE extended the file
            assert ptype in (DATA, STATUS)
            stale_reads += ptype != DATA or _unstring(body[4:])[0] != b"BBBBBBBB"
        else:
            assert ptype == STATUS and _status(body)[1] == FX_OK
    ptype, body = raw.call(CLOSE, 2, _string(handle))  # an atomic upload lands on CLOSE
    assert ptype == STATUS and _status(body)[1] == FX_OK
    data = (server.alice.root / "abuse-overlap.bin").read_bytes()
    lost_writes = sum(data[i * 8 : i * 8 + 8] != b"BBBBBBBB" for i in range(n))
    assert (stale_reads, lost_writes) == (0, 0)
