"""End-to-end: `sftpd serve` with no config serves ./data on 127.0.0.1:2222 to the invoking user."""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import askpass_env, start_sftpd

pytestmark = pytest.mark.e2e


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_embedded_default_serves_data_dir(tmp_path: Path, client_key: tuple[Path, str]) -> None:
    if not _port_free(2222):
        pytest.skip("port 2222 is in use on this machine; the embedded default needs it")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(client_key[0].with_suffix(".pub"), home / ".ssh" / "id_ed25519.pub")
    work = tmp_path / "work"
    work.mkdir()
    # cwd is not the checkout: make `python -m sftpd` import this checkout's package, not
    # whichever sftpd the venv has installed
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        server = start_sftpd(None, cwd=work, env=env)  # type: ignore[arg-type]
    except RuntimeError as e:
        if "127.0.0.1:2222: Address already in use" in str(e):
            pytest.skip("port 2222 was taken meanwhile; the embedded default needs it")
        raise
    try:
        assert server.port == 2222 and server.host == "127.0.0.1"
        out = server.log_text()
        user = getpass.getuser()
        assert f"sftp -P 2222 {user}@127.0.0.1" in out
        assert re.search(r"SHA256:[A-Za-z0-9+/]{43}", out)
        assert "(ECDSA)" not in out  # generated, but not offered with algorithms = "modern"
        assert sorted(p.name for p in (work / "keys").iterdir() if not p.name.endswith(".pub")) == [
            "ssh_host_ecdsa_key",
            "ssh_host_ed25519_key",
            "ssh_host_rsa_key",
        ]
        # with the key from ~/.ssh/id_*.pub
        src = tmp_path / "hello.txt"
        src.write_bytes(b"embedded default works\n")
        opts = [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-P",
            "2222",
        ]
        res = subprocess.run(
            [
                "sftp",
                *opts,
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-i",
                str(client_key[0]),
                "-b",
                "-",
                f"{user}@127.0.0.1",
            ],
            input=f"put {src} hello.txt\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert (work / "data" / "hello.txt").read_bytes() == src.read_bytes()
        # and with the random password printed once
        m = re.search(r"password \(shown only now\): (\S+)", out)
        assert m, out
        res = subprocess.run(
            [
                "sftp",
                *opts,
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "PubkeyAuthentication=no",
                f"{user}@127.0.0.1",
            ],
            input="get hello.txt copy.txt\n",
            capture_output=True,
            text=True,
            timeout=60,
            env=askpass_env(tmp_path, m.group(1)),
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "copy.txt").read_bytes() == src.read_bytes()
    finally:
        assert server.stop() == 0


def test_json_log_lines(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = make_server(server_extra='log_format = "json"')
    env.sftp("ls\n")
    env.ssh(None, "-T")
    env.server.stop()
    # every line is JSON: the banner and "listening on" lines too
    records = [json.loads(line) for line in env.server.lines]
    assert any(r.get("event") == "banner" for r in records)
    listening = next(r for r in records if r.get("event") == "listening")
    assert listening["message"] == f"sftpd: listening on 127.0.0.1:{env.port}"
    events = {r.get("event") for r in records}
    assert {"connection_open", "connection_close", "auth_success", "session_close"} <= events
    auth = next(r for r in records if r.get("event") == "auth_success")
    assert auth["user"] == "alice" and auth["method"] == "publickey"
    assert auth["key_fingerprint"].startswith("SHA256:") and auth["peer"].startswith("127.0.0.1:")
    assert "keyinfo" not in auth
    close = next(r for r in records if r.get("event") == "session_close")
    opened = next(r for r in records if r.get("event") == "connection_open")
    assert close["conn"] == opened["conn"] == auth["conn"] and close["peer"] == opened["peer"]
    # no Python byte reprs, and Conch's chatter is not at info
    assert not [r for r in records if "b'" in r["message"]]
    chatter = ("channel open", "sending close 0")
    assert not [r for r in records if r["message"] in chatter or "Starting factory" in r["message"]]
    assert close["bytes_in"] > 0 and close["bytes_out"] > 0
