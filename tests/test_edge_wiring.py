"""The edge wired in: its keys read by the config loader, and SIGTERM draining (task.Clock)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from twisted.internet import task

from sftpd.config.model import Config, load_config
from sftpd.edge.limits import Startups
from sftpd.errors import ConfigError
from sftpd.runtime.drain import Drain

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
