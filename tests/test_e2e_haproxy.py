"""Two sftpd nodes behind HAProxy (TCP mode, send-proxy-v2) sharing users' roots and host
keys: the nodes see the client's address, refuse PROXY headers from elsewhere, and a client
whose node dies resumes its upload on the other one with OpenSSH's `reput`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sources import connect_from
from tests.support import ALICE_PASSWORD, Env, have, toml_str, wait_for

paramiko = pytest.importorskip("paramiko")
HAPROXY = "/usr/sbin/haproxy"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy not installed"),
]

NODE = 'auth_failure_delay = 0\nproxy_protocol = "required"\nproxy_allowed = ["127.0.0.1"]\n'
DEFENDER = "[defender]\nsafe_list = []\nthreshold = 3\nban_time = 1\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_config(port: int, nodes: list[int]) -> str:
    """The README's HAProxy config, with test ports and short health-check intervals."""
    servers = "\n".join(
        f"    server node{i} 127.0.0.1:{p} send-proxy-v2 check check-send-proxy inter 300 "
        "fall 1 rise 2"
        for i, p in enumerate(nodes)
    )
    return f"""\
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    retries 3
    option redispatch
frontend sftp
    bind 127.0.0.1:{port}
    default_backend sftpd
backend sftpd
    balance first
{servers}
"""


@pytest.fixture
def cluster(make_server: Any, tmp_path: Path) -> Iterator[tuple[int, list[Env]]]:
    # upload_mode = "direct": a file written in place is what a retry on another node can
    # resume (an atomic upload cut off by a dying node leaves the old file, not a partial)
    direct = 'upload_mode = "direct"'
    a, b = (
        make_server(server_extra=NODE, tail=DEFENDER + _audit(tmp_path, n), alice_extra=direct)
        for n in "ab"
    )  # the same root and host keys; an audit file each
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, [a.port, b.port]))
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert wait_for(lambda: _banner(port) is not None, timeout=20)
        yield port, [a, b]
    finally:
        proc.terminate()
        proc.wait(10)


def _audit(tmp_path: Path, node: str) -> str:
    return f"[audit]\nfile = {toml_str(str(tmp_path / f'audit-{node}.jsonl'))}\n"


def _audit_records(env: Env, node: str = "a") -> list[dict[str, Any]]:
    path = env.tmp / f"audit-{node}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _connect(port: int, source: str) -> socket.socket:
    return connect_from(port, source, timeout=20)


def _banner(port: int, source: str = "127.0.0.1") -> bytes | None:
    try:
        with _connect(port, source) as s:
            return s.recv(64) or None
    except OSError:
        return None


def _login(port: int, source: str, password: str = ALICE_PASSWORD) -> bool:
    t = paramiko.Transport(_connect(port, source))
    try:
        t.start_client(timeout=20)
        t.auth_password("alice", password, fallback=False)
        return bool(t.is_authenticated())
    except paramiko.AuthenticationException:
        return False
    finally:
        t.close()


def test_nodes_see_and_ban_the_client_address(cluster: tuple[int, list[Env]]) -> None:
    port, (a, _b) = cluster
    assert _login(port, "127.0.0.2")
    assert wait_for(lambda: "auth ok:" in a.server.log_text())
    log = a.server.log_text()
    assert "connection open: conn=" in log and " peer=127.0.0.2:" in log
    t = paramiko.Transport(_connect(port, "127.0.0.2"))  # an operation, for the audit log
    t.start_client(timeout=20)
    t.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(str(a.key_path)))
    sftp = paramiko.SFTPClient.from_transport(t)
    assert sftp is not None
    with sftp.open("/audited.txt", "wb") as f:
        f.write(b"through haproxy\n")
    t.close()
    assert (a.alice.root / "audited.txt").read_bytes() == b"through haproxy\n"

    def uploads() -> list[dict[str, Any]]:
        return [e for e in _audit_records(a) if e["op"] == "upload"]

    assert wait_for(lambda: len(uploads()) == 1)
    (up,) = uploads()
    assert up["path"] == "/audited.txt" and up["client"].startswith("127.0.0.2:"), up
    logins = [e for e in _audit_records(a) if e["op"] == "login"]
    assert len(logins) == 2 and all(e["client"].startswith("127.0.0.2:") for e in logins)
    for i in range(3):
        assert not _login(port, "127.0.0.3", f"wrong-{i}")
    assert wait_for(lambda: "source banned: source=127.0.0.3 " in a.server.log_text())
    assert _banner(port, "127.0.0.3") is None  # through HAProxy: closed before the banner
    assert _login(port, "127.0.0.2")  # HAProxy itself (127.0.0.1) is never banned
    assert "source=127.0.0.1" not in a.server.log_text().split("source banned")[-1]
    assert wait_for(lambda: any(e["op"] == "ban" for e in _audit_records(a)))
    records = _audit_records(a)
    failed = [e for e in records if e["op"] == "login_failed"]
    assert len(failed) == 3 and all(e["client"].startswith("127.0.0.3:") for e in failed)
    assert [e["client"] for e in records if e["op"] == "ban"] == ["127.0.0.3"]
    clients = {e["client"].rsplit(":", 1)[0] for e in records}
    assert clients == {"127.0.0.2", "127.0.0.3"}, clients  # never HAProxy's 127.0.0.1


def test_proxy_header_from_outside_proxy_allowed_is_refused(
    cluster: tuple[int, list[Env]],
) -> None:
    _port, (_a, b) = cluster
    with _connect(b.port, "127.0.0.4") as s:  # straight to a node, not from HAProxy
        try:
            s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4444 22\r\n")
            assert s.recv(64) == b""  # closed, not a byte of SSH
        except ConnectionResetError:
            pass  # closed before the header was read
    assert wait_for(lambda: "peer=127.0.0.4 reason=proxy_header_required" in b.server.log_text())
    assert "192.0.2.7" not in b.server.log_text()


@pytest.mark.skipif(not have("sftp"), reason="OpenSSH sftp not installed")
def test_node_killed_mid_upload_reput_resumes_on_the_other(
    cluster: tuple[int, list[Env]], tmp_path: Path
) -> None:
    port, (a, b) = cluster
    data = os.urandom(4 << 20)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    t = paramiko.Transport(_connect(port, "127.0.0.2"))
    t.start_client(timeout=20)
    t.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(str(a.key_path)))
    sftp = paramiko.SFTPClient.from_transport(t)
    assert sftp is not None
    f = sftp.open("/up.bin", "wb")
    f.write(data[: 1 << 20])
    f.flush()
    assert "user=alice" in a.server.log_text()  # node A has the session
    a.server.proc.send_signal(signal.SIGKILL)  # the node dies mid-upload
    a.server.proc.wait(10)
    t.close()
    partial = a.alice.root / "up.bin"
    assert 0 < partial.stat().st_size < len(data)
    # The retry: HAProxy finds node A gone and sends the client to node B.
    res = subprocess.run(
        ["sftp", *_opts(a, port), "-b", "-", "alice@127.0.0.1"],
        input=f"reput {local} /up.bin\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert partial.read_bytes() == data
    assert "user=alice" in b.server.log_text()


def _opts(env: Env, port: int) -> list[str]:
    opts = env.ssh_opts()
    opts[opts.index("-P") + 1] = str(port)
    return opts


def test_optional_proxy_header_only_from_proxy_allowed(make_server: Any) -> None:
    env = make_server(
        server_extra='proxy_protocol = "optional"\nproxy_allowed = ["127.0.0.1"]\n'
        "auth_failure_delay = 0"
    )
    with _connect(env.port, "127.0.0.1") as s:  # the proxy names its client
        s.sendall(b"PROXY TCP4 192.0.2.8 127.0.0.1 4444 22\r\n")
        assert s.recv(4) == b"SSH-"
    assert wait_for(lambda: " peer=192.0.2.8:4444 " in env.server.log_text())
    assert _login(env.port, "127.0.0.5")  # no header from elsewhere: served as itself
    with _connect(env.port, "127.0.0.5") as s:  # a header from elsewhere: closed
        got = b""
        try:
            s.sendall(b"PROXY TCP4 192.0.2.9 127.0.0.1 4444 22\r\n")
            while chunk := s.recv(4096):  # the banner went out at connect; then EOF
                got += chunk
        except ConnectionResetError:
            pass
        assert len(got) < 4096
    assert wait_for(lambda: "reason=proxy_header_not_allowed" in env.server.log_text())
    assert " peer=192.0.2.9" not in env.server.log_text()
