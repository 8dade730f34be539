"""Log lines: client strings capped and escaped, peers formatted, Conch chatter at debug."""

from __future__ import annotations

import io
import json
import re

import paramiko
import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger

from sftpd.log import CLIP_CHARS, LineObserver, clip, hostport, make_observer, peer_text
from tests.conftest import ServerFactory
from tests.support import wait_for

# ---- clip -------------------------------------------------------------------------------


def test_clip_caps_long_bytes_and_shows_the_original_length() -> None:
    shown = clip(b"a" * 200_000)
    assert shown == "'" + "a" * CLIP_CHARS + "…' (200000 bytes)"


def test_clip_keeps_a_plain_word_bare() -> None:
    assert clip(b"alice") == "alice"
    assert clip(b"md5sum") == "md5sum"
    assert clip("alice@example.com") == "alice@example.com"


def test_clip_quotes_text_with_spaces_so_it_cannot_look_like_more_fields() -> None:
    assert clip(b"scp -r -p -t x") == "'scp -r -p -t x'"
    assert clip(b"x peer=10.0.0.1:22") == "'x peer=10.0.0.1:22'"
    assert clip(b"peer=10.0.0.1:22") == "'peer=10.0.0.1:22'"  # not even one fake field
    assert clip(b"it's") == "'it\\'s'"
    assert clip(b"") == "''"


def test_clip_escapes_control_characters_and_backslashes() -> None:
    assert clip(b"a\nb\rc\x1b[31m\\") == "'a\\nb\\rc\\x1b[31m\\\\'"
    # a forged second log line is impossible
    assert "\n" not in clip(b"x\n2026-01-01T00:00:00Z [sftpd.auth] info: auth ok: user=root")
    assert clip("right-to-left \u202e override") == "'right-to-left \\u202e override'"


def test_clip_decodes_with_replacement() -> None:
    assert clip(b"caf\xc3\xa9") == "café"
    assert clip(b"bad\xff") == "'bad\ufffd'"  # not a plain word: quoted


def test_clip_counts_escapes_against_the_cap() -> None:
    shown = clip(b"\x00" * 1000)
    assert shown.endswith("…' (1000 bytes)")
    assert len(shown) < CLIP_CHARS + 30
    assert "\\x0…" not in shown  # never cut in the middle of an escape


def test_clip_of_text_says_characters() -> None:
    assert clip("é" * 300, 10) == "'" + "é" * 10 + "…' (300 characters)"
    assert clip("x" * 300, 10, quote=False) == "x" * 10 + "… (300 characters)"


# ---- addresses --------------------------------------------------------------------------


def test_hostport_brackets_ipv6() -> None:
    assert hostport("127.0.0.1", 22) == "127.0.0.1:22"
    assert hostport("::1", 44484) == "[::1]:44484"


class _Tcp:
    def __init__(self, addr: object) -> None:
        self._addr = addr

    def getPeer(self) -> object:
        return self._addr


def test_peer_text_of_ipv4_and_ipv6_peers() -> None:
    assert peer_text(_Tcp(IPv4Address("TCP", "10.1.2.3", 5555))) == "10.1.2.3:5555"
    assert peer_text(_Tcp(IPv6Address("TCP", "::1", 44484))) == "[::1]:44484"
    assert peer_text(None) == "?"


# ---- the observer -----------------------------------------------------------------------


def _text_line(fmt: str = "text", **fields: object) -> str:
    out = io.StringIO()
    observer = make_observer(fmt, "info", out)
    log = Logger(namespace="sftpd.test", observer=observer)
    log.info("exec: user={user} command={command}", **fields)
    return out.getvalue()


def test_bytes_fields_are_text_in_the_line_not_python_reprs() -> None:
    line = _text_line(user="alice", command=b"scp -r -p -t x")
    assert line.endswith("info: exec: user=alice command='scp -r -p -t x'\n")
    assert "b'" not in line


def test_json_fields_are_capped_text_without_quotes() -> None:
    record = json.loads(_text_line("json", user="alice", command=b"scp -t " + b"y" * 1000))
    assert record["command"] == "scp -t " + "y" * (CLIP_CHARS - 7) + "… (1007 bytes)"
    assert record["message"].startswith("exec: user=alice command='scp -t yyy")
    assert record["message"].endswith("…' (1007 bytes)")


def test_own_strings_with_newlines_stay_on_one_line() -> None:
    out = io.StringIO()
    LineObserver(out)(
        {"log_format": "why: {why}", "why": "first\nsecond", "log_namespace": "sftpd.x"}
    )
    assert out.getvalue().count("\n") == 1 and "first\\nsecond" in out.getvalue()


class _ConchLike:
    """A class with a descriptor Logger, as Conch's channels and factories have."""

    _log = Logger()

    def say(self, level: str) -> None:
        getattr(self._log, level)("channel open")


_ConchLike.__module__ = "sftpd.ssh.channel"  # Conch's namespace is our subclass's name


@pytest.mark.parametrize("level", ["info", "debug"])
def test_conch_info_chatter_shows_only_at_debug(level: str) -> None:
    out = io.StringIO()
    observer = make_observer("text", level, out)
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(observer)
    try:
        _ConchLike().say("info")
        _ConchLike().say("warn")
        Logger(namespace="sftpd.ssh.channel").info("session closed: ours")
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = out.getvalue().splitlines()
    assert any(line.endswith("warn: channel open") for line in lines)
    assert any(line.endswith("info: session closed: ours") for line in lines)
    chatter = [line for line in lines if line.endswith("debug: channel open")]
    assert len(chatter) == (1 if level == "debug" else 0)
    assert not [line for line in lines if line.endswith("info: channel open")]


# ---- end to end -------------------------------------------------------------------------


@pytest.mark.e2e
def test_e2e_huge_user_name_does_not_flood_the_log(make_server: ServerFactory) -> None:
    env = make_server()
    before = len(env.server.log_text())
    name = "a" * 200_000
    transport = paramiko.Transport(("127.0.0.1", env.port))
    try:
        transport.connect()
        for _ in range(3):
            with pytest.raises(paramiko.AuthenticationException):
                transport.auth_password(name, "wrong")
    finally:
        transport.close()
    assert wait_for(lambda: "connection closed" in env.server.log_text()[before:])
    added = env.server.log_text()[before:]
    assert len(added) < 4000, added[:2000]
    failures = re.findall(r"auth failed: .* user='a+…' \(200000 bytes\) method=password", added)
    assert len(failures) == 3


@pytest.mark.e2e
def test_e2e_huge_exec_command_is_capped(make_server: ServerFactory) -> None:
    env = make_server()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        port=env.port,
        username="alice",
        key_filename=str(env.key_path),
        allow_agent=False,
        look_for_keys=False,
    )
    try:
        before = len(env.server.log_text())
        _stdin, stdout, _stderr = client.exec_command("echo " + "z" * 100_000)
        assert stdout.channel.recv_exit_status() != 0
    finally:
        client.close()
    assert wait_for(lambda: "session closed" in env.server.log_text()[before:])
    added = env.server.log_text()[before:]
    assert len(added) < 4000, added[:2000]
    assert re.search(
        r"exec: conn=\S+ peer=\S+ user=alice command='echo z+…' \(100005 bytes\)", added
    )


@pytest.mark.e2e
def test_e2e_workers_log_json_only(make_server: ServerFactory) -> None:
    """With workers, the supervisor's lines (listening, a worker's restart) are JSON too."""
    import os
    import signal
    from pathlib import Path

    env = make_server(server_extra='workers = 2\nlog_format = "json"')
    sup = env.server.proc.pid
    children = Path(f"/proc/{sup}/task/{sup}/children")
    assert wait_for(lambda: len(children.read_text().split()) == 2, timeout=20)
    victim = int(children.read_text().split()[0])
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: "worker_exit" in env.server.log_text(), timeout=20)
    for _ in range(4):
        env.ssh(None, "-T")
    env.server.stop()
    records = [json.loads(line) for line in env.server.lines]
    exit_record = next(r for r in records if r.get("event") == "worker_exit")
    assert exit_record["pid"] == victim and exit_record["level"] == "warn"
    opened = [r["conn"] for r in records if r.get("event") == "connection_open"]
    assert len(opened) == 4 and len(set(opened)) == 4
