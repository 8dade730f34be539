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
    ("aes128-ctr", "hmac-sha2-256"),  # encrypt-and-MAC: algorithms = "compat" only
    ("aes256-ctr", "hmac-sha2-512"),
]
COMPAT_ONLY_MACS = ("hmac-sha2-256", "hmac-sha2-512")
_NEGOTIATED = re.compile(r"kex: (client->server|server->client) cipher: (\S+) MAC: (\S+)")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _negotiated(stderr: str) -> set[tuple[str, ...]]:
    return {tuple(m.groups()) for m in _NEGOTIATED.finditer(stderr)}


@openssh
@pytest.mark.parametrize(("cipher", "mac"), SUITES, ids=[f"{c}+{m or 'aead'}" for c, m in SUITES])
def test_openssh_negotiates_and_moves_data(
    server: Env, make_server: ServerFactory, cipher: str, mac: str | None
) -> None:
    if mac in COMPAT_ONLY_MACS:
        server = make_server(server_extra='algorithms = "compat"')
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


# -- the default offer audited by ssh-audit; "compat" one setting away ----------------------

audit = pytest.mark.skipif(not have("ssh-audit"), reason="ssh-audit not installed")
# ssh-audit 2.5.0 (Debian 12) predates these two and warns "unknown algorithm"; newer
# versions know them, and instead note that curve25519 is not post-quantum.
_UNKNOWN_TO_OLD_AUDIT = {"mlkem768x25519-sha256", "kex-strict-s-v00@openssh.com"}
_AUDIT_LINE = re.compile(r"^\((\w+)\) (\S+)(?: \([^)]*\))?\s+-- \[(\w+)\] (.*)$")
_AUDIT_MORE = re.compile(r"^\s+`- \[(\w+)\] (.*)$")


def _ssh_audit(port: int) -> tuple[int, list[tuple[str, str, str, str]], dict[str, Any]]:
    """ssh-audit's exit code, its (section, algorithm, level, note) lines, and its JSON."""
    import json
    import subprocess

    cmd = ["ssh-audit", "-n", "-p", str(port), "127.0.0.1"]
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    notes: list[tuple[str, str, str, str]] = []
    for line in text.stdout.splitlines():
        if m := _AUDIT_LINE.match(line):
            notes.append((m[1], m[2], m[3], m[4]))
        elif (m := _AUDIT_MORE.match(line)) and notes:
            notes.append((notes[-1][0], notes[-1][1], m[1], m[2]))
    assert notes, text.stdout + text.stderr
    raw = subprocess.run([*cmd[:2], "-j", *cmd[2:]], capture_output=True, text=True, timeout=60)
    return text.returncode, notes, json.loads(raw.stdout)


def _offer(report: dict[str, Any]) -> dict[str, list[str]]:
    return {
        "kex": [k["algorithm"] for k in report["kex"]],
        "key": [k["algorithm"] for k in report["key"]],
        "enc": list(report["enc"]),
        "mac": list(report["mac"]),
    }


@audit
def test_ssh_audit_passes_the_default_offer(server: Env) -> None:
    code, notes, report = _ssh_audit(server.port)
    bad = [
        n
        for n in notes
        if n[2] in ("fail", "warn")
        and not (n[1] in _UNKNOWN_TO_OLD_AUDIT and n[3] == "unknown algorithm")
        and not (n[1].startswith("curve25519") and "quantum" in n[3])
    ]
    assert bad == []
    # ssh-audit's exit codes: 0 good, 1 connection error, 2 warnings (here only the allowed
    # ones above), 3 failures
    assert code in (0, 2)
    assert any(n[2] == "info" for n in notes)  # the parse found ssh-audit's notes
    offer = _offer(report)
    assert offer["kex"][:3] == [
        "mlkem768x25519-sha256",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
    ]
    assert offer["key"] == ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]
    assert offer["mac"] == ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]
    assert {f["hostkey"] for f in report["fingerprints"]} == {"ssh-ed25519", "ssh-rsa"}


@audit
def test_compat_offers_openssh_wider_set(make_server: ServerFactory) -> None:
    env = make_server(server_extra='algorithms = "compat"')
    _, notes, report = _ssh_audit(env.port)
    offer = _offer(report)
    assert {"ecdh-sha2-nistp256", "ecdh-sha2-nistp384", "ecdh-sha2-nistp521"} <= set(offer["kex"])
    assert "ecdsa-sha2-nistp256" in offer["key"]
    assert {"hmac-sha2-256", "hmac-sha2-512"} <= set(offer["mac"])
    assert ("kex", "ecdh-sha2-nistp256", "fail", "using weak elliptic curves") in notes


@openssh
@pytest.mark.parametrize("preset", ["modern", "compat"])
def test_nist_and_encrypt_and_mac_only_with_compat(make_server: ServerFactory, preset: str) -> None:
    env = make_server(server_extra=f'algorithms = "{preset}"')
    opts = ["-o", "KexAlgorithms=ecdh-sha2-nistp256", "-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256"]
    opts += ["-c", "aes128-ctr", "-o", "MACs=hmac-sha2-256"]
    res = env.sftp("pwd\n", *opts, "-v", check=False)
    if preset == "compat":
        assert res.returncode == 0, res.stderr
        assert ("server->client", "aes128-ctr", "hmac-sha2-256") in _negotiated(res.stderr)
    else:
        assert res.returncode != 0
        assert "Unable to negotiate" in res.stderr or "no common" in res.stderr


def _libssh2_version() -> tuple[int, ...]:
    import subprocess

    out = subprocess.run(["curl", "-V"], capture_output=True, text=True).stdout
    m = re.search(r"libssh2/(\d+)\.(\d+)", out)
    return (int(m[1]), int(m[2])) if m else (0, 0)


@pytest.mark.skipif(not have("curl"), reason="curl not installed")
@pytest.mark.parametrize("preset", ["modern", "compat"])
def test_curl_libssh2_needs_compat_before_1_11(make_server: ServerFactory, preset: str) -> None:
    """libssh2 1.10 (Debian 12's curl) has no AEAD cipher and no encrypt-then-MAC, so it
    needs algorithms = "compat"; 1.11 added both (README, Algorithms)."""
    import subprocess

    from tests.support import ALICE_PASSWORD

    version = _libssh2_version()
    if version == (0, 0):
        pytest.skip("curl is not built with libssh2")
    env = make_server(server_extra=f'algorithms = "{preset}"\nauth_failure_delay = 0')
    (env.alice.root / "curl.txt").write_bytes(b"fetched by curl\n")
    res = subprocess.run(
        [
            "curl",
            "-sS",
            "-k",
            "-u",
            f"alice:{ALICE_PASSWORD}",
            f"sftp://127.0.0.1:{env.port}/curl.txt",
        ],
        capture_output=True,
        timeout=60,
    )
    if preset == "modern" and version < (1, 11):
        assert res.returncode != 0
        assert b"Unable to exchange encryption keys" in res.stderr, res.stderr
    else:
        assert (res.returncode, res.stdout) == (0, b"fetched by curl\n"), res.stderr
