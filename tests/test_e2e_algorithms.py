"""Real clients, every cipher/MAC: OpenSSH against sftpd; asyncssh, paramiko in process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from sftpd.ssh.transport import ServerTransport
from tests.conftest import ServerFactory
from tests.support import Env, have
from tests.test_ssh_transport import make_server

pytestmark = pytest.mark.e2e
openssh = pytest.mark.skipif(
    not have("sftp") or not have("ssh"), reason="OpenSSH client not installed"
)

SUITES = [
    ("chacha20-poly1305@openssh.com", None),
    ("aes128-gcm@openssh.com", None),
    ("aes256-gcm@openssh.com", None),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes256-ctr", "hmac-sha2-512-etm@openssh.com"),
    ("aes192-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256"),
    ("aes256-ctr", "hmac-sha2-512"),
]
_NEGOTIATED = re.compile(r"kex: (client->server|server->client) cipher: (\S+) MAC: (\S+)")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _negotiated(stderr: str) -> set[tuple[str, ...]]:
    return {tuple(m.groups()) for m in _NEGOTIATED.finditer(stderr)}


@openssh
@pytest.mark.parametrize(("cipher", "mac"), SUITES, ids=[f"{c}+{m or 'aead'}" for c, m in SUITES])
def test_openssh_negotiates_and_moves_data(server: Env, cipher: str, mac: str | None) -> None:
    name = f"{cipher}-{mac or 'aead'}".replace("@", "_")
    src = server.tmp / f"{name}.src"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    opts = ["-v", "-c", cipher] + (["-o", f"MACs={mac}"] if mac else [])
    res = server.sftp(f"put {src.name} {name}.up\nget {name}.up {name}.down\n", *opts)
    expected_mac = mac or "<implicit>"
    assert _negotiated(res.stderr) == {
        ("client->server", cipher, expected_mac),
        ("server->client", cipher, expected_mac),
    }
    digest = _sha256(src)
    assert _sha256(server.alice.root / f"{name}.up") == digest  # on the server's disk
    assert _sha256(server.tmp / f"{name}.down") == digest  # and back


@openssh
@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com"])
def test_aead_cipher_needs_no_common_mac(server: Env, cipher: str) -> None:
    """As with OpenSSH's server: a client whose MAC list we refuse (hmac-sha1 only) still
    gets an AEAD cipher, and no MAC is used at all."""
    src = server.tmp / f"aead-{cipher[:6]}.src"
    src.write_bytes(os.urandom(256 * 1024 + 7))
    batch = f"put {src.name} {src.name}.up\n"
    res = server.sftp(batch, "-v", "-c", cipher, "-o", "MACs=hmac-sha1")
    assert _negotiated(res.stderr) == {
        ("client->server", cipher, "<implicit>"),
        ("server->client", cipher, "<implicit>"),
    }
    assert _sha256(server.alice.root / f"{src.name}.up") == _sha256(src)


@openssh
def test_default_negotiation_is_chacha20_with_strict_kex(server: Env) -> None:
    res = server.sftp("pwd\n", "-vvv")
    assert ("server->client", "chacha20-poly1305@openssh.com", "<implicit>") in _negotiated(
        res.stderr
    )
    assert "kex-strict-s-v00@openssh.com" in res.stderr
    assert "will use strict KEX ordering" in res.stderr


@openssh
@pytest.mark.parametrize(
    "opts",
    [
        ["-c", "3des-cbc"],
        ["-c", "aes128-cbc"],
        ["-c", "aes128-ctr", "-o", "MACs=hmac-sha1"],
        ["-c", "aes256-ctr", "-o", "MACs=hmac-sha1-etm@openssh.com"],
        ["-o", "KexAlgorithms=diffie-hellman-group14-sha1"],
        ["-o", "HostKeyAlgorithms=ssh-rsa"],
        ["-o", "HostKeyAlgorithms=ssh-dss"],
    ],
    ids=" ".join,
)
def test_weak_algorithms_fail_to_negotiate(server: Env, opts: list[str]) -> None:
    res = server.ssh(None, "-T", "-v", *opts)
    assert res.returncode == 255
    stderr = res.stderr.decode(errors="replace")
    # Either the client finds nothing in common in our KEXINIT, or we find nothing in its.
    assert "Unable to negotiate" in stderr or "no common" in stderr, stderr[-2000:]
    assert "Authenticated to" not in stderr


def _kexinit_count(stderr: str) -> int:
    return stderr.count("SSH2_MSG_KEXINIT received")


@openssh
def test_server_initiated_rekey_by_volume(make_server: ServerFactory) -> None:
    env = make_server(server_extra="rekey_bytes = 1048576")
    src = env.tmp / "rekey.src"
    src.write_bytes(os.urandom(4 * 1024 * 1024))
    res = env.sftp("put rekey.src rekey.up\nget rekey.up rekey.down\n", "-vv")
    assert _kexinit_count(res.stderr) >= 4  # the first exchange plus several rekeys
    assert _sha256(env.alice.root / "rekey.up") == _sha256(src) == _sha256(env.tmp / "rekey.down")


@openssh
@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com"])
def test_client_initiated_rekey(server: Env, cipher: str) -> None:
    name = f"crekey-{cipher[:6]}"
    src = server.tmp / f"{name}.src"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    res = server.sftp(
        f"put {src.name} {name}.up\nget {name}.up {name}.down\n",
        "-vv",
        "-c",
        cipher,
        "-o",
        "RekeyLimit=512K",
    )
    assert _kexinit_count(res.stderr) >= 4
    assert _sha256(server.alice.root / f"{name}.up") == _sha256(src)
    assert _sha256(server.tmp / f"{name}.down") == _sha256(src)


# -- asyncssh and paramiko against an in-process ServerTransport (asyncio loop, no reactor) --


class _Adapter:
    """The little of Twisted's ITransport the SSH transport uses, over an asyncio transport."""

    def __init__(self, t: asyncio.Transport) -> None:
        self.t = t

    def write(self, data: bytes) -> None:
        self.t.write(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        self.t.writelines(seq)

    def loseConnection(self) -> None:
        self.t.close()

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 2)


class _Bridge(asyncio.Protocol):
    def __init__(self, ssh: ServerTransport) -> None:
        self.ssh = ssh

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.ssh.makeConnection(_Adapter(transport))  # type: ignore[arg-type,no-untyped-call]

    def data_received(self, data: bytes) -> None:
        self.ssh.dataReceived(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ssh.connectionLost(Failure(ConnectionDone()))  # type: ignore[no-untyped-call]


@pytest.fixture
def echo_server() -> Iterator[tuple[list[ServerTransport], Any]]:
    servers: list[ServerTransport] = []

    def start(loop: asyncio.AbstractEventLoop, **kw: Any) -> Any:
        def build() -> _Bridge:
            servers.append(make_server(**kw))
            return _Bridge(servers[-1])

        return loop.create_server(build, "127.0.0.1", 0)

    yield servers, start


@pytest.mark.parametrize(("cipher", "mac"), SUITES)
def test_asyncssh_client_per_algorithm_with_rekeys(
    echo_server: tuple[list[ServerTransport], Any], cipher: str, mac: str | None
) -> None:
    asyncssh = pytest.importorskip("asyncssh")
    servers, start = echo_server
    data = os.urandom(1_500_000)

    async def run() -> bytes:
        srv = await start(asyncio.get_running_loop(), rekey_bytes=256 * 1024)
        port = srv.sockets[0].getsockname()[1]
        opts: dict[str, Any] = {"encryption_algs": [cipher]}
        if mac:
            opts["mac_algs"] = [mac]
        async with asyncssh.connect(
            "127.0.0.1", port, username="u", password="pw", known_hosts=None, **opts
        ) as conn:
            reader, writer = await conn.open_connection("localhost", 7)
            writer.write(data)
            writer.write_eof()
            got: bytes = await reader.read()
        srv.close()
        return got

    got = asyncio.run(run())
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    [server] = servers
    assert server.currentEncryptions.outCipType == cipher.encode()
    assert server._strict  # asyncssh does strict KEX
    assert server.completed_kex >= 5  # rekeyed by the server while data flowed both ways


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "not-strict"])
@pytest.mark.parametrize(("cipher", "mac"), [s for s in SUITES if not s[0].startswith("chacha")])
def test_paramiko_client_per_algorithm(
    echo_server: tuple[list[ServerTransport], Any], cipher: str, mac: str | None, strict: bool
) -> None:
    """paramiko has no chacha20-poly1305, but can turn strict KEX off (sequence numbers go on)."""
    paramiko = pytest.importorskip("paramiko")
    servers, start = echo_server
    data = os.urandom(300_000)

    def client(port: int) -> bytes:
        t = paramiko.Transport(("127.0.0.1", port), strict_kex=strict)
        opts = t.get_security_options()
        opts.ciphers = (cipher,)
        if mac:
            opts.digests = (mac,)
        t.connect(username="u", password="pw")
        ch = t.open_channel("direct-tcpip", ("localhost", 7), ("127.0.0.1", 0))
        ch.sendall(data)
        ch.shutdown_write()
        chunks = []
        while chunk := ch.recv(65536):
            chunks.append(chunk)
        t.close()
        return b"".join(chunks)

    async def run() -> bytes:
        srv = await start(asyncio.get_running_loop(), rekey_bytes=128 * 1024)
        port = srv.sockets[0].getsockname()[1]
        got = await asyncio.to_thread(client, port)
        srv.close()
        return got

    assert asyncio.run(run()) == data
    [server] = servers
    assert server.currentEncryptions.inCipType == cipher.encode()
    assert server._strict is strict
    assert server.completed_kex >= 2
