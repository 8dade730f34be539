"""End to end: with workers = 2, a TOTP code is accepted once per server, not once per worker."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sftpd.auth.totp import new_secret, totp
from tests.support import Env, User

pytestmark = [pytest.mark.e2e]


def test_a_code_is_accepted_once_across_workers(
    make_server: Callable[..., Env], tmp_path: Path
) -> None:
    paramiko = pytest.importorskip("paramiko")
    secret = new_secret()
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    bob = User("bob", tmp_path / "bob-root", password="bob-pw", extra=f'totp_secret = "{secret}"')
    env = make_server(users=[bob], server_extra="workers = 2\nauth_failure_delay = 0")
    code = totp(key, time.time())  # valid for this 30 s step and the next (one step of skew)
    answers = {"Password: ": "bob-pw", "Verification code: ": code}

    def attempt() -> bool:
        t = paramiko.Transport(("127.0.0.1", env.port))
        try:
            t.start_client(timeout=20)
            try:
                t.auth_interactive(
                    "bob", lambda title, instr, prompts: [answers[p] for p, _ in prompts]
                )
            except paramiko.AuthenticationException:
                pass
            return bool(t.is_authenticated())
        finally:
            t.close()

    # SO_REUSEPORT spreads connections by their 4-tuple: 16 on one worker is ~3e-5
    outcomes = [attempt() for _ in range(16)]
    log = env.server.log_text()
    pids = set(re.findall(r"connection open: conn=\S+ peer=\S+ pid=(\d+)", log))
    assert len(pids) == 2, log[-3000:]
    assert outcomes.count(True) == 1, (outcomes, log[-3000:])
    assert outcomes[0], log[-3000:]  # the first use is the one that works
