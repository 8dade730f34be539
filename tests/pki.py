"""An SSH CA and user keys for tests, made and signed by the real ssh-keygen."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path


class Pki:
    """A directory of CA and user keys, signing with the real ssh-keygen."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def key(self, kind: str, name: str | None = None) -> Path:
        self.count += 1
        path = self.root / (name or f"k{self.count}")
        kt, _, bits = kind.partition(":")
        cmd = ["ssh-keygen", "-q", "-t", kt, "-N", "", "-f", str(path)]
        if bits:
            cmd += ["-b", bits]
        subprocess.run(cmd, check=True)
        return path

    def sign(
        self, ca: Path, user: Path, *args: str, principals: str = "alice", key_id: str = "key-id-1"
    ) -> bytes:
        cmd = ["ssh-keygen", "-q", "-s", str(ca), "-I", key_id, "-n", principals, *args]
        subprocess.run([*cmd, f"{user}.pub"], check=True)
        return blob(Path(f"{user}-cert.pub"))


def blob(path: Path) -> bytes:
    return base64.b64decode(path.read_text().split()[1])


def pub(path: Path) -> bytes:
    """The wire blob of the public key next to private key ``path``."""
    return blob(Path(f"{path}.pub"))
