"""rsync through make_rsync_app, end to end without SSH: the real rsync client, the real sandbox.

The client's ``-e`` points at a generated script that runs DRIVER: a Python process that
builds a SessionContext over a temporary user root, serves ``make_rsync_app`` on its own
stdio (a ChannelIO over stdin/stdout/stderr) with a real reactor, and exits with the
channel's exit status -- what sshd plus our session channel would do.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sftpd.apps.rsync.bridge import UNAVAILABLE

REPO = Path(__file__).resolve().parent.parent
HAVE_TOOLS = shutil.which("rsync") is not None and shutil.which("bwrap") is not None
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="rsync or bwrap (bubblewrap) not installed")
SECRET = b"host secret: not for jailed users\n"

DRIVER = r"""
import os, shlex, signal, sys
from pathlib import Path

from twisted.internet import reactor, stdio
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogBeginner, textFileLogObserver
from zope.interface import implementer

from sftpd.runtime.threads import InlineBlocking
from sftpd.config.model import ExecConfig
from sftpd.apps.rsync.bridge import make_rsync_app
from sftpd.apps.contract import SessionContext
from sftpd.storage.local import LocalStorage
from sftpd.storage.rules import Rules
from sftpd.storage.enforce import RulesStorage

CUT_AFTER = int(os.environ.get("SFTPD_CUT_AFTER", "0"))
LOSE_AFTER = int(os.environ.get("SFTPD_LOSE_AFTER", "0"))
LOSE_AFTER_IN = int(os.environ.get("SFTPD_LOSE_AFTER_IN", "0"))
FREEZE = bool(os.environ.get("SFTPD_FREEZE"))  # SIGSTOP the sandbox before losing it
STOP_AFTER = tuple(float(t) for t in os.environ.get("SFTPD_STOP_AFTER", "5,10").split(","))


def descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@implementer(IHalfCloseableProtocol)
class Channel(Protocol):
    def __init__(self, argv, ctx):
        self.argv, self.ctx, self.app = argv, ctx, None
        self.paused, self.status, self.received, self.sent = False, None, 0, 0
        self.lost = False

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.app = make_rsync_app(self.argv, self.ctx, self, stop_after=STOP_AFTER)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        if self.app is not None and not self.lost:
            self.app.output_drained()

    def stopProducing(self):
        pass

    def write(self, data):
        if self.status is not None or self.lost:
            return
        self.transport.write(data)
        self.sent += len(data)
        if LOSE_AFTER and self.sent >= LOSE_AFTER:
            self.lose()

    def write_stderr(self, data):
        os.write(2, data)

    def exit(self, status):
        if self.status is None and not self.lost:
            self.status = status
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

    def pending_output(self):
        return 1 << 30 if self.paused else 0

    def pause_reading(self):
        self.transport.pauseProducing()

    def resume_reading(self):
        self.transport.resumeProducing()

    def dataReceived(self, data):
        if self.lost or (CUT_AFTER and self.received >= CUT_AFTER):
            return
        if CUT_AFTER:
            data = data[: CUT_AFTER - self.received]
        self.received += len(data)
        self.app.data_received(data)
        if LOSE_AFTER_IN and self.received >= LOSE_AFTER_IN and not self.lost:
            self.lose()
            return
        if CUT_AFTER and self.received >= CUT_AFTER:
            self.app.eof_received()

    def readConnectionLost(self):
        if not (CUT_AFTER and self.received >= CUT_AFTER) and not self.lost:
            self.app.eof_received()

    def writeConnectionLost(self):
        if reactor.running and not self.lost:
            reactor.stop()

    def connectionLost(self, reason=None):
        if self.status is None and self.app is not None and not self.lost:
            self.app.connection_lost()
        if reactor.running and not self.lost:
            reactor.stop()

    def lose(self):
        self.lost = True
        pids = descendants(os.getpid())
        if FREEZE:  # an rsync that no longer reacts: only SIGKILL ends it
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
        self.app.connection_lost()
        self.wait(pids, 600)

    def wait(self, pids, tries):
        left = [p for p in pids if alive(p)]
        temps = [str(p) for p in Path(self.ctx.rsync.host_root).rglob(".big.*")]
        if (left or temps) and tries:
            reactor.callLater(0.05, self.wait, pids, tries - 1)
            return
        with open(os.environ["SFTPD_REPORT"], "w") as report:
            report.write(f"before={len(pids)} left={left}\n")
        self.status = 0
        reactor.stop()


def main():
    root, home, mode = sys.argv[1:4]
    if os.environ.get("SFTPD_LOG"):
        observer = textFileLogObserver(open(os.environ["SFTPD_LOG"], "a"))
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    # sys.argv[4] is the host name; ssh would join the rest with spaces, our server splits it.
    argv = [w.encode() for w in shlex.split(" ".join(sys.argv[5:]))]
    rules = Rules(read_only=mode == "ro")
    ctx = SessionContext(
        username="tester", home=home, storage=RulesStorage(LocalStorage(root), rules),
        blocking=InlineBlocking(), rules=rules, rsync=rules.rsync(Path(root)),
        exec=ExecConfig(rsync_path=os.environ.get("SFTPD_RSYNC", "rsync"),
                        bwrap_path=os.environ.get("SFTPD_BWRAP", "bwrap")),
        reactor=reactor, session_id="test",
    )
    channel = Channel(argv, ctx)
    stdio.StandardIO(channel)
    reactor.run()
    sys.exit(channel.status if channel.status is not None else 255)


main()
"""


@dataclass
class Env:
    base: Path
    root: Path
    secret: Path
    log: Path
    rsh_rw: str
    rsh_ro: str
    extra: dict[str, str] = field(default_factory=dict)

    def rsync(self, *args: str | Path, read_only: bool = False, ok: bool = True) -> Result:
        rsh = self.rsh_ro if read_only else self.rsh_rw
        env = {**os.environ, "SFTPD_LOG": str(self.log), **self.extra}
        proc = subprocess.run(
            ["rsync", "-e", rsh, *map(str, args)],
            capture_output=True,
            env=env,
            timeout=300,
            check=False,
        )
        result = Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        if ok:
            assert result.code == 0, result
        return result


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def env(tmp_path: Path) -> Env:
    if not HAVE_TOOLS:
        pytest.skip("rsync or bwrap (bubblewrap) not installed")
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    scripts = {}
    for mode in ("rw", "ro"):
        script = tmp_path / f"rsh-{mode}"
        command = [sys.executable, str(driver), str(root), "/", mode]
        script.write_text(
            "#!/bin/sh\n"
            f"PYTHONPATH={shlex.quote(str(REPO))}; export PYTHONPATH\n"
            f'exec {shlex.join(command)} "$@"\n'
        )
        script.chmod(0o755)
        scripts[mode] = str(script)
    log = tmp_path / "sftpd.log"
    log.touch()
    return Env(tmp_path, root, secret, log, scripts["rw"], scripts["ro"])


def make_tree(src: Path) -> None:
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "docs" / "b.bin").write_bytes(os.urandom(300_000))
    (src / "docs" / "deep" / "c.txt").write_bytes(b"gamma\n" * 1000)
    (src / "space name.txt").write_bytes(b"spaces survive\n")
    (src / "link").symlink_to("a.txt")
    (src / "docs" / "deep" / "c.txt").chmod(0o600)


def snapshot(top: Path) -> dict[str, tuple[str, str | int]]:
    """Relative path -> (kind, digest or target), mode and mtime checked separately."""
    found: dict[str, tuple[str, str | int]] = {}
    for path in sorted(top.rglob("*")):
        rel = str(path.relative_to(top))
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", path.stat().st_mode & 0o7777)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[rel] = ("file", f"{digest}/{path.stat().st_mode & 0o7777:o}")
    return found


def contents_under(top: Path) -> list[bytes]:
    return [p.read_bytes() for p in top.rglob("*") if p.is_file() and not p.is_symlink()]


def stat_line(output: str, label: str) -> int:
    match = re.search(rf"^{re.escape(label)}: ([\d,]+)", output, re.MULTILINE)
    assert match, output
    return int(match.group(1).replace(",", ""))


def transferred(output: str) -> list[str]:
    """Names that --itemize-changes reports as sent ('<f' push, '>f' pull)."""
    return [line[12:] for line in output.splitlines() if re.match(r"^[<>]f", line)]


# -- transfers ------------------------------------------------------------------------


def test_push_then_incremental_then_delete(env: Env) -> None:
    src = env.base / "src"
    make_tree(src)
    env.rsync("-a", f"{src}/", "h:backup/")
    assert snapshot(env.root / "backup") == snapshot(src)
    assert (env.root / "backup" / "a.txt").stat().st_mtime == (src / "a.txt").stat().st_mtime
    assert (env.root / "backup" / "a.txt").stat().st_uid == os.getuid()

    (src / "docs" / "deep" / "c.txt").write_bytes(b"changed\n")
    again = env.rsync("-a", "--itemize-changes", "--stats", f"{src}/", "h:backup/")
    assert transferred(again.out) == ["docs/deep/c.txt"]
    assert stat_line(again.out, "Number of regular files transferred") == 1
    assert snapshot(env.root / "backup") == snapshot(src)

    (src / "docs" / "b.bin").unlink()
    env.rsync("-a", "--delete", f"{src}/", "h:backup/")
    assert not (env.root / "backup" / "docs" / "b.bin").exists()
    assert snapshot(env.root / "backup") == snapshot(src)


def test_pull_and_protect_args(env: Env) -> None:
    make_tree(env.root / "data dir")
    out = env.base / "out"
    env.rsync("-a", "h:data dir/", out)
    assert snapshot(out) == snapshot(env.root / "data dir")
    out2 = env.base / "out2"
    env.rsync("-as", "h:/data dir/space name.txt", "h:../data dir/a.txt", f"{out2}/")
    assert sorted(p.name for p in out2.iterdir()) == ["a.txt", "space name.txt"]
    src = env.base / "src"
    make_tree(src)
    env.rsync("-as", "--delete", f"{src}/", "h:pushed with -s/")
    assert snapshot(env.root / "pushed with -s") == snapshot(src)


def test_checksum_finds_same_size_same_time_changes(env: Env) -> None:
    src = env.base / "src"
    src.mkdir()
    (src / "f").write_bytes(b"AAAA")
    env.rsync("-a", f"{src}/", "h:c/")
    (src / "f").write_bytes(b"BBBB")
    os.utime(src / "f", ns=(0, (env.root / "c" / "f").stat().st_mtime_ns))
    quick = env.rsync("-a", "--itemize-changes", f"{src}/", "h:c/")
    assert transferred(quick.out) == []
    assert (env.root / "c" / "f").read_bytes() == b"AAAA"
    checked = env.rsync("-ac", "--itemize-changes", f"{src}/", "h:c/")
    assert transferred(checked.out) == ["f"]
    assert (env.root / "c" / "f").read_bytes() == b"BBBB"


def test_partial_resumes_an_interrupted_upload(env: Env) -> None:
    src = env.base / "src"
    src.mkdir()
    data = os.urandom(4 << 20)
    (src / "big").write_bytes(data)
    # The channel stops passing client bytes after 1 MiB: rsync sees the client vanish.
    env.extra["SFTPD_CUT_AFTER"] = str(1 << 20)
    cut = env.rsync("-a", "--partial", f"{src}/", "h:p/", ok=False)
    assert cut.code != 0
    kept = (env.root / "p" / "big").read_bytes()
    assert 0 < len(kept) < len(data)
    assert data.startswith(kept)
    del env.extra["SFTPD_CUT_AFTER"]
    resumed = env.rsync("-a", "--partial", "--stats", f"{src}/", "h:p/")
    assert (env.root / "p" / "big").read_bytes() == data
    assert stat_line(resumed.out, "Matched data") >= len(kept) // 2
    assert stat_line(resumed.out, "Literal data") < len(data)


def test_relative_link_dest_and_backup_dir_stay_inside(env: Env) -> None:
    src = env.base / "src"
    make_tree(src)
    env.rsync("-a", "--mkpath", f"{src}/", "h:snap/1/")
    (src / "a.txt").write_bytes(b"new alpha\n")
    env.rsync("-a", "--link-dest=../1", f"{src}/", "h:snap/2/")
    one, two = env.root / "snap" / "1", env.root / "snap" / "2"
    assert (one / "docs" / "b.bin").stat().st_ino == (two / "docs" / "b.bin").stat().st_ino
    assert (two / "a.txt").read_bytes() == b"new alpha\n"
    (src / "a.txt").write_bytes(b"third\n")
    env.rsync("-ab", "--backup-dir=/../../old", f"{src}/", "h:snap/2/")
    assert (env.root / "old" / "a.txt").read_bytes() == b"new alpha\n"


# -- escapes --------------------------------------------------------------------------


def test_dotdot_prefixes_land_in_the_root(env: Env) -> None:
    src = env.base / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    before = sorted(p.name for p in env.base.iterdir())
    env.rsync("-a", f"{src}/", "h:/../../../escaped/")
    env.rsync("-a", f"{src}/", "h:../../escaped2/")
    assert (env.root / "escaped" / "f").read_bytes() == b"x"
    assert (env.root / "escaped2" / "f").read_bytes() == b"x"
    assert sorted(p.name for p in env.base.iterdir()) == before


def test_planted_symlinks_do_not_reach_host_files(env: Env) -> None:
    (env.root / "data").mkdir()
    (env.root / "data" / "inside.txt").write_bytes(b"inside\n")
    (env.root / "abs-inside").symlink_to("/data/inside.txt")
    (env.root / "abs-secret").symlink_to(env.secret)
    (env.root / "rel-secret").symlink_to(os.path.relpath(env.secret, env.root))
    (env.root / "dotdot-secret").symlink_to("../" * 30 + str(env.secret).lstrip("/"))
    (env.root / "host-etc").symlink_to("/etc")
    (env.root / "host-lib").symlink_to("/lib64")
    (env.root / "host-base").symlink_to(env.base)
    for flags in (["-rL"], ["-rl", "--copy-unsafe-links"], ["-rlK"], ["-rLk"]):
        out = env.base / ("out" + "".join(flags))
        env.rsync(*flags, "h:/", f"{out}/", ok=False)
        leaked = [c for c in contents_under(out) if SECRET in c or c.startswith(b"\x7fELF")]
        assert leaked == []
        if "L" in flags[0]:  # absolute targets resolve inside the user's root, as over SFTP
            assert (out / "abs-inside").read_bytes() == b"inside\n"
    for name in ("abs-secret", "rel-secret", "dotdot-secret", "host-etc/passwd"):
        out = env.base / "single"
        env.rsync("-L", f"h:{name}", f"{out}/", ok=False)
        assert all(SECRET not in c for c in contents_under(out))


def test_host_paths_are_not_visible(env: Env) -> None:
    (env.root / "mine").write_bytes(b"mine\n")
    out = env.base / "out"
    for path in (
        "/etc/passwd",
        "/usr/bin/rsync",
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/etc/rsyncd.conf",
        "/jail/mine",
        "/proc/self/environ",
        "/dev/null",
        str(env.secret),
        "/../" + str(env.secret),
    ):
        result = env.rsync("-a", f"h:{path}", f"{out}/", ok=False)
        assert result.code != 0, path
        assert not out.exists() or list(out.iterdir()) == [], path
    listing = env.rsync("--list-only", "h:/")
    names = sorted(line.split()[-1] for line in listing.out.splitlines())
    assert names == [".", "mine"]


def test_read_only_account(env: Env) -> None:
    (env.root / "f").write_bytes(b"keep me\n")
    src = env.base / "src"
    src.mkdir()
    (src / "new").write_bytes(b"new")
    push = env.rsync("-a", f"{src}/", "h:/", read_only=True, ok=False)
    assert push.code != 0
    assert "sftpd: read-only account" in push.err
    assert not (env.root / "new").exists()
    out = env.base / "out"
    env.rsync("-a", "h:/", f"{out}/", read_only=True)
    assert (out / "f").read_bytes() == b"keep me\n"
    remove = env.rsync("-a", "--remove-source-files", "h:/f", f"{out}/", read_only=True, ok=False)
    assert "rsync option not allowed: --remove-source-files" in remove.err
    assert (env.root / "f").exists()


@pytest.mark.parametrize(
    ("rsync_path", "shown"),
    [
        ("rsync --log-file={log}", "--log-file={log}"),
        ("rsync --rsh=/bin/sh", "--rsh=/bin/sh"),
        ("/bin/sh", "--rsync-path"),
        ("rsync --server --config={log}", "--config"),
        ("rsync --server --daemon", "--daemon"),
    ],
)
def test_refused_options(env: Env, rsync_path: str, shown: str) -> None:
    log = env.base / "written-by-rsync.log"
    rsync_path, shown = rsync_path.format(log=log), shown.format(log=log)
    result = env.rsync(f"--rsync-path={rsync_path}", "h:/", f"{env.base}/out/", ok=False)
    assert result.code != 0
    assert f"sftpd: rsync option not allowed: {shown}\n" in result.err
    assert not log.exists()


def test_refused_server_side_option_values(env: Env) -> None:
    src = env.base / "src"
    src.mkdir()
    pushed = env.rsync("-a", "-T", "/tmp", f"{src}/", "h:/", ok=False)
    assert "sftpd: rsync option not allowed: --temp-dir\n" in pushed.err
    pulled = env.rsync("-a", f"--files-from=h:{env.secret}", "h:/", f"{env.base}/out/", ok=False)
    assert f"sftpd: rsync option not allowed: --files-from={env.secret}\n" in pulled.err


def test_connection_lost_kills_the_sandbox(env: Env) -> None:
    (env.root / "big").write_bytes(os.urandom(8 << 20))
    report = env.base / "report"
    env.extra.update(SFTPD_LOSE_AFTER=str(64 * 1024), SFTPD_REPORT=str(report))
    env.rsync("-a", "h:/big", f"{env.base}/out/", ok=False)
    before, left = report.read_text().split()
    assert int(before.split("=")[1]) >= 2  # bwrap and what runs inside it
    assert left == "left=[]"


def test_unavailable_binaries_are_reported_and_logged(env: Env) -> None:
    env.extra["SFTPD_RSYNC"] = str(env.base / "no-such-rsync")
    missing = env.rsync("-a", "h:/", f"{env.base}/out/", ok=False)
    assert UNAVAILABLE.decode() in missing.err
    assert "no-such-rsync" in env.log.read_text()
    env.extra.clear()
    fake = env.base / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    env.extra["SFTPD_BWRAP"] = str(fake)
    failing = env.rsync("-a", "h:/", f"{env.base}/out/", ok=False)
    assert UNAVAILABLE.decode() in failing.err
    assert "No permissions to create new namespace" in env.log.read_text()
    assert str(env.root) not in failing.err


def test_temporaries_of_a_killed_rsync_are_removed(env: Env) -> None:
    src = env.base / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(8 << 20))
    (env.root / "up").mkdir()
    (env.root / "up" / ".mine.Ab12Cd").write_bytes(b"a user's file with a temporary's name")
    report = env.base / "report"
    env.extra.update(
        SFTPD_LOSE_AFTER_IN=str(2 << 20),
        SFTPD_FREEZE="1",
        SFTPD_STOP_AFTER="0.1,0.1",
        SFTPD_REPORT=str(report),
    )
    env.rsync("--bwlimit=3000", f"{src}/big", "h:up/big", ok=False)
    assert report.read_text().split()[1] == "left=[]"
    # rsync had no chance to clean up (SIGKILL): its temporary is gone all the same
    assert sorted(p.name for p in (env.root / "up").iterdir()) == [".mine.Ab12Cd"]
    assert "removed 1 temporaries left by a killed rsync" in env.log.read_text()
