"""End-to-end: with workers = 2, two full server processes share the listening socket."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import wait_for

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_two_workers_serve_and_stop_cleanly(make_server) -> None:  # type: ignore[no-untyped-def]
    env = make_server(server_extra="workers = 2")
    sup = env.server.proc.pid
    assert wait_for(lambda: len(_children(sup)) == 2, timeout=20)
    workers = _children(sup)

    def shell(_: int) -> bytes:
        return env.ssh(None, "-T").stderr

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(shell, range(24)))
    assert all(b"This service allows SFTP connections only." in r for r in results)
    pids = set(re.findall(r"connection open: conn=\S+ peer=\S+ pid=(\d+)", env.server.log_text()))
    # SO_REUSEPORT spreads by 4-tuple hash: 24 connections all on one worker is ~1e-7
    assert pids == {str(p) for p in workers}
    assert env.server.stop() == 0
    for pid in workers:
        assert (
            not os.path.exists(f"/proc/{pid}")
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )
