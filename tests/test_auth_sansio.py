"""The new auth building blocks stay sans-IO: importing them loads no Twisted."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "sftpd.config.keyopts",
        "sftpd.auth.totp",
        "sftpd.auth.certs",
        "sftpd.auth.krl",
        "sftpd.auth.chains",
    ],
)
def test_imports_no_twisted(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope'))\n"
        "print(' '.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"
