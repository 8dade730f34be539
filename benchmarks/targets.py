#!/usr/bin/env python3
"""The servers bench.py measures (sftpd from this checkout, OpenSSH's sshd with internal-sftp)
and the /proc accounting of their CPU and memory. Standard library only."""

import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK = os.sysconf("SC_CLK_TCK")
USER = "sftpbench"

# The reaper: a child subreaper around each server, so every process the server
# forks (sshd orphans its per-session processes) stays in one tree whose CPU,
# once reaped, lands in the reaper's cutime/cstime. SIGTERM is forwarded to the
# server; leftovers are killed 5 s after the server exits; dies with bench.py.
REAPER = r"""
import ctypes, os, signal, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)                  # PR_SET_CHILD_SUBREAPER
libc.prctl(1, signal.SIGTERM, 0, 0, 0)      # PR_SET_PDEATHSIG: go when bench.py goes
log = open(sys.argv[1], "ab")
p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, lambda *_: os.kill(p.pid, signal.SIGTERM))
kill_at = None
while True:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == p.pid:
        kill_at = time.monotonic() + 5
    if pid == 0:
        if kill_at and time.monotonic() > kill_at:
            for d in os.listdir("/proc"):
                try:
                    s = open(f"/proc/{d}/stat").read()
                    if int(s[s.rindex(")") + 2:].split()[1]) == os.getpid():
                        os.kill(int(d), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        time.sleep(0.05)
"""


def say(*a):
    print(*a, flush=True)


class Skip(Exception):
    pass


# ------------------------------------------------------------ /proc accounting
def proc_stats():
    """{pid: (ppid, utime+stime, cutime+cstime) in ticks} for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                v = s[s.rindex(")") + 2 :].split()
                out[int(d)] = (int(v[1]), int(v[11]) + int(v[12]), int(v[13]) + int(v[14]))
            except (OSError, ValueError, IndexError):
                pass
    return out


def tree(root, st=None):
    st = st if st is not None else proc_stats()
    kids = {}
    for pid, (ppid, _, _) in st.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in st:
            out.append(p)
            todo += kids.get(p, [])
    return out, st


def tree_cpu_s(reaper):
    """Server CPU: the reaper's cutime+cstime (reaped processes) plus
    utime+stime+cutime+cstime of every live descendant."""
    pids, st = tree(reaper)
    ticks = sum(st[p][1] + st[p][2] for p in pids if p != reaper)
    return (ticks + (st[reaper][2] if reaper in st else 0)) / CLK


def client_cpu_s():
    t = os.times()
    return t.children_user + t.children_system


def tree_mem_kib(reaper, field="VmRSS:"):
    total = 0
    for p in tree(reaper)[0][1:]:
        try:
            with open(f"/proc/{p}/" + ("status" if field == "VmRSS:" else "smaps_rollup")) as f:
                total += next((int(x.split()[1]) for x in f if x.startswith(field)), 0)
        except OSError:
            pass
    return total


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------- targets
class Target:
    name = "?"
    checkout = REPO  # the directory the server is started in

    def __init__(self, ctx):
        self.ctx, self.reaper, self.port = ctx, None, None
        self.state = os.path.join(ctx.work, "state", self.name)
        self.log = os.path.join(self.state, "server.log")
        os.makedirs(self.state)

    def start(self):
        argv, env = self.command()
        log_start = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        self.reaper = subprocess.Popen(
            [sys.executable, "-c", REAPER, self.log, *argv],
            cwd=self.checkout,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not (self.port and port_open(self.port)):
            if self.reaper.poll() is not None or time.monotonic() > deadline:
                raise Skip(f"did not start listening; log: {self.tail()}")
            self.find_port(log_start)
            time.sleep(0.1)
        for _ in range(10):
            rc, err = self.ctx.sftp(self, "ls /\n", 30)
            if rc == 0:
                return
            time.sleep(0.5)
        raise Skip(f"probe session `ls /` failed: {err.strip()[-300:]}; log: {self.tail()}")

    def find_port(self, log_start):
        pass

    def tail(self, n=600):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-n:].strip()
        except OSError:
            return ""

    def stop(self):
        r, self.reaper = self.reaper, None
        if r is None or r.poll() is not None:
            return
        pids = tree(r.pid)[0]
        r.send_signal(signal.SIGTERM)
        try:
            r.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for p in pids:  # only processes of this server tree, by pid
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            r.wait(timeout=5)

    def restart(self):
        self.stop()
        self.port = None
        self.start()


class Sftpd(Target):
    """sftpd from this checkout, or (``checkout``, ``name``) from another one."""

    name = "sftpd"
    user_extra = ""  # more lines for the benchmark user's [[users]] table

    def __init__(self, ctx, checkout=REPO, name="sftpd"):
        self.checkout, self.name = checkout, name
        super().__init__(ctx)

    def command(self):
        cfg = os.path.join(self.state, "sftpd.toml")
        extra = "".join(f"{s}\n" for s in self.ctx.args.sftpd_set)
        if _knows(self.checkout, "max_connections_per_source"):
            # Every client here comes from 127.0.0.1, and OpenSSH's side has no per-source
            # limit by default: W7/W8 open more than sftpd's default 20 per source.
            extra = "max_connections_per_source = 0\n" + extra
        with open(cfg, "w") as f:
            f.write(
                f'[server]\nlisten = ["127.0.0.1:0"]\nhost_keys_dir = "{self.state}/keys"\n'
                f'{extra}\n[[users]]\nname = "{USER}"\nroot = "{self.ctx.root}"\n'
                f'authorized_keys_file = "{self.ctx.key}.pub"\n{self.user_extra}'
            )
        path = self.checkout + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = dict(os.environ, PYTHONPATH=path)
        return [*shlex.split(self.ctx.args.sftpd_cmd), "serve", "--config", cfg], env

    def find_port(self, log_start):
        try:
            with open(self.log, errors="replace") as f:
                f.seek(log_start)
                m = re.search(r"sftpd: listening on 127\.0\.0\.1:(\d+)", f.read())
        except FileNotFoundError:
            m = None
        self.port = int(m.group(1)) if m else None


class SftpdRules(Sftpd):
    """sftpd with a user who has per-directory permissions and a quota: what rules cost
    (the permissions table is looked up for every path; every write is counted)."""

    user_extra = (
        'permissions = { "/" = ["*"], "/archive" = ["list", "download"], '
        '"/incoming" = ["list", "upload", "create_dirs"] }\n'
        "quota_size = 100000000000\nquota_files = 10000000\n"
    )

    def __init__(self, ctx):
        super().__init__(ctx, REPO, "sftpd-rules")


class SftpdEvents(Sftpd):
    """sftpd with the audit log (``[audit] file`` in its state directory) and the metrics
    endpoint (``[metrics] listen`` on a free port) on: what they cost, next to ``sftpd``."""

    def __init__(self, ctx):
        super().__init__(ctx, REPO, "sftpd+events")
        self.audit = os.path.join(self.state, "audit.jsonl")

    def command(self):
        argv, env = super().command()
        with open(os.path.join(self.state, "sftpd.toml"), "a") as f:
            f.write(
                f'\n[audit]\nfile = "{self.audit}"\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
            )
        return argv, env


def _knows(checkout, key):
    """Whether the sftpd at ``checkout`` has the config key (a --baseline may predate it)."""
    for dirpath, _dirs, files in os.walk(os.path.join(checkout, "sftpd")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(dirpath, name), errors="replace") as f:
                    if key in f.read():
                        return True
    return False


class SftpdDb(Sftpd):
    """sftpd with the benchmark user in ``[users_db]`` (SQLite or PostgreSQL) instead of
    ``[[users]]``, added with ``sftpd user add`` before the first start.

    ``url`` None: a SQLite file in the target's state directory; otherwise a PostgreSQL
    URL (``bench.py`` starts a throwaway cluster with the tests' fixture code)."""

    def __init__(self, ctx, kind, url=None):
        self.kind, self.url = kind, url
        super().__init__(ctx, REPO, f"sftpd-{kind}")
        self.added = False

    def command(self):
        cfg = os.path.join(self.state, "sftpd.toml")
        extra = "".join(f"{s}\n" for s in self.ctx.args.sftpd_set)
        extra = "max_connections_per_source = 0\n" + extra  # as Sftpd.command says
        url = self.url or f"sqlite:///{self.state}/users.db"
        with open(cfg, "w") as f:
            f.write(
                f'[server]\nlisten = ["127.0.0.1:0"]\nhost_keys_dir = "{self.state}/keys"\n'
                f'{extra}\n[users_db]\nurl = "{url}"\n'
                f"cache_seconds = {self.ctx.args.users_db_cache:g}\n"
            )
        super_command = self._serve(cfg)
        env = super_command[1]
        if not self.added:
            add = [*shlex.split(self.ctx.args.sftpd_cmd), "user", "add", USER, "--config", cfg]
            add += ["--root", self.ctx.root, "--key", f"{self.ctx.key}.pub"]
            r = subprocess.run(add, cwd=self.checkout, env=env, capture_output=True, text=True)
            if r.returncode:
                raise Skip(f"sftpd user add failed: {r.stderr.strip()[-300:]}")
            self.added = True
        return super_command

    def _serve(self, cfg):
        path = self.checkout + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = dict(os.environ, PYTHONPATH=path)
        return [*shlex.split(self.ctx.args.sftpd_cmd), "serve", "--config", cfg], env


def start_postgres():
    """A throwaway PostgreSQL cluster and a fresh database in it, with the tests' fixture
    code (tests/pgcluster.py): (URL, stop function). Skip if it cannot be started."""
    sys.path.insert(0, REPO)
    try:
        from tests.pgcluster import start_cluster
    except ImportError as e:
        raise Skip(f"tests/pgcluster.py needs pytest: {e}") from None
    gen = start_cluster()
    try:
        cluster = next(gen)
    except BaseException as e:  # pytest.skip's exception is a BaseException
        raise Skip(f"PostgreSQL: {e}") from None
    return cluster.new_database(), gen.close


class OpenSSH(Target):
    name = "openssh"
    SSHD = "/usr/sbin/sshd"

    def __init__(self, ctx):
        if os.geteuid() != 0:
            raise Skip("not root: sshd needs root for ChrootDirectory and privilege separation")
        if not os.access(self.SSHD, os.X_OK):
            raise Skip(f"{self.SSHD} not installed (apt-get install openssh-server)")
        if not shutil.which("unshare") or not shutil.which("mount"):
            raise Skip("unshare/mount (util-linux) missing")
        import pwd

        try:
            pw = pwd.getpwnam(USER)
        except KeyError:
            r = subprocess.run(
                ["useradd", "-M", "-d", "/", "-s", "/usr/sbin/nologin", "-p", "*", USER],
                capture_output=True,
                text=True,
            )
            if r.returncode:
                raise Skip(f"cannot create user {USER}: {r.stderr.strip()}") from None
            say(f"created system user {USER} (remove with: userdel {USER})")
            pw = pwd.getpwnam(USER)
        os.chown(
            os.path.join(ctx.root, "upload"), pw.pw_uid, pw.pw_gid
        )  # internal-sftp runs as USER
        super().__init__(ctx)
        self.mnt = "/srv" if os.path.isdir("/srv") else "/mnt"
        run = os.path.join(self.state, "run")
        os.makedirs(os.path.join(run, "sshd"))
        os.chmod(run, 0o755)
        keygen(os.path.join(self.state, "hostkey"))

    def command(self):
        self.port = free_port()
        cfg = os.path.join(self.state, "sshd_config")
        with open(cfg, "w") as f:
            f.write(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.state}/hostkey
PidFile none
AuthorizedKeysFile {self.ctx.key}.pub
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowUsers {USER}
DisableForwarding yes
PermitTTY no
UseDNS no
MaxStartups 100:30:200
LogLevel ERROR
Subsystem sftp internal-sftp
ForceCommand internal-sftp
ChrootDirectory {self.mnt}
""")
        # sshd wants /run/sshd and a root-owned, non-writable chroot path: in a
        # private mount namespace, bind our run dir on /run and ROOT on /srv.
        script = 'mount --bind "$1" /run && mount --bind "$2" "$3" && exec "$4" -D -e -f "$5"'
        run = os.path.join(self.state, "run")
        argv = "unshare --mount --propagation private -- /bin/sh -c".split()
        return [*argv, script, "sh", run, self.ctx.root, self.mnt, self.SSHD, cfg], dict(os.environ)


def settled(pid, field="VmRSS:"):
    vals = []
    for _ in range(3):
        vals.append(tree_mem_kib(pid, field))
        time.sleep(0.3)
    return statistics.median(vals)


def sftpd_version():
    def g(*a):
        return subprocess.run(
            ["git", "-C", REPO, *a], capture_output=True, text=True
        ).stdout.strip()

    dirty = g("status", "--porcelain", "--untracked-files=no", "--", "sftpd")
    return f"sftpd at git {g('rev-parse', '--short', 'HEAD') or '?'}" + (
        " + uncommitted changes" if dirty else ""
    )


def sshd_version():
    try:
        out = subprocess.run([OpenSSH.SSHD, "-V"], capture_output=True, text=True).stderr.strip()
    except OSError:
        return "no sshd"
    return f"sshd {out.split(',')[0]} internal-sftp"
