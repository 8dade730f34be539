"""Hooks with the real reactor and real processes: command, HTTP receiver, timeout kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by init) counts as dead
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][0] != "Z"


@pytest.mark.e2e
def test_command_and_http_hooks_with_a_real_reactor(tmp_path: Path) -> None:
    root = HERE.parent
    out = subprocess.run(
        [sys.executable, "-m", "tests.hooks_driver", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    event = summary["event"]
    ingest = summary["ingest"]
    assert json.loads(ingest["stdin"]) == event and ingest["argv"] == ["arg"]
    env = ingest["env"]
    assert env["SFTPD_PATH"] == "/incoming/a b.txt" and env["SFTPD_USER"] == "alice"
    assert env["SFTPD_AUTH"] == "SHA256:abc" and env["SFTPD_CLIENT"] == "127.0.0.1:40000"
    assert env["PATH"] == "/usr/bin:/bin"
    # exactly one POST got through (the hook on /elsewhere/* did not match), after a retry
    assert summary["received"] == [{"body": event, "type": "application/json"}]
    order = summary["order"]
    assert order[:2] == ["http 503", "http ok"]
    assert "others done while slow runs" in order and order[-1] == "idle"
    assert "slow hook killed" not in out.stderr  # log lines go nowhere here
    # the slow hook and the sleep it started were killed at the timeout (process group)
    pid = int((tmp_path / "slow.pid").read_text())
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "the hook's child outlived the timeout kill"
        time.sleep(0.05)
