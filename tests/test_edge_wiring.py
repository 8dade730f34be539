"""The edge wired in: its keys read by the config loader, and SIGTERM draining (task.Clock)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from twisted.conch.ssh import userauth
from twisted.internet import task

from sftpd.auth.users import user_from_config
from sftpd.config.loader import load_config
from sftpd.config.model import Config
from sftpd.edge.config import DefenderConfig, EdgeConfig, UserEdge
from sftpd.edge.gate import Edge, EdgeConnection, make_edge
from sftpd.edge.limits import Startups
from sftpd.edge.networks import Networks
from sftpd.errors import ConfigError
from sftpd.runtime.drain import Drain
from sftpd.ssh.userauth import AuthSettings
from tests.test_auth_inmemory import PW, _password_request, _user

USER = '[[users]]\nname = "alice"\nroot = "data"\npassword_hash = "$2b$04$' + "a" * 53 + '"\n'


def test_edge_keys_are_read_into_config_edge(tmp_path: Path) -> None:
    config = load_config_text(
        tmp_path,
        "[server]\nmax_connections = 7\nmax_connections_per_source = 2\n"
        'max_startups = "3:50:9"\nidle_timeout = 5\nclient_alive_interval = 4\n'
        'shutdown_grace = 1.5\nproxy_protocol = "required"\nproxy_allowed = ["10.0.0.5"]\n'
        "[defender]\nthreshold = 3\nban_time = 0.05\nsafe_list = []\n"
        + USER
        + 'max_sessions = 2\nallowed_sources = ["192.0.2.0/24"]\n',
    )
    e = config.edge
    assert (e.limits.max_connections, e.limits.max_connections_per_source) == (7, 2)
    assert e.limits.max_startups == Startups(3, 50, 9)
    assert (e.idle_timeout, e.client_alive_interval, e.shutdown_grace) == (5, 4, 1.5)
    assert e.proxy.mode == "required" and e.proxy.allowed.contains("10.0.0.5")
    assert (e.defender.threshold, e.defender.ban_time) == (3, 0.05)
    assert not e.defender.safe_list.contains("127.0.0.1")
    u = config.users[0].edge
    assert u.max_sessions == 2 and u.allows("192.0.2.9") and not u.allows("127.0.0.1")


def load_config_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "sftpd.toml"
    path.write_text(text)
    return load_config(path)


def test_edge_defaults_without_keys(tmp_path: Path) -> None:
    config = load_config_text(tmp_path, USER)
    assert config.edge.limits.max_connections_per_source == 20
    assert config.edge.defender.enabled and config.edge.defender.safe_list.contains("127.0.0.1")
    assert config.users[0].edge.max_sessions == 0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nmax_startups = "9:30:3"\n', "server.max_startups"),
        ('[server]\nproxy_protocol = "on"\n', "server.proxy_protocol"),
        ('[server]\nproxy_protocol = "required"\n', "server.proxy_allowed"),
        ("[defender]\nban_time = 0\n", "defender.ban_time"),
        ("[defender]\nthreshhold = 3\n", "defender.threshhold"),
        ('[defender]\nsafe_list = ["10.0.0.0/33"]\n', "defender.safe_list[0]"),
    ],
)
def test_bad_edge_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(tmp_path, text + USER)
    assert f": {key}: " in str(info.value)


def test_bad_user_edge_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(tmp_path, USER + 'allowed_sources = ["nowhere"]\n')
    assert ": users[0].allowed_sources[0]: " in str(info.value)


class FakeReactor(task.Clock):
    def __init__(self) -> None:
        super().__init__()
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


def _drain(live: list[int], grace: float = 30) -> tuple[FakeReactor, Drain, list[str]]:
    reactor = FakeReactor()
    calls: list[str] = []
    drain = Drain(
        reactor,
        lambda: calls.append("stop_accepting"),
        lambda: live[0],
        grace,
        on_draining=lambda: calls.append("draining"),
    )
    return reactor, drain, calls


def test_sigterm_stops_accepting_and_waits_for_the_sessions() -> None:
    live = [2]
    reactor, drain, calls = _drain(live)
    drain.signalled(signal.SIGTERM)
    assert calls == ["stop_accepting", "draining"] and reactor.stopped == 0
    live[0] = 1
    drain.connection_closed()
    reactor.advance(29)
    assert reactor.stopped == 0
    live[0] = 0
    drain.connection_closed()
    assert reactor.stopped == 1
    reactor.advance(10)
    assert reactor.stopped == 1  # the grace timer was cancelled


def test_grace_over_stops_with_sessions_left() -> None:
    reactor, drain, _ = _drain([3], grace=5)
    drain.signalled(signal.SIGTERM)
    reactor.advance(4.9)
    assert reactor.stopped == 0
    reactor.advance(0.2)
    assert reactor.stopped == 1


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_stops_at_once(second: int) -> None:
    reactor, drain, _ = _drain([1])
    drain.signalled(signal.SIGTERM)
    drain.signalled(second)
    assert reactor.stopped == 1


def test_sigint_stops_at_once_and_nothing_open_stops_at_once() -> None:
    reactor, drain, calls = _drain([1])
    drain.signalled(signal.SIGINT)
    assert reactor.stopped == 1 and calls == []
    reactor, drain, _ = _drain([0])
    drain.signalled(signal.SIGTERM)
    assert reactor.stopped == 1


# -- userauth reports to the edge (in memory, task.Clock) --------------------------------


def _edge_service(
    tmp_path: Path, user_edge: UserEdge | None = None, host: str = "192.0.2.1"
) -> tuple[Any, Any, task.Clock, Edge, EdgeConnection]:
    from tests.test_auth_inmemory import _service

    svc, t, clock = _service(tmp_path, AuthSettings(failure_delay=0))
    record = user_from_config(_user(tmp_path, edge=user_edge or UserEdge()))

    class Avatar:
        user = record

    logouts: list[int] = []

    class Realm:
        def requestAvatar(self, avatar_id: bytes, mind: Any, *ifaces: Any) -> Any:
            return ifaces[0], Avatar(), lambda: logouts.append(1)

    svc.portal.realm = Realm()
    defender = DefenderConfig(threshold=3, safe_list=Networks())
    edge = make_edge(EdgeConfig(defender=defender), clock=clock)
    conn = edge.admit(host)
    assert conn is not None
    t.edge = conn
    t.logouts = logouts
    return svc, t, clock, edge, conn


def test_failed_attempts_score_the_source_and_success_resets(tmp_path: Path) -> None:
    svc, _t, clock, edge, conn = _edge_service(tmp_path)
    assert edge.defender is not None
    for i in range(2):
        svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", b"wrong%d" % i))
        clock.advance(1)
    assert conn.failures == 2 and not edge.defender.is_banned("192.0.2.1")
    svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", PW))
    assert conn.authenticated
    # the score is gone: three more failures are needed for a ban
    other = edge.admit("192.0.2.1")
    assert other is not None
    for _ in range(2):
        other.auth_failed()
    assert not edge.defender.is_banned("192.0.2.1")
    other.auth_failed()
    assert edge.defender.is_banned("192.0.2.1")


def test_unknown_user_scores_as_invalid(tmp_path: Path) -> None:
    svc, _t, clock, edge, _conn = _edge_service(tmp_path)
    assert edge.defender is not None
    svc.ssh_USERAUTH_REQUEST(_password_request(b"mallory", b"x"))  # 2 points
    clock.advance(1)
    assert not edge.defender.is_banned("192.0.2.1")
    svc.ssh_USERAUTH_REQUEST(_password_request(b"mallory", b"y"))
    clock.advance(1)
    assert edge.defender.is_banned("192.0.2.1")


def test_allowed_sources_refuses_a_right_password_from_elsewhere(tmp_path: Path) -> None:
    rules = UserEdge(allowed_sources=Networks(["10.0.0.0/8"]))
    svc, t, clock, _edge, conn = _edge_service(tmp_path, rules)
    svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", PW))
    clock.advance(1)
    assert not conn.authenticated and conn.failures == 1
    assert t.logouts == [1]  # the avatar the realm made is let go
    assert t.replies()[-1] == userauth.MSG_USERAUTH_FAILURE


def test_max_sessions_counts_over_connections_and_frees_on_close(tmp_path: Path) -> None:
    svc, _t, clock, edge, conn = _edge_service(tmp_path, UserEdge(max_sessions=1))
    svc.ssh_USERAUTH_REQUEST(_password_request(b"alice", PW))
    assert conn.authenticated and edge.sessions.count("alice") == 1
    second = edge.admit("192.0.2.2")
    assert second is not None
    assert second.login("alice", UserEdge(max_sessions=1)) == "max_sessions (1) reached"
    conn.closed()
    assert edge.sessions.count("alice") == 0
    assert second.login("alice", UserEdge(max_sessions=1)) is None
