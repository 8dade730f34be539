"""contrib/sftpd.service parses with systemd-analyze and keeps what bubblewrap needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "sftpd.service"


def test_unit_keeps_bwrap_working_and_drains() -> None:
    text = UNIT.read_text()
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in text.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert lines["NoNewPrivileges"] == "yes" and lines["CapabilityBoundingSet"] == ""
    assert lines["AmbientCapabilities"] == ""  # bwrap refuses inherited capabilities
    assert {"user", "mnt", "pid", "ipc", "net"} <= set(lines["RestrictNamespaces"].split())
    assert lines["KillMode"] == "mixed"  # one SIGTERM, to the supervisor: a drain
    assert lines["Type"] in ("exec", "notify") and lines["User"] == "sftpd"
    for key in ("ProtectSystem", "ReadWritePaths", "PrivateTmp"):
        assert lines[key]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "sftpd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/sftpd", "/bin/true"))
    res = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "sftpd.service" not in res.stderr, res.stderr
