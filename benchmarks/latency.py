"""W9 for bench.py: upload and download through delayproxy.py at several round-trip times.

Each run starts a delay proxy (one-way delay = RTT / 2) in front of the target, points the
`sftp` client at the proxy's port, and stops the proxy afterwards. The bound each run is
compared with is the window that limits it divided by the RTT: for uploads the server's receive
window (sftpd: LOCAL_WINDOW in sftpd/ssh/channel.py, or `max_window` given with --sftpd-set;
OpenSSH: 2 MiB), for downloads the `ssh` client's 2 MiB window. After each run a session that
only lists / is timed through the same proxy: set-up over a long link is many round trips, so
the table also gives the rate net of it. Standard library only.
"""

import os
import re
import subprocess
import sys
import time

MiB, GiB = 1 << 20, 1 << 30
OPENSSH_WINDOW = 2 * MiB  # CHAN_SES_WINDOW_DEFAULT of OpenSSH's sshd and ssh
PROXY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delayproxy.py")
UNITS = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "kib": 1 << 10, "mib": MiB, "gib": GiB}


def ids(rtts):
    """{id: (direction, rtt_ms)} in run order: W9u0, W9d0, W9u20, ..."""
    return {f"W9{d[0]}{r:g}": (d, r) for r in rtts for d in ("up", "down")}


def workloads(rtts):
    """Rows for bench.py's WORKLOADS table (title, unit, higher is better, CPU unit)."""
    verb = {"up": "upload", "down": "download"}
    return {
        w: (f"{verb[d]} {{w9_size}} MiB at {r:g} ms RTT", "MB/s", True, "CPU-s/GiB")
        for w, (d, r) in ids(rtts).items()
    }


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*([kmg](?:ib)?)?\s*", text.strip().strip("\"'"), re.I)
    return int(m.group(1)) * UNITS[(m.group(2) or "").lower()] if m else None


def sftpd_window(checkout, sets):
    """(bytes or None, where it came from) for an sftpd checkout and its --sftpd-set lines."""
    for line in sets:
        k, _, v = line.partition("=")
        if k.strip() == "max_window":
            return parse_size(v), f"max_window = {v.strip()} (--sftpd-set)"
    m = None
    for rel in (("sftpd", "ssh", "channel.py"), ("sftpd", "session.py")):  # new layout, old
        try:
            with open(os.path.join(checkout, *rel)) as f:
                m = re.search(r"^LOCAL_WINDOW\s*=\s*([\d\s*]+)$", f.read(), re.M)
        except OSError:
            continue
        where = "/".join(rel)
        break
    if not m:
        return None, "LOCAL_WINDOW not found in sftpd/ssh/channel.py"
    n = 1
    for part in m.group(1).split("*"):
        n *= int(part)
    return n, f"LOCAL_WINDOW = {m.group(1).strip()} in {where}"


def bounds(targets, sets):
    """{target name: (upload window, note)}; downloads are bound by the client's window."""
    out = {}
    for t in targets:
        if t.name == "openssh":
            out[t.name] = (OPENSSH_WINDOW, "OpenSSH sshd channel window 2 MiB")
        else:
            out[t.name] = sftpd_window(t.checkout, sets)
    return out


class Proxy:
    """delayproxy.py in front of 127.0.0.1:``to_port``, as a child process for one run."""

    def __init__(self, to_port, rtt_ms):
        argv = [sys.executable, PROXY, "--to-port", str(to_port), "--delay-ms", f"{rtt_ms / 2:g}"]
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            self.close()
            raise RuntimeError(f"delayproxy did not start: {line.strip()!r}")
        self.port = int(m.group(1))

    def close(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.p.stdout.close()


class Latency:
    def __init__(self, bench, rtts, size_mib):
        self.b, self.rtts, self.size = bench, rtts, size_mib
        self.ids = ids(rtts)
        self.down = os.path.join(bench.root, "data", "w9.bin")
        self.up = os.path.join(bench.client, "w9.bin")
        self.sha = {}

    def make_data(self):
        t0 = time.monotonic()
        self.sha["down"] = self.b.rand(self.down, self.size * MiB)
        self.sha["up"] = self.b.rand(self.up, self.size * MiB)
        os.chmod(self.down, 0o644)
        return time.monotonic() - t0

    def run(self, t, w, sha256, rm):
        direction, rtt = self.ids[w]
        n = self.size * MiB
        if direction == "up":
            text, dst, want = f"put {self.up} /upload/w9.bin\n", "upload/w9.bin", self.sha["up"]
            dst = os.path.join(self.b.root, dst)
        else:
            dst, want = os.path.join(self.b.client, "dl", "w9.bin"), self.sha["down"]
            text = f"get /data/w9.bin {dst}\n"
        proxy = Proxy(t.port, rtt)
        try:
            timeout = 120 + self.size
            r = self.b.measure(t, lambda: self.b.one(t, text, timeout, port=proxy.port))
            t0 = time.monotonic()  # a session that only lists /: set-up over this RTT
            if not self.b.one(t, "ls /\n", 60, port=proxy.port):
                r["setup"] = time.monotonic() - t0
        finally:
            proxy.close()
        if not r["err"] and sha256(dst) != want:
            r["err"] = f"{direction}loaded file differs (sha256)"
        rm(dst)
        return r, n / r["wall"] / 1e6, r["cpu"] / (n / GiB)
