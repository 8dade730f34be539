"""The supervisor's own decisions, without starting sftpd workers."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

from sftpd.config.model import Config
from sftpd.runtime.processes import Supervisor


def test_a_reactor_stopped_before_our_handlers_passes_sigterm_to_the_workers(
    tmp_path: Path,
) -> None:
    """A SIGTERM while the supervisor's reactor starts reaches Twisted's own handler, which
    stops the reactor: the workers already spawned must get it too, not serve on alone."""
    listener = socket.socket()
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sup = Supervisor(
            Config(source=tmp_path / "x.toml"), None, [[listener]], str(tmp_path), None
        )
        sup.children[worker.pid] = worker
        sup._reactor_stopping()  # the "before shutdown" trigger
        assert worker.wait(timeout=30) == -signal.SIGTERM
        assert sup.stopping and listener.fileno() == -1  # closed: nobody queues connections
        sup._reactor_stopping()  # after our own stop it is a no-op
    finally:
        worker.kill()
        worker.wait()
