"""End to end: real clients against sftpd with [audit], [metrics] and [[hooks]] on."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import Env, toml_str, wait_for

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
