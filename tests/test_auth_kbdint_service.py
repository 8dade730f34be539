"""keyboard-interactive, TOTP and require chains in the userauth service, in memory."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import bcrypt
from twisted.conch.ssh import userauth
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.transport import DISCONNECT_PROTOCOL_ERROR
from twisted.cred.portal import Portal
from twisted.internet.task import Clock

from sftpd.auth.realm import Realm
from sftpd.auth.setup import auth_parts
from sftpd.auth.totp import totp
from sftpd.auth.users import MemoryUserStore, User
from sftpd.runtime.threads import InlineBlocking
from sftpd.ssh.userauth import AuthSettings, UserAuthServer
from tests.test_auth_inmemory import CountingBlocking, FakeTransport, NextService

PW = b"pw"
SECRET = base64.b32encode(b"12345678901234567890").decode()
KEY = b"12345678901234567890"
NOW = 1_800_000_000.0
METHODS = ("publickey", "password", "keyboard-interactive")


class Factory:
    services = {b"ssh-userauth": UserAuthServer, b"ssh-connection": NextService}

    def __init__(self, portal: Portal, clock: Clock, parts: Any) -> None:
        self.portal = portal
        self.clock = clock
        self.auth_settings = AuthSettings(max_auth_tries=6, failure_delay=1.0)
        self.auth_methods = parts.methods
        self.kbdint = parts.kbdint
        self.extra_auth_methods = parts.extra_auth_methods

    def getService(self, transport: Any, name: bytes) -> Any:
        return self.services.get(name)


def _service(
    tmp: Path, blocking: InlineBlocking | None = None, **user: Any
) -> tuple[UserAuthServer, FakeTransport, Clock]:
    hashed = bcrypt.hashpw(PW, bcrypt.gensalt(4))
    store = MemoryUserStore([User("alice", tmp, password_hash=hashed, **user)])
    clock = Clock()
    clock.advance(NOW)
    realm = Realm(
        lambda u, k=None: u, clock=clock, max_sessions=1, make_channel=object, methods=METHODS
    )
    portal = Portal(realm)
    parts = auth_parts(
        store,
        blocking or InlineBlocking(),
        methods=METHODS,
        trusted_cas=(),
        revoked_keys_file=None,
        any_totp=True,
        dummy_hash=bcrypt.hashpw(b"x", bcrypt.gensalt(4)),
        now=clock.seconds,
    )
    for checker in parts.checkers:
        portal.registerChecker(checker)
    t = FakeTransport(Factory(portal, clock, parts))
    svc = UserAuthServer()
    t.setService(svc)
    svc.transport = t
    svc.serviceStarted()
    return svc, t, clock


def _kbd(user: bytes = b"alice") -> bytes:
    return NS(user) + NS(b"ssh-connection") + NS(b"keyboard-interactive") + NS(b"") + NS(b"")


def _answer(text: bytes) -> bytes:
    return b"\x00\x00\x00\x01" + NS(text)


def _prompt(payload: bytes) -> bytes:
    # name, instruction, language, count, prompt, echo
    pos = 0
    for _ in range(3):
        pos += 4 + int.from_bytes(payload[pos : pos + 4], "big")
    pos += 4
    size = int.from_bytes(payload[pos : pos + 4], "big")
    return payload[pos + 4 : pos + 4 + size]


def test_password_then_code_then_success(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, totp_secret=SECRET)
    assert svc.supportedAuthentications == [b"publickey", b"password", b"keyboard-interactive"]
    svc.ssh_USERAUTH_REQUEST(_kbd())
    assert t.packets[-1][0] == 60 and _prompt(t.packets[-1][1]) == b"Password: "
    svc.ssh_USERAUTH_INFO_RESPONSE(_answer(PW))
    assert t.packets[-1][0] == 60 and _prompt(t.packets[-1][1]) == b"Verification code: "
    svc.ssh_USERAUTH_INFO_RESPONSE(_answer(totp(KEY, NOW).encode()))
    assert t.replies()[-1] == userauth.MSG_USERAUTH_SUCCESS


def test_a_wrong_code_fails_after_the_delay(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, totp_secret=SECRET)
    wrong = b"000000" if totp(KEY, NOW) != "000000" else b"111111"
    svc.ssh_USERAUTH_REQUEST(_kbd())
    svc.ssh_USERAUTH_INFO_RESPONSE(_answer(PW))
    svc.ssh_USERAUTH_INFO_RESPONSE(_answer(wrong))
    assert userauth.MSG_USERAUTH_FAILURE not in t.replies()  # not before the delay
    clock.advance(1.0)
    assert t.replies()[-1] == userauth.MSG_USERAUTH_FAILURE and t.auth_failures == 1


def test_replayed_code_refused_on_the_same_server(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, totp_secret=SECRET)
    code = totp(KEY, NOW).encode()
    svc.ssh_USERAUTH_REQUEST(_kbd())
    svc.ssh_USERAUTH_INFO_RESPONSE(_answer(PW))
    svc.ssh_USERAUTH_INFO_RESPONSE(_answer(code))
    assert t.replies()[-1] == userauth.MSG_USERAUTH_SUCCESS
    # a second connection to the same server (the same checker and its TOTP state)
    second = UserAuthServer()
    t.packets.clear()
    t.setService(second)
    second.transport = t
    second.serviceStarted()
    second.ssh_USERAUTH_REQUEST(_kbd())
    second.ssh_USERAUTH_INFO_RESPONSE(_answer(PW))
    second.ssh_USERAUTH_INFO_RESPONSE(_answer(code))
    clock.advance(1.0)
    assert t.replies()[-1] == userauth.MSG_USERAUTH_FAILURE


def test_new_request_drops_the_conversation_and_counts(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path)
    svc.ssh_USERAUTH_REQUEST(_kbd())
    assert t.replies() == [60]
    svc.ssh_USERAUTH_REQUEST(_kbd())  # instead of an INFO_RESPONSE
    assert t.auth_failures == 1 and t.replies() == [60, 60]  # no FAILURE owed for the first
    svc.ssh_USERAUTH_INFO_RESPONSE(_answer(PW))
    assert t.replies()[-1] == userauth.MSG_USERAUTH_SUCCESS


def test_info_response_without_a_request_is_a_protocol_error(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path)
    svc.ssh_USERAUTH_INFO_RESPONSE(_answer(PW))
    assert t.disconnected and t.disconnected[0][0] == DISCONNECT_PROTOCOL_ERROR


def test_two_answers_to_one_prompt_fail_the_attempt(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path)
    svc.ssh_USERAUTH_REQUEST(_kbd())
    svc.ssh_USERAUTH_INFO_RESPONSE(b"\x00\x00\x00\x02" + NS(PW) + NS(PW))
    clock.advance(1.0)
    assert t.replies()[-1] == userauth.MSG_USERAUTH_FAILURE and not t.disconnected


def test_password_method_refused_for_a_totp_user_after_bcrypt(tmp_path: Path) -> None:
    blocking = CountingBlocking()
    svc, t, clock = _service(tmp_path, blocking, totp_secret=SECRET)
    svc.ssh_USERAUTH_REQUEST(
        NS(b"alice") + NS(b"ssh-connection") + NS(b"password") + b"\0" + NS(PW)
    )
    clock.advance(1.0)
    assert t.replies()[-1] == userauth.MSG_USERAUTH_FAILURE and blocking.calls == 1


def test_require_answers_partial_success_with_the_remaining_methods(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path, require=(("password", "keyboard-interactive"),))
    svc.ssh_USERAUTH_REQUEST(
        NS(b"alice") + NS(b"ssh-connection") + NS(b"password") + b"\0" + NS(PW)
    )
    assert t.packets[-1] == (
        userauth.MSG_USERAUTH_FAILURE,
        NS(b"keyboard-interactive") + b"\xff",
    )  # at once: a success is not delayed
    assert t.auth_failures == 0
    # a method not remaining is refused and counted
    svc.ssh_USERAUTH_REQUEST(
        NS(b"alice") + NS(b"ssh-connection") + NS(b"password") + b"\0" + NS(PW)
    )
    assert t.auth_failures == 1 and t.packets[-1][1] == NS(b"keyboard-interactive") + b"\x00"
    svc.ssh_USERAUTH_REQUEST(_kbd())
    svc.ssh_USERAUTH_INFO_RESPONSE(_answer(PW))
    assert t.replies()[-1] == userauth.MSG_USERAUTH_SUCCESS


def test_message_61_reaches_the_info_response_handler(tmp_path: Path) -> None:
    svc, t, clock = _service(tmp_path)
    svc.ssh_USERAUTH_REQUEST(_kbd())
    svc.packetReceived(61, _answer(PW))  # Conch's dispatch by protocolMessages
    assert t.replies()[-1] == userauth.MSG_USERAUTH_SUCCESS
