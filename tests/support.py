"""Test support: start a real sftpd subprocess on 127.0.0.1 (ephemeral port) and drive clients."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

ALICE_PASSWORD = "alice-pw-Correct-Horse"
_LISTEN = re.compile(r"sftpd: listening on \[?([0-9a-f.:]+)\]?:(\d+)")


def toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class User:
    name: str
    root: Path
    key_line: str | None = None
    password: str | None = None
    extra: str = ""  # more TOML lines for this [[users]] table


@dataclass
class SftpdProcess:
    """A running `python -m sftpd serve --config FILE`."""

    config_path: Path
    proc: subprocess.Popen[str]
    port: int
    host: str = "127.0.0.1"
    lines: list[str] = field(default_factory=list)

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def write_config(
    path: Path, users: list[User], host_keys_dir: Path, server_extra: str = "", tail: str = ""
) -> None:
    lines = [
        "[server]",
        'listen = ["127.0.0.1:0"]',
        f"host_keys_dir = {toml_str(str(host_keys_dir))}",
        server_extra,
        tail,
    ]
    for u in users:
        lines.append("[[users]]")
        lines.append(f"name = {toml_str(u.name)}")
        lines.append(f"root = {toml_str(str(u.root))}")
        if u.key_line:
            lines.append(f"authorized_keys = [{toml_str(u.key_line)}]")
        if u.password:
            h = bcrypt.hashpw(u.password.encode(), bcrypt.gensalt(4)).decode()
            lines.append(f"password_hash = {toml_str(h)}")
        if u.extra:
            lines.append(u.extra)
    path.write_text("\n".join(lines) + "\n")


def start_sftpd(
    config_path: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    timeout: float = 30.0,
) -> SftpdProcess:
    cmd = [sys.executable, "-m", "sftpd", "serve"]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    cmd += args or []
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env=env,
    )
    lines: list[str] = []
    found: list[tuple[str, int]] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            m = _LISTEN.search(line)
            if m and not found:
                found.append((m.group(1), int(m.group(2))))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(timeout)
    if not found:
        proc.kill()
        proc.wait()
        raise RuntimeError("sftpd did not start:\n" + "\n".join(lines))
    return SftpdProcess(config_path, proc, found[0][1], found[0][0], lines)


@dataclass
class Env:
    """One running server with user alice (key + password); helpers to drive clients."""

    server: SftpdProcess
    alice: User
    key_path: Path
    tmp: Path

    @property
    def port(self) -> int:
        return self.server.port

    def ssh_opts(self, *, port_flag: str = "-P", key: bool = True) -> list[str]:
        opts = [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            port_flag,
            str(self.port),
        ]
        if key:
            opts += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(self.key_path)]
        return opts

    def sftp(
        self, batch: str, *extra: str, user: str = "alice", check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run `sftp -b -` with ``batch`` on stdin; return the completed process."""
        cmd = ["sftp", *self.ssh_opts(), *extra, "-b", "-", f"{user}@127.0.0.1"]
        res = subprocess.run(
            cmd, input=batch, capture_output=True, text=True, timeout=timeout, cwd=self.tmp
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"sftp failed ({res.returncode}):\nstdout:{res.stdout}\nstderr:{res.stderr}\n"
                f"server log:\n{self.server.log_text()[-3000:]}"
            )
        return res

    def ssh(
        self,
        command: str | None,
        *extra: str,
        user: str = "alice",
        input: bytes | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        cmd = ["ssh", *self.ssh_opts(port_flag="-p"), *extra, f"{user}@127.0.0.1"]
        if command is not None:
            cmd.append(command)
        return subprocess.run(
            cmd, input=input if input is not None else b"", capture_output=True, timeout=timeout
        )


def askpass_env(tmp: Path, password: str) -> dict[str, str]:
    """Environment that makes OpenSSH read ``password`` from an SSH_ASKPASS script."""
    script = tmp / f"askpass-{abs(hash(password))}.sh"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{password}'\n")
    script.chmod(0o700)
    env = dict(os.environ)
    env.update(SSH_ASKPASS=str(script), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    return env


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def asyncssh_sftp(env: Env, body: Any, timeout: float = 60) -> None:
    """Connect with asyncssh as alice (key auth) and run ``await body(sftp_client)``."""
    import asyncio

    import asyncssh

    async def main() -> None:
        async with asyncssh.connect(
            "127.0.0.1",
            port=env.port,
            username="alice",
            client_keys=[str(env.key_path)],
            known_hosts=None,
        ) as conn:
            async with conn.start_sftp_client() as client:
                await asyncio.wait_for(body(client), timeout)

    asyncio.run(main())
