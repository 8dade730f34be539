"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl in a temp dir, on a free port."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_bin(name: str) -> str | None:
    """The path of a PostgreSQL server binary, from PATH or Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    """One running cluster; ``url(db)`` for a database in it; stop/start for restarts."""

    data: Path
    port: int
    as_user: list[str]
    pg_ctl: str
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_user, *args], capture_output=True, text=True, timeout=60, check=True
        )

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run(self.pg_ctl, "-D", str(self.data / "db"), "-l", str(self.data / "log"),
                 "-o", opts, "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self.run(self.pg_ctl, "-D", str(self.data / "db"), "-m", "fast", "-w", "stop")


def start_cluster() -> Iterator[Cluster]:
    """Yield a running cluster (skip when the binaries are missing); removed afterwards."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    as_user: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="sftpd-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres OS user")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    cluster = Cluster(tmp, _free_port(), as_user, pg_ctl)
    try:
        cluster.run(initdb, "-D", str(tmp / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        cluster.start()
        yield cluster
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(tmp / "db"), "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)
