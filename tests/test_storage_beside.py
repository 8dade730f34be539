"""Atomic uploads over the jail itself: one lookup of the directory serves the whole upload."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sftpd.storage.atomic import AtomicStorage, is_own_temporary
from sftpd.storage.local import LocalStorage
from sftpd.storage.quota import Limits, MemoryQuotaUsage, QuotaStorage
from sftpd.storage.resolve import Resolver

CT = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_own_temporary(p.name)]


@pytest.fixture(params=["openat2", "walk"])
def jail(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalStorage]:
    try:
        storage = LocalStorage(tmp_path, use_openat2=request.param == "openat2")
    except Exception as exc:  # no openat2 on this kernel
        pytest.skip(str(exc))
    yield storage
    storage.close()


def _count_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the jail resolves from its root (the real resolver still does it)."""
    seen: list[str] = []
    real = Resolver.open_beneath

    def counting(self: Resolver, path: str, *args: object, **kwargs: object) -> int:
        seen.append(path)
        return real(self, path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Resolver, "open_beneath", counting)
    return seen


@pytest.mark.parametrize("existing", [False, True])
def test_an_upload_resolves_its_directory_once(
    jail: LocalStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """A new file and a replaced one: the lstat of the name, the temporary's creation and
    the rename over the name share one lookup (they were three walks from the root)."""
    (tmp_path / "d").mkdir()
    if existing:
        (tmp_path / "d" / "f").write_bytes(b"old")
    st = AtomicStorage(jail)
    seen = _count_lookups(monkeypatch)
    f = st.open("/d/f", CT, 0o644)
    f.pwrite(b"new", 0)
    assert (tmp_path / "d" / "f").exists() == existing and len(_temps(tmp_path)) == 1
    f.close()
    assert seen == ["/d"]
    assert (tmp_path / "d" / "f").read_bytes() == b"new" and _temps(tmp_path) == []


def test_an_upload_removed_while_written_leaves_nothing(jail: LocalStorage, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    st = AtomicStorage(jail)
    f = st.open("/f", CT, 0o644)
    f.pwrite(b"half", 0)
    st.remove("/f")  # removed while being written: it never lands, and the name goes
    f.close()
    assert not (tmp_path / "f").exists() and _temps(tmp_path) == []


def test_an_upload_lands_in_its_directory_renamed_meanwhile(
    jail: LocalStorage, tmp_path: Path
) -> None:
    """The directory is renamed while the file is written: the upload lands in it under
    its new name, as a direct upload's file stays in it (a lookup by the old path at close
    failed, and left the temporary behind)."""
    (tmp_path / "a").mkdir()
    st = AtomicStorage(jail)
    f = st.open("/a/f", CT, 0o644)
    f.pwrite(b"data", 0)
    st.rename("/a", "/b", overwrite=False)
    f.close()
    assert (tmp_path / "b" / "f").read_bytes() == b"data" and _temps(tmp_path) == []


def test_a_renamed_upload_lands_under_its_new_name_elsewhere(
    jail: LocalStorage, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    st = AtomicStorage(jail)
    f = st.open("/a/f", CT, 0o644)
    f.pwrite(b"data", 0)
    st.rename("/a/f", "/b/g", overwrite=False)
    f.close()
    assert (tmp_path / "b" / "g").read_bytes() == b"data"
    assert not (tmp_path / "a" / "f").exists() and _temps(tmp_path) == []


def test_a_symlink_is_written_in_place_through_its_directory(
    jail: LocalStorage, tmp_path: Path
) -> None:
    (tmp_path / "target").write_bytes(b"old")
    (tmp_path / "link").symlink_to("target")
    st = AtomicStorage(jail)
    f = st.open("/link", CT, 0o644)
    assert _temps(tmp_path) == []  # a link: in place, as before
    f.pwrite(b"new", 0)
    f.close()
    assert (tmp_path / "target").read_bytes() == b"new" and (tmp_path / "link").is_symlink()


def test_errors_of_the_directory_are_the_general_ones(jail: LocalStorage, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    st = AtomicStorage(jail)
    with pytest.raises(FileNotFoundError):
        st.open("/missing/f", CT, 0o644)
    with pytest.raises(NotADirectoryError):
        st.open("/file/f", CT, 0o644)
    with pytest.raises(IsADirectoryError):
        st.open("/", CT, 0o644)
    with pytest.raises(FileExistsError):
        st.open("/file", CT | os.O_EXCL, 0o644)
    assert _temps(tmp_path) == []


def test_with_a_quota_beneath_the_general_way_counts_every_byte(tmp_path: Path) -> None:
    """The quota layer between atomic and the jail must see the temporary and the rename:
    the directory shortcut is only taken over the jail itself."""
    jail = LocalStorage(tmp_path)
    usage = MemoryQuotaUsage()
    usage.scanned(0, 0)
    st = AtomicStorage(QuotaStorage(jail, Limits(quota_size=100), usage))
    f = st.open("/f", CT, 0o644)
    f.pwrite(b"x" * 10, 0)
    f.close()
    assert usage.used() == (10, 1) and (tmp_path / "f").read_bytes() == b"x" * 10
