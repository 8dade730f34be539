"""End-to-end: the real rsync client over OpenSSH's ssh against a real sftpd (checked on disk)."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ALICE_PASSWORD, Env, have, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (have("rsync") and have("bwrap") and have("ssh")),
        reason="rsync, bwrap (bubblewrap) or ssh not installed",
    ),
]

REMOTE = "alice@127.0.0.1"
SECRET = b"host secret, outside every jail\n"


def rsh(env: Env) -> str:
    return shlex.join(["ssh", *env.ssh_opts(port_flag="-p")])


def rsync(
    env: Env, *args: str | Path, ok: bool = True, shell: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = ["rsync", "-e", shell or rsh(env), *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=env.tmp)
    if ok:
        assert res.returncode == 0, (
            f"rsync failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n"
            f"server log:\n{env.server.log_text()[-3000:]}"
        )
    return res


def make_tree(base: Path) -> None:
    (base / "sub" / "deeper").mkdir(parents=True)
    (base / "a.txt").write_bytes(b"alpha\n")
    (base / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    (base / "sub" / "deeper" / "c").write_bytes(b"")
    (base / "sub" / "sp ace").write_bytes(b"space")
    (base / "link").symlink_to("a.txt")


def tree(base: Path) -> dict[str, str]:
    out = {}
    for p in sorted(base.rglob("*")):
        rel = str(p.relative_to(base))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def sent(output: str) -> list[str]:
    return [line[12:] for line in output.splitlines() if re.match(r"^[<>]f", line)]


def stat(output: str, label: str) -> int:
    m = re.search(rf"^{re.escape(label)}: ([\d,]+)", output, re.MULTILINE)
    assert m, output
    return int(m.group(1).replace(",", ""))


def test_push_incremental_delete_pull(server: Env) -> None:
    src = server.tmp / "push-src"
    make_tree(src)
    rsync(server, "-a", f"{src}/", f"{REMOTE}:push/")
    dest = server.alice.root / "push"
    assert tree(dest) == tree(src)
    assert dest.joinpath("a.txt").stat().st_mtime == src.joinpath("a.txt").stat().st_mtime

    (src / "sub" / "deeper" / "c").write_bytes(b"now with content\n")
    again = rsync(server, "-a", "-i", "--stats", f"{src}/", f"{REMOTE}:push/")
    assert sent(again.stdout) == ["sub/deeper/c"]
    assert stat(again.stdout, "Number of regular files transferred") == 1

    (src / "sub" / "b.bin").unlink()
    rsync(server, "-a", "--delete", f"{src}/", f"{REMOTE}:push/")
    assert tree(dest) == tree(src)

    back = server.tmp / "pull-dest"
    rsync(server, "-a", f"{REMOTE}:push/", f"{back}/")
    assert tree(back) == tree(src)
    rsync(server, "-as", f"{REMOTE}:/push/sub/sp ace", f"{back}/single/")
    assert (back / "single" / "sp ace").read_bytes() == b"space"


def test_checksum_mode(server: Env) -> None:
    src = server.tmp / "cksum-src"
    src.mkdir()
    (src / "f").write_bytes(b"1111")
    rsync(server, "-a", f"{src}/", f"{REMOTE}:cksum/")
    (src / "f").write_bytes(b"2222")
    os.utime(src / "f", ns=(0, (server.alice.root / "cksum" / "f").stat().st_mtime_ns))
    assert sent(rsync(server, "-a", "-i", f"{src}/", f"{REMOTE}:cksum/").stdout) == []
    assert sent(rsync(server, "-ac", "-i", f"{src}/", f"{REMOTE}:cksum/").stdout) == ["f"]
    assert (server.alice.root / "cksum" / "f").read_bytes() == b"2222"


def test_partial_resume_after_an_interrupted_upload(server: Env) -> None:
    src = server.tmp / "partial-src"
    src.mkdir()
    data = os.urandom(6 << 20)
    (src / "big").write_bytes(data)
    # The remote shell forwards only the first 2 MiB the client sends, then EOF
    # (unbuffered: head(1) would hold back what it read and stall the protocol).
    copy = (
        "import os\nleft = 2 << 20\nwhile left > 0:\n"
        "    data = os.read(0, min(left, 65536))\n    if not data:\n        break\n"
        "    os.write(1, data)\n    left -= len(data)\n"
    )
    cutter = server.tmp / "cutting-ssh"
    cut = shlex.join([sys.executable, "-c", copy])
    cutter.write_text(f'#!/bin/sh\n{cut} | {rsh(server)} "$@"\n')
    cutter.chmod(0o755)
    first = rsync(
        server, "-a", "--partial", f"{src}/", f"{REMOTE}:partial/", ok=False, shell=str(cutter)
    )
    assert first.returncode != 0
    kept = (server.alice.root / "partial" / "big").read_bytes()
    assert 0 < len(kept) < len(data) and data.startswith(kept)
    second = rsync(server, "-a", "--partial", "--stats", f"{src}/", f"{REMOTE}:partial/")
    assert (server.alice.root / "partial" / "big").read_bytes() == data
    assert stat(second.stdout, "Literal data") < len(data)


def test_escape_attempts(server: Env) -> None:
    secret = server.tmp / "host-secret.txt"
    secret.write_bytes(SECRET)
    root = server.alice.root
    (root / "esc").mkdir()
    (root / "esc" / "abs").symlink_to(secret)
    (root / "esc" / "rel").symlink_to(os.path.relpath(secret, root / "esc"))
    (root / "esc" / "etc").symlink_to("/etc")
    (root / "esc" / "inside").symlink_to("/esc-target.txt")
    (root / "esc-target.txt").write_bytes(b"inside the jail\n")
    out = server.tmp / "esc-out"
    rsync(server, "-rL", f"{REMOTE}:esc/", f"{out}/", ok=False)
    for p in out.rglob("*"):
        if p.is_file():
            assert SECRET not in p.read_bytes()
            assert not p.read_bytes().startswith(b"\x7fELF")
    assert (out / "inside").read_bytes() == b"inside the jail\n"
    assert not (out / "etc" / "passwd").exists()

    for path in ("/etc/passwd", "/usr/bin/rsync", "/../../etc/passwd", str(secret)):
        res = rsync(server, "-a", f"{REMOTE}:{path}", f"{server.tmp}/nothing/", ok=False)
        assert res.returncode != 0
        assert not (server.tmp / "nothing").exists() or not any((server.tmp / "nothing").iterdir())

    up = server.tmp / "esc-up"
    up.mkdir()
    (up / "f").write_bytes(b"f")
    before = sorted(p.name for p in server.tmp.iterdir())
    rsync(server, "-a", f"{up}/", f"{REMOTE}:/../../../climbed/")
    assert (root / "climbed" / "f").read_bytes() == b"f"
    assert sorted(p.name for p in server.tmp.iterdir()) == before


@pytest.mark.parametrize(
    ("rsync_path", "shown"),
    [
        ("rsync --log-file=/tmp/sftpd-e2e-rsync.log", "--log-file=/tmp/sftpd-e2e-rsync.log"),
        ("rsync --rsh=/bin/sh", "--rsh=/bin/sh"),
        ("rsync --server --config=/etc/passwd", "--config"),
        ("rsync --server --sender -e sh", "-e"),
        ("rsync --server --sender --rsh=sh", "--rsh"),
    ],
)
def test_refused_rsync_path_tricks(server: Env, rsync_path: str, shown: str) -> None:
    res = rsync(server, f"--rsync-path={rsync_path}", f"{REMOTE}:/", f"{server.tmp}/r/", ok=False)
    assert res.returncode != 0
    # Options before --server are turned away by the dispatcher, the rest by the allow-list.
    assert (
        f"sftpd: rsync option not allowed: {shown}" in res.stderr
        or "sftpd: command not allowed: rsync" in res.stderr
    ), res.stderr
    assert not Path("/tmp/sftpd-e2e-rsync.log").exists()


def test_read_only_user(make_server) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_server(alice_extra="read_only = true")
    env.alice.root.mkdir(parents=True, exist_ok=True)
    (env.alice.root / "keep").write_bytes(b"keep\n")
    src = env.tmp / "ro-src"
    src.mkdir()
    (src / "new").write_bytes(b"new")
    res = rsync(env, "-a", f"{src}/", f"{REMOTE}:/", ok=False)
    assert "sftpd: read-only account" in res.stderr
    assert not (env.alice.root / "new").exists()
    rsync(env, "-a", f"{REMOTE}:/", f"{env.tmp}/ro-out/")
    assert (env.tmp / "ro-out" / "keep").read_bytes() == b"keep\n"


def test_missing_bwrap_is_reported_and_the_rest_keeps_working(make_server) -> None:  # type: ignore[no-untyped-def]
    env: Env = make_server(tail='[exec]\nbwrap_path = "/nonexistent/bwrap"')
    res = rsync(env, "-a", f"{REMOTE}:/", f"{env.tmp}/none/", ok=False)
    assert "sftpd: rsync is not available on this server" in res.stderr
    # the log line may land just after the client saw the message
    assert wait_for(lambda: "/nonexistent/bwrap" in env.server.log_text())
    env.sftp("ls /")


def descendants(pid: int) -> set[int]:
    """Every live (not zombie) process below ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_eof_before_the_protocol_version_ends_the_channel(server: Env) -> None:
    paramiko = pytest.importorskip("paramiko")
    pid = server.server.proc.pid
    before = descendants(pid)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        port=server.port,
        username="alice",
        password=ALICE_PASSWORD,
        look_for_keys=False,
        allow_agent=False,
        timeout=20,
    )
    try:
        channel = client.get_transport().open_session()
        channel.exec_command("rsync --server -vlogDtpre.iLsfxCIvu . /x")
        # the sandbox is up (bwrap and what runs inside it) before the client gives up
        assert wait_for(lambda: len(descendants(pid) - before) >= 2)
        channel.shutdown_write()
        assert channel.status_event.wait(20), "no exit status after EOF"
        assert channel.recv_exit_status() == 12  # what a real `rsync --server` exits with
        assert b"rsync" in channel.makefile_stderr().read()
        # the server closes the channel, and no process of that session is left
        assert wait_for(lambda: channel.closed, timeout=20)
        assert wait_for(lambda: descendants(pid) <= before, timeout=20), descendants(pid)
    finally:
        client.close()
    assert not (server.alice.root / "x").exists()


@pytest.mark.parametrize("interrupt", ["rsync-sigint", "ssh-killed"])
def test_interrupted_partial_upload_keeps_the_data_and_no_temporary(
    server: Env, interrupt: str
) -> None:
    name = f"big-{interrupt}.bin"
    src = server.tmp / name
    data = os.urandom(24 << 20)
    src.write_bytes(data)
    root = server.alice.root
    root.mkdir(parents=True, exist_ok=True)

    def temporaries() -> list[Path]:
        return [p for p in root.iterdir() if p.name.startswith(f".{name}.")]

    client = subprocess.Popen(
        ["rsync", "-e", rsh(server), "--partial", "--bwlimit=3000", str(src), f"{REMOTE}:{name}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=server.tmp,
    )
    try:
        # throttled to 3000 KiB/s: 24 MiB take 8 s; interrupt once 2 MiB have arrived
        assert wait_for(
            lambda: any(p.stat().st_size >= 2 << 20 for p in temporaries()), timeout=60
        ), server.server.log_text()[-2000:]
        if interrupt == "rsync-sigint":
            client.send_signal(signal.SIGINT)  # what ^C does
        else:
            (ssh,) = descendants(client.pid)
            os.kill(ssh, signal.SIGKILL)
        assert client.wait(30) != 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    # the server closes rsync's pipes; rsync keeps the partial file under the final name
    assert wait_for(lambda: (root / name).exists() and not temporaries(), timeout=30), (
        sorted(p.name for p in root.iterdir()),
        server.server.log_text()[-2000:],
    )
    kept = (root / name).read_bytes()
    assert 2 << 20 <= len(kept) < len(data)
    assert data.startswith(kept)
    rsync(server, "--partial", src, f"{REMOTE}:{name}")
    assert (root / name).read_bytes() == data
    assert temporaries() == []


@pytest.mark.skipif(os.getuid() != 0, reason="ownership as root needs a server running as root")
def test_download_as_root_keeps_the_owners(server: Env) -> None:
    top = server.alice.root / "owned"
    (top / "sub").mkdir(parents=True)
    (top / "root.txt").write_bytes(b"root's\n")
    (top / "sub" / "deep.txt").write_bytes(b"deep\n")
    other = top / "sub" / "other.txt"
    other.write_bytes(b"someone else's\n")
    os.chown(other, 4321, 4322)
    other.chmod(0o600)  # root reads it all the same
    os.chown(top / "sub", 4323, 4324)
    (top / "link").symlink_to("root.txt")
    os.chown(top / "link", 4325, 4326, follow_symlinks=False)
    back = server.tmp / "owned-back"
    rsync(server, "-a", f"{REMOTE}:owned/", f"{back}/")
    owners = {
        str(p.relative_to(back)): (p.lstat().st_uid, p.lstat().st_gid) for p in back.rglob("*")
    }
    # what OpenSSH's server with rsync as root gives a root client with -a
    assert owners == {
        "root.txt": (0, 0),
        "sub": (4323, 4324),
        "sub/deep.txt": (0, 0),
        "sub/other.txt": (4321, 4322),
        "link": (4325, 4326),
    }
    assert (back / "sub" / "other.txt").read_bytes() == b"someone else's\n"
    assert (back.lstat().st_uid, back.lstat().st_gid) == (0, 0)


def test_uploads_get_the_umask_and_lose_setuid_as_over_sftp(server: Env) -> None:
    """The rules' incoming chmod: a 4777 file and a 2777 directory pushed with -a (which
    preserves modes) land as 0755 under the default umask 022, with no setuid/setgid/sticky
    bit; before, rsync kept the client's modes as they were."""
    src = server.tmp / "modes-src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "tool").write_bytes(b"#!/bin/sh\n")
    (src / "sub" / "tool").chmod(0o4777)
    (src / "sub").chmod(0o3777)
    (src / "plain").write_bytes(b"p")
    (src / "plain").chmod(0o666)
    rsync(server, "-a", f"{src}/", f"{REMOTE}:/modes/")
    root = server.alice.root / "modes"
    assert (root / "sub" / "tool").stat().st_mode & 0o7777 == 0o755
    assert (root / "sub").stat().st_mode & 0o7777 == 0o755
    assert (root / "plain").stat().st_mode & 0o7777 == 0o644
    rsync(server, "-r", f"{src}/", f"{REMOTE}:/modes-r/")  # without -p: the same masks
    assert (server.alice.root / "modes-r" / "sub" / "tool").stat().st_mode & 0o7777 == 0o755
