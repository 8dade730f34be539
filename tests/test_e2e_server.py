"""End-to-end: OpenSSH, paramiko and asyncssh clients log in or are refused by a real sftpd."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import ALICE_PASSWORD, Env, askpass_env, asyncssh_sftp, wait_for

pytestmark = pytest.mark.e2e


def _password_sftp(
    env: Env, password: str, batch: str, user: str = "alice"
) -> subprocess.CompletedProcess[str]:
    cmd = [
        "sftp",
        *env.ssh_opts(key=False),
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
        f"{user}@127.0.0.1",
    ]
    return subprocess.run(
        cmd,
        input=batch,
        capture_output=True,
        text=True,
        timeout=60,
        env=askpass_env(env.tmp, password),
        cwd=env.tmp,
    )


def test_openssh_sftp_with_key_puts_bytes(server: Env) -> None:
    src = server.tmp / "key-upload.bin"
    src.write_bytes(b"key auth works\n" * 100)
    server.sftp(f"put {src} key-upload.bin\n")
    assert (server.alice.root / "key-upload.bin").read_bytes() == src.read_bytes()


def test_openssh_sftp_with_password_via_askpass(server: Env) -> None:
    src = server.tmp / "pw-upload.txt"
    src.write_bytes(b"password auth works\n")
    res = _password_sftp(server, ALICE_PASSWORD, f"put {src} pw-upload.txt\n")
    assert res.returncode == 0, res.stderr
    assert (server.alice.root / "pw-upload.txt").read_bytes() == src.read_bytes()
    assert re.search(
        r"auth ok: conn=\S+ peer=127\.0\.0\.1:\d+ user=alice method=password$",
        server.server.log_text(),
        re.M,
    )


def test_wrong_password_and_unknown_user_refused(server: Env) -> None:
    assert _password_sftp(server, "wrong", "ls\n").returncode != 0
    assert _password_sftp(server, ALICE_PASSWORD, "ls\n", user="mallory").returncode != 0
    log = server.server.log_text()
    peer = r"conn=\S+ peer=127\.0\.0\.1:\d+"
    assert re.search(rf"auth failed: {peer} user=alice method=password$", log, re.M)
    assert re.search(
        rf"auth failed: {peer} user=mallory method=password \(invalid user\)$", log, re.M
    )
    assert ALICE_PASSWORD not in log and "wrong" not in log.split("auth failed")[-1]


def test_unknown_key_refused(server: Env, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    cmd = [
        "sftp",
        *server.ssh_opts(key=False),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(other),
        "-b",
        "-",
        "alice@127.0.0.1",
    ]
    res = subprocess.run(cmd, input="ls\n", capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "Permission denied" in res.stderr


def test_none_auth_refused_by_paramiko(server: Env) -> None:
    paramiko = pytest.importorskip("paramiko")
    t = paramiko.Transport(("127.0.0.1", server.port))
    try:
        t.start_client(timeout=20)
        with pytest.raises(paramiko.BadAuthenticationType) as err:
            t.auth_none("alice")
        assert "none" not in err.value.allowed_types
        assert err.value.allowed_types == ["publickey", "password", "keyboard-interactive"]
        assert not t.is_authenticated()
    finally:
        t.close()


def _paramiko_client(server: Env, **auth: Any) -> Any:
    """A paramiko SSHClient logged in as alice with ``auth`` (pkey= or password=)."""
    paramiko = pytest.importorskip("paramiko")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        port=server.port,
        username="alice",
        look_for_keys=False,
        allow_agent=False,
        timeout=20,
        **auth,
    )
    return client


def test_paramiko_client_with_key_and_password(server: Env) -> None:
    paramiko = pytest.importorskip("paramiko")
    key = paramiko.Ed25519Key.from_private_key_file(str(server.key_path))
    for kwargs in ({"pkey": key}, {"password": ALICE_PASSWORD}):
        client = _paramiko_client(server, **kwargs)
        try:
            sftp = client.open_sftp()
            name = f"paramiko-{'key' if 'pkey' in kwargs else 'pw'}.txt"
            with sftp.open(name, "w") as f:
                f.write(b"from paramiko\n")
            sftp.close()
        finally:
            client.close()
        assert (server.alice.root / name).read_bytes() == b"from paramiko\n"


def _tcp_timer(local_port: int, remote_port: int) -> str | None:
    """The timer field ("tr:when") of a loopback TCP socket in /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{local_port:04X}") and fields[2].endswith(f":{remote_port:04X}"):
            return fields[5]
    return None


def test_connections_use_tcp_keepalive(server: Env) -> None:
    """Like OpenSSH's TCPKeepAlive default: the kernel probes an idle peer, so a client
    that vanished without a FIN or RST does not hold its session forever. In
    /proc/net/tcp an idle socket with SO_KEEPALIVE has timer 2 (keepalive); the client's
    own socket, without it, has none."""
    paramiko = pytest.importorskip("paramiko")
    key = paramiko.Ed25519Key.from_private_key_file(str(server.key_path))
    client = _paramiko_client(server, pkey=key)
    try:
        sftp = client.open_sftp()
        sftp.listdir(".")
        transport = client.get_transport()
        assert transport is not None
        mine = transport.sock.getsockname()[1]  # type: ignore[union-attr]
        # idle once the last ACK is in: the retransmit timer (1) gives way to keepalive (2)
        assert wait_for(lambda: (_tcp_timer(server.port, mine) or "").startswith("02:"))
        assert (_tcp_timer(mine, server.port) or "").startswith("00:")
        sftp.close()
    finally:
        client.close()


def test_asyncssh_client_with_key(server: Env) -> None:
    pytest.importorskip("asyncssh")

    async def body(sftp: Any) -> None:
        async with sftp.open("asyncssh.txt", "wb") as f:
            await f.write(b"from asyncssh\n")

    asyncssh_sftp(server, body)
    assert (server.alice.root / "asyncssh.txt").read_bytes() == b"from asyncssh\n"


def test_shell_request_gets_sftp_only_message(server: Env) -> None:
    res = server.ssh(None, "-T")
    assert res.returncode == 1
    assert b"This service allows SFTP connections only." in res.stderr
    assert res.stdout == b""


def test_pty_and_forwarding_refused(server: Env) -> None:
    res = server.ssh(None, "-tt", "-o", "ExitOnForwardFailure=yes", "-L", "0:127.0.0.1:9")
    assert res.returncode != 0


@pytest.mark.parametrize(
    "opts",
    [
        ["-c", "3des-cbc"],
        ["-c", "aes128-cbc"],
        ["-c", "aes128-ctr", "-o", "MACs=hmac-sha1"],
        ["-c", "aes128-ctr", "-o", "MACs=hmac-md5"],
        ["-o", "KexAlgorithms=diffie-hellman-group14-sha1"],
        ["-o", "KexAlgorithms=diffie-hellman-group1-sha1"],
        ["-o", "HostKeyAlgorithms=ssh-rsa"],
        ["-o", "HostKeyAlgorithms=ssh-dss"],
    ],
    ids=lambda o: o[-1],
)
def test_weak_algorithms_not_negotiable(server: Env, opts: list[str]) -> None:
    res = server.ssh(None, "-T", *opts)
    assert res.returncode == 255
    assert b"This service allows SFTP" not in res.stderr


def test_server_banner_and_sigterm_exit_zero(make_server) -> None:  # type: ignore[no-untyped-def]
    env = make_server()
    res = subprocess.run(
        ["ssh", *env.ssh_opts(port_flag="-p"), "-v", "-T", "alice@127.0.0.1"],
        capture_output=True,
        timeout=60,
    )
    assert b"Remote protocol version 2.0, remote software version sftpd_" in res.stderr
    assert env.server.stop() == 0


def test_server_sig_algs_lists_only_accepted_user_signatures(server: Env) -> None:
    res = server.ssh(None, "-vvv", "-T")
    lines = [ln for ln in res.stderr.decode().splitlines() if "server-sig-algs=" in ln]
    assert lines, res.stderr.decode()[-2000:]
    algs = lines[0].split("server-sig-algs=<")[1].rstrip(">").split(",")
    assert "rsa-sha2-512" in algs and "ssh-ed25519" in algs
    # user keys of every accepted type, not just the host keys' types (host ECDSA is P-256)
    assert "ecdsa-sha2-nistp384" in algs and "ecdsa-sha2-nistp521" in algs
    assert "ssh-rsa" not in algs and "ssh-dss" not in algs
