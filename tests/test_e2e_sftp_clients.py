"""End-to-end: paramiko, asyncssh (every extension) and lftp against a real sftpd; each
test checks the bytes, modes and names on the host disk."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import stat
import struct
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Env, asyncssh_sftp, have, wait_for
from tests.test_e2e_sftp_openssh import _big_directory

paramiko = pytest.importorskip("paramiko")
asyncssh = pytest.importorskip("asyncssh")
pytestmark = pytest.mark.e2e

from asyncssh.packet import String, UInt32, UInt64  # noqa: E402
from paramiko.sftp import CMD_EXTENDED, CMD_WRITE, int64  # noqa: E402

# The longname of an SSH_FXP_NAME entry, in `ls -l` shape (FileZilla and WinSCP parse it).
LONGNAME = re.compile(
    r"^(?P<type>[dl-])[rwxsStT-]{9} +(?P<links>\d+) +\S+ +\S+ +(?P<size>\d+) "
    r"+\w{3} +\d{1,2} +(?:\d{2}:\d{2}|\d{4}) (?P<name>.+)$"
)
FX_NO_SUCH_FILE = 2
FX_OP_UNSUPPORTED = 8
FXP_STATUS, FXP_NAME, FXP_EXTENDED_REPLY = 101, 104, 201
READ_MAX = 255 * 1024


# ---- paramiko ---------------------------------------------------------------------------


@pytest.fixture
def sftp(server: Env) -> Iterator[Any]:
    transport = paramiko.Transport(("127.0.0.1", server.port))
    transport.connect(
        username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(str(server.key_path))
    )
    client = paramiko.SFTPClient.from_transport(transport)
    assert client is not None
    client.get_channel().settimeout(60)  # deadlock guard: a reply that never comes fails
    try:
        yield client
    finally:
        client.close()
        transport.close()


def test_a_request_before_init_ends_the_channel(server: Env, sftp: Any) -> None:
    """OpenSSH's sftp-server treats a request before SSH_FXP_INIT as fatal; so do we: no
    ATTRS, exit status 1 and the channel closes. The connection's other channel (the
    ``sftp`` fixture's) keeps being served."""
    transport = sftp.get_channel().get_transport()
    chan = transport.open_session()
    chan.settimeout(60)
    chan.invoke_subsystem("sftp")
    path = b"/"
    chan.sendall(struct.pack(">IBII", 9 + len(path), 17, 1, len(path)) + path)  # STAT
    received = b""
    while chunk := chan.recv(65536):
        received += chunk
    assert received == b""
    assert chan.recv_exit_status() == 1
    chan.close()
    assert sftp.normalize(".") == "/"
    # the log line may reach the file just after the channel closed
    assert wait_for(lambda: "STAT request before SSH_FXP_INIT" in server.server.log_text())


def test_paramiko_lists_a_big_directory_whole(server: Env, sftp: Any) -> None:
    names = _big_directory(server.alice.root, "pm-big")
    entries = sftp.listdir_attr("/pm-big")
    assert sorted(e.filename for e in entries) == sorted(names)
    assert all(e.st_size == 0 and e.longname.startswith("-") for e in entries)


def test_paramiko_open_modes_r_w_a_x(server: Env, sftp: Any) -> None:
    root = server.alice.root
    with sftp.open("pm-modes.txt", "w") as f:
        f.write(b"first version, long\n")
    with sftp.open("pm-modes.txt", "w") as f:  # w truncates
        f.write(b"second\n")
    assert (root / "pm-modes.txt").read_bytes() == b"second\n"
    with sftp.open("pm-modes.txt", "a") as f:
        f.write(b"appended\n")
    assert (root / "pm-modes.txt").read_bytes() == b"second\nappended\n"
    with sftp.open("pm-modes.txt", "r") as f:
        assert f.read() == b"second\nappended\n"
        with pytest.raises(OSError):  # the server refuses a WRITE on a read handle
            sftp._request(CMD_WRITE, f.handle, int64(0), b"not on a read handle")
    with pytest.raises(OSError) as err:
        sftp.open("pm-modes.txt", "wx")
    assert str(err.value) == "File exists"
    assert (root / "pm-modes.txt").read_bytes() == b"second\nappended\n"
    with sftp.open("pm-modes-new.txt", "wx") as f:
        f.write(b"exclusive\n")
    assert (root / "pm-modes-new.txt").read_bytes() == b"exclusive\n"
    assert stat.S_IMODE(os.stat(root / "pm-modes-new.txt").st_mode) == 0o644  # umask 022
    with sftp.open("pm-modes.txt", "r+") as f:  # write in place at an offset
        f.seek(3)
        f.write(b"OND")
    assert (root / "pm-modes.txt").read_bytes() == b"secOND\nappended\n"
    with pytest.raises(FileNotFoundError):
        sftp.open("pm-modes-missing.txt", "r")


def test_paramiko_seek_and_read_ranges(server: Env, sftp: Any) -> None:
    payload = os.urandom(1_000_003)
    (server.alice.root / "pm-ranges.bin").write_bytes(payload)
    with sftp.open("pm-ranges.bin", "r") as f:
        for offset, size in [(0, 10), (999_990, 13), (500_000, 300_000), (123, 0), (1, 1)]:
            f.seek(offset)
            assert f.read(size) == payload[offset : offset + size]
        f.seek(len(payload))
        assert f.read(100) == b""
        f.seek(len(payload) + 10_000)
        assert f.read(100) == b""
        chunks = [(0, 5), (262_144, 300_000), (999_000, 3)]
        assert list(f.readv(chunks)) == [payload[o : o + n] for o, n in chunks]
        assert f.stat().st_size == len(payload)


def test_paramiko_truncate_by_path_and_by_handle(server: Env, sftp: Any) -> None:
    target = server.alice.root / "pm-trunc.bin"
    target.write_bytes(b"0123456789" * 100)
    sftp.truncate("pm-trunc.bin", 15)
    assert target.read_bytes() == b"012345678901234"
    with sftp.open("pm-trunc.bin", "r+") as f:
        f.truncate(4)
    assert target.read_bytes() == b"0123"
    sftp.truncate("pm-trunc.bin", 8)  # extends with zeros
    assert target.read_bytes() == b"0123\0\0\0\0"


def test_paramiko_64_mib_with_prefetch(server: Env, sftp: Any) -> None:
    payload = os.urandom(64 * 1024 * 1024)
    (server.alice.root / "pm-64m.bin").write_bytes(payload)
    digest = hashlib.sha256()
    with sftp.open("pm-64m.bin", "rb") as f:
        f.prefetch()
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()


def test_paramiko_upload_of_8_mib_waiting_for_each_write(server: Env, sftp: Any) -> None:
    payload = os.urandom(8 * 1024 * 1024 + 7)
    with sftp.open("pm-8m.bin", "wb") as f:
        for pos in range(0, len(payload), 100_000):
            f.write(payload[pos : pos + 100_000])
    assert (server.alice.root / "pm-8m.bin").read_bytes() == payload


def test_paramiko_put_of_8_mib(server: Env, sftp: Any, tmp_path: Path) -> None:
    payload = os.urandom(8 * 1024 * 1024 + 7)
    (tmp_path / "src.bin").write_bytes(payload)
    sftp.get_channel().settimeout(15)  # deadlock guard: a reply that never comes
    sftp.put(str(tmp_path / "src.bin"), "pm-put-8m.bin")
    assert (server.alice.root / "pm-put-8m.bin").read_bytes() == payload


def test_paramiko_pipelined_appends_keep_their_order(server: Env, sftp: Any) -> None:
    sftp.get_channel().settimeout(60)
    with sftp.open("pm-append.log", "a") as f:
        f.set_pipelined(True)
        for i in range(2000):
            f.write(b"record %07d\n" % i)
    expected = b"".join(b"record %07d\n" % i for i in range(2000))
    assert (server.alice.root / "pm-append.log").read_bytes() == expected


def test_paramiko_50_handles_at_once(server: Env, sftp: Any) -> None:
    files = [sftp.open(f"pm-h-{i:02d}.txt", "w") for i in range(50)]
    handles = {f.handle for f in files}
    assert len(handles) == 50
    for round_ in range(3):
        for i, f in enumerate(files):
            f.write(f"{i}:{round_};".encode())
    reads = [sftp.open(f"pm-h-{i:02d}.txt", "r") for i in range(50)]  # 100 open now
    for f in files:
        f.close()
    for i, f in enumerate(reads):
        assert f.read() == f"{i}:0;{i}:1;{i}:2;".encode()
        f.close()
    for i in range(50):
        assert (server.alice.root / f"pm-h-{i:02d}.txt").read_bytes() == (
            f"{i}:0;{i}:1;{i}:2;".encode()
        )


def test_paramiko_listdir_attr_exact_names_and_longnames(server: Env, sftp: Any) -> None:
    d = server.alice.root / "pm-list"
    d.mkdir()
    (d / "f.txt").write_bytes(b"12345")
    (d / "sub").mkdir()
    os.symlink("f.txt", d / "ln")
    for i in range(250):  # more than one READDIR batch
        (d / f"many-{i:03d}").write_bytes(b"")
    entries = sftp.listdir_attr("pm-list")
    names = [e.filename for e in entries]
    assert len(names) == len(set(names))
    assert set(names) == {"f.txt", "sub", "ln"} | {f"many-{i:03d}" for i in range(250)}
    by_name = {e.filename: e for e in entries}
    for name, kind in (("f.txt", "-"), ("sub", "d"), ("ln", "l"), ("many-007", "-")):
        match = LONGNAME.match(by_name[name].longname)
        assert match, by_name[name].longname
        assert match["type"] == kind
        assert match["name"] == name
    assert LONGNAME.match(by_name["f.txt"].longname)["size"] == "5"  # type: ignore[index]
    assert by_name["f.txt"].st_size == 5
    assert stat.S_ISLNK(by_name["ln"].st_mode)
    assert stat.S_ISDIR(by_name["sub"].st_mode)
    assert sorted(sftp.listdir("pm-list")) == sorted(names)


def test_paramiko_stat_lstat_chmod_utime(server: Env, sftp: Any) -> None:
    root = server.alice.root
    (root / "pm-attr.txt").write_bytes(b"attrs\n")
    os.symlink("pm-attr.txt", root / "pm-attr-link")
    st = sftp.stat("pm-attr-link")
    lst = sftp.lstat("pm-attr-link")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 6
    assert stat.S_ISLNK(lst.st_mode) and lst.st_size == len("pm-attr.txt")
    host = os.stat(root / "pm-attr.txt")
    assert (st.st_uid, st.st_gid, st.st_mtime) == (host.st_uid, host.st_gid, int(host.st_mtime))
    sftp.chmod("pm-attr.txt", 0o604)
    assert stat.S_IMODE(os.stat(root / "pm-attr.txt").st_mode) == 0o604
    sftp.utime("pm-attr.txt", (1_100_000_000, 1_200_000_000))
    host = os.stat(root / "pm-attr.txt")
    assert (int(host.st_atime), int(host.st_mtime)) == (1_100_000_000, 1_200_000_000)
    assert sftp.stat("pm-attr.txt").st_mtime == 1_200_000_000
    with pytest.raises(PermissionError):
        sftp.chown("pm-attr.txt", host.st_uid + 1, host.st_gid)
    assert os.stat(root / "pm-attr.txt").st_uid == host.st_uid
    with pytest.raises(FileNotFoundError):
        sftp.stat("pm-attr-missing")


def test_paramiko_rename_and_posix_rename(server: Env, sftp: Any) -> None:
    root = server.alice.root
    (root / "pm-ren-a").write_bytes(b"A")
    (root / "pm-ren-b").write_bytes(b"B")
    with pytest.raises(OSError) as err:
        sftp.rename("pm-ren-a", "pm-ren-b")  # v3 RENAME never replaces
    assert str(err.value) == "File exists"
    assert (root / "pm-ren-a").read_bytes() == b"A"
    assert (root / "pm-ren-b").read_bytes() == b"B"
    sftp.posix_rename("pm-ren-a", "pm-ren-b")
    assert not (root / "pm-ren-a").exists()
    assert (root / "pm-ren-b").read_bytes() == b"A"
    sftp.rename("pm-ren-b", "pm-ren-c")
    assert (root / "pm-ren-c").read_bytes() == b"A"
    assert not (root / "pm-ren-b").exists()


def test_paramiko_symlink_points_where_the_client_asked(server: Env, sftp: Any) -> None:
    """paramiko sends SYMLINK (target, link): the reverse of the draft, like OpenSSH."""
    root = server.alice.root
    (root / "pm-sl-target.txt").write_bytes(b"t\n")
    sftp.symlink("pm-sl-target.txt", "pm-sl-link")
    assert os.readlink(root / "pm-sl-link") == "pm-sl-target.txt"
    assert not (root / "pm-sl-target.txt").is_symlink()
    assert sftp.readlink("pm-sl-link") == "pm-sl-target.txt"
    sftp.symlink("/pm-sl-target.txt", "pm-sl-abs")
    assert sftp.readlink("pm-sl-abs") == "/pm-sl-target.txt"
    with sftp.open("pm-sl-abs") as f:  # absolute targets resolve inside the root
        assert f.read() == b"t\n"
    with pytest.raises(OSError):
        sftp.readlink("pm-sl-target.txt")


def test_paramiko_normalize(sftp: Any) -> None:
    assert sftp.normalize(".") == "/"
    assert sftp.normalize("..") == "/"
    assert sftp.normalize("/../../..") == "/"
    assert sftp.normalize("a/b/../c") == "/a/c"
    sftp.mkdir("pm-norm")
    sftp.chdir("pm-norm")
    assert sftp.getcwd() == "/pm-norm"
    assert sftp.normalize(".") == "/pm-norm"


def test_paramiko_error_statuses(server: Env, sftp: Any) -> None:
    root = server.alice.root
    (root / "pm-err").mkdir()
    (root / "pm-err" / "x").write_bytes(b"")
    with pytest.raises(OSError) as err:
        sftp.rmdir("pm-err")
    assert str(err.value) == "Directory not empty"
    with pytest.raises(OSError) as err:
        sftp.mkdir("pm-err")
    assert str(err.value) == "File exists"
    with pytest.raises(FileNotFoundError):
        sftp.remove("pm-err-missing")
    with pytest.raises(FileNotFoundError):
        sftp.listdir("pm-err-missing")
    with pytest.raises(OSError):
        sftp.remove("pm-err")  # a directory
    with pytest.raises(OSError):
        sftp.open("pm-err", "r")  # a directory is no file
    assert (root / "pm-err" / "x").exists()


def test_paramiko_file_check_hashes(server: Env, sftp: Any) -> None:
    payload = os.urandom(10_000)
    (server.alice.root / "pm-check.bin").write_bytes(payload)
    with sftp.open("pm-check.bin", "r") as f:
        assert f.check("sha256", 0, 0, 0) == hashlib.sha256(payload).digest()


def _paramiko_check(sftp: Any, name: str, target: Any, algs: str, *rng: int) -> Any:
    start, length, block = rng
    return sftp._request(CMD_EXTENDED, name, target, algs, int64(start), int64(length), block)


def test_check_file_handle_and_name_match_hashlib(server: Env, sftp: Any) -> None:
    payload = os.urandom(5000)
    (server.alice.root / "pm-chk.bin").write_bytes(payload)
    with sftp.open("pm-chk.bin", "r") as f:
        t, msg = _paramiko_check(sftp, "check-file-handle", f.handle, "sha256,md5", 0, 0, 0)
        assert t == FXP_EXTENDED_REPLY
        assert (msg.get_text(), msg.get_text()) == ("check-file", "sha256")
        assert msg.get_remainder() == hashlib.sha256(payload).digest()
        # block hashes of [100, 100+1200) in 512-byte blocks: 3 digests, the last short
        t, msg = _paramiko_check(sftp, "check-file-handle", f.handle, "sha1", 100, 1200, 512)
        assert (msg.get_text(), msg.get_text()) == ("check-file", "sha1")
        expected = b"".join(
            hashlib.sha1(payload[o : min(o + 512, 1300)]).digest() for o in (100, 612, 1124)
        )
        assert msg.get_remainder() == expected
    t, msg = _paramiko_check(sftp, "check-file-name", "/pm-chk.bin", "md5", 4000, 0, 0)
    assert (msg.get_text(), msg.get_text()) == ("check-file", "md5")
    assert msg.get_remainder() == hashlib.md5(payload[4000:]).digest()
    with pytest.raises(OSError) as err:
        _paramiko_check(sftp, "check-file-name", "/pm-chk.bin", "crc32,whirlpool", 0, 0, 0)
    assert str(err.value) == "no supported hash algorithm"


# ---- asyncssh ---------------------------------------------------------------------------


def _asyncssh(server: Env, body: Callable[[Any], Awaitable[None]]) -> None:
    asyncssh_sftp(server, body)


async def _raw(client: Any, name: bytes, *args: bytes) -> tuple[int, Any]:
    """Send one extended request through asyncssh's own channel: (reply type, packet)."""
    handler = client._handler
    waiter = handler._loop.create_future()
    handler._send_request(name, args, waiter)
    reply: tuple[int, Any] = await waiter
    return reply


def _status(packet: Any) -> tuple[int, str]:
    code = packet.get_uint32()
    return code, packet.get_string().decode()


def _names(packet: Any) -> list[str]:
    count = packet.get_uint32()
    return [asyncssh.sftp.SFTPName.decode(packet, 3).filename.decode() for _ in range(count)]


def test_asyncssh_sees_every_advertised_extension(server: Env) -> None:
    async def body(client: Any) -> None:
        h = client._handler
        assert client.version == 3
        assert h._supports_posix_rename and h._supports_statvfs and h._supports_fstatvfs
        assert h._supports_hardlink and h._supports_fsync and h._supports_lsetstat
        assert h._supports_limits and h._supports_copy_data
        assert client.supports_remote_copy
        # limits@openssh.com was read at start: asyncssh adopts 255 KiB reads and writes
        assert client.limits.max_read_len == READ_MAX
        assert client.limits.max_write_len == READ_MAX
        t, packet = await _raw(client, b"limits@openssh.com")
        assert t == FXP_EXTENDED_REPLY
        values = struct.unpack(">4Q", packet.get_remaining_payload())
        assert values == (256 * 1024, READ_MAX, READ_MAX, 1024)

    _asyncssh(server, body)


def test_asyncssh_posix_rename_link_copy_fsync(server: Env) -> None:
    root = server.alice.root

    async def body(client: Any) -> None:
        async with client.open("as-fsync.txt", "wb") as f:
            await f.write(b"synced\n")
            await f.fsync()
        assert (root / "as-fsync.txt").read_bytes() == b"synced\n"

        await client.link("as-fsync.txt", "as-hard.txt")
        (root / "as-other.txt").write_bytes(b"other\n")
        await client.posix_rename("as-other.txt", "as-fsync.txt")
        # the new file replaced the name; the hard link still holds the old inode
        assert (root / "as-fsync.txt").read_bytes() == b"other\n"
        assert (root / "as-hard.txt").read_bytes() == b"synced\n"
        assert os.stat(root / "as-hard.txt").st_nlink == 1

        payload = os.urandom(2_000_000)
        (root / "as-copy-src.bin").write_bytes(payload)
        await client.copy("as-copy-src.bin", "as-copy-dst.bin", remote_only=True)
        assert (root / "as-copy-dst.bin").read_bytes() == payload
        await client.remote_copy("as-copy-src.bin", "as-copy-dst.bin")
        assert (root / "as-copy-dst.bin").read_bytes() == payload

        with pytest.raises(asyncssh.SFTPFailure):
            await client.link("as-fsync.txt", "as-hard.txt")  # target exists

    _asyncssh(server, body)


def test_asyncssh_copy_data_ranges_and_same_handle(server: Env) -> None:
    root = server.alice.root
    (root / "as-cd-src.bin").write_bytes(b"0123456789ABCDEF")
    (root / "as-cd-dst.bin").write_bytes(b"xxxxxxxxxx")

    async def body(client: Any) -> None:
        h = client._handler
        async with client.open("as-cd-src.bin", "rb") as src:
            async with client.open("as-cd-dst.bin", "r+b") as dst:
                await h.copy_data(src._handle, 4, 6, dst._handle, 2)
                with pytest.raises(asyncssh.SFTPFailure):
                    await h.copy_data(dst._handle, 0, 1, dst._handle, 5)
                await h.copy_data(src._handle, 14, 0, dst._handle, 12)  # 0 = to EOF
        assert (root / "as-cd-dst.bin").read_bytes() == b"xx456789xx\0\0EF"

    _asyncssh(server, body)


def test_asyncssh_statvfs_and_fstatvfs_match_the_host(server: Env) -> None:
    (server.alice.root / "as-vfs.txt").write_bytes(b"v")
    host = os.statvfs(server.alice.root)

    async def body(client: Any) -> None:
        by_path = await client.statvfs("/")
        async with client.open("as-vfs.txt", "rb") as f:
            by_handle = await f.statvfs()
        for vfs in (by_path, by_handle):
            assert (vfs.bsize, vfs.frsize, vfs.blocks, vfs.files, vfs.namemax) == (
                host.f_bsize,
                host.f_frsize,
                host.f_blocks,
                host.f_files,
                host.f_namemax,
            )
            assert vfs.fsid == host.f_fsid
            assert not vfs.flags & 1  # writable for this user
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await client.statvfs("/as-vfs-missing/x")

    _asyncssh(server, body)


def test_asyncssh_lsetstat_does_not_follow_the_link(server: Env) -> None:
    root = server.alice.root
    (root / "as-ls-target.txt").write_bytes(b"t")
    os.utime(root / "as-ls-target.txt", (1_500_000_000, 1_500_000_000))
    os.symlink("as-ls-target.txt", root / "as-ls-link")

    async def body(client: Any) -> None:
        attrs = asyncssh.SFTPAttrs(atime=1_000_000_000, mtime=1_000_000_001)
        await client.setstat("as-ls-link", attrs, follow_symlinks=False)
        assert os.lstat(root / "as-ls-link").st_mtime == 1_000_000_001
        assert os.stat(root / "as-ls-target.txt").st_mtime == 1_500_000_000
        await client.setstat("as-ls-link", attrs)  # SETSTAT follows
        assert os.stat(root / "as-ls-target.txt").st_mtime == 1_000_000_001
        # Linux has no lchmod: permissions on the link itself are unsupported,
        # and the target keeps its mode.
        before = stat.S_IMODE(os.stat(root / "as-ls-target.txt").st_mode)
        with pytest.raises(asyncssh.SFTPOpUnsupported):
            await client.setstat(
                "as-ls-link", asyncssh.SFTPAttrs(permissions=0o600), follow_symlinks=False
            )
        assert stat.S_IMODE(os.stat(root / "as-ls-target.txt").st_mode) == before
        await client.setstat(
            "as-ls-target.txt", asyncssh.SFTPAttrs(permissions=0o640), follow_symlinks=False
        )
        assert stat.S_IMODE(os.stat(root / "as-ls-target.txt").st_mode) == 0o640

    _asyncssh(server, body)


def test_asyncssh_symlink_in_draft_order(server: Env) -> None:
    """asyncssh sends (linkpath, targetpath) to a server that is not OpenSSH."""
    root = server.alice.root
    (root / "as-sl-target.txt").write_bytes(b"target\n")

    async def body(client: Any) -> None:
        assert not client._handler._nonstandard_symlink
        await client.symlink("as-sl-target.txt", "as-sl-link")
        assert os.readlink(root / "as-sl-link") == "as-sl-target.txt"
        assert await client.readlink("as-sl-link") == "as-sl-target.txt"
        async with client.open("as-sl-link", "rb") as f:
            assert await f.read() == b"target\n"

    _asyncssh(server, body)


def test_asyncssh_realpath_expand_path_and_home_directory(server: Env) -> None:
    async def body(client: Any) -> None:
        assert await client.realpath(".") == "/"
        assert await client.realpath("/a/../../b/./c") == "/b/c"
        for path, want in ((b"~", "/"), (b"~/x/y", "/x/y"), (b"~alice/z", "/z"), (b"q", "/q")):
            t, packet = await _raw(client, b"expand-path@openssh.com", String(path))
            assert t == FXP_NAME, path
            assert _names(packet) == [want]
        t, packet = await _raw(client, b"expand-path@openssh.com", String(b"~bob/x"))
        assert (t, _status(packet)[0]) == (FXP_STATUS, FX_NO_SUCH_FILE)
        for user in (b"", b"alice"):
            t, packet = await _raw(client, b"home-directory", String(user))
            assert t == FXP_NAME
            assert _names(packet) == ["/"]
        t, packet = await _raw(client, b"home-directory", String(b"bob"))
        assert (t, _status(packet)[0]) == (FXP_STATUS, FX_NO_SUCH_FILE)

    _asyncssh(server, body)


def test_expand_path_and_home_directory_with_a_home(make_server: Any, tmp_path: Path) -> None:
    (tmp_path / "alice-root" / "in" / "home").mkdir(parents=True)
    (tmp_path / "alice-root" / "in" / "home" / "h.txt").write_bytes(b"home file\n")
    env = make_server(alice_extra='home = "/in/home"')

    async def body(client: Any) -> None:
        assert await client.realpath(".") == "/in/home"
        assert await client.realpath("..") == "/in"
        async with client.open("h.txt", "rb") as f:  # relative paths start at home
            assert await f.read() == b"home file\n"
        t, packet = await _raw(client, b"expand-path@openssh.com", String(b"~/sub"))
        assert _names(packet) == ["/in/home/sub"]
        t, packet = await _raw(client, b"home-directory", String(b""))
        assert _names(packet) == ["/in/home"]

    _asyncssh(env, body)


def test_asyncssh_users_groups_by_id(server: Env) -> None:
    uid, gid = os.getuid(), os.getgid()
    unknown = 3_999_999_999

    async def body(client: Any) -> None:
        uids = UInt32(uid) + UInt32(unknown)
        gids = UInt32(gid)
        t, packet = await _raw(
            client, b"users-groups-by-id@openssh.com", String(uids), String(gids)
        )
        assert t == FXP_EXTENDED_REPLY
        users = asyncssh.packet.SSHPacket(packet.get_string())
        groups = asyncssh.packet.SSHPacket(packet.get_string())
        assert [users.get_string(), users.get_string()] == [
            pwd.getpwuid(uid).pw_name.encode(),
            b"",
        ]
        assert groups.get_string() == grp.getgrgid(gid).gr_name.encode()

    _asyncssh(server, body)


def test_asyncssh_check_file_name_and_handle(server: Env) -> None:
    payload = os.urandom(70_000)
    (server.alice.root / "as-check.bin").write_bytes(payload)

    async def body(client: Any) -> None:
        args = String(b"sha512") + UInt64(0) + UInt64(0) + UInt32(0)
        t, packet = await _raw(client, b"check-file-name", String(b"/as-check.bin"), args)
        assert t == FXP_EXTENDED_REPLY
        assert packet.get_string() == b"check-file"
        assert packet.get_string() == b"sha512"
        assert packet.get_remaining_payload() == hashlib.sha512(payload).digest()
        async with client.open("as-check.bin", "rb") as f:
            args = String(b"sha224,md5") + UInt64(65_536) + UInt64(0) + UInt32(0)
            t, packet = await _raw(client, b"check-file-handle", String(f._handle), args)
            assert packet.get_string() == b"check-file"
            assert packet.get_string() == b"sha224"
            assert packet.get_remaining_payload() == hashlib.sha224(payload[65_536:]).digest()
        t, packet = await _raw(client, b"check-file-name", String(b"/as-nope.bin"), args)
        assert (t, _status(packet)[0]) == (FXP_STATUS, FX_NO_SUCH_FILE)

    _asyncssh(server, body)


def test_asyncssh_get_put_roundtrip(server: Env, tmp_path: Path) -> None:
    payload = os.urandom(5 * 1024 * 1024 + 3)
    src = tmp_path / "as-src.bin"
    src.write_bytes(payload)

    async def body(client: Any) -> None:
        await client.put(str(src), "as-put.bin")
        await client.get("as-put.bin", str(tmp_path / "as-back.bin"))

    _asyncssh(server, body)
    assert (server.alice.root / "as-put.bin").read_bytes() == payload
    assert (tmp_path / "as-back.bin").read_bytes() == payload


def test_unknown_extension_is_op_unsupported(server: Env) -> None:
    async def body(client: Any) -> None:
        t, packet = await _raw(client, b"no-such-extension@example.com", String(b"x"))
        assert (t, _status(packet)[0]) == (FXP_STATUS, FX_OP_UNSUPPORTED)
        assert await client.realpath(".") == "/"  # the session goes on

    _asyncssh(server, body)


# ---- lftp ---------------------------------------------------------------------------------


def _lftp(env: Env, commands: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    connect = (
        "ssh -a -x -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        f"-o LogLevel=ERROR -o BatchMode=yes -o IdentitiesOnly=yes -i {env.key_path}"
    )
    script = f"set sftp:connect-program '{connect}'; set net:max-retries 1; {commands}; bye"
    return subprocess.run(
        ["lftp", "-u", "alice,", "-e", script, f"sftp://127.0.0.1:{env.port}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.skipif(not have("lftp"), reason="lftp is not installed")
def test_lftp_put_ls_get_and_mirror(server: Env, tmp_path: Path) -> None:
    payload = os.urandom(1_500_000)
    (tmp_path / "lftp-up.bin").write_bytes(payload)
    tree = tmp_path / "ltree"
    files = {"a.txt": b"a\n", "s/b.bin": os.urandom(300_000), "s/t/c.txt": b"c\n"}
    for rel, content in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(content)
    res = _lftp(
        server,
        "put lftp-up.bin -o lftp-put.bin; mirror -R ltree lftp-tree; ls; "
        "get lftp-put.bin -o lftp-back.bin; mirror lftp-tree lftp-tree-back",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert (server.alice.root / "lftp-put.bin").read_bytes() == payload
    assert (tmp_path / "lftp-back.bin").read_bytes() == payload
    listing = {m["name"]: m for m in map(LONGNAME.match, res.stdout.splitlines()) if m}
    assert listing["lftp-put.bin"]["type"] == "-"
    assert listing["lftp-put.bin"]["size"] == str(len(payload))
    assert listing["lftp-tree"]["type"] == "d"
    for base in (server.alice.root / "lftp-tree", tmp_path / "lftp-tree-back"):
        got = {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}
        assert got == files


@pytest.mark.skipif(not have("lftp"), reason="lftp is not installed")
def test_lftp_ln_s_points_where_the_client_asked(server: Env, tmp_path: Path) -> None:
    d = server.alice.root / "lftp-ln"
    d.mkdir()
    (d / "t.txt").write_bytes(b"lftp target\n")
    res = _lftp(server, "cd lftp-ln; ln -s t.txt link", tmp_path)
    assert res.returncode == 0, res.stderr
    assert os.readlink(d / "link") == "t.txt"
    assert (d / "link").read_bytes() == b"lftp target\n"


@pytest.mark.skipif(not have("lftp"), reason="lftp is not installed")
def test_lftp_get_of_a_missing_file_fails(server: Env, tmp_path: Path) -> None:
    res = _lftp(server, "get lftp-missing.bin -o x.bin", tmp_path)
    assert res.returncode != 0
    assert "No such file" in res.stderr
    assert not (tmp_path / "x.bin").exists() or (tmp_path / "x.bin").stat().st_size == 0


def test_asyncssh_names_are_bytes_end_to_end(server: Env) -> None:
    """v3 file names are bytes: a UTF-8 name and one that is no UTF-8 at all both list,
    open and get created with exactly the bytes on disk."""
    d = os.fsencode(server.alice.root / "as-names")
    os.mkdir(d)
    raw_name = b"\xff\xfe not utf-8 \x80.bin"
    uni_name = "ünï cødé ☃ 'q' \"dq\".txt".encode()
    with open(os.path.join(d, raw_name), "wb") as f:
        f.write(b"raw name\n")

    async def body(client: Any) -> None:
        names = await client.listdir(b"/as-names")
        assert sorted(names) == sorted([b".", b"..", raw_name])
        async with client.open(b"/as-names/" + raw_name, "rb") as f:
            assert await f.read() == b"raw name\n"
        async with client.open(b"/as-names/" + uni_name, "wb") as f:
            await f.write(b"unicode name\n")
        await client.rename(b"/as-names/" + raw_name, b"/as-names/" + raw_name + b"2")

    _asyncssh(server, body)
    assert sorted(os.listdir(d)) == sorted([raw_name + b"2", uni_name])
    with open(os.path.join(d, uni_name), "rb") as f:
        assert f.read() == b"unicode name\n"


# ---- rclone -------------------------------------------------------------------------------


def _rclone(server: Env, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        RCLONE_CONFIG_SRV_TYPE="sftp",
        RCLONE_CONFIG_SRV_HOST="127.0.0.1",
        RCLONE_CONFIG_SRV_PORT=str(server.port),
        RCLONE_CONFIG_SRV_USER="alice",
        RCLONE_CONFIG_SRV_KEY_FILE=str(server.key_path),
    )
    cmd = ["rclone", "--config", str(tmp_path / "rclone.conf"), "--retries", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.mark.skipif(not have("rclone"), reason="rclone is not installed")
def test_rclone_copy_uploads_files_above_32_kib(server: Env, tmp_path: Path) -> None:
    """rclone 1.60 (pkg/sftp's concurrent ReadFrom, many 32 KiB WRITEs in flight) sends
    the last WRITE of a file with its whole 32 KiB buffer behind a shorter data string;
    every upload above 32 KiB used to fail with "Bad message: N trailing bytes"."""
    local = tmp_path / "rclone-up"
    local.mkdir()
    sizes = {
        "f40k.bin": 40 * 1024,
        "f100000.bin": 100_000,
        "f1m.bin": 1024 * 1024,
        "f33m.bin": 33 * 1024 * 1024 + 4321,
        "f32773.bin": 32_773,
        "sub/deeper/f70000.bin": 70_000,  # a tree, as `rclone copy DIR` sends it
    }
    digests = {}
    for name, size in sizes.items():
        data = os.urandom(size)
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    res = _rclone(server, tmp_path, "copy", str(local), "SRV:rclone-up")
    assert res.returncode == 0, res.stderr + server.server.log_text()[-3000:]
    remote = server.alice.root / "rclone-up"
    on_disk = {str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file()}
    assert on_disk == set(sizes)
    for name, size in sizes.items():
        assert (remote / name).stat().st_size == size, name
        assert hashlib.sha256((remote / name).read_bytes()).hexdigest() == digests[name], name
    # `rclone sync` (changed and deleted files) and `rclone test info` take the same path
    changed = os.urandom(100_000)
    (local / "f100000.bin").write_bytes(changed)
    # Same size: rclone tells the change by the time, to a second (sftp's precision). A
    # copy that took under a second left the old time within that: set one well after.
    later = (remote / "f100000.bin").stat().st_mtime + 60
    os.utime(local / "f100000.bin", (later, later))
    (local / "f40k.bin").unlink()
    res = _rclone(server, tmp_path, "sync", str(local), "SRV:rclone-up")
    assert res.returncode == 0, res.stderr + server.server.log_text()[-3000:]
    assert (remote / "f100000.bin").read_bytes() == changed
    assert not (remote / "f40k.bin").exists()
    res = _rclone(server, tmp_path, "test", "info", "--check-streaming", "SRV:rclone-info")
    assert res.returncode == 0, res.stderr + server.server.log_text()[-3000:]
    assert "canStream = true" in res.stdout + res.stderr, res.stdout + res.stderr
    assert "BAD_MESSAGE" not in server.server.log_text()
