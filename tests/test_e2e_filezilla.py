"""End-to-end: FileZilla's SFTP engine (fzsftp) driven as FileZilla drives it, against sftpd."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fzsftp import HOSTKEY, FzSftp, Result
from tests.support import ALICE_PASSWORD, Env, have

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (have("fzsftp") and have("puttygen")), reason="filezilla (fzsftp) or puttygen missing"
    ),
    pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create"),
]

# FileZilla's UNIX listing shape: perms, links, owner, group, size, month day time|year, name.
_LONGNAME = re.compile(
    r"^([dl-])([rwxsStT-]{9}) +\d+ +\S+ +\S+ +(\d+)"
    r" +[A-Z][a-z]{2} +\d{1,2} +(\d\d:\d\d|\d{4}) (.+)$"
)


def q(name: str) -> str:
    """FileZilla's CSftpControlSocket::QuoteFilename: double quotes, inner ones doubled."""
    return '"' + name.replace('"', '""') + '"'


def _host_fingerprint(server: Env) -> str:
    keys_dir = Path(
        server.server.config_path.read_text().split('host_keys_dir = "')[1].split('"')[0]
    )
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(keys_dir / "ssh_host_ed25519_key.pub")],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[1]


@pytest.fixture(scope="module")
def ppk(server: Env) -> Path:
    """alice's key in PuTTY's format, which fzsftp's `keyfile` command loads."""
    out = server.tmp / "alice.ppk"
    subprocess.run(
        ["puttygen", str(server.key_path), "-O", "private", "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def _ok(res: Result, fz: FzSftp, server: Env) -> Result:
    assert res.ok, (
        f"{res}\nfzsftp events:\n{fz.transcript()}\nserver log:\n{server.server.log_text()[-2000:]}"
    )
    return res


@pytest.fixture
def fz_key(server: Env, ppk: Path, tmp_path: Path) -> Iterator[FzSftp]:
    """A connected fzsftp, logged in with the key, host key trusted once (FileZilla's "OK")."""
    with FzSftp(home=tmp_path) as fz:
        _ok(fz.command(f"keyfile {q(str(ppk))}"), fz, server)
        _ok(fz.command(f'open "alice@127.0.0.1" {server.port}'), fz, server)
        yield fz


def test_key_login_shows_the_host_key_sftpd_printed(fz_key: FzSftp, server: Env) -> None:
    assert fz_key.hostkey_asked == 1
    shown = [e.lines[0] for e in fz_key.log if e.type == HOSTKEY]
    assert shown and shown[0].startswith("ssh-ed25519 255 ")
    assert shown[0].split()[-1] == _host_fingerprint(server)
    assert fz_key.command("pwd").reply == 'Current directory is: "/"'
    assert "Access granted" in fz_key.transcript()


def test_upload_list_download_rename_delete(fz_key: FzSftp, server: Env, tmp_path: Path) -> None:
    fz, root = fz_key, server.alice.root
    payload = os.urandom(1_000_003)  # many shared-memory buffers, an odd tail
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    _ok(fz.command(f"mkdir {q('/fz')}"), fz, server)
    _ok(fz.command(f"cd {q('/fz')}"), fz, server)
    up = _ok(fz.command(f"put {q(str(src))} {q('/fz/up.bin')}", local=src), fz, server)
    assert up.transferred == len(payload)
    assert (root / "fz" / "up.bin").read_bytes() == payload

    (root / "fz" / "sub").mkdir()
    os.symlink("up.bin", root / "fz" / "link")
    listing = _ok(fz.command("ls"), fz, server)
    by_name = {name: (longname, mtime) for longname, mtime, name in listing.entries}
    assert {"up.bin", "sub", "link"} <= by_name.keys()
    for name, kind in (("up.bin", "-"), ("sub", "d"), ("link", "l")):
        longname, mtime = by_name[name]
        m = _LONGNAME.match(longname)
        assert m, f"FileZilla cannot parse {longname!r}"
        assert m.group(1) == kind, longname
        assert m.group(5) == name
        assert mtime == int((root / "fz" / name).lstat().st_mtime)
    assert int(_LONGNAME.match(by_name["up.bin"][0]).group(3)) == len(payload)  # type: ignore[union-attr]

    dst = tmp_path / "down.bin"
    _ok(fz.command(f"get {q('/fz/up.bin')} {q(str(dst))}", local=dst, download=True), fz, server)
    assert dst.read_bytes() == payload

    _ok(fz.command(f"mv {q('/fz/up.bin')} {q('/fz/moved.bin')}"), fz, server)
    assert not (root / "fz" / "up.bin").exists()
    assert (root / "fz" / "moved.bin").read_bytes() == payload
    _ok(fz.command(f"rm {q('/fz/moved.bin')}"), fz, server)
    _ok(fz.command(f"rmdir {q('/fz/sub')}"), fz, server)
    assert sorted(p.name for p in (root / "fz").iterdir()) == ["link"]
    missing = fz.command(f"rm {q('/fz/nope')}")
    assert not missing.ok and "no such file" in " ".join(missing.errors).lower()
    assert str(root) not in fz.transcript()


def test_resume_upload_and_download(fz_key: FzSftp, server: Env, tmp_path: Path) -> None:
    """FileZilla's "Resume": reput continues at the remote size, reget at the local size."""
    fz, root = fz_key, server.alice.root
    payload = os.urandom(700_000)
    (root / "resume").mkdir()
    (root / "resume" / "part.bin").write_bytes(payload[:123_457])
    src = tmp_path / "whole.bin"
    src.write_bytes(payload)
    res = _ok(fz.command(f"reput {q(str(src))} {q('/resume/part.bin')}", local=src), fz, server)
    assert "reput: restarting at file position 123457" in fz.transcript()
    assert res.transferred == len(payload) - 123_457
    assert (root / "resume" / "part.bin").read_bytes() == payload

    (root / "resume" / "full.bin").write_bytes(payload)
    dst = tmp_path / "partial.bin"
    dst.write_bytes(payload[:300_001])
    cmd = f"reget {q('/resume/full.bin')} {q(str(dst))}"
    _ok(fz.command(cmd, local=dst, download=True), fz, server)
    assert dst.read_bytes() == payload


def test_awkward_names_chmod_and_times(fz_key: FzSftp, server: Env, tmp_path: Path) -> None:
    """What FileZilla sends after a transfer (chmtime with "preserve timestamps") and chmod."""
    fz, root = fz_key, server.alice.root
    name = 'a "quoted" name [1] ü.txt'
    src = tmp_path / "n.txt"
    src.write_bytes(b"hello filezilla\n")
    (root / "odd").mkdir()
    _ok(fz.command(f"put {q(str(src))} {q('/odd/' + name)}", local=src), fz, server)
    assert (root / "odd" / name).read_bytes() == b"hello filezilla\n"
    listing = _ok(fz.command(f"ls {q('/odd')}"), fz, server)
    assert name in [n for _, _, n in listing.entries]

    # fzsftp 3.63 answers Done 0 to a chmod that worked, against OpenSSH's sftp-server too.
    fz.command(f"chmod 600 {q('/odd/' + name)}")
    assert (root / "odd" / name).stat().st_mode & 0o777 == 0o600
    _ok(fz.command(f"chmtime 1500000000 {q('/odd/' + name)}"), fz, server)
    assert int((root / "odd" / name).stat().st_mtime) == 1_500_000_000
    assert _ok(fz.command(f"mtime {q('/odd/' + name)}"), fz, server).reply == "1500000000"


def test_password_login_and_host_key_trusted_always(server: Env, tmp_path: Path, ppk: Path) -> None:
    with FzSftp(home=tmp_path, password=ALICE_PASSWORD, trust_hostkey="y") as fz:
        _ok(fz.command(f'open "alice@127.0.0.1" {server.port}'), fz, server)
        assert fz.password_asked == 1 and fz.hostkey_asked == 1
        (server.alice.root / "pw.txt").write_bytes(b"by password\n")
        dst = tmp_path / "pw.txt"
        _ok(fz.command(f"get {q('/pw.txt')} {q(str(dst))}", local=dst, download=True), fz, server)
        assert dst.read_bytes() == b"by password\n"
    # "Always trust" stored the key: the next connection does not ask again.
    with FzSftp(home=tmp_path, password=ALICE_PASSWORD) as fz:
        _ok(fz.command(f'open "alice@127.0.0.1" {server.port}'), fz, server)
        assert fz.hostkey_asked == 0


def test_wrong_password_and_refused_host_key_fail(server: Env, tmp_path: Path) -> None:
    with FzSftp(home=tmp_path, password="not-the-password") as fz:
        res = fz.command(f'open "alice@127.0.0.1" {server.port}')
        assert not res.ok and "Authentication failed." in res.errors
        assert "Access granted" not in fz.transcript()
    with FzSftp(home=tmp_path, password=ALICE_PASSWORD, trust_hostkey="") as fz:
        res = fz.command(f'open "alice@127.0.0.1" {server.port}')
        assert not res.ok and fz.password_asked == 0
    # The server keeps serving after both.
    with FzSftp(home=tmp_path, password=ALICE_PASSWORD) as fz:
        _ok(fz.command(f'open "alice@127.0.0.1" {server.port}'), fz, server)


def test_big_listing_old_dates_and_empty_files(fz_key: FzSftp, server: Env, tmp_path: Path) -> None:
    """A listing spanning many READDIR replies, a year-style date, and 0-byte transfers."""
    fz, root = fz_key, server.alice.root
    (root / "many").mkdir()
    for i in range(1200):
        (root / "many" / f"f{i:05d}").write_bytes(b"x" * (i % 7))
    os.utime(root / "many" / "f00001", (1_000_000_000, 1_000_000_000))
    listing = _ok(fz.command(f"ls {q('/many')}"), fz, server)
    names = [n for _, _, n in listing.entries if n not in (".", "..")]
    assert sorted(names) == [f"f{i:05d}" for i in range(1200)]
    old = next(e for e in listing.entries if e[2] == "f00001")
    m = _LONGNAME.match(old[0])
    assert m and m.group(4) == "2001" and old[1] == 1_000_000_000, old

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    _ok(fz.command(f"put {q(str(empty))} {q('/many/empty')}", local=empty), fz, server)
    assert (root / "many" / "empty").read_bytes() == b""
    back = tmp_path / "back"
    back.write_bytes(b"stale")
    _ok(fz.command(f"get {q('/many/empty')} {q(str(back))}", local=back, download=True), fz, server)
    assert back.read_bytes() == b""
    refused = fz.command(f"mkdir {q('/many')}")
    assert not refused.ok and refused.errors
    assert str(root) not in " ".join(refused.errors)
