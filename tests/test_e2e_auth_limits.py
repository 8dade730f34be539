"""End-to-end authentication limits against a real sftpd, with paramiko and raw sockets:
MaxAuthTries on one connection, login grace time."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.support import Env, wait_for

paramiko = pytest.importorskip("paramiko")
pytestmark = pytest.mark.e2e


def _transport(env: Env) -> Any:
    t = paramiko.Transport(("127.0.0.1", env.port))
    t.start_client(timeout=30)
    return t


def _no_tracebacks(env: Env) -> None:
    text = env.server.log_text()
    assert "Traceback" not in text and "Unhandled" not in text, text[-3000:]


def _key_login_works(env: Env) -> None:
    t = _transport(env)
    try:
        t.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(str(env.key_path)))
        assert t.is_authenticated()
    finally:
        t.close()


def test_thirty_wrong_passwords_on_one_connection_stop_at_max_auth_tries(make_server: Any) -> None:
    env = make_server(server_extra="auth_failure_delay = 0\nmax_auth_tries = 6")
    t = _transport(env)
    tries = 0
    try:
        while tries < 30 and t.is_active():
            tries += 1
            with pytest.raises(paramiko.AuthenticationException):
                t.auth_password("alice", f"wrong-{tries}", fallback=False)
    finally:
        t.close()
    assert tries == 6  # paramiko requests ssh-userauth before each of them
    assert wait_for(lambda: "too many bad auths" in env.server.log_text())
    assert env.server.log_text().count("auth failed: user=alice") == 6
    _no_tracebacks(env)


@pytest.mark.parametrize("send", [b"", b"SSH-2.0-stalled\r\n"], ids=["silent", "banner-only"])
def test_login_grace_time_closes_a_connection_that_never_logs_in(
    make_server: Any, send: bytes
) -> None:
    env = make_server(server_extra="login_grace_time = 1")
    with socket.create_connection(("127.0.0.1", env.port)) as sock:
        sock.settimeout(60)  # deadlock guard only: the server must close it long before
        sock.sendall(send)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    assert got.startswith(b"SSH-2.0-")  # our banner (and KEXINIT, DISCONNECT), then EOF
    assert wait_for(lambda: "login grace time exceeded" in env.server.log_text())
    _key_login_works(env)
