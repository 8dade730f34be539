"""contrib/fail2ban: fail2ban-regex over the log of a real sftpd after real failed logins."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest

from tests.conftest import ServerFactory
from tests.support import Env, askpass_env, have, wait_for

FILTER = Path(__file__).resolve().parent.parent / "contrib" / "fail2ban" / "filter.d" / "sftpd.conf"
JAIL = FILTER.parent.parent / "jail.d" / "sftpd.conf"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have("fail2ban-regex"), reason="fail2ban is not installed"),
]


def _paramiko_password(env: Env, user: str, password: str) -> None:
    transport = paramiko.Transport(("127.0.0.1", env.port))
    try:
        transport.connect()
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password(user, password)
    finally:
        transport.close()


def _failed_logins(env: Env, tmp_path: Path) -> None:
    """Wrong password, unknown user, too many attempts, a refused key, then a good login."""
    _paramiko_password(env, "alice", "wrong-password")
    _paramiko_password(env, "mallory", "whatever")
    # OpenSSH asks again after each failure: max_auth_tries = 3 ends it with a disconnect
    res = subprocess.run(
        [
            "ssh",
            *env.ssh_opts(port_flag="-p", key=False),
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "NumberOfPasswordPrompts=5",
            "alice@127.0.0.1",
            "true",
        ],
        env=askpass_env(tmp_path, "also-wrong"),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert res.returncode != 0
    # a key the server does not know: a query refused, which is not an attack
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    res = subprocess.run(
        [
            "ssh",
            *env.ssh_opts(port_flag="-p", key=False),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(other),
            "alice@127.0.0.1",
            "true",
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert res.returncode != 0
    env.sftp("ls\n")  # and one good login
    assert wait_for(lambda: env.server.log_text().count("connection closed") >= 5)
    env.server.stop()


def _regex(log: Path, out: str, mode: str = "normal") -> list[str]:
    res = subprocess.run(
        ["fail2ban-regex", "-o", out, str(log), f"{FILTER}[mode={mode}]"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return [line for line in res.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_fail2ban_filter_matches_real_failures(
    make_server: ServerFactory, tmp_path: Path, log_format: str
) -> None:
    env = make_server(
        server_extra=f'max_auth_tries = 3\nauth_failure_delay = 0\nlog_format = "{log_format}"'
    )
    _failed_logins(env, tmp_path)
    log = tmp_path / "sftpd.log"
    log.write_text(env.server.log_text() + "\n")
    text = log.read_text()
    assert "auth ok:" in text and "key refused:" in text and "(invalid user)" in text

    matched = _regex(log, "msg")
    # paramiko: alice's wrong password, the invalid user mallory; OpenSSH: three wrong
    # passwords, then the disconnect for too many
    assert len(matched) == 6, "\n".join(matched)
    assert sum("auth failed:" in line for line in matched) == 5
    assert sum("(invalid user)" in line for line in matched) == 1
    assert sum("code=14" in line for line in matched) == 1
    assert not [line for line in matched if "auth ok" in line or "key refused" in line]
    assert set(_regex(log, "ip")) == {"127.0.0.1"}
    if log_format == "json":
        assert all(json.loads(line) for line in matched)

    # aggressive: also the four connections that closed before authenticating
    aggressive = _regex(log, "msg", "aggressive")
    assert len(aggressive) == 10, "\n".join(aggressive)
    assert sum("preauth" in line for line in aggressive) == 4
    assert not [line for line in aggressive if "user=alice" in line and "connection closed" in line]


def test_fail2ban_filter_reads_ipv6_peers_and_ignores_forged_names(tmp_path: Path) -> None:
    log = tmp_path / "forged.log"
    log.write_text(
        "2026-12-03T16:57:42Z [sftpd.auth] info: auth failed: conn=1-1 peer=[2001:db8::7]:40000 "
        "user=alice method=password\n"
        # a user name trying to plant another address is quoted, after the real peer
        "2026-12-03T16:57:43Z [sftpd.auth] info: auth failed: conn=1-2 peer=192.0.2.9:40001 "
        "user='x peer=198.51.100.1:1 user=' method=password (invalid user)\n"
        "2026-12-03T16:57:44Z [sftpd.auth] info: auth ok: conn=1-3 peer=192.0.2.10:40002 "
        "user=alice method=publickey key=SHA256:x\n"
    )
    assert _regex(log, "ip") == ["2001:db8::7", "192.0.2.9"]


@pytest.mark.skipif(not Path("/etc/fail2ban/jail.conf").exists(), reason="no fail2ban config")
def test_jail_loads_with_the_filter(tmp_path: Path) -> None:
    """fail2ban-client reads the jail and filter as installed the way the jail file says."""
    conf = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf)
    for old in (conf / "jail.d").iterdir():
        old.unlink()
    shutil.copy(FILTER, conf / "filter.d" / "sftpd.conf")
    log = tmp_path / "sftpd.log"
    log.write_text("")
    jail = JAIL.read_text().replace("/var/log/sftpd.log", str(log))
    (conf / "jail.d" / "sftpd.conf").write_text(jail)
    res = subprocess.run(
        ["fail2ban-client", "-c", str(conf), "-d"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    dump = res.stdout
    assert "['add', 'sftpd', 'auto']" in dump and "['start', 'sftpd']" in dump
    assert f"['set', 'sftpd', 'addlogpath', '{log}', 'head']" in dump
    assert "^auth failed: conn=" in dump and "preauth" not in dump  # mode = normal
