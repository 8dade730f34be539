"""Bans shared through PostgreSQL by two sftpd nodes, `sftpd ban`, and bans as events."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pgcluster import Cluster, start_cluster
from tests.sources import connect_from, refused_at_accept, wrong_passwords_until_refused
from tests.support import (
    ALICE_PASSWORD,
    SftpdProcess,
    start_sftpd,
    toml_str,
    wait_for,
    write_config,
)
from tests.support import User as TomlUser

paramiko = pytest.importorskip("paramiko")
pytestmark = pytest.mark.e2e

THRESHOLD = 15
HOOK = """\
import sys
with open(sys.argv[1], "a") as f:
    f.write(sys.stdin.read().strip() + "\\n")
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Node:
    def __init__(self, proc: SftpdProcess, work: Path, metrics: int) -> None:
        self.proc = proc
        self.work = work
        self.metrics = metrics

    @property
    def port(self) -> int:
        return self.proc.port

    def lines(self, name: str) -> list[dict[str, Any]]:
        path = self.work / name
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def audit(self, op: str) -> list[dict[str, Any]]:
        return [e for e in self.lines("audit.jsonl") if e["op"] == op]

    def metric(self, sample: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                if f"{s.name}{{{labels}}}" == sample or (not labels and s.name == sample):
                    return float(s.value)
        return 0.0

    def ban(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sftpd", "ban", *args, "--config", str(self.proc.config_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip


@pytest.fixture
def nodes(cluster: Cluster, tmp_path: Path, host_keys_dir: Path) -> Iterator[list[Node]]:
    """Two servers on one fresh database, the same users (one root, shared storage), each
    with its own audit log, hook and metrics port; loopback is not safe-listed here."""
    url = cluster.new_database()
    (tmp_path / "hook.py").write_text(HOOK)
    alice = TomlUser("alice", tmp_path / "shared-root", None, ALICE_PASSWORD)
    out: list[Node] = []
    try:
        for i in range(2):
            work = tmp_path / f"node{i}"
            work.mkdir()
            port = _free_port()
            tail = "\n".join(
                [
                    f'[users_db]\nurl = "{url}"',
                    f"[defender]\nsafe_list = []\nthreshold = {THRESHOLD}\nban_time = 2",
                    "score_no_auth = 0",  # the probes below must not earn a ban themselves
                    f"[audit]\nfile = {toml_str(str(work / 'audit.jsonl'))}",
                    f'[metrics]\nlisten = "127.0.0.1:{port}"',
                    '[[hooks]]\non = ["ban", "refused", "unban"]',
                    f"command = [{toml_str(sys.executable)}, {toml_str(str(tmp_path / 'hook.py'))}"
                    f", {toml_str(str(work / 'hooked.jsonl'))}]",
                ]
            )
            cfg = tmp_path / f"node{i}.toml"
            write_config(cfg, [alice], host_keys_dir, "auth_failure_delay = 0", tail)
            out.append(Node(start_sftpd(cfg), work, port))
        yield out
    finally:
        for n in out:
            n.proc.stop()


_sock = connect_from  # the client's source address: 127.0.0.1 or 127.0.0.2


def _login(port: int, source: str, password: str = ALICE_PASSWORD) -> bool:
    t = paramiko.Transport(_sock(port, source))
    try:
        t.start_client(timeout=30)
        t.auth_password("alice", password, fallback=False)
        return bool(t.is_authenticated())
    except (paramiko.SSHException, EOFError, OSError):  # refused, or a wrong password
        return False
    finally:
        t.close()


_refused = refused_at_accept  # closed at accept, before a byte of SSH


def test_a_ban_earned_at_node_a_is_refused_at_node_b(nodes: list[Node]) -> None:
    a, b = nodes
    tries = wrong_passwords_until_refused(a.port, "127.0.0.1")
    assert tries == THRESHOLD, a.proc.log_text()[-2000:]
    # Node B reads the ban from the database at its next tick (every 5 s).
    assert wait_for(lambda: _refused(b.port, "127.0.0.1"), timeout=15, interval=1.0), (
        b.proc.log_text()[-2000:]
    )
    assert _login(b.port, "127.0.0.2")  # another source still logs in at B
    assert _login(a.port, "127.0.0.2")
    assert b.proc.log_text().count("banned source refused: source=127.0.0.1 ") == 1

    listed = b.ban("list", "--json")
    assert listed.returncode == 0, listed.stderr
    (ban,) = json.loads(listed.stdout)
    assert (ban["source"], ban["count"], ban["reason"]) == ("127.0.0.1", 1, "score")
    assert 60 < ban["seconds_left"] <= 120

    # The events: A banned it, B refused it (once), each says so in its audit log and hook.
    assert wait_for(lambda: len(a.audit("ban")) == 1)
    (banned,) = a.audit("ban")
    assert (banned["client"], banned["outcome"], banned["reason"]) == (
        "127.0.0.1",
        "denied",
        "score",
    )
    assert wait_for(lambda: len(b.audit("refused")) == 1) and b.audit("ban") == []
    assert wait_for(lambda: any(e["op"] == "ban" for e in a.lines("hooked.jsonl")))
    assert wait_for(lambda: any(e["op"] == "refused" for e in b.lines("hooked.jsonl")))
    assert a.metric('sftpd_bans_total{reason="score"}') == 1
    assert b.metric('sftpd_bans_total{reason="score"}') == 0
    assert b.metric('sftpd_connections_refused_total{reason="banned"}') >= 1

    # Lifted from the command line: both nodes let it in again within a tick.
    res = a.ban("remove", "127.0.0.1")
    assert res.returncode == 0 and "lifted the ban on 127.0.0.1" in res.stdout
    assert wait_for(lambda: _login(b.port, "127.0.0.1"), timeout=15)
    assert wait_for(lambda: _login(a.port, "127.0.0.1"), timeout=15)
    assert json.loads(b.ban("list", "--json").stdout) == []
    assert wait_for(lambda: len(a.audit("unban")) == 1)


def test_a_database_down_stops_nothing_and_the_ban_is_written_when_it_is_back(
    cluster: Cluster, nodes: list[Node]
) -> None:
    a, b = nodes
    cluster.stop()
    try:
        for i in range(50):
            if not _login(a.port, "127.0.0.1", f"wrong-{i}") and _refused(a.port, "127.0.0.1"):
                break
        assert "source banned: source=127.0.0.1 " in a.proc.log_text()  # banned all the same
        assert _refused(a.port, "127.0.0.1") and _login(a.port, "127.0.0.2")
        assert wait_for(lambda: "ban store unavailable" in a.proc.log_text(), timeout=20)
        time.sleep(12)  # a few more ticks that fail: still one line
        assert a.proc.log_text().count("ban store unavailable") == 1
        assert not _refused(b.port, "127.0.0.1")  # B cannot know yet
    finally:
        cluster.start()
    assert wait_for(lambda: _refused(b.port, "127.0.0.1"), timeout=30, interval=1.0), (
        a.proc.log_text()[-2000:]
    )
    assert "ban store answers again" in a.proc.log_text()
    assert a.proc.proc.poll() is None and b.proc.proc.poll() is None


def test_sftpd_ban_add_refuses_everywhere_and_remove_lets_in(nodes: list[Node]) -> None:
    a, b = nodes
    assert _login(a.port, "127.0.0.3") and _login(b.port, "127.0.0.3")
    res = b.ban("add", "127.0.0.3", "--minutes", "5")
    assert res.returncode == 0, res.stderr
    assert wait_for(
        lambda: _refused(a.port, "127.0.0.3") and _refused(b.port, "127.0.0.3"), 15, 1.0
    )
    assert _login(a.port, "127.0.0.4")
    table = a.ban("list")
    assert table.returncode == 0 and table.stdout.splitlines()[1].split()[0] == "127.0.0.3"
    assert "manual" in table.stdout
    assert wait_for(lambda: len(a.audit("refused")) == 1 and len(b.audit("refused")) == 1)
    assert b.ban("remove", "127.0.0.3").returncode == 0
    assert wait_for(lambda: _login(a.port, "127.0.0.3") and _login(b.port, "127.0.0.3"), 15)
    assert a.proc.proc.poll() is None and b.proc.proc.poll() is None


def test_workers_share_bans_through_sqlite(make_server: Any) -> None:
    """With workers = 2 each worker scores on its own, but a ban earned at one is refused by
    both (the SQLite file of [users_db]); so is one added with `sftpd ban add`."""
    env = make_server(
        server_extra="workers = 2\nauth_failure_delay = 0",
        tail='[users_db]\nurl = "sqlite:users.db"\n[defender]\nsafe_list = []\n'
        f"threshold = {THRESHOLD}\nscore_no_auth = 0\nban_time = 2\n",  # probes do not score
    )
    port = env.port

    def all_refused(source: str) -> bool:
        return all(_refused(port, source) for _ in range(20))  # 20 source ports: both workers

    def earn_ban(source: str) -> dict[str, int]:
        """Wrong passwords from ``source`` until a worker bans it: failures per worker pid."""
        for i in range(60):
            assert not _login(port, source, f"wrong-{i}")
            if any(_refused(port, source) for _ in range(4)):  # 4 probes: both workers
                break
        assert wait_for(lambda: f"source banned: source={source} " in env.server.log_text())
        time.sleep(0.5)  # the rest of the workers' lines
        pattern = rf"auth failed: conn=(\d+)-\d+ peer={re.escape(source)}:"
        return dict(Counter(re.findall(pattern, env.server.log_text())))

    # Scores are per worker: whichever reaches the threshold first bans. Another source
    # if both happened to (then neither proves anything; the other one rarely gets there).
    for source in ("127.0.0.1", "127.0.0.11", "127.0.0.12"):
        failures = earn_ban(source)
        if len(failures) == 2 and min(failures.values()) < THRESHOLD:
            break
    else:
        pytest.fail(f"no source was banned by one worker alone: {failures}")
    # The worker short of the threshold refuses it too once it has read the table.
    assert wait_for(lambda: all_refused(source), timeout=15, interval=1.0), failures

    cfg = str(env.server.config_path)
    ban = [sys.executable, "-m", "sftpd", "ban"]
    res = subprocess.run([*ban, "add", "127.0.0.6", "--config", cfg], capture_output=True)
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: all_refused("127.0.0.6"), timeout=15, interval=1.0)
    assert _login(port, "127.0.0.7")
    res = subprocess.run([*ban, "remove", "127.0.0.6", "--config", cfg], capture_output=True)
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: not any(_refused(port, "127.0.0.6") for _ in range(20)), 15, 1.0)
