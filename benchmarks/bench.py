#!/usr/bin/env python3
"""sftpd vs OpenSSH internal-sftp, side by side, with the stock OpenSSH `sftp` client.

    python3 benchmarks/bench.py --rounds 3            # full run (~20 min on 2 cores)
    python3 benchmarks/bench.py --quick               # smoke run, small sizes, 1 round
    python3 benchmarks/bench.py --workloads W1,W2 --size-mib 128 --markdown out.md

Starts each target on 127.0.0.1 (sftpd from this checkout; an sshd with its own
config, `ForceCommand internal-sftp` and a chroot, in a private mount
namespace), makes the test data in a temporary directory (tmpfs under /dev/shm
when it fits), runs W1..W8 interleaved (each round runs every target once per
workload, the order rotating), and prints medians, ratios to OpenSSH and server
CPU per unit of work. W9 (opt-in: --workloads W9) does uploads and downloads
through a delay proxy at several RTTs (latency.py, delayproxy.py).
Standard library only; see benchmarks/README.md.
Every server is started here and stopped here (also on Ctrl-C / SIGTERM), every
client run has a timeout, the temporary directory is removed at the end.
"""

import argparse
import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import latency
from report import fmt, latency_table, report
from targets import (
    REPO,
    USER,
    OpenSSH,
    Sftpd,
    SftpdDb,
    SftpdEvents,
    SftpdRules,
    client_cpu_s,
    keygen,
    say,
    settled,
    sftpd_version,
    sshd_version,
    start_postgres,
    tree,
    tree_cpu_s,
)

TARGETS = {
    "openssh": OpenSSH,
    "sftpd": Sftpd,
    "sftpd+events": SftpdEvents,
    "sftpd-rules": SftpdRules,
}

MiB, GiB = 1 << 20, 1 << 30
DN = subprocess.DEVNULL
SFTP_OPTS = (
    "-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
    "-o BatchMode=yes -o IdentitiesOnly=yes"
).split()
MODES = {"default": [], "forced": ["-c", "aes128-ctr", "-o", "MACs=hmac-sha2-256"]}
# id: (title, unit, higher is better, server-CPU unit)
WORKLOADS = {
    "W1": ("download {size} MiB, sha256 checked", "MB/s", True, "CPU-s/GiB"),
    "W2": ("upload {size} MiB, sha256 on disk checked", "MB/s", True, "CPU-s/GiB"),
    "W3": ("put -r {small_n} x 4 KiB files", "files/s", True, "CPU-ms/file"),
    "W4": ("get -r {small_n} x 4 KiB files", "files/s", True, "CPU-ms/file"),
    "W5": (
        "ls -l of {ls_n} entries, net of session set-up",
        "s/listing",
        False,
        "CPU-ms/listing (gross)",
    ),
    "W6": (
        "{sessions} sequential sessions (connect, auth, ls)",
        "sessions/s",
        True,
        "CPU-ms/session",
    ),
    "W7": ("{par_n} parallel downloads x {par} MiB", "MB/s aggregate", True, "CPU-s/GiB"),
    "W8": ("memory per idle session ({idle} sessions), RSS sum", "KiB/session", False, None),
}


# ----------------------------------------------------------------- workloads
def params(args):
    size = args.size_mib or (64 if args.quick else 512)
    small_n, ls_n, sessions, idle = (200, 1000, 10, 10) if args.quick else (2000, 10000, 30, 50)
    p = dict(size=size, par_n=8, par=max(1, size // 8), ls_rep=3)
    p["w9_size"] = args.w9_size_mib or (16 if args.quick else 256)
    idle = args.idle or idle
    return p | dict(small_n=small_n, ls_n=ls_n, sessions=sessions, idle=idle)


class Bench:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.p = params(args)
        self.root, self.client = os.path.join(work, "root"), os.path.join(work, "client")
        self.key = os.path.join(work, "id_ed25519")
        self.sha = {}

    def make_data(self):
        p, t0 = self.p, time.monotonic()
        os.chmod(self.work, 0o755)  # sshd reads authorized_keys as the login user
        keygen(self.key)
        os.chmod(self.key + ".pub", 0o644)
        for d in ("data/par", "data/small", "data/ls", "upload"):
            os.makedirs(os.path.join(self.root, d), mode=0o755)
        os.makedirs(os.path.join(self.client, "dl"))
        self.sha["down"] = self.rand(os.path.join(self.root, "data/big.bin"), p["size"] * MiB)
        self.sha["up"] = self.rand(os.path.join(self.client, "big.bin"), p["size"] * MiB)
        for i in range(p["par_n"]):
            self.rand(os.path.join(self.root, f"data/par/p{i}.bin"), p["par"] * MiB)
        for i in range(p["small_n"]):
            with open(os.path.join(self.root, f"data/small/f{i:05d}"), "wb") as f:
                f.write(os.urandom(4096))
        shutil.copytree(os.path.join(self.root, "data/small"), os.path.join(self.client, "small"))
        for i in range(p["ls_n"]):
            with open(os.path.join(self.root, f"data/ls/f{i:05d}"), "wb") as f:
                f.write(b"x" * 16)
        for dirpath, dirs, _files in os.walk(self.root):
            for n in dirs:
                os.chmod(os.path.join(dirpath, n), 0o755)
        say(f"test data made in {time.monotonic() - t0:.1f} s")

    @staticmethod
    def rand(path, size):
        h = hashlib.sha256()
        with open(path, "wb") as f:
            for off in range(0, size, 8 * MiB):
                b = os.urandom(min(8 * MiB, size - off))
                h.update(b)
                f.write(b)
        return h.hexdigest()

    def argv(self, t, batch, verbose=False, port=None):
        log = ["-v"] if verbose else ["-q", "-o", "LogLevel=ERROR"]
        port = port or t.port  # W9: the delay proxy's port
        opts = ["-b", batch, "-i", self.key, "-P", str(port), *log, *MODES[self.args.mode]]
        return ["sftp", *SFTP_OPTS, *opts, f"{USER}@127.0.0.1"]

    def sftp(self, t, text, timeout, stdout=subprocess.DEVNULL, verbose=False, port=None):
        batch = os.path.join(self.work, f"batch-{t.name}.txt")
        with open(batch, "w") as f:
            f.write(text)
        try:
            argv, pipe = self.argv(t, batch, verbose, port), subprocess.PIPE
            r = subprocess.run(argv, stdin=DN, stdout=stdout, stderr=pipe, timeout=timeout)
            return r.returncode, r.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired:
            return 124, f"timeout after {timeout} s"

    def measure(self, t, fn):
        """Wall time of fn() (the client side) and the server tree's CPU seconds."""
        time.sleep(0.3)
        c0, s0, t0 = client_cpu_s(), tree_cpu_s(t.reaper.pid), time.monotonic()
        err = fn()
        wall = time.monotonic() - t0
        time.sleep(0.5)  # per-session server processes exit and are reaped
        cpu, cli = tree_cpu_s(t.reaper.pid) - s0, client_cpu_s() - c0
        return {"wall": wall, "cpu": cpu, "err": err, "cli": cli / wall}

    def one(self, t, text, timeout, stdout=subprocess.DEVNULL, port=None):
        rc, err = self.sftp(t, text, timeout, stdout, port=port)
        return None if rc == 0 else f"rc={rc} {err.strip()[-300:]}"

    def w1(self, t):
        p, dst = self.p, os.path.join(self.client, "dl", "w1.bin")
        r = self.measure(t, lambda: self.one(t, f"get /data/big.bin {dst}\n", 60 + p["size"]))
        if not r["err"] and sha256(dst) != self.sha["down"]:
            r["err"] = "downloaded file differs (sha256)"
        rm(dst)
        return r, p["size"] * MiB / r["wall"] / 1e6, r["cpu"] / (p["size"] * MiB / GiB)

    def w2(self, t):
        p, dst = self.p, os.path.join(self.root, "upload", "w2.bin")
        src = os.path.join(self.client, "big.bin")
        r = self.measure(t, lambda: self.one(t, f"put {src} /upload/w2.bin\n", 60 + p["size"]))
        if not r["err"] and sha256(dst) != self.sha["up"]:
            r["err"] = "uploaded file differs on disk (sha256)"
        rm(dst)
        return r, p["size"] * MiB / r["wall"] / 1e6, r["cpu"] / (p["size"] * MiB / GiB)

    def small(self, t, text, where):
        n = self.p["small_n"]
        rm(where)
        r = self.measure(t, lambda: self.one(t, text, 300))
        got = count_files(where, 4096)
        if not r["err"] and got != n:
            r["err"] = f"{got}/{n} files arrived"
        rm(where)
        return r, n / r["wall"], 1000 * r["cpu"] / n

    def w3(self, t):
        return self.small(
            t, f"put -r {self.client}/small /upload/w3\n", os.path.join(self.root, "upload/w3")
        )

    def w4(self, t):
        dst = os.path.join(self.client, "dl", "w4")
        return self.small(t, f"get -r /data/small {dst}\n", dst)

    def w5(self, t):
        """One session listing the big directory ls_rep times, minus a session
        listing a small directory once (session set-up differs a lot, see W6)."""
        p, out = self.p, os.path.join(self.work, "w5.out")
        with open(out, "wb") as f:
            r = self.measure(t, lambda: self.one(t, "ls -l /data/ls\n" * p["ls_rep"], 300, f))
        with open(out, "rb") as f:
            n = sum(1 for line in f if re.search(rb"f\d{5}\s*$", line))
        if not r["err"] and n != p["ls_n"] * p["ls_rep"]:
            r["err"] = f"{n} entries listed, expected {p['ls_n'] * p['ls_rep']}"
        t0 = time.monotonic()
        r["err"] = r["err"] or self.one(t, "ls -l /data\n", 60)
        base = time.monotonic() - t0
        return r, max(0.0, r["wall"] - base) / p["ls_rep"], 1000 * r["cpu"] / p["ls_rep"]

    def w6(self, t):
        n = self.p["sessions"]

        def fn():
            end = time.monotonic() + 300
            for i in range(n):
                err = self.one(t, "ls /data\n", 60)
                if err or time.monotonic() > end:
                    return f"session {i}: {err or 'time bound (300 s) hit'}"

        r = self.measure(t, fn)
        return r, n / r["wall"], 1000 * r["cpu"] / n

    def w7(self, t):
        p, d = self.p, os.path.join(self.client, "dl", "w7")
        os.makedirs(d)

        def fn():
            procs = []
            for i in range(p["par_n"]):
                bf = os.path.join(self.work, f"batch-w7-{i}.txt")
                with open(bf, "w") as f:
                    f.write(f"get /data/par/p{i}.bin {d}/p{i}.bin\n")
                argv = self.argv(t, bf)
                procs.append(subprocess.Popen(argv, stdin=DN, stdout=DN, stderr=subprocess.PIPE))
            errs, end = [], time.monotonic() + 120 + 2 * p["par"] * p["par_n"]
            for pr in procs:
                try:
                    _, e = pr.communicate(timeout=max(1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pr.kill()
                    _, e = pr.communicate()
                if pr.returncode:
                    errs.append(f"rc={pr.returncode} {e.decode(errors='replace').strip()[-200:]}")
            return "; ".join(errs) or None

        r = self.measure(t, fn)
        got = count_files(d, p["par"] * MiB)
        if not r["err"] and got != p["par_n"]:
            r["err"] = f"{got}/{p['par_n']} files complete"
        rm(d)
        total = p["par_n"] * p["par"] * MiB
        return r, total / r["wall"] / 1e6, r["cpu"] / (total / GiB)

    def w8(self, t):
        """Fresh server; RSS (sum over its processes) idle, then with N sftp
        sessions connected, each having made one mkdir and waiting on stdin."""
        n = self.p["idle"]
        t.restart()
        time.sleep(1)
        rp = t.reaper.pid
        idle, idle_pss = settled(rp), settled(rp, "Pss:")
        d = os.path.join(self.root, "upload", "w8")
        os.makedirs(d)
        os.chmod(d, 0o777)
        procs, err, end = [], None, time.monotonic() + 180
        try:
            while True:
                up = len(os.listdir(d))
                if up >= n:
                    break
                if time.monotonic() > end:
                    err = f"only {up}/{n} sessions up after 180 s"
                    break
                if any(pr.poll() is not None for pr in procs):
                    err = "a client exited early"
                    break
                if len(procs) < n and len(procs) - up < 10:  # <= 10 unauthenticated at once
                    argv = self.argv(t, "-")
                    pr = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=DN, stderr=DN)
                    pr.stdin.write(f"mkdir /upload/w8/c{len(procs):03d}\n".encode())
                    pr.stdin.flush()
                    procs.append(pr)
                else:
                    time.sleep(0.05)
            time.sleep(2)
            loaded, loaded_pss = settled(rp), settled(rp, "Pss:")
            nproc = len(tree(rp)[0]) - 1
        finally:
            for pr in procs:
                try:
                    pr.stdin.close()
                except OSError:
                    pass
            for pr in procs:
                try:
                    pr.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pr.kill()
                    pr.wait()
            rm(d)
        r = {
            "err": err,
            "detail": f"{idle / 1024:.1f} -> {loaded / 1024:.1f} MiB RSS, {nproc} processes, "
            f"PSS {(loaded_pss - idle_pss) / n:.0f} KiB/session",
        }
        return r, (loaded - idle) / n, None


def sha256(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while b := f.read(4 * MiB):
                h.update(b)
    except OSError:
        return None
    return h.hexdigest()


def rm(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def count_files(d, size):
    try:
        return sum(1 for e in os.scandir(d) if e.stat().st_size == size)
    except OSError:
        return 0


def negotiated(b, t):
    rc, err = b.sftp(t, "ls /\n", 60, verbose=True)
    pats = {
        "kex": r"kex: algorithm: (\S+)",
        "hostkey": r"kex: host key algorithm: (\S+)",
        "s2c": r"kex: server->client cipher: (\S+) MAC: (\S+)",
        "c2s": r"kex: client->server cipher: (\S+) MAC: (\S+)",
        "version": r"remote software version (\S+)",
    }
    out = {
        k: " ".join(m.groups()) if (m := re.search(v, err)) else f"? (rc={rc})"
        for k, v in pats.items()
    }
    out["s2c"] = out["s2c"].replace(" <implicit>", "")
    return out


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        model = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), model)
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, client {ssh}, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )


# ---------------------------------------------------------------------- main
def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = ap.add_argument
    add(
        "--targets",
        default="openssh,sftpd",
        help="comma list of openssh, sftpd, sftpd+events (sftpd with [audit] file and\n"
        "[metrics] listen on), sftpd-rules (a user with per-directory permissions and a\n"
        "quota); default openssh,sftpd",
    )
    add("--workloads", default=",".join(WORKLOADS), help="comma list of W1..W9 (default W1..W8)")
    add("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    add("--size-mib", type=int, help="W1/W2 size (default 512; 64 with --quick); W7: 8 x size/8")
    add("--rtts", default="0,20,50,100", help="W9 round-trip times in ms (default 0,20,50,100)")
    add("--idle", type=int, help="W8 idle sessions (default 50; 10 with --quick)")
    add("--w9-size-mib", type=int, help="W9 file size (default 256; 16 with --quick)")
    add("--workdir", help="parent of the temporary dir (default /dev/shm if room, else /tmp)")
    add("--sftpd-cmd", default="python3 -m sftpd", help="started from the repository root")
    add(
        "--baseline",
        metavar="REV",
        help="also run sftpd at git revision REV (a temporary worktree) as a third target,\n"
        "to measure a change side by side with the code before it",
    )
    add(
        "--sftpd-set",
        action="append",
        default=[],
        metavar="'KEY = VALUE'",
        help="extra TOML line for sftpd's [server] table, e.g. 'workers = 2' (repeatable)",
    )
    add(
        "--mode",
        choices=MODES,
        default="default",
        help="default: each side's preference; forced: -c aes128-ctr -o MACs=hmac-sha2-256",
    )
    add(
        "--users-db",
        default="",
        metavar="sqlite,postgres",
        help="also run sftpd with the user in [users_db] (added by `sftpd user add`) as\n"
        "targets sftpd-sqlite and sftpd-postgres; postgres starts a throwaway cluster\n"
        "(tests/pgcluster.py: needs PostgreSQL, psycopg and pytest, so run with the venv)",
    )
    add(
        "--users-db-cache",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="[users_db] cache_seconds for those targets (default 5, as sftpd's;\n"
        "0: every login queries the database)",
    )
    add("--quick", action="store_true", help="small sizes, 1 round: a smoke run")
    add("--max-minutes", type=float, default=90, help="start no new run after this (default 90)")
    add("--markdown", metavar="FILE", help="also write the summary there")
    return ap.parse_args()


def run_one(b, t, w, wl):
    try:
        if w.startswith("W9"):
            r, v, c = b.latency.run(t, w, sha256, rm)
        else:
            r, v, c = getattr(b, w.lower())(t)
    except Exception as e:  # recorded as a failed run; the benchmark goes on
        r, v, c = {"err": f"{type(e).__name__}: {e}"}, None, None
    line = f"{w:6s} {t.name:8s} {fmt(v):>8s} {wl[w][1]:14s}"
    if c is not None:
        line += f" server {fmt(c)} {wl[w][3]} ({100 * r['cpu'] / r['wall']:.0f}% CPU)"
        line += f", client {100 * r['cli']:.0f}% CPU"
    if r["err"]:
        line += f"  FAILED: {r['err']}\n   server log tail: {t.tail(300)!r}"
    return (r, v, c), line


def baseline_checkout(rev, work):
    """A detached worktree of ``rev`` inside the temporary directory (removed at the end)."""
    path = os.path.join(work, "base")
    r = subprocess.run(
        ["git", "-C", REPO, "worktree", "add", "--detach", path, rev],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise SystemExit(f"--baseline {rev}: {r.stderr.strip()}")
    return path


def main():
    args = parse_args()
    rounds, p = args.rounds or (1 if args.quick else 3), params(args)
    wls = args.workloads.upper().split(",")
    if set(wls) - {*WORKLOADS, "W9"}:
        raise SystemExit(f"unknown workload(s): {set(wls) - {*WORKLOADS, 'W9'}}")
    try:
        rtts = [float(x) for x in args.rtts.split(",")]
    except ValueError:
        raise SystemExit("--rtts: a comma list of milliseconds, e.g. 0,20,50,100") from None
    w9 = latency.ids(rtts) if "W9" in wls else {}
    wls = [x for w in wls for x in (w9 if w == "W9" else [w])]
    wl = WORKLOADS | latency.workloads(rtts)
    if set(args.targets.split(",")) - set(TARGETS):
        raise SystemExit(f"--targets: a comma list of {', '.join(TARGETS)}")
    dbs = [k for k in args.users_db.split(",") if k]
    if set(dbs) - {"sqlite", "postgres"}:
        raise SystemExit("--users-db: a comma list of sqlite and postgres")
    cmdline = shlex.join(["python3", *sys.argv])
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    opts = " ".join(MODES[args.mode]) or "(no options)"
    header = [f"# sftpd benchmark ({started})", "", f"Command: `{cmdline}`", ""]
    servers = f"{sftpd_version()}; {sshd_version()}"
    if args.baseline:
        git = ["git", "-C", REPO, "rev-parse", "--short", args.baseline]
        rev = subprocess.run(git, capture_output=True, text=True).stdout.strip()
        servers += f"; baseline sftpd@{args.baseline} at git {rev or '?'}"
    header += [f"Machine: {machine()}", "", f"Servers: {servers}", ""]
    header += [f"Mode: {args.mode} (`sftp {opts}`), {rounds} interleaved round(s)"]
    if dbs:
        header += [
            "",
            f"sftpd-{'/sftpd-'.join(dbs)}: the user in [users_db] ({', '.join(dbs)}), added "
            f"by `sftpd user add`, cache_seconds = {args.users_db_cache:g}",
        ]
    say(f"command: {cmdline}\n" + "\n".join(header[4:]))

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    need = (4 * p["size"] + 2 * p["par"] * p["par_n"] + 200 + (4 * p["w9_size"] if w9 else 0)) * MiB
    parent = args.workdir
    if parent is None:
        s = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
        parent = "/dev/shm" if s and s.f_bavail * s.f_frsize > 1.2 * need else "/tmp"
    work = tempfile.mkdtemp(prefix="sftpd-bench-", dir=parent)
    say(f"workdir: {work} (about {need // MiB} MiB of data)")
    made, live, skipped, results, algos = [], [], [], {}, {}
    pg_stop = None
    try:
        b = Bench(args, work)
        b.make_data()
        b.latency = latency.Latency(b, rtts, p["w9_size"])
        if w9:
            say(f"W9 data made in {b.latency.make_data():.1f} s")
        names = args.targets.split(",")
        if args.baseline:
            base = baseline_checkout(args.baseline, work)
            names.append(f"sftpd@{args.baseline}")
        names += [f"sftpd-{k}" for k in dbs]
        for name in names:
            try:
                if name.startswith("sftpd@"):
                    made.append(Sftpd(b, base, name))
                elif name == "sftpd-sqlite":
                    made.append(SftpdDb(b, "sqlite"))
                elif name == "sftpd-postgres":
                    url, pg_stop = start_postgres()
                    made.append(SftpdDb(b, "postgres", url))
                else:
                    made.append(TARGETS[name](b))
                made[-1].start()
                algos[name] = negotiated(b, made[-1])
                say(f"started {name} on port {made[-1].port}: {algos[name]}")
                live.append(made[-1])
            except Exception as e:  # a target that cannot start is skipped, with the reason
                say(f"SKIP {name}: {e}")
                skipped.append(f"- {name} skipped: {e}")
        if not live:
            raise SystemExit("no target could be started")
        end = time.monotonic() + 60 * args.max_minutes
        for rnd in range(rounds):
            for wi, w in enumerate(wls):
                k = (rnd + wi) % len(live)
                for t in live[k:] + live[:k]:
                    if time.monotonic() > end:
                        raise TimeoutError
                    res, line = run_one(b, t, w, wl)
                    results.setdefault((w, t.name), []).append(res)
                    say(f"r{rnd + 1} {line}")
    except TimeoutError:
        say(f"--max-minutes {args.max_minutes} reached: no more runs")
    except KeyboardInterrupt:
        say("interrupted: stopping servers")
    finally:
        for t in made:
            t.stop()
        if pg_stop is not None:
            pg_stop()
        if args.baseline:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", f"{work}/base"])
        shutil.rmtree(work, ignore_errors=True)
    if results:
        names = [t.name for t in live]
        text = "\n".join(report(b, names, results, algos, [*header, "", *skipped], wl))
        if w9:
            win = latency.bounds(live, args.sftpd_set)
            text += "\n" + "\n".join(latency_table(names, results, w9, win, b.p["w9_size"]))
        say("\n" + text)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text + "\n")
            say(f"written: {args.markdown}")


if __name__ == "__main__":
    main()
