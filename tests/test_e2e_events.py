"""End to end: real clients against sftpd with [audit], [metrics] and [[hooks]] on."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import Env, askpass_env, have, toml_str, wait_for

pytestmark = pytest.mark.e2e

HOOK = """import json, os, sys
event = json.load(sys.stdin)
event["env_path"] = os.environ.get("SFTPD_PATH", "")
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(event) + "\\n")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _events_server(make_server: Any, tmp_path: Path, *, hook_on: str = '"upload"') -> Env:
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    tail = "\n".join(
        [
            "[audit]",
            f"file = {toml_str(str(tmp_path / 'audit.jsonl'))}",
            "[metrics]",
            f'listen = "127.0.0.1:{_free_port()}"',
            "[[hooks]]",
            f"on = [{hook_on}]",
            f"command = [{toml_str(sys.executable)}, {toml_str(str(script))}, "
            f"{toml_str(str(tmp_path / 'hooked.jsonl'))}]",
            "timeout = 20",
        ]
    )
    env: Env = make_server(tail=tail)
    env.alice.root.mkdir(exist_ok=True)
    return env


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _audit(env: Env, count: int) -> list[dict[str, Any]]:
    """The audit lines once there are at least ``count`` (the writer flushes each second)."""
    path = env.tmp / "audit.jsonl"
    wait_for(lambda: len(_lines(path)) >= count, timeout=10)
    return _lines(path)


def _ops(events: list[dict[str, Any]], *ops: str) -> list[dict[str, Any]]:
    return [e for e in events if e["op"] in ops]


def test_openssh_sftp_put_get_rm_rename_mkdir(make_server: Any, tmp_path: Path) -> None:
    env = _events_server(make_server, tmp_path)
    data = os.urandom(300_000)
    (tmp_path / "local.bin").write_bytes(data)
    env.sftp(
        "mkdir /in\nput local.bin /in/a.bin\nget /in/a.bin back.bin\n"
        "rename /in/a.bin /in/b.bin\nrm /in/b.bin\nrmdir /in\n"
    )
    assert (tmp_path / "back.bin").read_bytes() == data
    events = _audit(env, 7)
    kinds = [e["op"] for e in events]
    assert kinds == ["login", "mkdir", "upload", "download", "rename", "delete", "rmdir"]
    login, mkdir, up, down, rename, delete, rmdir = events
    assert login["auth"].startswith("SHA256:") and login["user"] == "alice"
    assert up["path"] == "/in/a.bin" and up["outcome"] == "ok"
    assert up["bytes"] == up["size"] == len(data)
    assert up["sha256"] == hashlib.sha256(data).hexdigest()
    assert up["protocol"] == "sftp" and up["session"] == login["session"]
    assert up["client"] == login["client"] and up["client"].startswith("127.0.0.1:")
    assert down["path"] == "/in/a.bin" and down["bytes"] == len(data)
    assert (rename["path"], rename["target"]) == ("/in/a.bin", "/in/b.bin")
    assert delete["path"] == "/in/b.bin" and mkdir["path"] == rmdir["path"] == "/in"
    assert str(env.alice.root) not in (tmp_path / "audit.jsonl").read_text()
    hooked = tmp_path / "hooked.jsonl"
    assert wait_for(lambda: len(_lines(hooked)) >= 1, timeout=10)
    (hook,) = _lines(hooked)
    assert hook["op"] == "upload" and hook["env_path"] == "/in/a.bin"
    assert hook["sha256"] == up["sha256"]


def _paramiko(env: Env) -> Any:
    import paramiko

    transport = paramiko.Transport(("127.0.0.1", env.port))
    transport.connect(
        username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(str(env.key_path))
    )
    return transport, paramiko.SFTPClient.from_transport(transport)


def test_temporary_names_then_rename_give_one_upload_under_the_final_name(
    make_server: Any, tmp_path: Path
) -> None:
    env = _events_server(make_server, tmp_path)
    transport, sftp = _paramiko(env)
    contents = {"/r.bin": os.urandom(70_000), "/w.bin": os.urandom(5000)}
    temps = {"/r.bin": "/r.bin.a1b2.partial", "/w.bin": "/w.bin.filepart"}
    for final, temp in temps.items():
        with sftp.open(temp, "wb") as f:
            f.write(contents[final])
        sftp.posix_rename(temp, final)
    transport.close()
    events = _audit(env, 3)
    ups = _ops(events, "upload")
    assert [u["path"] for u in ups] == ["/r.bin", "/w.bin"]
    for u in ups:
        assert u["outcome"] == "ok" and u["size"] == len(contents[u["path"]])
        assert u["sha256"] == hashlib.sha256(contents[u["path"]]).hexdigest()
    assert not _ops(events, "rename")  # the rename is the upload's completion
    assert not any("part" in e["path"] for e in events)
    hooked = tmp_path / "hooked.jsonl"
    assert wait_for(lambda: len(_lines(hooked)) >= 2, timeout=10)
    assert sorted(h["path"] for h in _lines(hooked)) == ["/r.bin", "/w.bin"]


def test_an_upload_cut_off_is_incomplete_and_no_ok_hook_runs(
    make_server: Any, tmp_path: Path
) -> None:
    env = _events_server(make_server, tmp_path)
    transport, sftp = _paramiko(env)
    f = sftp.open("/cut.bin", "wb")
    f.write(os.urandom(100_000))
    f.flush()
    # atomic uploads (the default): the bytes land in sftpd's own hidden temporary
    assert wait_for(lambda: [p.stat().st_size for p in env.alice.root.iterdir()] == [100_000])
    transport.sock.close()  # the connection drops: no CLOSE ever arrives
    events = _audit(env, 2)
    (up,) = _ops(events, "upload")
    assert up["path"] == "/cut.bin" and up["outcome"] == "incomplete"  # never the temporary
    assert wait_for(lambda: list(env.alice.root.iterdir()) == []), env.server.log_text()[-3000:]
    assert up["bytes"] == 100_000 and up["sha256"] is None
    # a later upload's hook runs: had the cut one fired, it would be there first
    env.sftp(f"put {tmp_path / 'hook.py'} /later.py\n")
    hooked = tmp_path / "hooked.jsonl"
    assert wait_for(lambda: len(_lines(hooked)) >= 1, timeout=10)
    assert [h["path"] for h in _lines(hooked)] == ["/later.py"]


@pytest.mark.skipif(not have("rclone"), reason="rclone is not installed")
def test_rclone_copy_of_a_tree_gives_one_upload_per_file(make_server: Any, tmp_path: Path) -> None:
    env = _events_server(make_server, tmp_path)
    local = tmp_path / "tree"
    files = {"a.bin": 1, "b.bin": 40_000, "sub/c.bin": 3_000_000, "sub/deep/d.bin": 100_000}
    for name, size in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(os.urandom(size))
    renv = dict(os.environ)
    renv.update(
        RCLONE_CONFIG_SRV_TYPE="sftp",
        RCLONE_CONFIG_SRV_HOST="127.0.0.1",
        RCLONE_CONFIG_SRV_PORT=str(env.port),
        RCLONE_CONFIG_SRV_USER="alice",
        RCLONE_CONFIG_SRV_KEY_FILE=str(env.key_path),
    )
    cmd = ["rclone", "--config", str(tmp_path / "rclone.conf"), "--retries", "1"]
    res = subprocess.run(
        [*cmd, "copy", str(local), "SRV:up"], capture_output=True, text=True, env=renv, timeout=300
    )
    assert res.returncode == 0, res.stderr
    want = {f"/up/{n}": hashlib.sha256((local / n).read_bytes()).hexdigest() for n in files}
    assert wait_for(lambda: len(_ops(_lines(tmp_path / "audit.jsonl"), "upload")) >= 4)
    ups = _ops(_audit(env, 1), "upload")
    assert sorted(u["path"] for u in ups) == sorted(want)
    assert {u["path"]: u["sha256"] for u in ups} == want
    assert all(u["outcome"] == "ok" for u in ups)


def test_scp_upload_is_one_upload_event(make_server: Any, tmp_path: Path) -> None:
    env = _events_server(make_server, tmp_path)
    data = os.urandom(50_000)
    (tmp_path / "s.bin").write_bytes(data)
    res = subprocess.run(
        ["scp", "-O", *env.ssh_opts(), str(tmp_path / "s.bin"), "alice@127.0.0.1:/s.bin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: _ops(_lines(tmp_path / "audit.jsonl"), "upload"))
    (up,) = _ops(_audit(env, 2), "upload")
    assert up["protocol"] == "scp" and up["path"] == "/s.bin" and up["size"] == len(data)
    assert up["sha256"] == hashlib.sha256(data).hexdigest()


def test_metrics_count_what_happened_and_rotation_with_sighup_continues(
    make_server: Any, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    env = _events_server(make_server, tmp_path)
    (tmp_path / "m.bin").write_bytes(b"m" * 1000)
    env.sftp("put m.bin /m1.bin\nput m.bin /m2.bin\nget /m1.bin m.back\n")
    audit = tmp_path / "audit.jsonl"
    assert wait_for(lambda: len(_ops(_lines(audit), "download")) == 1)
    url = next(
        line.split("metrics on ", 1)[1].strip()
        for line in env.server.lines
        if "metrics on http://" in line
    )
    res = subprocess.run(["curl", "-sf", url], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(res.stdout)
        for s in family.samples
    }
    ops = "sftpd_operations_total"
    assert samples[(ops, (("operation", "upload"), ("outcome", "ok")))] == 2
    assert samples[(ops, (("operation", "download"), ("outcome", "ok")))] == 1
    assert samples[("sftpd_received_bytes_total", (("protocol", "sftp"),))] == 2000
    assert samples[("sftpd_sent_bytes_total", (("protocol", "sftp"),))] == 1000
    auths = ("sftpd_authentications_total", (("method", "publickey"), ("result", "ok")))
    assert samples[auths] == 1
    assert samples[("sftpd_connections_total", ())] >= 1
    assert samples[("sftpd_sessions_total", (("protocol", "sftp"),))] == 1
    assert ("sftpd_worker_queue_length", ()) in samples
    health = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url.replace("metrics", "healthz")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert health.stdout == "200"
    # logrotate "create": rename, then SIGHUP; the next lines go to a new file
    audit.rename(tmp_path / "audit.jsonl.1")
    env.server.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "SIGHUP" in env.server.log_text())
    env.sftp("rm /m2.bin\n")
    assert wait_for(lambda: _ops(_lines(audit), "delete"), timeout=10)
    assert [e["op"] for e in _lines(audit)] == ["login", "delete"]
    assert len(_lines(tmp_path / "audit.jsonl.1")) == 4


@pytest.mark.skipif(not (have("rsync") and have("bwrap")), reason="rsync or bwrap missing")
def test_rsync_of_a_tree_gives_one_upload_per_file_and_a_summary(
    make_server: Any, tmp_path: Path
) -> None:
    env = _events_server(make_server, tmp_path)
    local = tmp_path / "rtree"
    files = {"a.txt": 10, "sub/b.bin": 70_000, "sub/deep/c.bin": 1000}
    for name, size in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(os.urandom(size))
    rsh = " ".join(["ssh", *env.ssh_opts(port_flag="-p")])
    res = subprocess.run(
        ["rsync", "-a", "-e", rsh, f"{local}/", "alice@127.0.0.1:dest/"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr + env.server.log_text()[-2000:]
    audit = tmp_path / "audit.jsonl"
    assert wait_for(lambda: _ops(_lines(audit), "session"), timeout=10)
    events = _lines(audit)
    ups = _ops(events, "upload")
    assert sorted(u["path"] for u in ups) == sorted(f"/dest/{n}" for n in files)
    assert {u["path"]: u["size"] for u in ups} == {f"/dest/{n}": s for n, s in files.items()}
    assert all(u["protocol"] == "rsync" and u["outcome"] == "ok" for u in ups)
    assert not any(e["path"].rsplit("/", 1)[-1].startswith(".") for e in events)
    (summary,) = _ops(events, "session")
    assert summary["protocol"] == "rsync" and summary["bytes"] >= sum(files.values())


SLEEPER = """import os, sys, time
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
time.sleep(60)
"""

RECEIVER = """import sys
from twisted.internet import reactor
from twisted.web import resource, server

class Hook(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        with open(sys.argv[1], "ab") as f:
            f.write(request.content.read().rstrip(b"\\n") + b"\\n")
        return b"ok"

port = reactor.listenTCP(0, server.Site(Hook()), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_slow_hook_spares_a_parallel_session_and_is_killed_at_its_timeout(
    make_server: Any, tmp_path: Path
) -> None:
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(SLEEPER)
    pidfile = tmp_path / "hook.pid"
    tail = "\n".join(
        [
            "[audit]",
            f"file = {toml_str(str(tmp_path / 'audit.jsonl'))}",
            "[[hooks]]",
            'on = ["upload"]',
            f"command = [{toml_str(sys.executable)}, {toml_str(str(sleeper))}, "
            f"{toml_str(str(pidfile))}]",
            "timeout = 4",
        ]
    )
    env: Env = make_server(tail=tail)
    env.alice.root.mkdir(exist_ok=True)
    (tmp_path / "x.bin").write_bytes(os.urandom(20_000))
    env.sftp("put x.bin /first.bin\n")
    assert wait_for(pidfile.exists, timeout=10)
    pid = int(pidfile.read_text())
    # a second session's transfers complete while the hook sleeps
    env.sftp("put x.bin /second.bin\nget /second.bin x.back\n")
    assert (tmp_path / "x.back").read_bytes() == (tmp_path / "x.bin").read_bytes()
    assert _alive(pid)
    assert wait_for(lambda: not _alive(pid), timeout=20)
    assert wait_for(lambda: "ran longer than 4" in env.server.log_text(), timeout=10)


def test_an_http_hook_receives_the_event_as_json(make_server: Any, tmp_path: Path) -> None:
    script = tmp_path / "receiver.py"
    script.write_text(RECEIVER)
    got = tmp_path / "posted.jsonl"
    receiver = subprocess.Popen(
        [sys.executable, str(script), str(got)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        tail = "\n".join(
            ["[[hooks]]", 'on = ["upload", "mkdir"]', f'url = "http://127.0.0.1:{port}/hook"']
        )
        env: Env = make_server(tail=tail)
        env.alice.root.mkdir(exist_ok=True)
        (tmp_path / "h.bin").write_bytes(b"hello hook\n")
        env.sftp("mkdir /drop\nput h.bin /drop/h.bin\n")
        assert wait_for(lambda: len(_lines(got)) >= 2, timeout=20)
        mkdir, up = _lines(got)
        assert (mkdir["op"], mkdir["path"]) == ("mkdir", "/drop")
        assert (up["op"], up["path"], up["size"]) == ("upload", "/drop/h.bin", 11)
        assert up["sha256"] == hashlib.sha256(b"hello hook\n").hexdigest()
    finally:
        receiver.terminate()
        receiver.wait(10)


def test_a_refusal_is_a_denied_event_naming_the_rule(make_server: Any, tmp_path: Path) -> None:
    tail = f"[audit]\nfile = {toml_str(str(tmp_path / 'audit.jsonl'))}"
    env: Env = make_server(tail=tail, alice_extra="read_only = true")
    env.alice.root.mkdir(exist_ok=True)
    (tmp_path / "d.bin").write_bytes(b"no")
    res = env.sftp("put d.bin /d.bin\n", check=False)
    assert res.returncode != 0
    assert not (env.alice.root / "d.bin").exists()
    events = _audit(env, 2)
    (denied,) = _ops(events, "upload")
    assert denied["outcome"] == "denied" and denied["path"] == "/d.bin"
    assert denied["reason"] and denied["sha256"] is None


def test_a_failed_login_is_a_login_failed_event(make_server: Any, tmp_path: Path) -> None:
    env = _events_server(make_server, tmp_path, hook_on='"login_failed"')
    opts = [*env.ssh_opts(port_flag="-p", key=False), "-o", "PreferredAuthentications=password"]
    cmd = ["ssh", *opts, "-o", "NumberOfPasswordPrompts=1", "alice@127.0.0.1", "true"]
    res = subprocess.run(  # (sftp -b would never ask for a password: it sets BatchMode)
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=askpass_env(tmp_path, "not the password"),
    )
    assert res.returncode != 0
    events = _audit(env, 1)
    (failed,) = _ops(events, "login_failed")
    assert (failed["user"], failed["outcome"], failed["auth"]) == ("alice", "denied", "password")
    assert "not the password" not in (tmp_path / "audit.jsonl").read_text()
    hooked = tmp_path / "hooked.jsonl"
    assert wait_for(lambda: len(_lines(hooked)) >= 1, timeout=10)
    assert _lines(hooked)[0]["op"] == "login_failed"


def test_openssh_cp_copy_data_counts_its_bytes_as_a_read_and_a_write(
    make_server: Any, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    env = _events_server(make_server, tmp_path)
    data = os.urandom(200_000)
    (tmp_path / "c.bin").write_bytes(data)
    # OpenSSH's sftp `cp` needs copy-data: the server copies, no byte crosses the wire
    env.sftp("put c.bin /c.bin\ncp /c.bin /copy.bin\n")
    assert (env.alice.root / "copy.bin").read_bytes() == data
    audit = tmp_path / "audit.jsonl"
    assert wait_for(lambda: len(_ops(_lines(audit), "upload", "download")) == 3)
    events = {(e["op"], e["path"]): e for e in _ops(_lines(audit), "upload", "download")}
    first, down = events[("upload", "/c.bin")], events[("download", "/c.bin")]
    copy = events[("upload", "/copy.bin")]
    assert (first["op"], first["path"], first["bytes"]) == ("upload", "/c.bin", len(data))
    assert (down["op"], down["path"], down["bytes"]) == ("download", "/c.bin", len(data))
    assert (copy["op"], copy["path"], copy["outcome"]) == ("upload", "/copy.bin", "ok")
    assert copy["bytes"] == copy["size"] == len(data) and copy["sha256"] is None
    url = next(
        line.split("metrics on ", 1)[1].strip()
        for line in env.server.lines
        if "metrics on http://" in line
    )
    res = subprocess.run(["curl", "-sf", url], capture_output=True, text=True, timeout=30)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(res.stdout)
        for s in family.samples
    }
    assert samples[("sftpd_received_bytes_total", (("protocol", "sftp"),))] == 2 * len(data)
    assert samples[("sftpd_sent_bytes_total", (("protocol", "sftp"),))] == len(data)
