"""sftpd's transport and userauth together in memory: per-connection limits and grace time."""

# The tests drive untyped Conch objects (client transports, iosim).
# mypy: disable-error-code="no-untyped-call,union-attr"

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from twisted.conch.avatar import ConchUser
from twisted.conch.ssh import userauth
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.transport import (
    DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
    DISCONNECT_PROTOCOL_ERROR,
)
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from sftpd.auth.checkers import PasswordChecker, PublicKeyChecker
from sftpd.auth.users import TomlUserStore
from sftpd.config.model import UserConfig
from sftpd.runtime.threads import InlineBlocking
from sftpd.ssh.factory import ConnectionTransport, Factory
from sftpd.ssh.transport import MAX_PACKET_BEFORE_KEYS
from sftpd.ssh.userauth import AuthSettings, UserAuthServer
from tests.test_ssh_transport import (
    CLIENT_VERSION,
    HOST_KEY,
    MSG_DISCONNECT,
    MSG_SERVICE_REQUEST,
    ConchClient,
    kexinit,
    plain_packet,
    policy,
    sent_messages,
)

PW = b"right-password"
MSG_SERVICE_ACCEPT, MSG_IGNORE = 6, 2


class _Realm:
    def requestAvatar(self, avatar_id: bytes, mind: Any, *ifaces: Any) -> Any:
        return ifaces[0], ConchUser(), lambda: None


def make_factory(tmp: Path, clock: Clock, **settings: Any) -> Factory:
    users = TomlUserStore.from_config(
        [UserConfig(name="alice", root=tmp, password_hash=bcrypt.hashpw(PW, bcrypt.gensalt(4)))]
    )
    portal = Portal(_Realm())  # type: ignore[arg-type]
    dummy = bcrypt.hashpw(b"x", bcrypt.gensalt(4))
    portal.registerChecker(PasswordChecker(users, InlineBlocking(), dummy))
    portal.registerChecker(PublicKeyChecker(users))
    return Factory(
        portal=portal,
        host_keys={b"ssh-ed25519": HOST_KEY},
        policy=policy(),
        auth_settings=AuthSettings(**settings),
        clock=clock,
    )


class AuthClient(ConchClient):
    """Conch's client transport, sending userauth messages by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted = 0

    def ssh_SERVICE_ACCEPT(self, packet: bytes) -> None:
        self.accepted += 1

    def replies(self) -> list[int]:
        return [n for n, _ in self.received]


def connect(
    tmp: Path, **settings: Any
) -> tuple[ConnectionTransport, AuthClient, Clock, iosim.IOPump]:
    clock = Clock()
    factory = make_factory(tmp, clock, **settings)
    client, server, pump = iosim.connectedServerAndClient(
        lambda: factory.buildProtocol(None), AuthClient
    )
    pump.flush()
    assert server.completed_kex == 1 and client.secure == 1
    return server, client, clock, pump


def password(client: AuthClient, secret: bytes) -> None:
    """As paramiko's auth_password: SERVICE_REQUEST ssh-userauth, then the request."""
    client.sendPacket(MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
    body = NS(b"alice") + NS(b"ssh-connection") + NS(b"password") + b"\x00" + NS(secret)
    client.sendPacket(userauth.MSG_USERAUTH_REQUEST, body)


# -- the attempt count belongs to the connection ----------------------------------------------


def test_max_auth_tries_holds_when_ssh_userauth_is_requested_before_each_try(
    tmp_path: Path,
) -> None:
    server, client, clock, pump = connect(tmp_path, max_auth_tries=6, failure_delay=1.0)
    services = set()
    tries = 0
    while tries < 30 and not client.errors:
        password(client, b"wrong%d" % tries)
        tries += 1
        pump.flush()
        services.add(id(server.service))
        clock.advance(1.0)
        pump.flush()
    assert len(services) == 1  # requested again, accepted, the one service kept
    assert tries == 6 and client.accepted == 6
    assert client.errors == [DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE]
    assert client.replies() == [userauth.MSG_USERAUTH_FAILURE] * 5
    assert server.auth_failures == 6 and server.transport.disconnecting


def test_right_password_after_re_requests_logs_in_and_ssh_userauth_is_then_refused(
    tmp_path: Path,
) -> None:
    server, client, clock, pump = connect(tmp_path, failure_delay=0)
    for secret in (b"wrong", PW):
        password(client, secret)
        pump.flush()
        clock.advance(0)
        pump.flush()
    assert client.replies() == [userauth.MSG_USERAUTH_FAILURE, userauth.MSG_USERAUTH_SUCCESS]
    assert server.service.name == b"ssh-connection"
    client.sendPacket(MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))  # would restart login
    pump.flush()
    assert client.errors == [DISCONNECT_PROTOCOL_ERROR] and server.transport.disconnecting


# -- the login grace time runs from the TCP connect ----------------------------------------------


def started(tmp: Path, grace: float) -> tuple[ConnectionTransport, StringTransport, Clock]:
    clock = Clock()
    server = make_factory(tmp, clock, login_grace_time=grace).buildProtocol(None)
    tr = StringTransport()
    server.makeConnection(tr)
    return server, tr, clock


def _disconnect_code(tr: StringTransport) -> int | None:
    for msg, body in sent_messages(tr):
        if msg == MSG_DISCONNECT:
            return int(struct.unpack(">I", body[:4])[0])
    return None


@pytest.mark.parametrize(
    "sent",
    [b"", CLIENT_VERSION, CLIENT_VERSION + kexinit([b"curve25519-sha256"])],
    ids=["silent", "banner-only", "mid-kex"],
)
def test_grace_time_closes_a_connection_that_never_logs_in(tmp_path: Path, sent: bytes) -> None:
    server, tr, clock = started(tmp_path, 20)
    server.dataReceived(sent)
    clock.advance(19.9)
    assert not tr.disconnecting and _disconnect_code(tr) is None
    clock.advance(0.2)
    assert _disconnect_code(tr) == DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
    assert tr.disconnecting and not tr.disconnected  # closing, once the DISCONNECT is out
    clock.advance(5)  # a peer that does not read it is cut off
    assert tr.disconnected
    assert not clock.getDelayedCalls()  # nothing left behind (no rekey timer either)


def test_grace_time_is_cancelled_by_a_login_and_by_a_close(tmp_path: Path) -> None:
    server, client, clock, pump = connect(tmp_path, login_grace_time=30, failure_delay=0)
    password(client, PW)
    pump.flush()
    assert client.replies() == [userauth.MSG_USERAUTH_SUCCESS]
    clock.advance(31)
    pump.flush()
    assert not client.errors and not server.transport.disconnecting
    server2, tr, clock2 = started(tmp_path, 30)
    server2.connectionLost(None)
    assert not clock2.getDelayedCalls()


def test_no_service_grace_timer_of_its_own(tmp_path: Path) -> None:
    # Only the connection's timer: a re-requested (or new) userauth service adds none.
    server, client, clock, pump = connect(tmp_path, login_grace_time=30)
    before = len(clock.getDelayedCalls())
    client.sendPacket(MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
    pump.flush()
    assert isinstance(server.service, UserAuthServer)
    assert len(clock.getDelayedCalls()) == before


# -- packets before NEWKEYS are at most 256 KiB ----------------------------------------------------


def test_packets_before_newkeys_are_limited_to_256_kib(tmp_path: Path) -> None:
    server, tr, clock = started(tmp_path, 120)
    body = b"\0" * (MAX_PACKET_BEFORE_KEYS - 100)
    server.dataReceived(CLIENT_VERSION + plain_packet(MSG_IGNORE, NS(body)))
    assert _disconnect_code(tr) is None  # under the limit: fine
    head = struct.pack(">IB", MAX_PACKET_BEFORE_KEYS + 12, 10)
    server.dataReceived(head + b"\0" * 4096)  # declared over the limit: refused at once
    assert _disconnect_code(tr) == DISCONNECT_PROTOCOL_ERROR


def test_packets_after_newkeys_may_be_larger(tmp_path: Path) -> None:
    server, client, clock, pump = connect(tmp_path)
    client.sendIgnore(b"x" * (MAX_PACKET_BEFORE_KEYS + 100_000))
    pump.flush()
    assert not client.errors and not server.transport.disconnecting
