#!/usr/bin/env python3
"""Logins per second while 300 silent connections flood the server: sftpd vs OpenSSH sshd.

Each target is measured quiet and flooded: the flood is 300 TCP connections from
127.0.0.2..127.0.0.4 (100 each; `--sources N`: from N addresses) that send nothing and are
held open; the logins are
sequential OpenSSH `sftp -b` sessions (`ls /`) from 127.0.0.1. Both servers keep their
own defaults for unauthenticated connections (sshd: MaxStartups 10:30:100, sftpd:
max_startups = "10:30:100" and max_connections_per_source = 20) but the sshd from
targets.py, which bench.py raises to MaxStartups 100:30:200; here it is reset to the
default. As root on Debian 12 (sshd needs it). Standard library only.

    .venv/bin/python benchmarks/flood.py --logins 20 --markdown benchmarks/results/flood.md
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from targets import USER, OpenSSH, Sftpd, Skip, keygen, say

SFTP_OPTS = (
    "-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
    "-o BatchMode=yes -o IdentitiesOnly=yes -q -o LogLevel=ERROR -o ConnectTimeout=30"
).split()


class Ctx:
    def __init__(self, work, args):
        self.work, self.args = work, args
        self.root = os.path.join(work, "root")
        self.key = os.path.join(work, "id_ed25519")
        os.makedirs(os.path.join(self.root, "upload"))
        os.chmod(self.root, 0o755)
        keygen(self.key)
        os.chmod(self.key + ".pub", 0o644)

    def sftp(self, t, text, timeout):
        argv = ["sftp", *SFTP_OPTS, "-i", self.key, "-P", str(t.port), "-b", "-"]
        try:
            r = subprocess.run(
                [*argv, f"{USER}@127.0.0.1"],
                input=text.encode(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )
            return r.returncode, r.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired:
            return 124, f"timeout after {timeout} s"


def sources(n):
    return [f"127.0.0.{2 + i}" for i in range(n)]


def flood(port, n, addresses):
    socks = []
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.bind((addresses[i % len(addresses)], 0))
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    time.sleep(2)  # let the server accept (or refuse) them all
    return socks


def logins(ctx, t, n, timeout):
    ok, worst, t0 = 0, 0.0, time.monotonic()
    for _ in range(n):
        s0 = time.monotonic()
        rc, _err = ctx.sftp(t, "ls /\n", timeout)
        worst = max(worst, time.monotonic() - s0)
        ok += rc == 0
    return ok, time.monotonic() - t0, worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logins", type=int, default=20)
    ap.add_argument("--flood", type=int, default=300)
    ap.add_argument("--sources", type=int, default=3, help="flood source addresses (1-250)")
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--markdown")
    ap.add_argument("--sftpd-cmd", default=f"{sys.executable} -m sftpd")
    args = ap.parse_args()
    args.sftpd_set = []
    if not 1 <= args.sources <= 250:
        raise SystemExit("--sources: 1 to 250 addresses (127.0.0.2 and up)")
    addresses = sources(args.sources)
    work = tempfile.mkdtemp(
        prefix="sftpd-flood-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    os.chmod(work, 0o755)  # sshd reads the authorized key as the user
    ctx = Ctx(work, args)
    rows = []
    for cls in (OpenSSH, Sftpd):
        try:
            t = cls(ctx)
        except Skip as e:
            say(f"{cls.name}: skipped: {e}")
            continue
        if isinstance(t, OpenSSH):
            command = t.command

            def default_startups(command=command, state=t.state):
                argv, env = command()
                cfg = os.path.join(state, "sshd_config")
                text = open(cfg).read().replace("MaxStartups 100:30:200\n", "")
                open(cfg, "w").write(text)
                return argv, env

            t.command = default_startups
        t.start()
        try:
            for label, n in (("quiet", 0), (f"{args.flood} silent connections", args.flood)):
                held = flood(t.port, n, addresses) if n else []
                try:
                    ok, wall, worst = logins(ctx, t, args.logins, args.timeout)
                finally:
                    for s in held:
                        s.close()
                rows.append((t.name, label, ok, args.logins, ok / wall, worst))
                say(
                    f"{t.name} {label}: {ok}/{args.logins} logins, {ok / wall:.2f}/s, "
                    f"slowest {worst:.2f} s"
                )
                time.sleep(3)
        finally:
            t.stop()
    lines = [
        f"# Logins during a {args.flood}-connection flood",
        "",
        f"{args.logins} sequential OpenSSH `sftp -b` logins (`ls /`, ed25519 key) from 127.0.0.1;",
        f"flood: {args.flood} silent TCP connections from {addresses[0]}..{addresses[-1]} "
        f"({len(addresses)} addresses), held open.",
        "Both servers with their default limits for unauthenticated connections.",
        "",
        "| server | load | logins ok | logins/s | slowest login (s) |",
        "|---|---|---|---|---|",
        *(f"| {a} | {b} | {c}/{d} | {e:.2f} | {f:.2f} |" for a, b, c, d, e, f in rows),
    ]
    shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
