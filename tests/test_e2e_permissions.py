"""End to end: each permission with OpenSSH sftp, scp, rsync; per-directory rules; a backup key."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sftpd.storage.permissions import SINGLE
from tests.support import Env, User, have, start_sftpd, toml_str, wait_for, write_config

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (have("sftp") and have("ssh")), reason="OpenSSH client missing"),
]


def perms(names: list[str] | tuple[str, ...]) -> str:
    return "permissions = [" + ", ".join(toml_str(n) for n in names) + "]"


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, client_key: tuple[Path, str], host_keys_dir: Path
) -> Iterator[tuple[Env, Path]]:
    """One server: alice with every right, a user "no_X" per permission X with all but X, a
    user with a per-directory table, and alice's backup key (list, upload, create_dirs)."""
    tmp = tmp_path_factory.mktemp("perms")
    backup = tmp / "backup_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(backup)], check=True)
    backup_line = (tmp / "backup_key.pub").read_text().strip()
    scp_key = tmp / "scp_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(scp_key)], check=True)
    scp_line = (tmp / "scp_key.pub").read_text().strip()
    alice = User(
        "alice",
        tmp / "alice",
        client_key[1],
        extra=f"[[users.keys]]\nkey = {toml_str(backup_line)}\n"
        'permissions = ["list", "upload", "create_dirs"]\n'
        f'[[users.keys]]\nkey = {toml_str(scp_line)}\nprotocols = ["scp"]\n',
    )
    users = [
        User(f"no_{p}", tmp / f"no_{p}", client_key[1], extra=perms([s for s in SINGLE if s != p]))
        for p in SINGLE
    ]
    table = 'permissions = { "/" = ["list", "download"], "/ok" = ["*"] }'
    users.append(User("dirs", tmp / "dirs", client_key[1], extra=table))
    patterns = 'deny_files = ["*.exe", "/pub/*.php"]\nhide_files = [".*"]'
    users.append(User("pat", tmp / "pat", client_key[1], extra=patterns))
    for u in [alice, *users]:
        u.root.mkdir()
    (tmp / "dirs" / "ok").mkdir()
    (tmp / "dirs" / "ro").mkdir()
    os.symlink("../ro", tmp / "dirs" / "ok" / "link")
    cfg = tmp / "sftpd.toml"
    write_config(cfg, [alice, *users], host_keys_dir)
    proc = start_sftpd(cfg)
    try:
        yield Env(proc, alice, client_key[0], tmp), backup
    finally:
        proc.stop()


def seed(root: Path) -> None:
    """The files each permission's command works on."""
    for name in ("f", "g", "e", "s", "n", "new", "got"):
        path = root / name
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.exists() or path.is_symlink():
            path.unlink()
    (root / "f").write_bytes(b"old")
    os.utime(root / "f", (1000, 1000))
    (root / "f").chmod(0o644)
    for d in ("d", "e"):
        if (root / d).exists():
            (root / d).rmdir()
    (root / "d").mkdir()


def content(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


# permission -> (sftp batch, what the disk shows when it ran)
COMMANDS = {
    "list": ("ls -l /", None),
    "download": ("get /f got", None),
    "upload": ("put local /new", lambda r: content(r / "new") == b"local bytes"),
    "overwrite": ("put local /f", lambda r: (r / "f").read_bytes() == b"local bytes"),
    "delete_files": ("rm /f", lambda r: not (r / "f").exists()),
    "delete_dirs": ("rmdir /d", lambda r: not (r / "d").exists()),
    "rename_files": ("rename /f /g", lambda r: (r / "g").exists() and not (r / "f").exists()),
    "rename_dirs": ("rename /d /e", lambda r: (r / "e").is_dir()),
    "create_dirs": ("mkdir /n", lambda r: (r / "n").is_dir()),
    "create_symlinks": ("symlink /f /s", lambda r: (r / "s").is_symlink()),
    "chmod": ("chmod 600 /f", lambda r: (r / "f").stat().st_mode & 0o777 == 0o600),
    "chtimes": ("put -p local /f", lambda r: (r / "f").stat().st_mtime == 5000),
}


def run_sftp(
    e: Env, user: str, batch: str, key: Path | None = None
) -> subprocess.CompletedProcess[str]:
    opts = e.ssh_opts()
    if key is not None:
        opts[opts.index(str(e.key_path))] = str(key)
    (e.tmp / "local").write_bytes(b"local bytes")
    os.utime(e.tmp / "local", (5000, 5000))
    cmd = ["sftp", *opts, "-b", "-", f"{user}@127.0.0.1"]
    return subprocess.run(cmd, input=batch, capture_output=True, text=True, timeout=60, cwd=e.tmp)


@pytest.mark.parametrize("permission", SINGLE)
def test_each_sftp_command_needs_its_permission(env: tuple[Env, Path], permission: str) -> None:
    e, _ = env
    batch, changed = COMMANDS[permission]
    without = e.tmp / f"no_{permission}"
    for user, root in (("alice", e.tmp / "alice"), (f"no_{permission}", without)):
        seed(root)
        (e.tmp / "got").unlink(missing_ok=True)
        res = run_sftp(e, user, batch)
        allowed = user == "alice"
        if permission != "chtimes":  # OpenSSH's put -p does not fail on a refused setstat
            assert (res.returncode == 0) is allowed, (user, res.stderr)
        if changed is not None:
            assert changed(root) is allowed, (user, res.stderr)
        if permission == "download":
            assert (e.tmp / "got").exists() is allowed
        if not allowed and permission != "chtimes":  # put -p writes, then sets the times
            assert (root / "f").read_bytes() == b"old"
    line = f"denied: user=no_{permission} key=SHA256:"
    assert wait_for(lambda: line in e.server.log_text()), e.server.log_text()[-2000:]
    assert f"op={permission} " in e.server.log_text()


def test_a_symlink_from_an_allowed_into_a_denied_directory(env: tuple[Env, Path]) -> None:
    e, _ = env
    root = e.tmp / "dirs"
    res = run_sftp(e, "dirs", "put local /ok/mine\n")
    assert res.returncode == 0, res.stderr
    assert (root / "ok" / "mine").read_bytes() == b"local bytes"
    for batch in ("put local /ok/link/x\n", "put local /x\n", "mkdir /ok/link/d\n"):
        res = run_sftp(e, "dirs", batch)
        assert res.returncode != 0, batch
    assert os.listdir(root / "ro") == [] and not (root / "x").exists()
    assert wait_for(lambda: "path=/ro/x rule=permissions of /" in e.server.log_text())


def ssh_cmd(e: Env, key: Path) -> list[str]:
    opts = e.ssh_opts(port_flag="-p")
    opts[opts.index(str(e.key_path))] = str(key)
    return ["ssh", *opts]


def test_the_backup_key_adds_but_never_destroys(env: tuple[Env, Path]) -> None:
    e, backup = env
    root = e.tmp / "alice"
    seed(root)
    # It uploads and makes directories...
    res = run_sftp(e, "alice", "mkdir /snap\nput local /snap/one\n", key=backup)
    assert res.returncode == 0, res.stderr
    assert (root / "snap" / "one").read_bytes() == b"local bytes"
    # ...but cannot overwrite, delete or rename, whatever the protocol.
    for batch in ("put local /f", "rm /f", "rename /f /g", "rmdir /d", "chmod 600 /f"):
        res = run_sftp(e, "alice", batch, key=backup)
        assert res.returncode != 0, batch
    assert (root / "f").read_bytes() == b"old" and (root / "d").is_dir()
    assert not (root / "g").exists()
    if have("scp"):
        scp = ["scp", "-O", *ssh_cmd(e, backup)[1:]]
        scp[scp.index("-p")] = "-P"
        res = subprocess.run(
            [*scp, str(e.tmp / "local"), "alice@127.0.0.1:/f"], capture_output=True, text=True
        )
        assert res.returncode != 0
        assert 'permission denied: "overwrite" is not allowed in /f' in res.stderr
        assert (root / "f").read_bytes() == b"old"
    if have("rsync") and have("bwrap"):
        rsh = shlex.join(ssh_cmd(e, backup))
        (e.tmp / "tree").mkdir(exist_ok=True)
        (e.tmp / "tree" / "f").write_bytes(b"rsync bytes")
        (e.tmp / "tree" / "fresh").write_bytes(b"fresh")
        for extra in ([], ["--inplace"]):
            res = subprocess.run(
                ["rsync", "-rt", *extra, "-e", rsh, f"{e.tmp}/tree/", "alice@127.0.0.1:/"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert res.returncode == 0, res.stderr + e.server.log_text()[-2000:]
            assert (root / "f").read_bytes() == b"old", extra
            assert (root / "fresh").read_bytes() == b"fresh"
        res = subprocess.run(
            ["rsync", "-r", "--delete", "-e", rsh, f"{e.tmp}/tree/", "alice@127.0.0.1:/"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode != 0 and '"delete"' in res.stderr, res.stderr
        # -a would set modes and times on what exists (the directory /d) and times on what
        # it creates; the key has neither "chmod" nor "chtimes", as for SFTP's SETSTAT.
        os.chmod(root / "d", 0o750)
        (e.tmp / "tree" / "d").mkdir(exist_ok=True)
        (e.tmp / "tree" / "d" / "new").write_bytes(b"new in d")
        os.chmod(e.tmp / "tree" / "d", 0o700)
        old = 1_000_000_000  # 2001
        os.utime(e.tmp / "tree" / "d" / "new", (old, old))
        res = subprocess.run(
            ["rsync", "-a", "-e", rsh, f"{e.tmp}/tree/", "alice@127.0.0.1:/"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr + e.server.log_text()[-2000:]
        assert (root / "d" / "new").read_bytes() == b"new in d"
        assert (root / "d").stat().st_mode & 0o777 == 0o750  # no chmod of what exists
        assert (root / "d" / "new").stat().st_mtime > old  # no chtimes
        assert (root / "f").read_bytes() == b"old"
        (root / "d" / "new").unlink()  # seed() of the next test expects /d empty
        line = "user=alice key=SHA256:"
        assert wait_for(
            lambda: line in e.server.log_text() and "option --delete" in e.server.log_text()
        )
        assert (root / "d").is_dir()
    # The same user's other key still can.
    res = run_sftp(e, "alice", "put local /f\nrename /f /g\nrm /g\n")
    assert res.returncode == 0, res.stderr
    assert not (root / "f").exists() and not (root / "g").exists()


def test_a_key_runs_only_its_protocols_and_hashes_need_download(env: tuple[Env, Path]) -> None:
    e, backup = env
    root = e.tmp / "alice"
    seed(root)
    scp_key = e.tmp / "scp_key"
    res = run_sftp(e, "alice", "ls /\n", key=scp_key)
    assert res.returncode != 0  # no sftp subsystem for this key
    hashed = subprocess.run(
        [*ssh_cmd(e, scp_key), "alice@127.0.0.1", "sha256sum /f"], capture_output=True
    )
    assert hashed.returncode != 0 and b"not allowed" in hashed.stderr
    if have("scp"):
        scp = ["scp", "-O", *ssh_cmd(e, scp_key)[1:]]
        scp[scp.index("-p")] = "-P"
        res = subprocess.run([*scp, "alice@127.0.0.1:/f", str(e.tmp / "via-scp")])
        assert res.returncode == 0 and (e.tmp / "via-scp").read_bytes() == b"old"
    for user, ok in (("alice", True), ("no_download", False)):
        seed(e.tmp / user)
        res = subprocess.run(
            [*ssh_cmd(e, e.key_path), f"{user}@127.0.0.1", "sha256sum /f"], capture_output=True
        )
        assert (res.returncode == 0) is ok, res.stderr
        if ok:
            import hashlib

            assert res.stdout.split()[0] == hashlib.sha256(b"old").hexdigest().encode()
        else:
            assert b'"download" is not allowed in /f' in res.stderr, res.stderr


def test_denied_and_hidden_names_over_sftp_and_rsync(env: tuple[Env, Path]) -> None:
    e, _ = env
    root = e.tmp / "pat"
    (root / ".secret").write_bytes(b"hidden")
    (root / "pub").mkdir(exist_ok=True)
    (root / "a.exe").write_bytes(b"exe")
    listing = run_sftp(e, "pat", "ls -la /\n")
    assert listing.returncode == 0 and "a.exe" in listing.stdout
    assert ".secret" not in listing.stdout
    for batch in (
        "get /.secret got-secret",  # looks absent
        "get /a.exe got-exe",  # denied names cannot be opened
        "put local /b.exe",
        "put local /pub/x.php",
        "put local /.new",
        "rename /a.exe /pub/a.txt",
    ):
        res = run_sftp(e, "pat", batch + "\n")
        assert res.returncode != 0, batch
    res = run_sftp(e, "pat", "ls -l /.secret\n")  # a stat that says it does not exist
    assert res.returncode != 0 and "not found" in res.stderr, res.stderr
    assert not (e.tmp / "got-secret").exists() and not (e.tmp / "got-exe").exists()
    assert sorted(os.listdir(root)) == [".secret", "a.exe", "pub"]
    assert os.listdir(root / "pub") == []
    res = run_sftp(e, "pat", "put local /pub/x.txt\n")
    assert res.returncode == 0 and (root / "pub" / "x.txt").read_bytes() == b"local bytes"
    if have("rsync") and have("bwrap"):
        rsh = shlex.join(ssh_cmd(e, e.key_path))
        for user, rule in (("pat", "deny_files"), ("dirs", "per-directory permissions")):
            res = subprocess.run(
                ["rsync", "-r", "-e", rsh, f"{user}@127.0.0.1:/", "rsync-out"],
                capture_output=True,
                text=True,
                cwd=e.tmp,
                timeout=60,
            )
            assert res.returncode != 0 and f"rsync refused: {rule}" in res.stderr, res.stderr
