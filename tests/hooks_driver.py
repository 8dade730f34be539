"""Runs sftpd.events.hooks with the real reactor: a command hook, an HTTP hook, a slow hook.

Usage: python -m tests.hooks_driver WORKDIR. Prints a JSON summary on stdout. Run by
tests/test_events_hooks_real.py in a subprocess (the real reactor needs its own process).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.web import resource, server

from sftpd.events.config import HookConfig, HookLimits
from sftpd.events.hooks import Hooks
from sftpd.events.model import Event, Identity

work = Path(sys.argv[1])
order: list[str] = []
received: list[Any] = []
summary: dict[str, Any] = {"order": order, "received": received}


class Receiver(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.fails = 1  # the first POST gets a 503: the hook must retry

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        if self.fails:
            self.fails -= 1
            request.setResponseCode(503)
            order.append("http 503")
            return b"busy"
        received.append({"body": json.loads(body), "type": request.getHeader("content-type")})
        order.append("http ok")
        return b"ok"


port: Any = reactor.listenTCP(0, server.Site(Receiver()), interface="127.0.0.1")  # type: ignore[attr-defined]
url = f"http://127.0.0.1:{port.getHost().port}/hook"

ingest = work / "ingest.py"
ingest.write_text(
    textwrap.dedent(
        f"""
        import json, os, sys
        data = sys.stdin.read()
        env = {{k: v for k, v in os.environ.items() if k.startswith("SFTPD_") or k == "PATH"}}
        with open({str(work / "ingest.out")!r}, "w") as f:
            json.dump({{"stdin": data, "env": env, "argv": sys.argv[1:]}}, f)
        """
    )
)
slow = work / "slow.sh"
slow.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {work / 'slow.pid'}\nwait\n")
slow.chmod(0o755)

hooks = Hooks(
    reactor,
    [
        HookConfig(on=("upload",), command=("/bin/sh", str(slow)), timeout=3),
        HookConfig(on=("upload",), command=(sys.executable, str(ingest), "arg"), timeout=30),
        HookConfig(on=("upload",), url=url, timeout=10, paths=("/incoming/*",)),
        HookConfig(on=("upload",), url=url, timeout=10, paths=("/elsewhere/*",)),
    ],
    HookLimits(max_parallel=4),
    base_env={"PATH": "/usr/bin:/bin"},
    retry_delays=(0.2, 0.2, 0.2),
)
who = Identity.of("alice", "SHA256:abc", "sftp", "127.0.0.1", 40000, "c1")
event = Event("upload", who, 1.0, "/incoming/a b.txt", bytes=5, size=5, sha256="00" * 32)
summary["event"] = event.to_dict()


def finished(_: object) -> None:
    order.append("idle")
    summary["ingest"] = json.loads((work / "ingest.out").read_text())
    reactor.stop()  # type: ignore[attr-defined]


def watch_slow() -> None:
    # The slow hook is still running while the others complete.
    if (work / "slow.pid").exists() and hooks.running() >= 1 and "http ok" in order:
        order.append("others done while slow runs")
        return
    reactor.callLater(0.05, watch_slow)  # type: ignore[attr-defined]


reactor.callWhenRunning(hooks.emit, event)  # type: ignore[attr-defined]
reactor.callWhenRunning(watch_slow)  # type: ignore[attr-defined]
reactor.callWhenRunning(lambda: hooks.when_idle().addCallback(finished))  # type: ignore[attr-defined]
reactor.callLater(60, reactor.stop)  # type: ignore[attr-defined]  # deadlock guard
reactor.run()  # type: ignore[attr-defined]
print(json.dumps(summary))
