"""End-to-end authentication limits against a real sftpd, with paramiko and raw sockets:
MaxAuthTries on one connection, no password change, malformed requests, login grace time."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from tests.support import ALICE_PASSWORD, Env, wait_for

paramiko = pytest.importorskip("paramiko")
pytestmark = pytest.mark.e2e

MSG_USERAUTH_REQUEST = 50


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
    failed = [
        line
        for line in env.server.log_text().splitlines()
        if "auth failed:" in line and " user=alice " in line
    ]
    assert len(failed) == 6
    _no_tracebacks(env)


class RawAuth:
    """USERAUTH_REQUESTs built by hand over paramiko's transport, answers read by paramiko."""

    def __init__(self, env: Env) -> None:
        self.t = _transport(env)
        with pytest.raises(paramiko.BadAuthenticationType):
            self.t.auth_none("alice")  # starts ssh-userauth; paramiko now reads its answers
        self.handler = self.t.auth_handler

    def request(self, method: str, *fields: bytes | str | bool, raw: bytes = b"") -> bool:
        """Send one request; True once answered (FAILURE or SUCCESS), False if disconnected."""
        m = paramiko.Message()
        m.add_byte(bytes([MSG_USERAUTH_REQUEST]))
        m.add_string("alice")
        m.add_string("ssh-connection")
        m.add_string(method)
        for field in fields:
            if isinstance(field, bool):
                m.add_boolean(field)
            else:
                m.add_string(field)
        event = threading.Event()
        self.handler.auth_event = event
        self.handler.auth_method = method
        self.t._send_message(paramiko.Message(m.asbytes() + raw))
        # (paramiko sets the event on a disconnect too, once the transport is inactive)
        assert wait_for(lambda: event.is_set() or not self.t.is_active(), timeout=30)
        return bool(self.t.is_active())

    def close(self) -> None:
        self.t.close()


def test_password_change_request_fails(make_server: Any) -> None:
    env = make_server(server_extra="auth_failure_delay = 0")
    raw = RawAuth(env)
    try:
        assert raw.request("password", True, ALICE_PASSWORD, "a-new-password")
        assert not raw.handler.authenticated and raw.t.is_active()
        assert raw.request("password", False, ALICE_PASSWORD, raw=b"trailing")
        assert not raw.handler.authenticated and raw.t.is_active()
        assert raw.request("password", False, ALICE_PASSWORD)  # the control: it works
        assert raw.handler.authenticated
    finally:
        raw.close()
    _no_tracebacks(env)


def _ssh_string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def test_malformed_auth_requests_fail_or_disconnect_cleanly(make_server: Any) -> None:
    env = make_server(server_extra="auth_failure_delay = 0")
    bad_rsa = _ssh_string(b"ssh-rsa") + _ssh_string(b"\x01\x00\x01") + _ssh_string(b"\x03")
    short_ed = _ssh_string(b"ssh-ed25519") + _ssh_string(b"1234567")
    raw = RawAuth(env)
    try:
        assert raw.request("publickey", False, "rsa-sha2-256", bad_rsa)  # e > n: FAILURE
        assert raw.request("publickey", False, "ssh-ed25519", short_ed)
        assert raw.t.is_active() and not raw.handler.authenticated
        assert not raw.request("publickey", raw=b"\x00")  # only the flag: DISCONNECT
    finally:
        raw.close()
    assert wait_for(lambda: "auth request refused:" in env.server.log_text())
    _no_tracebacks(env)
    _key_login_works(env)  # and the server serves on


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
