"""The edge's config keys: defaults as the issue gives them, values, and error messages."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from sftpd.config.values import Values
from sftpd.edge.config import (
    SERVER_KEYS,
    EdgeConfig,
    check_edge,
    defender_checks,
    parse_edge,
    parse_user_edge,
    server_checks,
)
from sftpd.edge.limits import Startups
from sftpd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def errors(server: dict[str, Any], defender: Any = None) -> list[str]:
    v = Values("sftpd.toml", Path("."))
    parse_edge(server, {} if defender is None else defender, v)
    return [str(e) for e in v.errors]


def test_defaults_are_the_issues() -> None:
    e = check_edge({}, {}, "sftpd.toml")
    assert e == EdgeConfig()
    assert e.limits.max_connections == 2000
    assert e.limits.max_connections_per_source == 20
    assert e.limits.max_startups == Startups(10, 30, 100)
    assert (e.idle_timeout, e.client_alive_interval, e.shutdown_grace) == (900, 0, 30)
    assert e.proxy.mode == "off" and not e.proxy.allowed
    d = e.defender
    assert d.enabled and (d.observation_time, d.threshold, d.ban_time, d.ban_time_max) == (
        30,
        15,
        30,
        1440,
    )
    assert (d.score_invalid_user, d.score_auth_failed, d.score_no_auth) == (2, 1, 1)
    assert [str(n) for n in d.safe_list] == ["127.0.0.0/8"] and not d.block_list


def test_every_key_parses() -> None:
    e = check_edge(
        {
            "listen": ["127.0.0.1:22"],  # not the edge's: ignored here
            "max_connections": 0,
            "max_connections_per_source": 5,
            "max_startups": "3:50:9",
            "idle_timeout": 0.5,
            "client_alive_interval": 15,
            "shutdown_grace": 2.5,
            "proxy_protocol": "required",
            "proxy_allowed": ["10.0.0.5", "2001:db8::/64"],
        },
        {
            "enabled": False,
            "observation_time": 0.5,
            "threshold": 3,
            "ban_time": 0.05,
            "ban_time_max": 1,
            "score_invalid_user": 0,
            "score_auth_failed": 4,
            "score_no_auth": 5,
            "safe_list": [],
            "block_list": ["198.51.100.0/24"],
        },
        "sftpd.toml",
    )
    assert e.limits.max_connections == 0 and e.limits.max_startups == Startups(3, 50, 9)
    assert e.idle_timeout == 0.5 and e.shutdown_grace == 2.5
    assert e.proxy.allowed.contains("2001:db8::1") and not e.proxy.allowed.contains("10.0.0.6")
    d = e.defender
    assert not d.enabled and d.ban_time == 0.05 and d.score_invalid_user == 0
    assert not d.safe_list and d.block_list.contains("198.51.100.9")


@pytest.mark.parametrize(
    ("value", "want"), [("100", Startups(100, 100, 100)), (7, Startups(7, 100, 7))]
)
def test_max_startups_single_number_is_a_hard_limit(value: Any, want: Startups) -> None:
    assert check_edge({"max_startups": value}, {}, "f").limits.max_startups == want


@pytest.mark.parametrize(
    ("server_table", "defender", "message"),
    [
        (
            {"max_startups": "10:30"},
            {},
            'sftpd.toml: server.max_startups: expected "START:RATE:FULL" like "10:30:100"',
        ),
        ({"max_startups": "20:30:10"}, {}, "server.max_startups: expected"),
        ({"max_startups": "1:0:10"}, {}, "server.max_startups: expected"),
        ({"max_startups": True}, {}, "got boolean True"),
        ({"max_connections": -1}, {}, "server.max_connections: expected an integer from 0"),
        ({"max_connections_per_source": "20"}, {}, "got string '20'"),
        ({"idle_timeout": -5}, {}, "server.idle_timeout: expected a number of seconds from 0"),
        ({"proxy_protocol": "v2"}, {}, 'server.proxy_protocol: expected "off" or "optional"'),
        (
            {"proxy_protocol": "required"},
            {},
            'server.proxy_allowed: empty while proxy_protocol = "required"',
        ),
        ({"proxy_allowed": ["10.0.0.1/8"]}, {}, "server.proxy_allowed[0]: '10.0.0.1/8' has host"),
        ({"proxy_allowed": ["lb.example"]}, {}, "server.proxy_allowed[0]: 'lb.example' is not"),
        ({"proxy_allowed": "10.0.0.5"}, {}, "server.proxy_allowed: expected an array of strings"),
        ({}, {"ban_time": 0}, "defender.ban_time: expected a number of minutes above 0"),
        ({}, {"ban_time": 60, "ban_time_max": 30}, "defender.ban_time_max: 30 is less than"),
        ({}, {"threshold": 0}, "defender.threshold: expected an integer from 1"),
        ({}, {"score_auth_faild": 1}, 'defender.score_auth_faild: unknown key; did you mean "sc'),
        ({}, {"safe_list": ["127.0.0.0/33"]}, "defender.safe_list[0]: '127.0.0.0/33' is not"),
        ({}, {"enabled": "yes"}, "defender.enabled: expected a boolean"),
        ({}, [1], "defender: expected a table ([defender])"),
    ],
)
def test_errors_name_file_key_and_expectation(
    server_table: dict[str, Any], defender: Any, message: str
) -> None:
    got = errors(server_table, defender)
    assert len(got) == 1 and message in got[0], got
    assert got[0].startswith("sftpd.toml: ")


def test_check_edge_raises_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"server\.max_startups"):
        check_edge({"max_startups": "x"}, {}, "sftpd.toml")


def test_per_user_keys() -> None:
    v = Values("sftpd.toml", Path("."))
    u = parse_user_edge(
        {"name": "alice", "max_sessions": 2, "allowed_sources": ["10.0.0.0/8"]}, "users[0]", v
    )
    assert v.errors == [] and u.max_sessions == 2
    assert u.allows("10.1.1.1") and not u.allows("192.0.2.1")
    assert parse_user_edge({}, "users[0]", v).allows("192.0.2.1")  # [] = any
    parse_user_edge({"max_sessions": -1, "allowed_sources": ["x"]}, "users[1]", v)
    assert [e.key for e in v.errors] == ["users[1].max_sessions", "users[1].allowed_sources[0]"]


def test_checks_cover_the_issues_key_list() -> None:
    v = Values("f", Path("."))
    assert (
        set(server_checks(v))
        == set(SERVER_KEYS)
        == {
            "max_connections",
            "max_connections_per_source",
            "max_startups",
            "idle_timeout",
            "client_alive_interval",
            "shutdown_grace",
            "proxy_protocol",
            "proxy_allowed",
        }
    )
    assert set(defender_checks(v)) == {
        "enabled",
        "observation_time",
        "threshold",
        "ban_time",
        "ban_time_max",
        "score_invalid_user",
        "score_auth_failed",
        "score_no_auth",
        "safe_list",
        "block_list",
    }


def _uncomment(text: str, marker: str) -> str:
    """The commented block after ``marker`` in config.example.toml, uncommented."""
    lines = text.splitlines()
    out = []
    for line in lines[lines.index(marker) + 1 :]:
        if line in ("#", "") or line.startswith("# ---") or not line.startswith("# "):
            break
        if not line.startswith("# #"):
            out.append(line[2:])
    return "\n".join(out)


def test_example_documents_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text()
    server = tomllib.loads(_uncomment(text, "# --- edge keys of [server] ---"))["server"]
    defender = tomllib.loads(
        _uncomment(text, "# --- [defender]: per-source penalties and bans ---")
    )
    assert set(server) == set(SERVER_KEYS)
    assert set(defender["defender"]) == set(defender_checks(Values("f", Path("."))))
    assert check_edge(server, defender["defender"], "example") == EdgeConfig()
    users = tomllib.loads(_uncomment(text, "# --- edge keys of each [[users]] entry ---"))
    v = Values("example", Path("."))
    u = parse_user_edge(users["users"][0], "users[0]", v)
    assert v.errors == [] and u.max_sessions == 0 and not u.allowed_sources
    assert set(users["users"][0]) == {"max_sessions", "allowed_sources"}


def test_the_edge_config_imports_no_twisted() -> None:
    """config/ is sans-IO (docs/architecture.md): the edge's config part must be too."""
    import subprocess
    import sys

    code = (
        "import sys, sftpd.edge.config\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope'))\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
