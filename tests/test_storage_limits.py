"""The atomic-upload and quota wrappers over a real jail in a temporary directory (no threads)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sftpd.config.loader import load_config
from sftpd.errors import ConfigError
from sftpd.storage.atomic import AtomicStorage, abandon, clean_temporaries, is_own_temporary
from sftpd.storage.local import LocalStorage
from sftpd.storage.quota import (
    LimitExceeded,
    Limits,
    MemoryQuotaUsage,
    QuotaStorage,
    UserStates,
    check_upload,
    human_size,
    scan_usage,
)

W, CT = os.O_WRONLY | os.O_CREAT, os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_own_temporary(p.name)]


def _stack(root: Path, limits: Limits) -> tuple[AtomicStorage, MemoryQuotaUsage]:
    jail = LocalStorage(root)
    usage = MemoryQuotaUsage()
    usage.scanned(*scan_usage(jail))
    return AtomicStorage(QuotaStorage(jail, limits, usage)), usage


def test_human_size() -> None:
    assert human_size(10_000_000) == "10.0 MB"
    assert human_size(512) == "512 B"
    assert human_size(1_500) == "1.5 KB"


def test_atomic_lands_only_on_clean_close(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    st = AtomicStorage(LocalStorage(tmp_path))
    f = st.open("/f", CT, 0o600)
    f.pwrite(b"new!", 0)
    assert (tmp_path / "f").read_bytes() == b"old"
    assert len(_temps(tmp_path)) == 1
    assert [n for n, _ in st.opendir("/").read(100)] == [".", "..", "f"]
    f.close()
    assert (tmp_path / "f").read_bytes() == b"new!"
    assert _temps(tmp_path) == []


def test_abandoned_upload_leaves_old_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    st = AtomicStorage(LocalStorage(tmp_path))
    f = st.open("/f", CT, 0o600)
    f.pwrite(b"half", 0)
    abandon(f)
    f.close()
    assert (tmp_path / "f").read_bytes() == b"old"
    assert _temps(tmp_path) == []


def test_resume_and_excl(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    st = AtomicStorage(LocalStorage(tmp_path))
    f = st.open("/f", W, 0o600)  # no O_TRUNC: in place
    f.pwrite(b"Z", 3)
    assert _temps(tmp_path) == []
    f.close()
    assert (tmp_path / "f").read_bytes() == b"abcZ"
    with pytest.raises(FileExistsError):
        st.open("/f", CT | os.O_EXCL, 0o600)
    with pytest.raises(FileNotFoundError):
        st.open("/missing", os.O_WRONLY | os.O_TRUNC, 0o600)
    g = st.open("/new", W, 0o600)  # a new file without O_TRUNC: a temporary too
    assert len(_temps(tmp_path)) == 1
    g.close()
    assert (tmp_path / "new").exists()


def test_nowait_path_goes_through_the_temporary(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    st = AtomicStorage(LocalStorage(tmp_path))
    f = st.open_nowait("/f", CT, 0o600) or st.open("/f", CT, 0o600)
    f.pwrite(b"x", 0)
    assert (tmp_path / "f").read_bytes() == b"old"
    if not f.close_nowait():  # inline only where the jail is in memory
        f.close()
    assert (tmp_path / "f").read_bytes() == b"x"
    assert _temps(tmp_path) == []


def test_temporary_names_are_refused_and_hidden(tmp_path: Path) -> None:
    name = "/.sftpd-upload.1.ab.tmp"
    (tmp_path / name[1:]).write_bytes(b"t")
    st = AtomicStorage(LocalStorage(tmp_path))
    with pytest.raises(PermissionError):
        st.open("/.sftpd-upload.x", CT, 0o600)
    with pytest.raises(FileNotFoundError):
        st.stat(name)
    with pytest.raises(FileNotFoundError):
        st.open(name, os.O_RDONLY, 0)
    with pytest.raises(PermissionError):
        st.mkdir("/.sftpd-upload.d", 0o700)
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(PermissionError):
        st.rename("/a", name, overwrite=True)


def test_clean_temporaries_spares_a_living_process(tmp_path: Path) -> None:
    dead = tmp_path / f".sftpd-upload.{(1 << 22) + 1}.00.tmp"
    alive = tmp_path / f".sftpd-upload.{os.getpid()}.00.tmp"
    (tmp_path / "d").mkdir()
    odd = tmp_path / "d" / ".sftpd-upload.junk"
    for p in (dead, alive, odd):
        p.write_bytes(b"x")
    assert clean_temporaries(LocalStorage(tmp_path)) == 2
    assert alive.exists() and not dead.exists() and not odd.exists()


def test_quota_counts_writes_truncates_removes_renames(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"o" * 100)
    st, usage = _stack(tmp_path, Limits(quota_size=1000))
    assert usage.used() == (100, 1)
    f = st.open("/a", CT, 0o600)
    f.pwrite(b"a" * 300, 0)
    assert usage.used() == (400, 1)  # the temporary's bytes count, not as a file
    f.close()
    assert usage.used() == (400, 2)
    f = st.open("/a", CT, 0o600)  # replacing /a: both are on disk until the rename
    f.pwrite(b"b" * 50, 0)
    assert usage.used() == (450, 2)
    f.close()
    assert usage.used() == (150, 2)
    st.truncate("/a", 10)
    assert usage.used() == (110, 2)
    st.rename("/a", "/old", overwrite=True)
    assert usage.used() == (10, 1)
    st.remove("/old")
    assert usage.used() == (0, 0)
    assert scan_usage(LocalStorage(tmp_path)) == (0, 0)


def test_quota_refuses_the_crossing_write_and_drops_the_upload(tmp_path: Path) -> None:
    st, usage = _stack(tmp_path, Limits(quota_size=1000))
    f = st.open("/a", CT, 0o600)
    f.pwrite(b"a" * 600, 0)
    with pytest.raises(LimitExceeded) as info:
        f.pwrite(b"a" * 600, 600)
    assert info.value.errno == errno.EDQUOT
    assert info.value.strerror == "quota exceeded: 600 B of 1.0 KB used"
    f.close()
    assert not (tmp_path / "a").exists() and _temps(tmp_path) == []
    assert usage.used() == (0, 0)


def test_quota_files_and_statvfs(tmp_path: Path) -> None:
    st, usage = _stack(tmp_path, Limits(quota_size=1 << 20, quota_files=1))
    jail_direct = QuotaStorage(LocalStorage(tmp_path), Limits(1 << 20, 1), usage)
    jail_direct.open("/one", CT, 0o600).close()
    with pytest.raises(LimitExceeded, match="1 of 1 files used"):
        jail_direct.open("/two", CT, 0o600)
    vfs = st.statvfs("/")
    assert vfs.f_blocks * vfs.f_frsize == (1 << 20) // vfs.f_frsize * vfs.f_frsize
    assert vfs.f_files == 1 and vfs.f_favail == 0


def test_max_upload_size(tmp_path: Path) -> None:
    st, _ = _stack(tmp_path, Limits(max_upload_size=100))
    f = st.open("/a", CT, 0o600)
    f.pwrite(b"a" * 100, 0)
    with pytest.raises(LimitExceeded, match=r"file too large: max_upload_size is 100 B"):
        f.pwrite(b"a", 100)
    f.close()
    with pytest.raises(LimitExceeded, match="file too large"):
        check_upload(st, 101)
    check_upload(st, 100)


def test_user_states_share_one_usage_and_start_once(tmp_path: Path) -> None:
    states: UserStates[MemoryQuotaUsage] = UserStates(lambda _: MemoryQuotaUsage())
    started: list[MemoryQuotaUsage] = []
    a = states.first_login("alice", started.append)
    b = states.first_login("alice", started.append)
    assert a is b and len(started) == 1


def test_config_checks_the_new_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    hashed = "$2b$04$" + "a" * 53
    base = f'[[users]]\nname = "a"\nroot = "{tmp_path}"\npassword_hash = "{hashed}"\n'
    cfg.write_text(base + 'upload_mode = "fast"\n')
    with pytest.raises(
        ConfigError, match=r'users\[0\]\.upload_mode: expected "atomic" or "direct"'
    ):
        load_config(cfg)
    cfg.write_text(base + "quota_size = -1\n")
    with pytest.raises(ConfigError, match=r"users\[0\]\.quota_size: expected an integer from 0"):
        load_config(cfg)
    cfg.write_text(base + "quota_files = 5\nmax_upload_size = 7\n")
    user = load_config(cfg).users[0]
    assert (user.quota_files, user.max_upload_size, user.upload_mode) == (5, 7, "atomic")


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_inline_open_and_close_on_tmpfs() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        root = Path(d)
        (root / "f").write_bytes(b"old")
        st = AtomicStorage(LocalStorage(root))
        f = st.open_nowait("/f", CT, 0o600)
        if f is None:
            pytest.skip("no inline opens here (openat2 missing)")
        f.pwrite(b"new", 0)
        assert (root / "f").read_bytes() == b"old"
        assert f.close_nowait()  # closed and renamed inline: the jail is in memory
        assert (root / "f").read_bytes() == b"new"
        assert _temps(root) == []


def test_quota_uploads_open_inline_on_tmpfs_and_still_count() -> None:
    """With a quota (in this process), an atomic upload's temporary (an exclusive create)
    opens on the caller's thread where the jail can, as without one; the count holds."""
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        root = Path(d)
        (root / "f").write_bytes(b"old")
        probe = LocalStorage(root).open_nowait("/probe", CT | os.O_EXCL, 0o600)
        if probe is None:
            pytest.skip("no inline opens here (openat2 missing, or tmpfs can swap)")
        probe.close()
        (root / "probe").unlink()
        st, usage = _stack(root, Limits(quota_size=100, quota_files=2))
        f = st.open_nowait("/f", CT, 0o600)
        assert f is not None  # as the jail alone: no worker hop for a quota in memory
        f.pwrite(b"new!", 0)
        assert usage.used() == (3 + 4, 1)  # the temporary's bytes count, not as a file
        assert f.close_nowait()
        assert (root / "f").read_bytes() == b"new!" and usage.used() == (4, 1)
        g = st.open_nowait("/g", CT, 0o600)  # a new file: the second of two allowed
        assert g is not None and usage.used() == (4, 1)  # it counts when it lands
        g.close()
        assert usage.used() == (4, 2)
        h = st.open_nowait("/h", CT, 0o600)  # a third file, as the blocking way: its
        assert h is not None  # landing is refused, and nothing is left behind
        h.pwrite(b"x", 0)
        with pytest.raises(LimitExceeded, match="quota exceeded: 2 of 2 files used"):
            h.close()
        assert usage.used() == (4, 2) and not (root / "h").exists() and _temps(root) == []
        with pytest.raises(FileExistsError):  # an exclusive create of an existing name
            st.open_nowait("/f", CT | os.O_EXCL, 0o600)
        assert usage.used() == (4, 2)


def test_a_quota_still_being_counted_opens_the_blocking_way() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        quota = QuotaStorage(LocalStorage(Path(d)), Limits(quota_size=100), MemoryQuotaUsage())
        assert quota.open_nowait("/.sftpd-upload.1.x.tmp", CT | os.O_EXCL, 0o600) is None


def test_the_writing_session_sees_its_upload_others_do_not(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    mine, other = AtomicStorage(LocalStorage(tmp_path)), AtomicStorage(LocalStorage(tmp_path))
    f = mine.open("/f", CT, 0o600)
    f.pwrite(b"newer", 0)
    assert mine.stat("/f").st_size == 5 and other.stat("/f").st_size == 3
    g = mine.open("/f", os.O_RDONLY, 0)  # reopened: the temporary
    assert g.pread(10, 0) == b"newer"
    g.close()
    with pytest.raises(FileExistsError):
        mine.open("/f", CT | os.O_EXCL, 0o600)
    mine.rename("/f", "/g", overwrite=True)  # lands under the new name
    f.close()
    assert (tmp_path / "g").read_bytes() == b"newer"
    assert (tmp_path / "f").read_bytes() == b"old"
    assert mine.inflight == {} and _temps(tmp_path) == []


def test_fsync_lands_the_upload(tmp_path: Path) -> None:
    st = AtomicStorage(LocalStorage(tmp_path))
    f = st.open("/s", CT, 0o600)
    f.pwrite(b"synced", 0)
    f.fsync()
    assert (tmp_path / "s").read_bytes() == b"synced"
    f.pwrite(b"!", 6)  # the rest in place
    f.close()
    assert (tmp_path / "s").read_bytes() == b"synced!" and _temps(tmp_path) == []


def test_removing_an_upload_in_flight(tmp_path: Path) -> None:
    (tmp_path / "r").write_bytes(b"old")
    st = AtomicStorage(LocalStorage(tmp_path))
    f = st.open("/r", CT, 0o600)
    st.remove("/r")  # the upload, as this session sees it
    f.close()
    assert not (tmp_path / "r").exists() and _temps(tmp_path) == []
