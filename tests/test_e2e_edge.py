"""The network edge wired into a real sftpd: bans, connection limits, per-user sources and
sessions, idle timeout, from real client source addresses (127.0.0.1 and 127.0.0.2...)."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from typing import Any

import pytest

from tests.sources import connect_from, refused_at_accept, wrong_passwords_until_refused
from tests.support import ALICE_PASSWORD, Env, wait_for

paramiko = pytest.importorskip("paramiko")
pytestmark = pytest.mark.e2e

NO_DELAY = "auth_failure_delay = 0"


def _sock(env: Env, source: str = "127.0.0.1") -> socket.socket:
    return connect_from(env.port, source)


def _transport(env: Env, source: str = "127.0.0.1") -> Any:
    t = paramiko.Transport(_sock(env, source))
    t.start_client(timeout=30)
    return t


def _password_login(env: Env, source: str, password: str = ALICE_PASSWORD) -> bool:
    t = _transport(env, source)
    try:
        t.auth_password("alice", password, fallback=False)
        return bool(t.is_authenticated())
    except paramiko.AuthenticationException:
        return False
    finally:
        t.close()


def _refused_at_accept(env: Env, source: str = "127.0.0.1") -> bool:
    return refused_at_accept(env.port, source)


def test_failed_logins_ban_the_source_not_others_and_the_ban_ends(make_server: Any) -> None:
    env = make_server(
        server_extra=NO_DELAY,
        # 6 s: long enough that a loaded machine still sees the ban before it ends
        tail="[defender]\nsafe_list = []\nthreshold = 15\nban_time = 0.1\n",
    )
    tries = wrong_passwords_until_refused(env.port, "127.0.0.1")
    assert tries == 15, env.server.log_text()[-2000:]
    assert _refused_at_accept(env, "127.0.0.1")
    assert _password_login(env, "127.0.0.2")  # another source is not banned
    assert env.server.log_text().count("source banned: source=127.0.0.1 ") == 1
    assert wait_for(lambda: not _refused_at_accept(env, "127.0.0.1"), timeout=20)
    assert _password_login(env, "127.0.0.1")


def test_unknown_user_scores_more(make_server: Any) -> None:
    env = make_server(
        server_extra=NO_DELAY, tail="[defender]\nsafe_list = []\nthreshold = 4\nban_time = 1\n"
    )
    for i in range(2):  # 2 points each: banned after the second
        t = _transport(env, "127.0.0.3")
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_password("mallory", f"x{i}", fallback=False)
        t.close()
    assert wait_for(lambda: _refused_at_accept(env, "127.0.0.3"))
    assert "source banned: source=127.0.0.3 " in env.server.log_text()


def test_safe_list_is_never_banned(make_server: Any) -> None:
    env = make_server(server_extra=NO_DELAY, tail="[defender]\nthreshold = 2\n")
    for i in range(4):
        assert not _password_login(env, "127.0.0.1", f"wrong-{i}")
    assert _password_login(env, "127.0.0.1")


def test_max_connections_per_source(make_server: Any) -> None:
    env = make_server(server_extra="max_connections_per_source = 3")
    held = [_sock(env, "127.0.0.4") for _ in range(3)]
    try:
        for s in held:
            assert s.recv(4).startswith(b"SSH-")
        assert _refused_at_accept(env, "127.0.0.4")
        assert _password_login(env, "127.0.0.5")  # another source still gets in
        held.pop().close()
        assert wait_for(lambda: not _refused_at_accept(env, "127.0.0.4"))
    finally:
        for s in held:
            s.close()
    assert "reason=max_connections_per_source" in env.server.log_text()


def test_silent_flood_does_not_stop_an_openssh_login(make_server: Any) -> None:
    env = make_server(server_extra="login_grace_time = 60")  # the edge defaults otherwise
    flood = []
    try:
        for i in range(300):
            source = f"127.0.0.{2 + i % 3}"
            try:
                flood.append(_sock(env, source))
            except OSError:
                pass
        started = time.monotonic()
        env.sftp("put /etc/hostname flooded.txt\n", timeout=30)
        took = time.monotonic() - started
        assert (env.alice.root / "flooded.txt").read_bytes() == open("/etc/hostname", "rb").read()
        assert took < 5, f"login took {took:.1f} s under the flood"
    finally:
        for s in flood:
            s.close()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _flood_once(env: Env, source: str) -> socket.socket | None:
    """One silent connection from ``source``: the socket if the server admitted it (it
    sent its banner), else None (closed unanswered at accept)."""
    try:
        s = _sock(env, source)
    except OSError:
        return None
    try:
        s.settimeout(10)
        if s.recv(4).startswith(b"SSH-"):
            return s
    except OSError:
        pass
    s.close()
    return None


def test_flood_from_many_sources_does_not_stop_an_openssh_login(make_server: Any) -> None:
    """12 flooding sources can fill max_startups' full (100) with the defaults
    (max_connections_per_source 20). A newcomer then evicts a flooding connection instead
    of being refused until login_grace_time; the flood goes on during the login, and
    its sources, holding several each, evict one another, never the newcomer."""
    import resource
    import threading

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < want:  # ours and the server's (inherited): 300 flood sockets and more
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    held: list[socket.socket] = []
    try:
        env = make_server(
            server_extra="login_grace_time = 60",
            # 127.0.0.1 is not safe-listed here; a high threshold keeps every flooding
            # source unbanned (evicted connections score no_auth), the flood at its worst
            tail='[metrics]\nlisten = "127.0.0.1:0"\n'
            "[defender]\nsafe_list = []\nthreshold = 100000\n",
        )
        pid = env.server.proc.pid
        base = _rss_kib(pid)
        sources = [f"127.0.0.{i}" for i in range(2, 14)]
        attempts = 0
        while len(held) < 300 and attempts < 3000:
            s = _flood_once(env, sources[attempts % len(sources)])
            attempts += 1
            if s is not None:
                held.append(s)
        log = env.server.log_text()
        assert "reason=max_startups" in log, log[-2000:]  # the flood got to full

        stop = threading.Event()

        def go_on() -> None:
            i = 0
            while not stop.is_set() and i < 2000:
                s = _flood_once(env, sources[i % len(sources)])
                i += 1
                if s is not None:
                    held.append(s)

        flooding = threading.Thread(target=go_on, daemon=True)
        flooding.start()
        try:
            started = time.monotonic()
            env.sftp("put /etc/hostname flooded-many.txt\n", timeout=30)
            took = time.monotonic() - started
        finally:
            stop.set()
            flooding.join(30)
        got = (env.alice.root / "flooded-many.txt").read_bytes()
        assert got == open("/etc/hostname", "rb").read()
        assert took < 5, f"login took {took:.1f} s under the flood"
        log = env.server.log_text()
        assert "connection evicted: peer=127.0.0." in log
        assert "connection evicted: peer=127.0.0.1 " not in log
        assert len(held) >= 300  # admitted over time; the server holds at most 100
        # every eviction is counted, and logged one line per 10 s (with a count)
        assert 1 <= log.count("connection evicted: ") < 10
        url = next(
            line.split("metrics on ", 1)[1].strip()
            for line in env.server.lines
            if "metrics on http://" in line
        )
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        counted = re.search(r'sftpd_connections_refused_total\{reason="evicted"\} (\S+)', text)
        assert counted is not None and float(counted.group(1)) >= len(held) - 100, text
        grown = _rss_kib(pid) - base
        assert grown < 64 * 1024, f"the server grew {grown} KiB under the flood"
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_allowed_sources_checked_with_the_client_address(make_server: Any) -> None:
    env = make_server(server_extra=NO_DELAY, alice_extra='allowed_sources = ["127.0.0.6/32"]')
    assert not _password_login(env, "127.0.0.1")
    assert _password_login(env, "127.0.0.6")
    log = env.server.log_text()
    assert "login refused:" in log and "reason=source not in allowed_sources" in log


def test_max_sessions_per_user_over_connections(make_server: Any) -> None:
    env = make_server(server_extra=NO_DELAY, alice_extra="max_sessions = 1")
    first = _transport(env)
    try:
        first.auth_password("alice", ALICE_PASSWORD, fallback=False)
        assert first.is_authenticated()
        assert not _password_login(env, "127.0.0.1")
    finally:
        first.close()
    assert wait_for(lambda: _password_login(env, "127.0.0.1"))
    assert "reason=max_sessions (1) reached" in env.server.log_text()


def test_idle_timeout_closes_an_idle_session_not_a_slow_download(make_server: Any) -> None:
    env = make_server(server_extra="idle_timeout = 2")
    env.alice.root.mkdir(parents=True, exist_ok=True)
    data = bytes(range(256)) * 4096  # 1 MiB
    (env.alice.root / "slow.bin").write_bytes(data)
    key = paramiko.Ed25519Key.from_private_key_file(str(env.key_path))

    idle = _transport(env)
    idle.auth_publickey("alice", key)
    idle_sftp = paramiko.SFTPClient.from_transport(idle)
    assert idle_sftp is not None
    idle_sftp.listdir("/")

    slow = _transport(env)
    slow.auth_publickey("alice", key)
    sftp = paramiko.SFTPClient.from_transport(slow)
    assert sftp is not None
    got = bytearray()
    with sftp.open("/slow.bin", "rb") as f:
        # about 6 s, three idle timeouts, with a request and its data every 0.4 s
        while len(got) < len(data):
            got += f.read(len(data) // 16)
            time.sleep(0.4)
    assert bytes(got) == data
    assert slow.is_active()
    assert not idle.is_active()
    assert env.server.log_text().count("idle timeout:") == 1
    slow.close()
    idle.close()


def test_client_alive_interval_closes_a_frozen_client_not_a_live_one(make_server: Any) -> None:
    import os
    import signal
    import subprocess

    env = make_server(server_extra="client_alive_interval = 1\nidle_timeout = 0")
    live = _transport(env)  # paramiko answers each probe (with REQUEST_FAILURE)
    live.auth_publickey("alice", paramiko.Ed25519Key.from_private_key_file(str(env.key_path)))
    frozen = subprocess.Popen(
        ["ssh", *env.ssh_opts(port_flag="-p"), "-N", "alice@127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: env.server.log_text().count("auth ok:") == 2, timeout=30), (
            env.server.log_text()[-3000:]
        )
        os.kill(frozen.pid, signal.SIGSTOP)  # the TCP connection stays, nobody answers
        assert wait_for(lambda: "client alive timeout:" in env.server.log_text(), timeout=30)
        assert live.is_active()
        assert env.server.log_text().count("client alive timeout:") == 1
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.kill()
        frozen.wait()
        live.close()
