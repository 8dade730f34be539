"""Quota usage in the user database (SQLite here): deltas, staleness, restarts and outages.

Real jails in temporary directories and a real SQLite file; each "node" is a
StoreQuotaUsage of its own on the same database, with a hand-driven clock."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sftpd.auth.stores.records import UserDb
from sftpd.auth.stores.sqlite import SqliteDatabase
from sftpd.auth.stores.store import DbUsageStore
from sftpd.storage.atomic import AtomicStorage, is_own_temporary
from sftpd.storage.local import LocalStorage
from sftpd.storage.quota import LimitExceeded, Limits, MemoryQuotaUsage, QuotaStorage, scan_usage
from sftpd.storage.usage import StoreQuotaUsage, UsageUnavailable

CT = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
W = os.O_WRONLY | os.O_CREAT
LIMITS = Limits(quota_size=1000, quota_files=10)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Switch:
    """The database behind a switch: off, every call fails as a dead server's would."""

    def __init__(self, inner: DbUsageStore) -> None:
        self.inner, self.on, self.calls = inner, True, 0

    def _check(self) -> None:
        self.calls += 1
        if not self.on:
            raise UsageUnavailable("postgresql: connection refused")

    def load(self, name: str) -> tuple[str, int, int] | None:
        self._check()
        return self.inner.load(name)

    def add(self, name: str, nbytes: int, files: int) -> tuple[int, int] | None:
        self._check()
        return self.inner.add(name, nbytes, files)

    def store(
        self, name: str, root: str, nbytes: int, files: int, *, replace: bool
    ) -> tuple[int, int]:
        self._check()
        return self.inner.store(name, root, nbytes, files, replace=replace)


@pytest.fixture
def db(tmp_path: Path) -> UserDb:
    udb = UserDb(SqliteDatabase(tmp_path / "users.db"))
    udb.upgrade()
    return udb


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


def node(
    db: UserDb, root: Path, clock: Clock, scans: list[int] | None = None, store: object = None
) -> tuple[AtomicStorage, StoreQuotaUsage]:
    """One node's storage stack for alice, started as at her first login there."""
    usage = StoreQuotaUsage("alice", store or DbUsageStore(db), clock=clock)  # type: ignore[arg-type]
    jail = LocalStorage(root)

    def scan() -> tuple[int, int]:
        if scans is not None:
            scans.append(1)
        return scan_usage(jail)

    usage.start(str(root), scan)
    return AtomicStorage(QuotaStorage(jail, LIMITS, usage)), usage


def on_disk(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(
        1 for p in files if not is_own_temporary(p.name)
    )


def put(st: AtomicStorage, path: str, data: bytes, flags: int = CT) -> None:
    f = st.open(path, flags, 0o600)
    f.pwrite(data, 0)
    f.close()


# The delta arithmetic: after each change, this process's number, the database's and the
# disk's agree (the database's without a sync: each operation sends its change before it
# returns).
OPS: dict[str, Callable[[AtomicStorage], None]] = {
    "new file": lambda st: put(st, "/n", b"n" * 70),
    "overwrite smaller": lambda st: put(st, "/a", b"x" * 10),
    "overwrite larger": lambda st: put(st, "/a", b"x" * 300),
    "write in place past the end": lambda st: put(st, "/a", b"y" * 250, W),
    "truncate down": lambda st: st.truncate("/a", 5),
    "truncate up": lambda st: st.truncate("/a", 500),
    "remove": lambda st: st.remove("/b"),
    "rename over a file": lambda st: st.rename("/a", "/b", overwrite=True),
    "rename to a new name": lambda st: st.rename("/a", "/c", overwrite=False),
    "hard link": lambda st: st.link("/a", "/l"),
}


@pytest.mark.parametrize("op", list(OPS))
def test_each_change_is_counted_and_stored(db: UserDb, root: Path, op: str) -> None:
    (root / "a").write_bytes(b"a" * 200)
    (root / "b").write_bytes(b"b" * 100)
    st, usage = node(db, root, Clock())
    assert usage.used() == db.usage("alice") == (300, 2)
    OPS[op](st)
    assert usage.used() == on_disk(root), op
    assert db.usage("alice") == on_disk(root), op


@pytest.mark.parametrize("op", list(OPS))
def test_memory_usage_does_the_same_arithmetic(root: Path, op: str) -> None:
    (root / "a").write_bytes(b"a" * 200)
    (root / "b").write_bytes(b"b" * 100)
    jail = LocalStorage(root)
    usage = MemoryQuotaUsage()
    usage.scanned(*scan_usage(jail))
    OPS[op](AtomicStorage(QuotaStorage(jail, LIMITS, usage)))
    assert usage.used() == on_disk(root), op


def test_a_failed_upload_gives_its_bytes_back_in_the_database(db: UserDb, root: Path) -> None:
    (root / "a").write_bytes(b"a" * 600)
    st, usage = node(db, root, Clock())
    f = st.open("/a", CT, 0o600)  # replacing a: the temporary counts while it is written
    f.pwrite(b"z" * 300, 0)
    with pytest.raises(LimitExceeded, match=r"quota exceeded: 900 B of 1\.0 KB used"):
        f.pwrite(b"z" * 200, 300)
    f.close()  # the temporary goes, the old file stays
    assert (root / "a").read_bytes() == b"a" * 600
    assert usage.used() == db.usage("alice") == on_disk(root) == (600, 1)


def test_a_second_node_refuses_what_would_pass_the_quota_alone(db: UserDb, root: Path) -> None:
    clock = Clock()
    a, _ = node(db, root, clock)
    b, b_usage = node(db, root, clock)
    put(a, "/one", b"1" * 600)
    clock.now += b_usage.fresh * 1.5  # past the staleness bound:: b reads again before a new write
    with pytest.raises(LimitExceeded, match=r"quota exceeded: 600 B of 1\.0 KB used"):
        put(b, "/two", b"2" * 600)
    assert not (root / "two").exists()
    assert db.usage("alice") == on_disk(root) == (600, 1)


def test_within_max_age_a_node_judges_by_its_last_read(db: UserDb, root: Path) -> None:
    """The documented staleness: apart from new writes, at most max_age behind."""
    clock = Clock()
    a, _ = node(db, root, clock)
    b, b_usage = node(db, root, clock)
    put(a, "/one", b"1" * 600)
    clock.now += b_usage.max_age / 2
    b_usage.wait()
    assert b_usage.used() == (0, 0)  # not yet read again
    clock.now += b_usage.max_age
    b_usage.wait()
    assert b_usage.used() == (600, 1)


def test_a_restart_reads_the_stored_count_and_never_scans(db: UserDb, root: Path) -> None:
    (root / "a").write_bytes(b"a" * 100)
    scans: list[int] = []
    node(db, root, Clock(), scans)
    assert scans == [1] and db.usage("alice") == (100, 1)  # first seen: scanned, stored
    (root / "behind-its-back").write_bytes(b"x" * 50)
    _, usage = node(db, root, Clock(), scans)  # "restarted"
    assert scans == [1] and usage.used() == (100, 1)  # the stored number, no scan
    db.set_usage("alice", str(root), 7, 7)  # what `sftpd user rescan` does
    usage.wait()  # within max_age: still the old read
    usage._read_at -= usage.max_age
    usage.wait()
    assert usage.used() == (7, 7)


def test_another_root_is_counted_again(db: UserDb, root: Path, tmp_path: Path) -> None:
    db.set_usage("alice", str(tmp_path / "elsewhere"), 999, 9)
    (root / "a").write_bytes(b"a" * 100)
    scans: list[int] = []
    _, usage = node(db, root, Clock(), scans)
    assert scans == [1] and usage.used() == db.usage("alice") == (100, 1)


def test_a_deleted_row_is_counted_again(db: UserDb, root: Path) -> None:
    (root / "a").write_bytes(b"a" * 100)
    st, usage = node(db, root, Clock())
    with db.db.transaction() as cur:
        cur.execute("DELETE FROM quota_usage")
    st.remove("/a")  # the delta finds no row: the root is scanned and stored
    assert db.usage("alice") == usage.used() == (0, 0)


def test_database_down_keeps_changes_open_writes_go_on_new_ones_wait(
    db: UserDb, root: Path
) -> None:
    (root / "old").write_bytes(b"o" * 100)
    clock = Clock()
    switch = Switch(DbUsageStore(db))
    st, usage = node(db, root, clock, store=switch)
    f = st.open("/up", CT, 0o600)
    g = st.open("/big", CT, 0o600)
    f.pwrite(b"u" * 200, 0)
    switch.on = False
    clock.now += usage.max_age
    f.pwrite(b"u" * 200, 200)  # the upload in progress goes on (judged by what is known)
    assert usage.down == "postgresql: connection refused"
    with pytest.raises(LimitExceeded, match=r"quota exceeded: 500 B of 1\.0 KB used"):
        g.pwrite(b"g" * 700, 0)  # the quota still holds, by the last known numbers
    g.close()
    f.close()  # lands: nothing the client sent is lost
    assert (root / "up").read_bytes() == b"u" * 400
    st.remove("/old")
    calls = switch.calls
    with pytest.raises(LimitExceeded) as info:
        st.open("/new", CT, 0o600)  # a new upload: refused, at once (no query)
    assert info.value.strerror == (
        "quota usage unavailable: the user database cannot be reached; try again later"
    )
    assert switch.calls == calls and not (root / "new").exists()
    assert usage.used() == on_disk(root) == (400, 1)
    assert db.usage("alice") == (100, 1)  # the database missed the changes
    assert usage.due() is False  # the periodic sync waits for the retry time
    clock.now += usage.retry
    assert usage.due() is True
    assert usage.sync() is False  # still down: kept
    switch.on = True
    clock.now += usage.retry
    assert usage.sync() is True and usage.down is None
    assert db.usage("alice") == usage.used() == on_disk(root) == (400, 1)
    put(st, "/new", b"n")  # admitted again
    assert db.usage("alice") == on_disk(root) == (401, 2)


def test_database_down_at_the_first_login_refuses_writes_until_it_answers(
    db: UserDb, root: Path
) -> None:
    (root / "a").write_bytes(b"a" * 100)
    switch = Switch(DbUsageStore(db))
    switch.on = False
    clock = Clock()
    st, usage = node(db, root, clock, store=switch)
    assert usage.ready  # sessions do not hang on it
    with pytest.raises(LimitExceeded, match="quota usage unavailable"):
        st.open("/b", CT, 0o600)
    assert st.open("/a", os.O_RDONLY, 0).pread(10, 0) == b"a" * 10  # reads work
    switch.on = True
    clock.now += usage.retry
    assert usage.due() and usage.sync()
    assert usage.used() == db.usage("alice") == (100, 1)
    put(st, "/b", b"b" * 10)
    assert db.usage("alice") == (110, 2)
